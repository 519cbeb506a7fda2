//! The snapshot tuning every snapshot-taking command shares (`snapshot`, `hook pre`, `demo`,
//! `bench`), and how it becomes [`snapshot::Options`].
//!
//! Invariant: the negative controls (`unsafe_stagger`, `unsafe_disk_order`) are only ever set
//! from these explicit flags, never by a default; with the `clap` feature each field is also a
//! command-line flag whose help is the field's doc.

use crate::hypervisor::Host;
use crate::model::exit::Failure;
use crate::snapshot::protocol::Resume;
use crate::{release, snapshot};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Snapshot flags shared by every command that takes a snapshot.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct SnapTuning {
    /// Longest time any member may stay paused before the watchdog resumes it.
    #[cfg_attr(feature = "clap", arg(long, default_value = "2s", value_parser = crate::model::duration::parse))]
    pub freeze_budget: Duration,
    /// Directory for overlays (default: next to each image).
    #[cfg_attr(feature = "clap", arg(long))]
    pub overlay_dir: Option<PathBuf>,
    /// Free bytes required in each overlay directory.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = crate::snapshot::preflight::DEFAULT_MIN_FREE))]
    pub min_free: u64,
    /// Let libvirt create the overlays inside the freeze instead of pre-creating them.
    #[cfg_attr(feature = "clap", arg(long))]
    pub no_precreate: bool,
    /// Use one libvirt connection for all members instead of one per member.
    #[cfg_attr(feature = "clap", arg(long))]
    pub shared_connection: bool,
    /// TESTING ONLY (negative control): snapshot members one after the other, MS apart,
    /// without the group freeze. The result is NOT crash-consistent across members.
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "MS", conflicts_with = "unsafe_disk_order")
    )]
    pub unsafe_stagger: Option<u64>,
    /// TESTING ONLY (negative control): without pausing, cut these disks one by one in this
    /// order (e.g. `vdc,vdb`: WAL before data), then the others. NOT crash-consistent at all.
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "TARGETS", value_delimiter = ',')
    )]
    pub unsafe_disk_order: Option<Vec<String>>,
    /// Time between two disks of `--unsafe-disk-order`.
    #[cfg_attr(
        feature = "clap",
        arg(
            long,
            value_name = "MS",
            default_value_t = 1000,
            requires = "unsafe_disk_order"
        )
    )]
    pub unsafe_disk_gap: u64,
    /// When members are resumed: `together`, all once every snapshot is done (shorter group
    /// window when the guests keep the CPUs busy); `early`, each once its own snapshot is done.
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = Resume::Together))]
    pub resume: Resume,
}

/// The snapshot options for `group` from `t`; `rel_timeout` bounds a rollback's release.
pub fn snap_options(
    t: &SnapTuning,
    group: &str,
    rel_timeout: Duration,
) -> Result<snapshot::Options, Failure> {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::internal(format!("cannot find own binary: {e}")))?;
    Ok(snapshot::Options {
        group: group.to_string(),
        freeze_budget: t.freeze_budget,
        overlay_dir: t.overlay_dir.clone(),
        min_free: t.min_free,
        precreate: !t.no_precreate,
        exe,
        release: release::Options {
            timeout: rel_timeout,
            ..Default::default()
        },
        unsafe_stagger: t.unsafe_stagger.map(Duration::from_millis),
        unsafe_disk_order: t
            .unsafe_disk_order
            .clone()
            .map(|o| (o, Duration::from_millis(t.unsafe_disk_gap))),
        resume: t.resume,
        hook_token: None,
        connect_each: if t.shared_connection {
            None
        } else {
            Some(Arc::new(|uri: &str| {
                crate::hypervisor::libvirt::LibvirtHost::open(uri)
                    .map(|h| Arc::new(h) as Arc<dyn Host>)
            }))
        },
    })
}

/// Release options with `timeout` per commit.
pub fn release_options(timeout: Duration) -> release::Options {
    release::Options {
        timeout,
        ..Default::default()
    }
}
