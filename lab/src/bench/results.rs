//! What `cgsnap bench` measures and writes to `results.json`: one [`Row`] per configuration,
//! with our figures, the baseline's and their ratio, and the machine they ran on.
//!
//! Invariant: every figure is a summary of rounds of this run; ratios compare medians of the
//! same rounds (see the parent module).

use super::stats::Summary;
use cgsnap::snapshot::protocol::Resume;
use serde::Serialize;

/// One benchmark configuration: group size, disks per member, disk size and bytes written.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Config {
    pub vms: usize,
    pub disks: usize,
    pub disk_size: u64,
    pub written: u64,
}

/// Per-phase timings of our snapshots.
#[derive(Debug, Serialize)]
pub struct Phases {
    pub preflight_ms: Summary,
    pub pause_ms: Summary,
    pub snapshot_ms: Summary,
    pub resume_ms: Summary,
    pub release_ms: Summary,
}

/// CPU work inside our freeze windows (see [`cpu`]).
#[derive(Debug, Serialize)]
pub struct WindowCpu {
    /// CPU time of libvirtd/virtqemud and the QEMU processes (without vCPU threads) inside
    /// each window.
    pub hypervisor_ms: Summary,
    /// CPU time the guests ran inside each window (already-resumed members, early resume).
    pub guest_ms: Summary,
    /// The same divided by the group size.
    pub per_member_ms: Summary,
    /// Share of the host's CPU capacity busy during the window.
    pub busy_pct: Summary,
    /// Median hypervisor CPU time divided by the host's cores: while that work happens inside
    /// the window, no window on this host can be shorter.
    pub bound_ms: f64,
}

/// Our snapshots under another resume policy, measured in the same rounds as the row's.
#[derive(Debug, Serialize)]
pub struct Alternative {
    pub resume: Resume,
    pub window_ms: Summary,
    pub member_freeze_ms: Summary,
    pub phases: Phases,
    pub window_cpu: Option<WindowCpu>,
    /// Median window of this policy / median window of the row's policy.
    pub ratio_to_ours: f64,
}

/// One configuration's results.
#[derive(Debug, Serialize)]
pub struct Row {
    pub config: Config,
    /// Resume policy of the `ours_*` figures.
    pub resume: Resume,
    pub ours_window_ms: Summary,
    pub ours_member_freeze_ms: Summary,
    pub ours_phases: Phases,
    pub ours_window_cpu: Option<WindowCpu>,
    pub baseline_window_ms: Summary,
    pub baseline_member_freeze_ms: Summary,
    /// Median freeze window, ours / baseline.
    pub ratio: f64,
    pub alternatives: Vec<Alternative>,
    /// Backup cuts of the same guests in the same rounds (`--backup`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupRow>,
}

/// A configuration's backup cuts next to its overlay snapshots.
#[derive(Debug, Serialize)]
pub struct BackupRow {
    pub window_ms: Summary,
    /// Median backup-cut window / median overlay-snapshot window (ours).
    pub ratio_to_ours: f64,
    /// Bytes an overlay cycle's release merged back (a backup cut merges nothing).
    pub overlay_merge_bytes: Summary,
}

/// A whole run, as written to `results.json`.
#[derive(Debug, Serialize)]
pub struct Results {
    pub machine: serde_json::Value,
    /// The guests were persistent domains (`--persistent`), else transient.
    pub persistent: bool,
    pub rounds: usize,
    /// Resume policies of our snapshots in this run (the first is "ours").
    pub resume: Vec<Resume>,
    pub rows: Vec<Row>,
    /// Median window at the largest over the smallest disk size / usage, minus 1, in percent.
    pub size_invariance_pct: Option<f64>,
    pub usage_invariance_pct: Option<f64>,
    /// The same on the ratio ours/baseline: the host's speed drifts over minutes on a shared
    /// machine, and the baseline measured in the same rounds cancels that drift.
    pub size_invariance_vs_baseline_pct: Option<f64>,
    pub usage_invariance_vs_baseline_pct: Option<f64>,
    /// Full and incremental exports (`--backup --export-gib N`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_exports: Option<super::backup::ExportResults>,
}
