//! Why a backup cut, its export or its end was refused or failed; each message names the
//! thing and the fix.

use crate::catalog::CatalogError;
use crate::model::exit::{Classify, ExitCode};
use crate::model::manifest::{SnapState, TransitionError};
use crate::snapshot::SnapshotError;
use crate::snapshot::watchdog::WatchdogError;

/// A failed `backup begin`, `backup export` or `backup end`.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Planning, the group, the lock or the catalog (shared with `snapshot`).
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The catalog could not be read or written.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The watchdog could not be started or armed; nothing was frozen.
    #[error(transparent)]
    Watchdog(#[from] WatchdogError),
    /// The manifest was asked for a state change its state forbids.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// A disk cannot carry a checkpoint.
    #[error(
        "disk {target} of {domain} is {what} ({image}): backup cuts need qcow2 v3 images, which can hold persistent bitmaps; {fix}"
    )]
    Format {
        /// The member.
        domain: String,
        /// The disk.
        target: String,
        /// Its image.
        image: String,
        /// What it is instead.
        what: String,
        /// How to make it fit.
        fix: &'static str,
    },
    /// A member is on another host.
    #[error(
        "member {domain} is on {uri}: backup cuts serve their disks on unix sockets of this host, so every member must be on a local libvirt; take an overlay snapshot (`cgsnap snapshot`) of this group"
    )]
    Remote {
        /// The member.
        domain: String,
        /// Its host.
        uri: String,
    },
    /// A member already has a backup job.
    #[error(
        "member {domain} already has a backup job that cgsnap did not record: end it (`virsh domjobabort {domain}`) and run again"
    )]
    JobRunning {
        /// The member.
        domain: String,
    },
    /// The group already has a cut that was not ended.
    #[error(
        "group {group} already has {id} ({state}) not ended: end it first with `cgsnap backup end {id}` once nothing reads its exports"
    )]
    Outstanding {
        /// The group.
        group: String,
        /// The cut (or snapshot) not ended.
        id: String,
        /// Its state.
        state: SnapState,
    },
    /// The socket path would be longer than a unix socket path can be.
    #[error(
        "socket {path} is {len} bytes, more than a unix socket path may hold (107): pass a shorter --scratch-dir"
    )]
    SocketPath {
        /// The path.
        path: String,
        /// Its length.
        len: usize,
    },
    /// A file or directory of the cut could not be made or read.
    #[error("{path}: {detail}")]
    Io {
        /// The path.
        path: String,
        /// What went wrong, and the fix where known.
        detail: String,
    },
    /// A hook's staging directory cannot be used.
    #[error(
        "staging directory {path}: {detail}: give --backup-to a directory cgsnap can create and write, on a filesystem with room for a full export"
    )]
    Staging {
        /// The directory.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// The id names an overlay snapshot.
    #[error("{id} is an overlay snapshot, not a backup cut: release it with `cgsnap release {id}`")]
    NotBackup {
        /// The snapshot.
        id: String,
    },
    /// The cut is not in a state the command works on.
    #[error("backup cut {id} is {state}: {fix}")]
    State {
        /// The cut.
        id: String,
        /// Its state.
        state: SnapState,
        /// What to do instead.
        fix: String,
    },
    /// The freeze or a job start failed; what was started was ended.
    #[error("backup cut {id} failed and was {outcome}: {cause}")]
    Cut {
        /// The cut.
        id: String,
        /// How it ended.
        outcome: &'static str,
        /// The first failure.
        cause: String,
    },
    /// The freeze outlasted its budget.
    #[error(
        "backup cut {id} exceeded the freeze budget of {budget_ms} ms; the watchdog resumed the members and the cut was {outcome}: raise --freeze-budget or reduce the group"
    )]
    Budget {
        /// The cut.
        id: String,
        /// The budget.
        budget_ms: u128,
        /// How it ended.
        outcome: &'static str,
    },
    /// Ending the jobs did not finish for every member.
    #[error("backup cut {id} not fully ended: {failures}; run `cgsnap backup end {id}` again")]
    End {
        /// The cut.
        id: String,
        /// Every member that failed, `; `-separated.
        failures: String,
    },
    /// An export failed; no file of it was kept.
    #[error("export of backup cut {id} failed: {cause}; nothing of it was kept, run it again")]
    Export {
        /// The cut.
        id: String,
        /// The first disk that failed, and why.
        cause: String,
    },
    /// The scratch guard ended the cut's jobs while it was exported; the guests wrote on.
    #[error(
        "export of backup cut {id} stopped: {trip}; nothing of the export was kept and the cut is no base for an incremental: give the scratch files room (`--scratch-dir` on a larger filesystem, or a lower --min-free) and cut again"
    )]
    ScratchGuard {
        /// The cut.
        id: String,
        /// What the guard saw and did (boxed: the largest variant otherwise).
        trip: Box<super::guard::Trip>,
    },
}

impl Classify for BackupError {
    fn exit_code(&self) -> ExitCode {
        match self {
            BackupError::Snapshot(e) => e.exit_code(),
            BackupError::Catalog(e) => e.exit_code(),
            BackupError::Watchdog(e) => e.exit_code(),
            BackupError::Transition(e) => e.exit_code(),
            BackupError::Format { .. }
            | BackupError::Remote { .. }
            | BackupError::JobRunning { .. }
            | BackupError::SocketPath { .. }
            | BackupError::Staging { .. }
            | BackupError::State { .. } => ExitCode::Precondition,
            BackupError::Outstanding { .. } => ExitCode::Outstanding,
            BackupError::Io { .. } => ExitCode::Internal,
            BackupError::Export { .. } | BackupError::ScratchGuard { .. } => ExitCode::ExportFailed,
            BackupError::NotBackup { .. } => ExitCode::Usage,
            BackupError::Cut { .. } | BackupError::End { .. } => ExitCode::Hypervisor,
            BackupError::Budget { .. } => ExitCode::FreezeBudget,
        }
    }
}
