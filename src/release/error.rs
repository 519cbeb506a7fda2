//! Why a member's release stopped, each with the fix it names and its exit code.

use crate::domxml;
use crate::hypervisor::{DomState, HvError};
use crate::model::exit::{Classify, ExitCode};

/// Why one member's release stopped; its disks keep their data either way.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// A commit made no progress towards ready for the whole timeout and was cancelled.
    #[error(
        "commit of {domain}/{target} did not converge: no progress towards ready for {secs:.1} s ({cur}/{end} bytes); the disk stays on its overlay, nothing is lost: retry `cgsnap release` when the guest writes less, or raise --timeout"
    )]
    NotConverged {
        /// The member's domain name.
        domain: String,
        /// Disk target, e.g. vda.
        target: String,
        /// The progress timeout that passed, in seconds.
        secs: f64,
        /// Bytes the commit had copied when it was cancelled.
        cur: u64,
        /// Bytes it had to copy then (grows while the guest writes).
        end: u64,
    },
    /// A commit job ended (failed or cancelled) before the disk was switched back to its image.
    #[error(
        "commit of {domain}/{target} ended without switching the disk back to its image (the job failed, e.g. the image's filesystem ran out of room, or someone cancelled it); the disk stays on its overlay {overlay}, nothing is lost: see libvirtd's log, then run release again"
    )]
    CommitEnded {
        /// The member's domain name.
        domain: String,
        /// Disk target, e.g. vda.
        target: String,
        /// Path of the overlay the disk stays on.
        overlay: String,
    },
    /// The member is not running (paused, suspended, or shut off with a disk an offline merge
    /// cannot handle), so its commits cannot run.
    #[error(
        "member {domain} is {state}: overlays can only be committed while it runs; {}",
        not_running_fix(domain, *state)
    )]
    NotRunning {
        /// The member's domain name.
        domain: String,
        /// The state it is in.
        state: DomState,
    },
    /// The member is shut off with a managed save image, whose saved state writes to its
    /// overlays.
    #[error(
        "member {domain} is shut off with a managed save image, whose saved state writes to the overlays: start it (`virsh start {domain}` restores it) and run release again; removing the save image would discard what the guest had not yet written"
    )]
    ManagedSave {
        /// The member's domain name.
        domain: String,
    },
    /// A disk is back on its image, but no release recorded switching it there.
    #[error(
        "disk {target} of {domain} is back on its image, but no release switched it (the VM recreated or redefined from its old definition?): its overlay {overlay} holds data written after the snapshot and is kept; if that data is not needed, delete the overlay, then run release again"
    )]
    NotSwitchedByRelease {
        /// The member's domain name.
        domain: String,
        /// Disk target, e.g. vda.
        target: String,
        /// Path of the overlay that is kept.
        overlay: String,
    },
    /// An overlay no disk uses is still open in some process, so it is not deleted.
    #[error(
        "overlay {overlay} of {domain} is no longer used by the domain, but a process still has it open; it is kept: run release again once that process is gone"
    )]
    HeldOpen {
        /// The member's domain name.
        domain: String,
        /// Path of the overlay that is kept.
        overlay: String,
    },
    /// A disk runs a block job that is not our active commit.
    #[error(
        "disk {target} of {domain} runs a block job of another kind ({job}), not a commit of ours: let it finish or abort it (`virsh blockjob {domain} {target} --abort`), then run release again"
    )]
    ForeignJob {
        /// The member's domain name.
        domain: String,
        /// Disk target, e.g. vda.
        target: String,
        /// The kind of block job libvirt reports.
        job: String,
    },
    /// Reading or writing the catalog (manifest, ledger) failed.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    /// A disk is on neither its snapshot overlay nor its image.
    #[error(
        "disk {target} of {domain} is now on {actual}, not on the snapshot overlay {overlay} nor its image: its chain was changed by someone else; merge it by hand"
    )]
    ChainChanged {
        /// The member's domain name.
        domain: String,
        /// Disk target, e.g. vda.
        target: String,
        /// Path the disk is on now.
        actual: String,
        /// Path of the snapshot overlay.
        overlay: String,
    },
    /// An overlay's backing file is no longer the snapshot's image.
    #[error(
        "overlay {overlay} of {domain}/{target} now lies over {below}, not over the snapshot's image {image}: someone changed its chain, and a commit would write into {below}; merge it by hand"
    )]
    BackingChanged {
        /// The member's domain name.
        domain: String,
        /// Disk target, e.g. vda.
        target: String,
        /// Path of the snapshot overlay.
        overlay: String,
        /// Path of the file the overlay now lies over.
        below: String,
        /// Path of the image the manifest recorded.
        image: String,
    },
    /// A commit still runs after the wait for it ended.
    #[error(
        "commit of {domain}/{target} still runs after its wait ended; nothing is lost: run release again"
    )]
    StillCommitting {
        /// The member's domain name.
        domain: String,
        /// Disk target, e.g. vda.
        target: String,
    },
    /// A deleted member's overlay could not be merged offline.
    #[error(
        "member {domain} no longer exists and its overlay {overlay} cannot be merged offline ({detail}); it is kept: {fix}"
    )]
    VanishedMerge {
        /// The member's domain name.
        domain: String,
        /// Path of the overlay that is kept.
        overlay: String,
        /// Why the merge failed, one line.
        detail: String,
        /// What to do about it.
        fix: String,
    },
    /// A deleted member's overlay is used by another domain (renamed?).
    #[error(
        "member {domain} no longer exists, but domain {user} uses its overlay {overlay} (renamed?): rename it back (`virsh domrename {user} {domain}`, start it) and run release again"
    )]
    VanishedButUsed {
        /// The member's domain name.
        domain: String,
        /// Path of the overlay that is kept.
        overlay: String,
        /// Name of the domain that uses the overlay.
        user: String,
    },
    /// A shut-off member's overlay could not be merged offline.
    #[error(
        "member {domain} is shut off and its overlay {overlay} cannot be merged offline ({detail}); it is kept: start it (`virsh start {domain}`) and run release again"
    )]
    OfflineMerge {
        /// The member's domain name.
        domain: String,
        /// Path of the overlay that is kept.
        overlay: String,
        /// Why the merge failed, one line.
        detail: String,
    },
    /// The member was started while its overlays were merged offline.
    #[error(
        "member {domain} was started while its overlays were merged offline; nothing is lost: run release again (it now commits online)"
    )]
    StartedDuringRelease {
        /// The member's domain name.
        domain: String,
    },
    /// The thread releasing the member panicked.
    #[error(
        "release of member {domain} ({uri}) stopped on an internal error (its thread panicked); what it finished is recorded in the manifest: run release again, and report this"
    )]
    Panicked {
        /// The member's domain name.
        domain: String,
        /// libvirt URI of the member's host.
        uri: String,
    },
    /// An unused overlay file could not be deleted.
    #[error("cannot remove overlay {path}: {source}")]
    Remove {
        /// Path of the overlay file.
        path: String,
        /// The error from removing it.
        #[source]
        source: std::io::Error,
    },
    /// A domain XML could not be read.
    #[error(transparent)]
    Xml(#[from] domxml::XmlError),
    /// A libvirt call failed.
    #[error(transparent)]
    Hv(#[from] HvError),
}

/// What brings a member that is not running back to where its commits can run.
pub(super) fn not_running_fix(domain: &str, state: DomState) -> String {
    match state {
        DomState::ShutOff => format!("start it (`virsh start {domain}`) and run release again"),
        DomState::PausedOther => format!(
            "resume it once the cause is fixed (`virsh resume {domain}`; a VM paused on an I/O error usually has a full filesystem under its overlays: free space there first) and run release again"
        ),
        _ => format!(
            "bring it back to running (`virsh dompmwakeup {domain}` for a suspended guest, else `virsh start {domain}`) and run release again"
        ),
    }
}

impl Classify for ReleaseError {
    fn exit_code(&self) -> ExitCode {
        match self {
            ReleaseError::Xml(_) => ExitCode::Malformed,
            ReleaseError::Catalog(e) => e.exit_code(),
            // A member that vanished in the middle of its release: the next run merges its
            // overlays offline, so this is a release to retry, not an unknown domain.
            _ => ExitCode::ReleaseIncomplete,
        }
    }
}
