//! Undoing a snapshot that failed, and recording how it ended.
//!
//! Invariants:
//! - overlays a member may have been snapshotted onto are committed back (they may hold the
//!   only copy of its newest writes), never deleted; only pre-created overlays of a member
//!   that was never cut, on this host, are deleted;
//! - the manifest says `aborted` only when every member is back on its images, `failed`
//!   (left for `cgsnap release`) otherwise.

use crate::catalog::{Catalog, Manifest, SnapState, TransitionError};
use crate::events::Events;
use crate::hypervisor::{HvErrorKind, is_local};
use crate::release;
use crate::snapshot::SnapshotError;
use crate::snapshot::preflight::PlannedMember;

/// A rollback that left members on their overlays: each one's release error (which names it).
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub(crate) struct RollbackError(pub Vec<release::ReleaseError>);

/// Undo a failed snapshot: commit back overlays in use, delete unused ones. `cut[i]` tells
/// whether member `i` may have been snapshotted (its overlays may hold guest data).
pub(crate) fn rollback(
    plan: &[PlannedMember],
    opts: &release::Options,
    cut: &[bool],
    ev: Events,
) -> Result<(), RollbackError> {
    let mut errors = Vec::new();
    for (i, p) in plan.iter().enumerate() {
        let host = p.member.host.as_ref();
        let state = host.state_rechecked(&p.member.domain);
        // A member that vanished (transient domain destroyed) before it was snapshotted never
        // used its pre-created overlays: they are empty and can go. One that may have been
        // snapshotted keeps them: they may hold the only copy of its newest writes. Overlays
        // are pre-created only on this host; another host's paths name nothing of ours here.
        if let Err(e) = &state
            && e.kind == HvErrorKind::NoDomain
            && !cut.get(i).copied().unwrap_or(true)
        {
            if is_local(host.uri()) {
                for d in &p.disks {
                    let _ = std::fs::remove_file(&d.overlay);
                }
            }
            continue;
        }
        if let Err(e) = release::release_member(
            host,
            &p.member.domain,
            &p.disks,
            opts,
            &crate::catalog::ledger::InMemory::default(),
            ev.unprobed(),
        ) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(RollbackError(errors))
    }
}

/// Members that are paused by a user/API call, or whose state cannot be read, each as
/// "DOMAIN on URI" (with "(state unknown)" for the latter).
pub(crate) fn not_known_running(plan: &[PlannedMember]) -> Vec<String> {
    plan.iter()
        .filter_map(|p| {
            let host = p.member.host.as_ref();
            let dom = &p.member.domain;
            match host.state_rechecked(dom) {
                Ok(crate::hypervisor::DomState::PausedByUser) => {
                    Some(format!("{dom} on {}", host.uri()))
                }
                Err(e) if e.kind != HvErrorKind::NoDomain => {
                    Some(format!("{dom} on {} (state unknown)", host.uri()))
                }
                _ => None,
            }
        })
        .collect()
}

/// Abandon a snapshot before anything was frozen: its pre-created overlays, never used, go,
/// and its manifest is written `aborted` with the cause.
pub(super) fn abort_unfrozen(
    cat: &Catalog,
    man: &mut Manifest,
    plan: &[PlannedMember],
    opts: &release::Options,
    cause: &str,
    ev: Events,
) -> Result<(), SnapshotError> {
    let _ = rollback(plan, opts, &vec![false; plan.len()], ev);
    man.transition(SnapState::Aborted)?;
    man.error = Some(cause.to_string());
    cat.write(man)?;
    Ok(())
}

/// Roll back a failed snapshot and record the result in its manifest (not yet written):
/// `aborted` when every member is back on its images, `failed` (left for `cgsnap release`)
/// otherwise. Returns how the snapshot ended, for the error message.
pub(crate) fn roll_back_into(
    man: &mut Manifest,
    plan: &[PlannedMember],
    opts: &release::Options,
    cut: &[bool],
    cause: &str,
    ev: Events,
) -> Result<&'static str, TransitionError> {
    Ok(match rollback(plan, opts, cut, ev) {
        Ok(()) => {
            man.transition(SnapState::Aborted)?;
            man.error = Some(cause.to_string());
            "rolled back"
        }
        Err(e) => {
            man.transition(SnapState::Failed)?;
            man.error = Some(format!("{cause}; rollback incomplete: {e}"));
            "left for `cgsnap release` (rollback incomplete)"
        }
    })
}
