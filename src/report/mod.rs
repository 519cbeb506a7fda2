//! `cgsnap report`: per group, its DR status against its policy ([`status`]), its newest
//! verified restore point, counts, trends and failures over a period, as JSON (schema
//! [`SCHEMA`], documented in `docs/report.md`) and as one self-contained HTML page
//! (`CATALOG/reports/index.html`, [`html`]) linking every verification's own report.
//!
//! Invariants:
//! - Rendered only from what the catalog holds (manifests, `reports/ID/report.json`,
//!   `policies/`); nothing is re-measured, so the report says exactly what each run recorded.
//! - A negative control (`--unsafe-*`) is never a restore point, never a point of a trend and
//!   never a failure of the group; it is listed, marked, and counted as caught or missed.
//! - The status looks at the whole catalog (the newest restore point may be older than the
//!   period); counts, trends and failures cover the period only.
//! - Additions to the JSON keep [`SCHEMA`]; a removal or a change of meaning bumps it.

mod gather;
pub mod html;
pub mod status;
pub mod svg;

use crate::catalog::policy::{self, Policy, PolicyError};
use crate::catalog::{Catalog, CatalogError, Manifest, VerifyView};
use crate::model::exit::{Classify, ExitCode};
use chrono::{DateTime, Utc};
use serde::Serialize;
pub use status::Status;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The JSON schema's name and version (`schema`).
pub const SCHEMA: &str = "cgsnap.report/1";

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The catalog could not be read.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A policy could not be read.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The HTML page could not be written.
    #[error("report page {path}: {source} (check --catalog / CGSNAP_CATALOG and permissions)")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `--group` names a group the catalog knows nothing of.
    #[error(
        "unknown group {0:?}: it has no snapshot and no policy in the catalog (see `cgsnap list`)"
    )]
    UnknownGroup(String),
}

impl Classify for ReportError {
    fn exit_code(&self) -> ExitCode {
        match self {
            ReportError::Catalog(e) => e.exit_code(),
            ReportError::Policy(e) => e.exit_code(),
            ReportError::Io { .. } => ExitCode::Internal,
            ReportError::UnknownGroup(_) => ExitCode::NotFound,
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// When it was made.
    pub generated_at: DateTime<Utc>,
    /// Start of the period of counts, trends and failures.
    pub since: DateTime<Utc>,
    /// The catalog it was made from.
    pub catalog: PathBuf,
    /// One entry per group, by name.
    pub groups: Vec<GroupReport>,
}

/// A policy's targets, in seconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PolicyView {
    /// Maximum age of the newest verified restore point.
    pub max_restore_point_age_seconds: f64,
    /// RPO target.
    pub rpo_seconds: f64,
    /// RTO target.
    pub rto_seconds: f64,
}

impl From<&Policy> for PolicyView {
    fn from(p: &Policy) -> Self {
        Self {
            max_restore_point_age_seconds: p.max_restore_point_age.as_secs_f64(),
            rpo_seconds: p.rpo.as_secs_f64(),
            rto_seconds: p.rto.as_secs_f64(),
        }
    }
}

/// One group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    /// Its name.
    pub group: String,
    /// Its policy, if one is set.
    pub policy: Option<PolicyView>,
    /// Its status.
    pub status: Status,
    /// Why, in one line (the first of `reasons`).
    pub reason: String,
    /// Every reason, worst first.
    pub reasons: Vec<String>,
    /// The newest verified restore point, whenever it was.
    pub newest_restore_point: Option<RestorePoint>,
    /// Counts over the period.
    pub counts: Counts,
    /// Trends over the period.
    pub trends: Trends,
    /// Failed snapshot attempts and verifications over the period, oldest first.
    pub failures: Vec<FailureRow>,
    /// Every snapshot of the period, oldest first.
    pub snapshots: Vec<Row>,
}

/// A consistent cut whose restore was verified.
#[derive(Debug, Clone, Serialize)]
pub struct RestorePoint {
    /// Its snapshot.
    pub snapshot_id: String,
    /// Its consistency point: the instant its data is from.
    pub consistency_point: DateTime<Utc>,
    /// Seconds from the consistency point to `generated_at`.
    pub age_seconds: f64,
    /// When its verification finished.
    pub verified_at: DateTime<Utc>,
    /// Largest recovery time of its members, seconds.
    pub max_recovery_seconds: Option<f64>,
    /// Largest data loss of its members, seconds.
    pub max_data_loss_seconds: Option<f64>,
    /// Its verification's HTML report.
    pub report: PathBuf,
}

/// What happened in the period.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Snapshots started, negative controls included.
    pub snapshots: usize,
    /// Consistent snapshots taken (released or still held).
    pub taken: usize,
    /// Consistent snapshot attempts that were not taken (aborted, failed).
    pub snapshot_failures: usize,
    /// Verifications of consistent snapshots that passed.
    pub verifications_passed: usize,
    /// Verifications of consistent snapshots that failed.
    pub verifications_failed: usize,
    /// Negative controls taken.
    pub negative_controls: usize,
    /// Negative controls whose verification failed, as it must.
    pub negative_controls_caught: usize,
    /// Negative controls whose verification passed: a violation the verifier missed.
    pub negative_controls_missed: usize,
}

/// One point of a group-wide trend.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// When its snapshot was started.
    pub at: DateTime<Utc>,
    /// The snapshot.
    pub snapshot_id: String,
    /// The value (unit in the series' name).
    pub value: f64,
}

/// One point of a per-member trend.
#[derive(Debug, Clone, Serialize)]
pub struct MemberSample {
    /// When its snapshot was started.
    pub at: DateTime<Utc>,
    /// The snapshot.
    pub snapshot_id: String,
    /// The member's domain.
    pub domain: String,
    /// The value, seconds.
    pub value: f64,
}

/// Trends over the period, of consistent snapshots only, oldest first.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Trends {
    /// Group freeze window (first pause to last resume), milliseconds.
    pub freeze_window_ms: Vec<Sample>,
    /// Recovery time (RTO) per member, seconds.
    pub recovery_seconds: Vec<MemberSample>,
    /// Data loss per member, seconds.
    pub data_loss_seconds: Vec<MemberSample>,
}

/// A failed snapshot attempt or verification.
#[derive(Debug, Clone, Serialize)]
pub struct FailureRow {
    /// When the snapshot was started.
    pub at: DateTime<Utc>,
    /// The snapshot.
    pub snapshot_id: String,
    /// `snapshot`, `verification`, or `negative_control_missed`.
    pub kind: &'static str,
    /// Its first error line.
    pub first_error: String,
    /// The verification's HTML report, when there is one.
    pub report: Option<PathBuf>,
}

/// One snapshot of the history, with its verification when there is one.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The snapshot's ID.
    pub id: String,
    /// Its group.
    pub group: String,
    /// Its state (`taken`, `released`, ...).
    pub state: String,
    /// When it was started (RFC 3339).
    pub created_at: String,
    /// Milliseconds from its first pause to its last resume (none for a negative control).
    pub freeze_window_ms: Option<f64>,
    /// `NOT CONSISTENT (negative control): ...` for a negative control.
    pub negative_control: Option<String>,
    /// Milliseconds between member cuts of the negative control `--unsafe-stagger`.
    pub unsafe_stagger_ms: Option<u64>,
    /// Disk cut order of the negative control `--unsafe-disk-order`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsafe_disk_order: Option<Vec<String>>,
    /// The verification's verdict (`pass`, `fail`), when verified.
    pub verdict: Option<String>,
    /// Largest recovery time of its members, in seconds (the RTO).
    pub max_recovery_seconds: Option<f64>,
    /// Largest data loss of its members, in seconds.
    pub max_data_loss_seconds: Option<f64>,
    /// The verification's HTML report, when verified.
    pub report: Option<PathBuf>,
}

/// The report of `cat` at `now`: every group with a snapshot or a policy (or only `group`),
/// with counts, trends and failures since `since`.
pub fn build(
    cat: &Catalog,
    group: Option<&str>,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Report, ReportError> {
    let manifests = cat.list()?;
    build_from(
        cat,
        &manifests,
        &cat.verifications(&manifests),
        group,
        since,
        now,
    )
}

/// [`build`] from the manifests (oldest first) and verifications already read from `cat`.
pub fn build_from(
    cat: &Catalog,
    manifests: &[Manifest],
    verifications: &BTreeMap<String, VerifyView>,
    group: Option<&str>,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Report, ReportError> {
    let policies = policy::all(cat)?;
    let mut names: std::collections::BTreeSet<&str> =
        manifests.iter().map(|m| m.group.as_str()).collect();
    names.extend(policies.keys().map(String::as_str));
    if let Some(g) = group {
        if !names.contains(g) {
            return Err(ReportError::UnknownGroup(g.to_string()));
        }
        names.retain(|n| *n == g);
    }
    let groups = names
        .into_iter()
        .map(|g| {
            let ms: Vec<_> = manifests.iter().filter(|m| m.group == g).collect();
            let input = gather::Input {
                group: g,
                manifests: &ms,
                verifications,
                policy: policies.get(g),
                reports: &cat.dir().join("reports"),
                since,
                now,
            };
            gather::group(&input)
        })
        .collect();
    Ok(Report {
        schema: SCHEMA,
        generated_at: now,
        since,
        catalog: cat.dir().to_path_buf(),
        groups,
    })
}

/// Write `report` as `CATALOG/reports/index.html`; returns the page's path.
pub fn write_index(cat: &Catalog, report: &Report) -> Result<PathBuf, ReportError> {
    let dir = cat.dir().join("reports");
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let index = dir.join("index.html");
    let tmp = dir.join(".index.html.tmp");
    crate::catalog::replace_file(&tmp, &index, html::page(report).as_bytes())
        .map_err(|(p, source)| ReportError::Io { path: p, source })?;
    Ok(index)
}

#[cfg(test)]
mod tests;
