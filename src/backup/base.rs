//! Which cut an incremental is based on, or why it must be full.
//!
//! Invariant: the base is the newest ended cut of the group whose export completed, taken of
//! the same members with the same disks (targets and sizes), whose checkpoint every member
//! still has with whole bitmaps. Anything else makes the cut full, with the reason recorded:
//! never an incremental on a doubtful base.

use crate::catalog::Manifest;
use crate::hypervisor::HvErrorKind;
use crate::model::manifest::SnapState;
use crate::snapshot::preflight::PlannedMember;

/// The base of an incremental (`Ok`), or why the cut is full (`Err`).
pub fn choose(history: &[Manifest], group: &str, plan: &[PlannedMember]) -> Result<String, String> {
    let Some(base) = history
        .iter()
        .filter(|m| m.group == group && m.state == SnapState::Released)
        .filter(|m| m.backup.as_ref().is_some_and(|b| b.export.is_some()))
        .max_by(|a, b| a.created_at.cmp(&b.created_at))
    else {
        return Err(format!(
            "group {group} has no exported backup cut to be incremental to"
        ));
    };
    let cp = base
        .backup
        .as_ref()
        .map(|b| b.checkpoint.clone())
        .unwrap_or_default();
    let same_members = base.members.len() == plan.len()
        && plan.iter().all(|p| {
            base.members
                .iter()
                .any(|r| r.domain == p.member.domain && r.uri == p.member.host.uri())
        });
    if !same_members {
        return Err(format!(
            "the members of group {group} changed since {}",
            base.id
        ));
    }
    for p in plan {
        let Some(rec) = base
            .members
            .iter()
            .find(|r| r.domain == p.member.domain && r.uri == p.member.host.uri())
        else {
            continue;
        };
        for d in &p.disks {
            match rec.disks.iter().find(|b| b.target == d.target) {
                None => {
                    return Err(format!(
                        "disk {} of {} was added since {}",
                        d.target, p.member.domain, base.id
                    ));
                }
                Some(b) if b.virtual_size != d.virtual_size => {
                    return Err(format!(
                        "disk {} of {} was resized since {} ({} to {} bytes)",
                        d.target, p.member.domain, base.id, b.virtual_size, d.virtual_size
                    ));
                }
                Some(b) if b.image != d.image => {
                    return Err(format!(
                        "disk {} of {} is on {} now, {} at {}",
                        d.target, p.member.domain, d.image, b.image, base.id
                    ));
                }
                Some(_) => {}
            }
        }
        match p.member.host.checkpoint_probe(&p.member.domain, &cp) {
            Ok(()) => {}
            Err(e) if e.kind == HvErrorKind::NoCheckpoint => {
                return Err(format!("checkpoint {cp} of {} is missing", p.member.domain));
            }
            Err(e) if e.kind == HvErrorKind::CheckpointInconsistent => {
                return Err(format!(
                    "checkpoint {cp} of {} has a missing or inconsistent bitmap: {}",
                    p.member.domain, e.message
                ));
            }
            Err(e) => {
                return Err(format!(
                    "checkpoint {cp} of {} cannot be checked: {e}",
                    p.member.domain
                ));
            }
        }
    }
    Ok(base.id.clone())
}
