//! The verification report: JSON for machines, a self-contained HTML page for people, and
//! Prometheus textfile metrics.
//!
//! Invariant: the verdict is derived from the checks (`pass` only if every check passed); the
//! HTML and metrics are renderings of the same struct, never computed separately. Notes
//! (`notes`) never affect the verdict: they say what was not checked and why, or what verify
//! cleaned up, so the report never implies a check that did not run.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::fmt::Write as _;

/// One check and why it passed or failed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// The numbers or the error it was judged on.
    pub evidence: String,
}

/// The findings of one restored member.
#[derive(Debug, Clone, Serialize)]
pub struct MemberReport {
    /// The member's domain.
    pub domain: String,
    /// The libvirt daemon the member ran on when it was snapshotted.
    pub host: String,
    /// The sandbox domain it was restored as.
    pub sandbox: String,
    /// The libvirt daemon the sandbox ran on (the member's own, or the one `--connect` chose).
    pub sandbox_host: String,
    /// Boot of the restored VM to database ready, crash recovery included (the RTO).
    pub recovery_seconds: Option<f64>,
    /// Sequence number of the newest recovered beacon.
    pub newest_beacon_seq: Option<i64>,
    /// Timestamp of the newest recovered beacon.
    pub newest_beacon_ts: Option<DateTime<Utc>>,
    /// Consistency point minus newest recovered beacon.
    pub data_loss_seconds: Option<f64>,
    /// Acknowledged commits before the cut missing after restore (exact count).
    pub lost_acked_commits: Option<usize>,
    /// Cassandra: `release_version` of the restored node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// Cassandra: how long before the cut an acknowledged write may be lost (sync mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_bound_seconds: Option<f64>,
    /// Cassandra: mutations replayed from the commit log, as logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed_mutations: Option<u64>,
    /// Every check of the member, in the order made.
    pub checks: Vec<Check>,
}

impl MemberReport {
    /// An empty report of `domain` restored as `sandbox`.
    pub fn new(domain: &str, sandbox: &str) -> Self {
        Self {
            domain: domain.to_string(),
            host: String::new(),
            sandbox: sandbox.to_string(),
            sandbox_host: String::new(),
            recovery_seconds: None,
            newest_beacon_seq: None,
            newest_beacon_ts: None,
            data_loss_seconds: None,
            lost_acked_commits: None,
            server_version: None,
            loss_bound_seconds: None,
            replayed_mutations: None,
            checks: Vec::new(),
        }
    }
}

/// The result of one verification (`--report`, JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Report format version (1).
    pub format_version: u32,
    /// The snapshot verified.
    pub snapshot_id: String,
    /// Its group.
    pub group: String,
    /// Its consistency point.
    pub consistency_point: Option<DateTime<Utc>>,
    /// How long its members were paused.
    pub freeze_window_ms: Option<f64>,
    /// RPO the profile allows.
    pub rpo_seconds: f64,
    /// `pass` or `fail`.
    pub verdict: String,
    /// When verification began.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// One report per restored member.
    pub members: Vec<MemberReport>,
    /// Beacon order and profile cross checks.
    pub cross_checks: Vec<Check>,
    /// What was not checked and why, and what was cleaned up before the run; not checks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Report {
    /// Whether every member check and every cross check passed.
    pub fn passed(&self) -> bool {
        self.members
            .iter()
            .flat_map(|m| m.checks.iter())
            .all(|c| c.ok)
            && self.cross_checks.iter().all(|c| c.ok)
    }

    /// One line per failed check.
    pub fn violations(&self) -> Vec<String> {
        self.members
            .iter()
            .flat_map(|m| {
                m.checks
                    .iter()
                    .filter(|c| !c.ok)
                    .map(move |c| format!("{}: {}: {}", m.domain, c.name, c.evidence))
            })
            .chain(
                self.cross_checks
                    .iter()
                    .filter(|c| !c.ok)
                    .map(|c| format!("{}: {}", c.name, c.evidence)),
            )
            .collect()
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map(|x| format!("{x:.2} {unit}"))
        .unwrap_or_else(|| "—".into())
}

fn checks_table(out: &mut String, checks: &[Check]) {
    out.push_str("<table><tr><th>check</th><th>result</th><th>evidence</th></tr>");
    for c in checks {
        let _ = write!(
            out,
            "<tr class='{}'><td>{}</td><td>{}</td><td>{}</td></tr>",
            if c.ok { "ok" } else { "bad" },
            esc(&c.name),
            if c.ok { "pass" } else { "FAIL" },
            esc(&c.evidence)
        );
    }
    out.push_str("</table>");
}

/// A self-contained HTML page (inline CSS, an inline SVG bar per member for data loss vs RPO).
pub fn html(r: &Report) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html><html><head><meta charset='utf-8'><title>cgsnap verify {id}</title><style>\
         body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin:.5em 0 1.5em}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}tr.ok td:nth-child(2){{color:#1a7f37}}\
         tr.bad td{{background:#fde2e1}}.verdict{{font-size:1.4em;font-weight:bold}}.pass{{color:#1a7f37}}.fail{{color:#c0392b}}\
         </style></head><body><h1>Restore verification: group {group}</h1>\
         <p class='verdict {cls}' id='verdict'>Verdict: {verdict}</p>\
         <table><tr><th>snapshot</th><td>{id}</td></tr><tr><th>consistency point</th><td>{cp}</td></tr>\
         <tr><th>freeze window</th><td>{fw}</td></tr><tr><th>RPO target</th><td>{rpo} s</td></tr>\
         <tr><th>verified</th><td>{start} → {end}</td></tr></table>",
        id = esc(&r.snapshot_id),
        group = esc(&r.group),
        cls = if r.passed() { "pass" } else { "fail" },
        verdict = esc(&r.verdict).to_uppercase(),
        cp = r
            .consistency_point
            .map(|c| c.to_rfc3339())
            .unwrap_or_default(),
        fw = opt(r.freeze_window_ms, "ms"),
        rpo = r.rpo_seconds,
        start = r.started_at.to_rfc3339(),
        end = r.finished_at.to_rfc3339(),
    );
    o.push_str("<h2>Members</h2><table><tr><th>member</th><th>recovery (RTO)</th><th>newest beacon</th><th>data loss</th><th>vs RPO</th><th>lost acknowledged commits</th></tr>");
    for m in &r.members {
        let loss = m.data_loss_seconds.unwrap_or(0.0).max(0.0);
        let w = if r.rpo_seconds > 0.0 {
            (loss / r.rpo_seconds * 200.0).min(200.0)
        } else {
            0.0
        };
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><svg width='210' height='14'><rect width='200' height='14' fill='#eee'/>\
             <rect width='{w:.0}' height='14' fill='{}'/></svg></td><td>{}</td></tr>",
            esc(&m.domain),
            opt(m.recovery_seconds, "s"),
            m.newest_beacon_seq
                .map(|s| s.to_string())
                .unwrap_or_else(|| "—".into()),
            opt(m.data_loss_seconds, "s"),
            if loss <= r.rpo_seconds {
                "#1a7f37"
            } else {
                "#c0392b"
            },
            m.lost_acked_commits
                .map(|n| n.to_string())
                .unwrap_or_else(|| "—".into()),
        );
    }
    o.push_str("</table>");
    for m in &r.members {
        let _ = write!(
            o,
            "<h3>{} on {} (sandbox {} on {})</h3>",
            esc(&m.domain),
            esc(&m.host),
            esc(&m.sandbox),
            esc(&m.sandbox_host)
        );
        checks_table(&mut o, &m.checks);
    }
    o.push_str("<h2>Across members</h2>");
    checks_table(&mut o, &r.cross_checks);
    if !r.notes.is_empty() {
        o.push_str("<h2>Notes</h2><ul>");
        for n in &r.notes {
            let _ = write!(o, "<li>{}</li>", esc(n));
        }
        o.push_str("</ul>");
    }
    o.push_str("</body></html>");
    o
}

/// Prometheus textfile-collector metrics.
pub fn metrics(r: &Report) -> String {
    let mut o = String::new();
    let g = r.group.replace('"', "");
    let _ = writeln!(
        o,
        "# HELP cgsnap_verify_pass 1 if the last restore verification passed.\n# TYPE cgsnap_verify_pass gauge"
    );
    let _ = writeln!(
        o,
        "cgsnap_verify_pass{{group=\"{g}\"}} {}",
        u8::from(r.passed())
    );
    let _ = writeln!(
        o,
        "# TYPE cgsnap_verify_timestamp_seconds gauge\ncgsnap_verify_timestamp_seconds{{group=\"{g}\"}} {}",
        r.finished_at.timestamp()
    );
    let _ = writeln!(
        o,
        "# TYPE cgsnap_verify_recovery_seconds gauge\n# TYPE cgsnap_verify_data_loss_seconds gauge"
    );
    for m in &r.members {
        let d = m.domain.replace('"', "");
        if let Some(v) = m.recovery_seconds {
            let _ = writeln!(
                o,
                "cgsnap_verify_recovery_seconds{{group=\"{g}\",domain=\"{d}\"}} {v:.3}"
            );
        }
        if let Some(v) = m.data_loss_seconds {
            let _ = writeln!(
                o,
                "cgsnap_verify_data_loss_seconds{{group=\"{g}\",domain=\"{d}\"}} {v:.3}"
            );
        }
    }
    o
}
