//! The `cgsnap` command line's grammar: every command, flag and default (clap derive).
//!
//! Invariant: this is the whole user-facing surface; a flag's doc comment is its `--help` text.

use cgsnap::catalog;
use cgsnap::duration;
use cgsnap::snapshot::tuning::SnapTuning;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "cgsnap",
    version,
    about = "Crash-consistent snapshots of groups of libvirt/QEMU VMs"
)]
pub struct Cli {
    /// libvirt URI of a host holding group members (repeatable).
    /// Default: $LIBVIRT_DEFAULT_URI, else qemu:///system.
    #[arg(long = "connect", short = 'c', global = true, value_name = "URI")]
    pub connect: Vec<String>,
    /// Catalog directory for manifests and locks.
    #[arg(long, global = true, env = "CGSNAP_CATALOG", default_value = catalog::DEFAULT_DIR)]
    pub catalog: PathBuf,
    /// Directory for `cgsnap.prom` (node_exporter textfile collector), re-rendered after every
    /// snapshot, release, hook and verify. Default: CATALOG/metrics.
    #[arg(long, global = true, env = "CGSNAP_METRICS_DIR", value_name = "DIR")]
    pub metrics_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Define consistency groups (stored in each domain's libvirt metadata).
    Group {
        #[command(subcommand)]
        cmd: crate::group_cmd::GroupCmd,
    },
    /// Take a crash-consistent snapshot of every disk of every member of GROUP.
    Snapshot(SnapArgs),
    /// Check that GROUP can be snapshotted now (everything `snapshot` checks before it
    /// freezes), without freezing or writing anything.
    Check(crate::check::CheckArgs),
    /// Backup cuts through libvirt's backup API: NBD exports, full and incremental exports.
    Backup {
        #[command(subcommand)]
        cmd: crate::backup_cmd::BackupCmd,
    },
    /// Commit a snapshot's overlays back into their images and remove them.
    Release(ReleaseArgs),
    /// List the snapshots in the catalog with their states.
    List {
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print one manifest as JSON.
    Show { id: String },
    /// Entry points for backup schedulers: pre = snapshot (or, with --backup-to, a backup cut
    /// exported into a staging directory), post = release (or end what pre left).
    Hook {
        phase: Phase,
        #[command(flatten)]
        snap: SnapTuning,
        #[command(flatten)]
        backup: crate::backup_cmd::HookBackupArgs,
        #[arg(long)]
        group: String,
        /// Identifies one backup job, the same for its pre and post, different for concurrent
        /// jobs (e.g. a job ID): pre records it, post releases only that job's snapshots.
        /// Default: $CGSNAP_HOOK_TOKEN. Without a token post releases every outstanding
        /// snapshot of the group, unsafe while another job of the group may be running.
        #[arg(long, value_name = "T")]
        token: Option<String>,
        /// Longest time one disk's commit may go without progress towards ready (post).
        #[arg(long, default_value = "300s", value_parser = duration::parse)]
        timeout: Duration,
    },
    /// Build a demo group of small VMs, snapshot and release it, tear it down.
    Demo(cgsnap_lab::demo::DemoArgs),
    /// Restore a held snapshot into a sandbox and verify the databases recovered.
    Verify(crate::verify_cmd::VerifyArgs),
    /// DR compliance per group: status against its policy, newest verified restore point,
    /// counts, trends and failures (text or JSON, and CATALOG/reports/index.html).
    Report {
        /// Only this group.
        #[arg(long)]
        group: Option<String>,
        /// Period of the counts, trends and failures (the status looks at every snapshot).
        #[arg(long, default_value = "30d", value_parser = duration::parse)]
        since: Duration,
        /// Print the report as JSON (schema cgsnap.report/1, docs/report.md).
        #[arg(long)]
        json: bool,
    },
    /// Remove old finished snapshots (aborted, released) and their reports from the catalog.
    Prune(crate::catalog_cmd::PruneArgs),
    /// Write METRICS_DIR/cgsnap.prom (Prometheus textfile) from the catalog and print it.
    Metrics,
    /// Reproducible testbeds (PostgreSQL VMs with workloads).
    Testbed {
        #[command(subcommand)]
        cmd: cgsnap_lab::testbed::TestbedCmd,
    },
    /// Write (seq, timestamp) beacons to every member database in order.
    Beacon(cgsnap_lab::testbed::BeaconArgs),
    /// Benchmark the freeze window against the sequential virsh baseline (creates its own VMs).
    Bench(cgsnap_lab::bench::BenchArgs),
    #[command(name = "__watchdog", hide = true)]
    Watchdog,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Phase {
    Pre,
    Post,
}

#[derive(Args)]
pub struct SnapArgs {
    pub group: String,
    #[command(flatten)]
    pub tuning: SnapTuning,
    /// Print the manifest as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ReleaseArgs {
    /// Snapshot ID (see `cgsnap list`).
    pub id: Option<String>,
    /// Release the newest snapshot of this group instead.
    #[arg(long, conflicts_with = "id")]
    pub group: Option<String>,
    /// Longest time one disk's commit may go without progress towards ready (a steady copy
    /// of a large overlay may take longer).
    #[arg(long, default_value = "300s", value_parser = duration::parse)]
    pub timeout: Duration,
    /// Limit each commit's copy rate to this many bytes/s (0: unlimited).
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub bandwidth: u64,
    #[arg(long)]
    pub json: bool,
}
