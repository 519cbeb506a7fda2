//! Prometheus metrics for monitoring: one textfile, `METRICS_DIR/cgsnap.prom`, for
//! node_exporter's textfile collector, with the state of every group in the catalog.
//!
//! Invariants:
//! - Rendered only from the catalog (manifests and `reports/ID/report.json`), like `cgsnap
//!   report`: the metrics never claim what no run recorded.
//! - The file is replaced atomically (temporary file, fsync, rename) so the collector never
//!   reads a torn file, and rendering holds an `flock` on `METRICS_DIR/.cgsnap.prom.lock`, so
//!   of two runs (say, on two groups) the later writer has read the later catalog.
//! - Negative-control snapshots (`--unsafe-*`) are counted in the per-state gauges (their
//!   overlays are held like any other) but never as a backup's success, freeze or verification.
//! - Ages are left to Prometheus (`time() - ..._timestamp_seconds`): the file stays true between
//!   runs without a timer re-rendering it. The compliance status and restore-point age
//!   ([`compliance`]) are as of the render, beside the timestamps and policy an alert uses.

mod compliance;

use crate::catalog::{Catalog, CatalogError, Manifest, SnapState, VerifyView};
use crate::model::exit::{Classify, ExitCode};
use crate::report::{GroupReport, ReportError};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Name of the metrics file in the metrics directory.
pub(crate) const FILE_NAME: &str = "cgsnap.prom";

/// Why the metrics file could not be refreshed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The catalog could not be opened or read.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The compliance report (policies) could not be made.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// The metrics directory, its lock or its file could not be written.
    #[error("metrics file {path}: {source} (check --metrics-dir / CGSNAP_METRICS_DIR)")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Classify for MetricsError {
    fn exit_code(&self) -> ExitCode {
        match self {
            MetricsError::Catalog(e) => e.exit_code(),
            MetricsError::Report(e) => e.exit_code(),
            MetricsError::Io { .. } => ExitCode::Internal,
        }
    }
}

/// A label value in the text exposition format: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn succeeded(m: &Manifest) -> bool {
    matches!(
        m.state,
        SnapState::Taken | SnapState::Releasing | SnapState::Released
    )
}

fn ts(t: DateTime<Utc>) -> String {
    format!("{:.3}", t.timestamp_millis() as f64 / 1000.0)
}

/// One metric family: HELP, TYPE (all gauges) and its samples.
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(String, String)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: &[(&str, &str)], value: String) {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        self.samples.push((l.join(","), value));
    }

    fn write(&self, o: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let _ = writeln!(o, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(o, "# TYPE {} gauge", self.name);
        for (l, v) in &self.samples {
            let _ = writeln!(o, "{}{{{l}}} {v}", self.name);
        }
    }
}

/// Every metric family of the exposition, in output order.
struct Families {
    by_state: Family,
    held_since: Family,
    attempt_ts: Family,
    attempt_ok: Family,
    success_ts: Family,
    window: Family,
    member_freeze: Family,
    released_ts: Family,
    verify_ts: Family,
    verify_pass: Family,
    verify_pass_ts: Family,
    rpo: Family,
    recovery: Family,
    loss: Family,
}

impl Families {
    fn new() -> Self {
        Families {
            by_state: Family::new(
                "cgsnap_snapshots",
                "Snapshots in the catalog by state (pending, taken, failed and releasing hold overlays).",
            ),
            held_since: Family::new(
                "cgsnap_snapshot_outstanding_since_timestamp_seconds",
                "Creation time of the oldest snapshot whose overlays may still be in use (run cgsnap release).",
            ),
            attempt_ts: Family::new(
                "cgsnap_snapshot_last_attempt_timestamp_seconds",
                "Start of the newest snapshot attempt.",
            ),
            attempt_ok: Family::new(
                "cgsnap_snapshot_last_attempt_success",
                "1 if the newest snapshot attempt was taken, 0 if it was aborted, failed or never finished.",
            ),
            success_ts: Family::new(
                "cgsnap_snapshot_last_success_timestamp_seconds",
                "Consistency point of the newest snapshot that was taken.",
            ),
            window: Family::new(
                "cgsnap_snapshot_last_freeze_window_seconds",
                "Group freeze window (first pause to last resume) of the newest snapshot taken.",
            ),
            member_freeze: Family::new(
                "cgsnap_snapshot_last_member_freeze_seconds",
                "Time each member was paused in the newest snapshot taken.",
            ),
            released_ts: Family::new(
                "cgsnap_release_last_success_timestamp_seconds",
                "Time the newest release finished (every overlay committed back).",
            ),
            verify_ts: Family::new(
                "cgsnap_verify_last_timestamp_seconds",
                "End of the newest restore verification.",
            ),
            verify_pass: Family::new(
                "cgsnap_verify_last_pass",
                "1 if the newest restore verification passed.",
            ),
            verify_pass_ts: Family::new(
                "cgsnap_verify_last_pass_timestamp_seconds",
                "End of the newest restore verification that passed.",
            ),
            rpo: Family::new(
                "cgsnap_verify_rpo_seconds",
                "RPO target of the newest verification's profile.",
            ),
            recovery: Family::new(
                "cgsnap_verify_last_recovery_seconds",
                "Per member: restored VM boot to database ready, crash recovery included (RTO).",
            ),
            loss: Family::new(
                "cgsnap_verify_last_data_loss_seconds",
                "Per member: consistency point minus the newest recovered beacon.",
            ),
        }
    }

    /// The snapshot and release families of group `g` (`ms` oldest first).
    fn add_snapshots(&mut self, g: &str, ms: &[&Manifest], real: &[&Manifest]) {
        for s in SnapState::ALL {
            let n = ms.iter().filter(|m| m.state == s).count();
            self.by_state
                .add(&[("group", g), ("state", &s.to_string())], n.to_string());
        }
        if let Some(m) = ms.iter().find(|m| m.state.outstanding()) {
            self.held_since.add(&[("group", g)], ts(m.created_at));
        }
        if let Some(m) = real.last() {
            self.attempt_ts.add(&[("group", g)], ts(m.created_at));
            self.attempt_ok
                .add(&[("group", g)], u8::from(succeeded(m)).to_string());
        }
        if let Some(m) = real.iter().rev().find(|m| succeeded(m)) {
            if let Some(cp) = m.consistency_point {
                self.success_ts.add(&[("group", g)], ts(cp));
            }
            if let Some(w) = m.freeze_window_ms {
                self.window
                    .add(&[("group", g)], format!("{:.6}", w / 1000.0));
            }
            for mem in &m.members {
                if let Some(f) = mem.freeze_ms {
                    self.member_freeze.add(
                        &[("group", g), ("domain", &mem.domain)],
                        format!("{:.6}", f / 1000.0),
                    );
                }
            }
        }
        if let Some(t) = real.iter().filter_map(|m| m.released_at).max() {
            self.released_ts.add(&[("group", g)], ts(t));
        }
    }

    /// The verification families of group `g` from the reports of its real snapshots.
    fn add_verifications(&mut self, g: &str, verified: &[&VerifyView]) {
        if let Some(r) = verified.iter().max_by_key(|r| r.finished_at) {
            self.verify_ts.add(&[("group", g)], ts(r.finished_at));
            self.verify_pass
                .add(&[("group", g)], u8::from(r.verdict == "pass").to_string());
            self.rpo.add(&[("group", g)], format!("{}", r.rpo_seconds));
            for mem in &r.members {
                let l = [("group", g), ("domain", mem.domain.as_str())];
                if let Some(v) = mem.recovery_seconds {
                    self.recovery.add(&l, format!("{v:.3}"));
                }
                if let Some(v) = mem.data_loss_seconds {
                    self.loss.add(&l, format!("{v:.3}"));
                }
            }
        }
        if let Some(t) = verified
            .iter()
            .filter(|r| r.verdict == "pass")
            .map(|r| r.finished_at)
            .max()
        {
            self.verify_pass_ts.add(&[("group", g)], ts(t));
        }
    }

    fn write(self) -> String {
        let mut o = String::new();
        for f in [
            self.by_state,
            self.held_since,
            self.attempt_ts,
            self.attempt_ok,
            self.success_ts,
            self.window,
            self.member_freeze,
            self.released_ts,
            self.verify_ts,
            self.verify_pass,
            self.verify_pass_ts,
            self.rpo,
            self.recovery,
            self.loss,
        ] {
            f.write(&mut o);
        }
        o
    }
}

/// The exposition text for every group in `manifests` (oldest first, as `Catalog::list`);
/// `reports` maps a snapshot ID to its verification report; `groups` is the compliance
/// report of the catalog.
pub fn render(
    manifests: &[Manifest],
    reports: &BTreeMap<String, VerifyView>,
    compliance: &[GroupReport],
) -> String {
    let mut groups: BTreeMap<&str, Vec<&Manifest>> = BTreeMap::new();
    for m in manifests {
        groups.entry(m.group.as_str()).or_default().push(m);
    }
    let mut f = Families::new();
    for (g, ms) in &groups {
        // Negative controls hold overlays (counted by state) but are never a backup.
        let real: Vec<&Manifest> = ms
            .iter()
            .copied()
            .filter(|m| !m.is_negative_control())
            .collect();
        f.add_snapshots(g, ms, &real);
        let verified: Vec<&VerifyView> = real.iter().filter_map(|m| reports.get(&m.id)).collect();
        f.add_verifications(g, &verified);
    }
    let mut c = compliance::Compliance::new();
    compliance.iter().for_each(|g| c.add(g));
    let mut o = f.write();
    for fam in c.families() {
        fam.write(&mut o);
    }
    o
}

/// How far back the negative-control counts of the metrics reach.
const CONTROL_PERIOD_DAYS: i64 = 30;

/// Re-render `dir/cgsnap.prom` from the catalog; returns its path and text.
pub fn refresh(cat: &Catalog, dir: &Path) -> Result<(PathBuf, String), MetricsError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MetricsError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let lock_path = dir.join(".cgsnap.prom.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    // SAFETY: flock on a descriptor we own; blocking, held only while rendering (milliseconds).
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io(&lock_path)(std::io::Error::last_os_error()));
    }
    let manifests = cat.list()?;
    let now = Utc::now();
    let since = now - chrono::Duration::days(CONTROL_PERIOD_DAYS);
    let verifications = cat.verifications(&manifests);
    let report = crate::report::build_from(cat, &manifests, &verifications, None, since, now)?;
    let text = render(&manifests, &verifications, &report.groups);
    let path = dir.join(FILE_NAME);
    // The collector reads only `*.prom`: the temporary name must not end so.
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    crate::catalog::replace_file(&tmp, &path, text.as_bytes())
        .map_err(|(p, source)| MetricsError::Io { path: p, source })?;
    drop(lock);
    Ok((path, text))
}

#[cfg(test)]
mod tests;
