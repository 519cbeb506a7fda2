//! Why a member's release stopped, each with the fix it names and its exit code.

use crate::domxml;
use crate::hypervisor::{DomState, HvError};
use crate::model::exit::{Classify, ExitCode};

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(
        "commit of {domain}/{target} did not converge: no progress towards ready for {secs:.1} s ({cur}/{end} bytes); the disk stays on its overlay, nothing is lost: retry `cgsnap release` when the guest writes less, or raise --timeout"
    )]
    NotConverged {
        domain: String,
        target: String,
        secs: f64,
        cur: u64,
        end: u64,
    },
    #[error(
        "commit of {domain}/{target} ended without switching the disk back to its image (the job failed, e.g. the image's filesystem ran out of room, or someone cancelled it); the disk stays on its overlay {overlay}, nothing is lost: see libvirtd's log, then run release again"
    )]
    CommitEnded {
        domain: String,
        target: String,
        overlay: String,
    },
    #[error(
        "member {domain} is {state}: overlays can only be committed while it runs; {}",
        not_running_fix(domain, *state)
    )]
    NotRunning { domain: String, state: DomState },
    #[error(
        "member {domain} is shut off with a managed save image, whose saved state writes to the overlays: start it (`virsh start {domain}` restores it) and run release again; removing the save image would discard what the guest had not yet written"
    )]
    ManagedSave { domain: String },
    #[error(
        "disk {target} of {domain} is back on its image, but no release switched it (the VM recreated or redefined from its old definition?): its overlay {overlay} holds data written after the snapshot and is kept; if that data is not needed, delete the overlay, then run release again"
    )]
    NotSwitchedByRelease {
        domain: String,
        target: String,
        overlay: String,
    },
    #[error(
        "overlay {overlay} of {domain} is no longer used by the domain, but a process still has it open; it is kept: run release again once that process is gone"
    )]
    HeldOpen { domain: String, overlay: String },
    #[error(
        "disk {target} of {domain} runs a block job of another kind ({job}), not a commit of ours: let it finish or abort it (`virsh blockjob {domain} {target} --abort`), then run release again"
    )]
    ForeignJob {
        domain: String,
        target: String,
        job: String,
    },
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error(
        "disk {target} of {domain} is now on {actual}, not on the snapshot overlay {overlay} nor its image: its chain was changed by someone else; merge it by hand"
    )]
    ChainChanged {
        domain: String,
        target: String,
        actual: String,
        overlay: String,
    },
    #[error(
        "overlay {overlay} of {domain}/{target} now lies over {below}, not over the snapshot's image {image}: someone changed its chain, and a commit would write into {below}; merge it by hand"
    )]
    BackingChanged {
        domain: String,
        target: String,
        overlay: String,
        below: String,
        image: String,
    },
    #[error(
        "commit of {domain}/{target} still runs after its wait ended; nothing is lost: run release again"
    )]
    StillCommitting { domain: String, target: String },
    #[error(
        "member {domain} no longer exists and its overlay {overlay} cannot be merged offline ({detail}); it is kept: {fix}"
    )]
    VanishedMerge {
        domain: String,
        overlay: String,
        detail: String,
        fix: String,
    },
    #[error(
        "member {domain} no longer exists, but domain {user} uses its overlay {overlay} (renamed?): rename it back (`virsh domrename {user} {domain}`, start it) and run release again"
    )]
    VanishedButUsed {
        domain: String,
        overlay: String,
        user: String,
    },
    #[error(
        "member {domain} is shut off and its overlay {overlay} cannot be merged offline ({detail}); it is kept: start it (`virsh start {domain}`) and run release again"
    )]
    OfflineMerge {
        domain: String,
        overlay: String,
        detail: String,
    },
    #[error(
        "member {domain} was started while its overlays were merged offline; nothing is lost: run release again (it now commits online)"
    )]
    StartedDuringRelease { domain: String },
    #[error(
        "release of member {domain} ({uri}) stopped on an internal error (its thread panicked); what it finished is recorded in the manifest: run release again, and report this"
    )]
    Panicked { domain: String, uri: String },
    #[error("cannot remove overlay {path}: {source}")]
    Remove {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Xml(#[from] domxml::XmlError),
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
