//! `cgsnap backup begin|export|end`: consistent cuts through libvirt's backup API.
//!
//! Invariant: each prints its result only once the library call returned; a failure prints
//! nothing here (the caller prints its one error line).

use cgsnap::backup;
use cgsnap::catalog::Catalog;
use cgsnap::duration;
use cgsnap::events::Events;
use cgsnap::exit::Failure;
use cgsnap::hypervisor::pool::Ctx;
use cgsnap::model::manifest::Manifest;
use cgsnap::snapshot::protocol::Resume;
use cgsnap::snapshot::tuning::{SnapTuning, snap_options};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Cut GROUP consistently and serve every disk over NBD, the disk chains untouched.
    Begin(BeginArgs),
    /// Read a cut's disks into qcow2 files under DIR (by their absolute image paths).
    Export(ExportArgs),
    /// End a cut's backup jobs and remove its scratch files.
    End {
        /// The cut (see `cgsnap list`).
        id: String,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct BeginArgs {
    pub group: String,
    /// Read only the blocks changed since the group's last exported cut (falls back to a full
    /// cut, saying why, when that cut cannot be a sound base).
    #[arg(long)]
    pub incremental: bool,
    /// With --incremental: take a full cut instead once the chain of the base holds N cuts,
    /// its full one included (bounds what a restore reads; 1 = always full).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), requires = "incremental")]
    pub full_every: Option<u64>,
    /// Directory for the NBD sockets and scratch files (QEMU must be able to reach it).
    /// Default: /var/tmp/cgsnap.
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// Longest time any member may stay paused before the watchdog resumes it.
    #[arg(long, default_value = "2s", value_parser = duration::parse)]
    pub freeze_budget: Duration,
    /// Free bytes required in the scratch directory (scratch files grow with what the guests
    /// overwrite while the cut is read).
    #[arg(long, default_value_t = cgsnap::snapshot::preflight::DEFAULT_MIN_FREE)]
    pub min_free: u64,
    /// Use one libvirt connection for all members instead of one per member.
    #[arg(long)]
    pub shared_connection: bool,
    /// When members are resumed (see `cgsnap snapshot --help`).
    #[arg(long, value_enum, default_value_t = Resume::Together)]
    pub resume: Resume,
    /// Print the manifest as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ExportArgs {
    /// The cut (see `cgsnap list`).
    pub id: String,
    /// Directory to write the disks under.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Parallel NBD connections per disk.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Free bytes the scratch filesystem must keep while the export reads: below it every job
    /// of the cut is ended (the guests write on) and the export fails with exit 13. Default:
    /// the cut's `backup begin --min-free`.
    #[arg(long, value_name = "BYTES")]
    pub min_free: Option<u64>,
    /// Print the manifest as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The backup-cut mode of `cgsnap hook pre`.
#[derive(Args)]
pub struct HookBackupArgs {
    /// pre: take a backup cut instead of an overlay snapshot, export it into DIR/ID (the
    /// directory the backup tool reads) and end its jobs; incremental to the last cut
    /// exported there when that is sound. The disk chains are never changed.
    #[arg(long, value_name = "DIR")]
    pub backup_to: Option<PathBuf>,
    /// With --backup-to: take a full cut once the chain holds N cuts, its full one included
    /// (1 = always full).
    #[arg(long, value_name = "N", default_value_t = cgsnap::hook::backup::DEFAULT_FULL_EVERY as u64, requires = "backup_to", value_parser = clap::value_parser!(u64).range(1..))]
    pub full_every: u64,
    /// With --backup-to: directory for the NBD sockets and scratch files.
    /// Default: /var/tmp/cgsnap.
    #[arg(long, value_name = "DIR", requires = "backup_to")]
    pub scratch_dir: Option<PathBuf>,
    /// With --backup-to: parallel NBD connections per disk.
    #[arg(long, default_value_t = 4, requires = "backup_to")]
    pub workers: usize,
}

/// The options of `hook pre --backup-to`: the hook's snapshot tuning (its freeze budget,
/// min free space, connections and resume policy), incremental within the chain limit.
pub fn hook_options(
    t: &SnapTuning,
    a: &HookBackupArgs,
    group: &str,
) -> Result<cgsnap::hook::backup::Options, Failure> {
    if t.overlay_dir.is_some() || t.unsafe_stagger.is_some() || t.unsafe_disk_order.is_some() {
        return Err(Failure::usage(
            "--overlay-dir, --unsafe-stagger and --unsafe-disk-order apply to overlay snapshots, not to --backup-to: drop them (the scratch files go to --scratch-dir)",
        ));
    }
    let tuning = SnapTuning {
        no_precreate: true,
        ..t.clone()
    };
    Ok(cgsnap::hook::backup::Options {
        begin: backup::Options {
            snap: snap_options(&tuning, group, Duration::from_secs(300))?,
            scratch_dir: a
                .scratch_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(backup::prepare::DEFAULT_SCRATCH)),
            incremental: true,
            rules: backup::base::Rules {
                full_every: usize::try_from(a.full_every).ok(),
                export_under: None,
            },
        },
        staging: a.backup_to.clone().unwrap_or_default(),
        workers: a.workers.max(1),
    })
}

/// `cgsnap backup ...`.
pub fn run(ctx: &Ctx, cat: &Catalog, cmd: &BackupCmd, ev: Events) -> Result<(), Failure> {
    match cmd {
        BackupCmd::Begin(a) => {
            let m = backup::begin(
                &ctx.hosts()?,
                cat,
                &begin_options(a)?,
                chrono::Utc::now(),
                ev,
            )?;
            print(&m, a.json)
        }
        BackupCmd::Export(a) => {
            let how = backup::export::Reading {
                workers: a.workers,
                min_free: a.min_free,
            };
            let m = backup::export::export(&ctx.pool, cat, &a.id, &a.to, how, ev)?;
            print(&m, a.json)
        }
        BackupCmd::End { id, json } => {
            let m = backup::end(&ctx.pool, cat, id)?;
            print(&m, *json)
        }
    }
}

/// The options of `backup begin`: the snapshot's tuning without overlays or controls.
pub fn begin_options(a: &BeginArgs) -> Result<backup::Options, Failure> {
    let tuning = SnapTuning {
        freeze_budget: a.freeze_budget,
        overlay_dir: None,
        min_free: a.min_free,
        no_precreate: true,
        shared_connection: a.shared_connection,
        unsafe_stagger: None,
        unsafe_disk_order: None,
        unsafe_disk_gap: 1000,
        resume: a.resume,
    };
    Ok(backup::Options {
        snap: snap_options(&tuning, &a.group, Duration::from_secs(300))?,
        scratch_dir: a
            .scratch_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(backup::prepare::DEFAULT_SCRATCH)),
        incremental: a.incremental,
        rules: backup::base::Rules {
            full_every: a.full_every.and_then(|n| usize::try_from(n).ok()),
            export_under: None,
        },
    })
}

fn print(m: &Manifest, json: bool) -> Result<(), Failure> {
    if json {
        println!("{}", Failure::json(m)?);
        return Ok(());
    }
    for line in summary(m) {
        println!("{line}");
    }
    Ok(())
}

/// What the commands print: the cut, its mode (and why full), each disk's NBD export.
pub fn summary(m: &Manifest) -> Vec<String> {
    let cp = m
        .consistency_point
        .map(|c| c.to_rfc3339())
        .unwrap_or_else(|| "-".into());
    let Some(b) = &m.backup else {
        return vec![format!(
            "snapshot {} of group {}: {}",
            m.id, m.group, m.state
        )];
    };
    let mode = match (&b.since, &b.full_reason) {
        (Some(since), _) => format!("incremental since {since}"),
        (None, Some(why)) => format!("full ({why})"),
        (None, None) => "full".into(),
    };
    let mut out = vec![format!(
        "backup cut {} of group {}: {} ({mode}; freeze window {:.1} ms, consistency point {cp})",
        m.id,
        m.group,
        m.state,
        m.freeze_window_ms.unwrap_or_default()
    )];
    if let Some(e) = &b.export {
        out.push(format!(
            "  exported to {}: {} MiB read, {} MiB zeroed in {:.1} s",
            e.dir,
            e.bytes_read >> 20,
            e.bytes_zeroed >> 20,
            e.seconds
        ));
    }
    if m.state == cgsnap::catalog::SnapState::Taken {
        for mem in &b.members {
            for d in &mem.disks {
                let ctx = d.dirty_context.as_deref().unwrap_or("base:allocation");
                out.push(format!(
                    "  {}/{}: {} [{ctx}]",
                    mem.domain, d.target, d.nbd_uri
                ));
            }
        }
    }
    out
}
