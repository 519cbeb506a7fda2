//! The verification report: JSON for machines, a self-contained HTML page for people, and
//! Prometheus textfile metrics.
//!
//! Invariant: the verdict is derived from the checks (`pass` only if every check passed); the
//! HTML and metrics are renderings of the same struct, never computed separately. Notes
//! (`notes`) never affect the verdict: they say what was not checked and why, or what verify
//! cleaned up, so the report never implies a check that did not run. A report of a negative
//! control (`negative_control`) says so first in every rendering: its FAIL is the expected
//! outcome, and nothing in it is a restore point.

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
    /// Set when the snapshot is a negative control: its `NOT CONSISTENT (negative control)`
    /// line. Never a restore point, whatever the verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative_control: Option<String>,
    /// Its consistency point.
    pub consistency_point: Option<DateTime<Utc>>,
    /// How long its members were paused together; `None` for a negative control.
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

/// What the banner of a negative control's report says first.
pub const NEGATIVE_BANNER: &str = "NOT CONSISTENT (negative control): a FAIL here means verification caught the deliberate violation; this is never a restore point";

/// The banner at the top of a negative control's page (empty for a real snapshot).
fn banner(r: &Report) -> String {
    r.negative_control
        .as_ref()
        .map(|line| {
            format!(
                "<p class='negative' id='negative-control'><strong>{}</strong><br>{}</p>",
                esc(NEGATIVE_BANNER),
                esc(line)
            )
        })
        .unwrap_or_default()
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
         .negative{{border:3px solid #c0392b;background:#fff3cd;padding:.8em 1em;font-size:1.2em}}\
         </style></head><body>{banner}<h1>Restore verification: group {group}</h1>\
         <p class='verdict {cls}' id='verdict'>Verdict: {verdict}</p>\
         <table><tr><th>snapshot</th><td>{id}</td></tr><tr><th>consistency point</th><td>{cp}</td></tr>\
         <tr><th>freeze window</th><td>{fw}</td></tr><tr><th>RPO target</th><td>{rpo} s</td></tr>\
         <tr><th>verified</th><td>{start} → {end}</td></tr></table>",
        id = esc(&r.snapshot_id),
        banner = banner(r),
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

/// Prometheus textfile-collector metrics. Every sample of a negative control's report carries
/// the label `negative_control="1"`, so a rule can tell its expected FAIL from a real one.
pub fn metrics(r: &Report) -> String {
    let mut o = String::new();
    let g = r.group.replace('"', "");
    let l = match &r.negative_control {
        Some(_) => format!("group=\"{g}\",negative_control=\"1\""),
        None => format!("group=\"{g}\""),
    };
    if let Some(line) = &r.negative_control {
        let _ = writeln!(o, "# {}", line.replace('\n', " "));
    }
    let _ = writeln!(
        o,
        "# HELP cgsnap_verify_pass 1 if the last restore verification passed.\n# TYPE cgsnap_verify_pass gauge"
    );
    let _ = writeln!(o, "cgsnap_verify_pass{{{l}}} {}", u8::from(r.passed()));
    let _ = writeln!(
        o,
        "# TYPE cgsnap_verify_timestamp_seconds gauge\ncgsnap_verify_timestamp_seconds{{{l}}} {}",
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
                "cgsnap_verify_recovery_seconds{{{l},domain=\"{d}\"}} {v:.3}"
            );
        }
        if let Some(v) = m.data_loss_seconds {
            let _ = writeln!(
                o,
                "cgsnap_verify_data_loss_seconds{{{l},domain=\"{d}\"}} {v:.3}"
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(negative_control: Option<&str>) -> Report {
        let mut m = MemberReport::new("orders", "orders-sandbox");
        m.recovery_seconds = Some(8.5);
        m.checks.push(Check {
            name: "beacons before the cut".into(),
            ok: false,
            evidence: "newest beacon 0.9 s after the consistency point".into(),
        });
        Report {
            format_version: 1,
            snapshot_id: "pg-3".into(),
            group: "pg".into(),
            negative_control: negative_control.map(str::to_string),
            consistency_point: None,
            freeze_window_ms: None,
            rpo_seconds: 5.0,
            verdict: "fail".into(),
            started_at: DateTime::from_timestamp(1_700_000_000, 0).expect("ts"),
            finished_at: DateTime::from_timestamp(1_700_000_060, 0).expect("ts"),
            members: vec![m],
            cross_checks: vec![],
            notes: vec![],
        }
    }

    const LINE: &str =
        "NOT CONSISTENT (negative control): members cut 1000 ms apart; never a restore point";

    #[test]
    fn a_negative_controls_page_starts_with_its_banner() {
        let page = html(&report(Some(LINE)));
        let body = page.split("<body>").nth(1).expect("body");
        assert!(
            body.starts_with("<p class='negative' id='negative-control'><strong>NOT CONSISTENT (negative control): a FAIL here means verification caught the deliberate violation; this is never a restore point</strong><br>"),
            "{body}"
        );
        assert!(body.contains("members cut 1000 ms apart"));
        assert!(body.find("negative-control") < body.find("id='verdict'"));
        assert!(
            !html(&report(None)).contains("NOT CONSISTENT"),
            "no banner for a real snapshot"
        );
    }

    #[test]
    fn a_negative_controls_metrics_carry_its_label_and_json_its_line() {
        let text = metrics(&report(Some(LINE)));
        assert!(
            text.starts_with("# NOT CONSISTENT (negative control)"),
            "{text}"
        );
        assert!(text.contains("cgsnap_verify_pass{group=\"pg\",negative_control=\"1\"} 0"));
        assert!(text.contains(
            "cgsnap_verify_recovery_seconds{group=\"pg\",negative_control=\"1\",domain=\"orders\"} 8.500"
        ));
        let samples = text.lines().filter(|l| !l.starts_with('#'));
        assert!(
            samples.clone().count() == 3
                && samples
                    .clone()
                    .all(|l| l.contains("negative_control=\"1\""))
        );
        let real = metrics(&report(None));
        assert!(real.contains("cgsnap_verify_pass{group=\"pg\"} 0") && !real.contains("negative"));
        let v = serde_json::to_value(report(Some(LINE))).expect("json");
        assert_eq!(v["negative_control"], LINE);
        let v = serde_json::to_value(report(None)).expect("json");
        assert!(v.get("negative_control").is_none());
    }
}
