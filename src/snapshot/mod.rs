//! `cgsnap snapshot`: lock → resolve → preflight → record → pre-create → freeze/snap/thaw →
//! record, with rollback on every failure.
//!
//! Invariants:
//! - Nothing is paused before the group lock is held, the plan is complete, the manifest is on
//!   disk (state `pending`) and the watchdog is ready.
//! - On any failure after the freeze, every member is resumed (by the protocol, else by the
//!   watchdog), overlays already in use are committed back, unused pre-created overlays are
//!   deleted, and the manifest says `aborted` (clean) or `failed` (release still needed).
//! - A group never gets a second snapshot while one is outstanding.
//!
//! The steps live in `take.rs`, the read-only checks in `plan.rs` (shared with `cgsnap
//! check`), overlay pre-creation in `precreate.rs` and every undo in `rollback.rs`.

pub mod disk_order;
mod plan;
mod precreate;
pub mod preflight;
pub mod protocol;
mod rollback;
mod take;
pub mod tuning;
pub mod watchdog;

pub use plan::plan;
pub(crate) use rollback::{not_known_running, roll_back_into};
pub use take::{claim, take};
pub(crate) use take::{failure_cause, record_timings};

use crate::catalog::{Catalog, CatalogError, SnapState, TransitionError};
use crate::group::GroupError;
use crate::hypervisor::Host;
use crate::model::exit::{Classify, ExitCode};
use crate::release;
use crate::snapshot::watchdog::WatchdogError;
use preflight::PreflightError;
use protocol::Resume;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why a snapshot (or its planning) was refused or failed; each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The group name is invalid or a member cannot be resolved.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// The catalog could not be locked, read or written.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A member or disk is not fit to be snapshotted.
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// The watchdog could not be started or armed; nothing was frozen.
    #[error(transparent)]
    Watchdog(#[from] WatchdogError),
    /// The manifest was asked for a state change its state forbids.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(
        "group {group} already has an unreleased snapshot {id} ({state}): release it first with `cgsnap release {id}` once no backup job reads its images any more (the job that took it releases it with its own `hook post --token`)"
    )]
    /// The group already has an unreleased snapshot.
    Outstanding {
        /// The group.
        group: String,
        /// The unreleased snapshot.
        id: String,
        /// Its state.
        state: SnapState,
    },
    #[error(
        "member {domain} ({uri}) is in snapshot {id} of group {group}, not yet released ({state}): a VM in several groups can be in one unreleased snapshot at a time; release it first with `cgsnap release {id}`"
    )]
    /// A member is in another group's unreleased snapshot.
    MemberHeld {
        /// The member's domain.
        domain: String,
        /// Its host.
        uri: String,
        /// The snapshot holding it.
        id: String,
        /// That snapshot's group.
        group: String,
        /// That snapshot's state.
        state: SnapState,
    },
    #[error(
        "--unsafe-disk-order names disk {target}, which no member of group {group} has: list targets as shown by `virsh domblklist`"
    )]
    /// `--unsafe-disk-order` names a disk no member has.
    UnknownTarget {
        /// The group.
        group: String,
        /// The unknown disk target.
        target: String,
    },
    #[error("cannot pre-create overlay {path}: {detail}; nothing was frozen")]
    /// An overlay could not be pre-created (before anything was frozen).
    Precreate {
        /// The overlay.
        path: String,
        /// What went wrong.
        detail: String,
    },
    #[error("snapshot {id} failed and was {outcome}: {cause}")]
    /// A pause, snapshot or resume failed; the snapshot was rolled back as far as possible.
    Protocol {
        /// The snapshot.
        id: String,
        /// How it ended: rolled back, or left for `cgsnap release`.
        outcome: &'static str,
        /// The first failure (and any member left paused).
        cause: String,
    },
    #[error(
        "snapshot {id} exceeded the freeze budget of {budget_ms} ms; the watchdog resumed the members and the snapshot was {outcome}: raise --freeze-budget or reduce the group"
    )]
    /// The freeze outlasted its budget and the watchdog resumed the members.
    Budget {
        /// The snapshot.
        id: String,
        /// The freeze budget, in milliseconds.
        budget_ms: u128,
        /// How it ended: rolled back, or left for `cgsnap release`.
        outcome: &'static str,
    },
}

impl Classify for SnapshotError {
    fn exit_code(&self) -> ExitCode {
        match self {
            SnapshotError::Group(e) => e.exit_code(),
            SnapshotError::Catalog(e) => e.exit_code(),
            SnapshotError::Preflight(e) => e.exit_code(),
            SnapshotError::Watchdog(e) => e.exit_code(),
            SnapshotError::Transition(e) => e.exit_code(),
            SnapshotError::Outstanding { .. } | SnapshotError::MemberHeld { .. } => {
                ExitCode::Outstanding
            }
            SnapshotError::Precreate { .. } => ExitCode::Precondition,
            SnapshotError::UnknownTarget { .. } => ExitCode::Usage,
            SnapshotError::Protocol { .. } => ExitCode::Hypervisor,
            SnapshotError::Budget { .. } => ExitCode::FreezeBudget,
        }
    }
}

/// How [`take`] snapshots a group (built from the command line by [`tuning::snap_options`]).
pub struct Options {
    /// The group to snapshot.
    pub group: String,
    /// Longest time a member may stay paused before the watchdog resumes it.
    pub freeze_budget: Duration,
    /// Directory for overlays; `None`: next to each image.
    pub overlay_dir: Option<PathBuf>,
    /// Free bytes required in each overlay directory.
    pub min_free: u64,
    /// Create overlays with qemu-img before the freeze (local hosts only) and let libvirt reuse them.
    pub precreate: bool,
    /// The cgsnap binary, started as the watchdog.
    pub exe: PathBuf,
    /// How a rollback commits overlays back.
    pub release: release::Options,
    /// Opens a dedicated connection per member for the freeze (libvirtd serves at most
    /// `max_client_requests`, default 5, concurrent calls per connection). `None`: share.
    pub connect_each: Option<Opener>,
    /// NEGATIVE CONTROL for testing verifiers: snapshot members one after the other, this far
    /// apart, without the group freeze. Never a consistent cut.
    pub unsafe_stagger: Option<Duration>,
    /// NEGATIVE CONTROL for testing verifiers: cut these disk targets one by one, in order
    /// (then the rest), this far apart, without pausing. Never a consistent cut.
    pub unsafe_disk_order: Option<(Vec<String>, Duration)>,
    /// When members are resumed (see the [`protocol`] module docs).
    pub resume: Resume,
    /// The backup job taking the snapshot (`hook pre --token`), recorded in the manifest from
    /// its first write so that only that job's `hook post --token` releases it.
    pub hook_token: Option<String>,
}

/// Opens a new connection to the host of a URI.
pub type Opener = Arc<dyn Fn(&str) -> crate::hypervisor::HvResult<Arc<dyn Host>> + Send + Sync>;

/// Path of the manifest for display.
pub fn manifest_path(cat: &Catalog, id: &str) -> PathBuf {
    Path::new(cat.dir())
        .join("snapshots")
        .join(format!("{id}.json"))
}

#[cfg(test)]
mod tests;
