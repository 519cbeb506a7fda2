//! The read-only half of a snapshot, shared with `cgsnap check`.
//!
//! Invariant: planning only reads (the catalog, libvirt, the file system); it writes, creates
//! and pauses nothing, so it can run without the group lock.

use crate::catalog::{Catalog, Manifest};
use crate::group;
use crate::hypervisor::Host;
use crate::snapshot::SnapshotError;
use crate::snapshot::preflight::{self, PlannedMember};
use std::sync::Arc;

/// What every snapshot checks before it writes anything, and all that `cgsnap check` does: a
/// valid group name, no outstanding snapshot, every member resolved and planned by preflight.
/// Only reads. `take` calls it holding the group lock; `check` without, so that a monitoring
/// probe can never make a scheduled snapshot fail with "busy".
pub fn plan(
    hosts: &[Arc<dyn Host>],
    cat: &Catalog,
    group_name: &str,
    popts: &preflight::Options,
) -> Result<Vec<PlannedMember>, SnapshotError> {
    group::validate_name(group_name)?;
    let held: Vec<Manifest> = cat
        .list()?
        .into_iter()
        .filter(|m| m.state.outstanding())
        .collect();
    if let Some(m) = held.iter().find(|m| m.group == group_name) {
        return Err(SnapshotError::Outstanding {
            group: m.group.clone(),
            id: m.id.clone(),
            state: m.state,
        });
    }
    let members = group::resolve(hosts, group_name)?;
    // A member shared with another group must not be frozen or snapshotted twice at once, nor
    // get a second overlay on top of the other group's (preflight also refuses a disk already
    // on an overlay; this names the snapshot, and sees one still pending).
    for other in &held {
        if let Some(r) = other.members.iter().find(|r| {
            members
                .iter()
                .any(|m| m.domain == r.domain && m.host.uri() == r.uri)
        }) {
            return Err(SnapshotError::MemberHeld {
                domain: r.domain.clone(),
                uri: r.uri.clone(),
                id: other.id.clone(),
                group: other.group.clone(),
                state: other.state,
            });
        }
    }
    Ok(preflight::plan_group(&members, popts)?)
}
