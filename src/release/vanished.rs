//! Release of a member whose domain no longer exists on its host (deleted, undefined, or a
//! transient domain destroyed while its snapshot was held): its overlays are merged into their
//! images offline, so no guest write is lost and the group is not blocked by a snapshot that an
//! online release can never finish. On this host with `qemu-img commit` ([`crate::release::merge`]); on
//! another host, whose files this process cannot open, by that host's libvirt and QEMU through
//! a paused helper domain ([`crate::release::remote`]), the overlay then removed through the
//! storage pool of its directory (or named on stderr as left there).
//!
//! Invariants:
//! - Used only when the member's libvirt answered "no such domain", never when it was
//!   unreachable.
//! - An overlay is merged only into the image the manifest recorded (checked against the
//!   overlay's own backing file), and deleted only after the merge succeeded.
//! - An overlay that any domain of the host still names in its disks (e.g. the member renamed
//!   while stopped) is left alone, and so is one some process still writes (a VM migrated or
//!   started by hand on it): QEMU's image locks make the merge fail on it.
//! - Safe to repeat after a crash: merging the same overlay again writes the same data, and an
//!   overlay that is already gone means its disk is done.
//! - An overlay whose disk a release already switched back to its image (marked pivoted in the
//!   [`crate::catalog::ledger`]) is stale: the guest wrote to the image after it. It is deleted, never
//!   merged.

use super::error::ReleaseError;
use super::options::Options;
use super::overlay;
use super::remote::Outcome;
use crate::catalog::ledger::{Ledger, Mark};
use crate::catalog::{DiskRecord, MemberId};
use crate::events::{Note, Reporter};
use crate::hypervisor::Host;
use std::path::Path;

/// Merge one disk's (existing) overlay into its image and delete it.
fn merge_disk(domain: &str, d: &DiskRecord) -> Result<(), ReleaseError> {
    super::merge::merge(d).map_err(|e| {
        let fix = if e.held_open() {
            "a process still has it open (the VM renamed or migrated?): release through that VM, or stop the process and run release again".to_string()
        } else {
            format!(
                "merge it by hand (`qemu-img commit {}`) or, if the VM is gone for good, delete it; then run release again",
                d.overlay
            )
        };
        ReleaseError::VanishedMerge {
            domain: domain.to_string(),
            overlay: d.overlay.clone(),
            detail: e.to_string(),
            fix,
        }
    })?;
    std::fs::remove_file(&d.overlay).map_err(|source| ReleaseError::Remove {
        path: d.overlay.clone(),
        source,
    })
}

/// A domain on `host` (running or not) whose disks use one of `overlays`, e.g. the member
/// renamed while stopped: merging would pull the file from under its definition.
fn user_of(
    host: &dyn Host,
    overlays: &[&DiskRecord],
) -> Result<Option<(String, String)>, ReleaseError> {
    for dom in host.list_domains()? {
        // A domain that vanished between listing and reading uses nothing.
        let Ok(xml) = host.xml(&dom.name) else {
            continue;
        };
        for o in overlays {
            if overlay::in_use(&dom.name, &xml, &o.overlay)? {
                return Ok(Some((dom.name, o.overlay.clone())));
            }
        }
    }
    Ok(None)
}

/// Release the disks of `domain`, which no longer exists on `host`.
pub fn release(
    host: &dyn Host,
    domain: &str,
    disks: &[DiskRecord],
    opts: &Options,
    ledger: &dyn Ledger,
    report: &dyn Reporter,
) -> Result<(), ReleaseError> {
    let uri = host.uri();
    let who = MemberId::new(host.uri(), domain);
    let stale = |d: &DiskRecord| ledger.has(&who, &d.target, Mark::Pivoted);
    // A remote host's files are not ours to open: its own libvirt merges them.
    if !crate::hypervisor::is_local(uri) {
        return remote(host, domain, disks, opts, ledger, report);
    }
    for d in disks.iter().filter(|d| stale(d)) {
        overlay::remove_local(domain, &d.overlay)?;
    }
    let left: Vec<&DiskRecord> = disks
        .iter()
        .filter(|d| !stale(d) && Path::new(&d.overlay).exists())
        .collect();
    if left.is_empty() {
        return Ok(());
    }
    if let Some((user, overlay)) = user_of(host, &left)? {
        return Err(ReleaseError::VanishedButUsed {
            domain: domain.to_string(),
            overlay,
            user,
        });
    }
    for d in &left {
        // Marked first: should the domain come back on its images before the overlay is
        // deleted, the next run knows the data went into them.
        ledger.mark(&who, &[d.target.as_str()], Mark::Started)?;
        merge_disk(domain, d)?;
    }
    report.note(&Note::MergedVanished {
        domain,
        uri,
        merged: left.len(),
    });
    Ok(())
}

/// The same on another host, through its libvirt: each overlay merged there by a helper
/// domain ([`crate::release::remote`]), then removed through the storage pool of its directory
/// (required: see below).
fn remote(
    host: &dyn Host,
    domain: &str,
    disks: &[DiskRecord],
    opts: &Options,
    ledger: &dyn Ledger,
    report: &dyn Reporter,
) -> Result<(), ReleaseError> {
    let who = MemberId::new(host.uri(), domain);
    let stale = |d: &DiskRecord| ledger.has(&who, &d.target, Mark::Pivoted);
    let all: Vec<&DiskRecord> = disks.iter().collect();
    if let Some((user, overlay)) = user_of(host, &all)? {
        return Err(ReleaseError::VanishedButUsed {
            domain: domain.to_string(),
            overlay,
            user,
        });
    }
    // Nothing records which overlays a failed run already merged, and a VM recreated on the
    // images meanwhile makes a second merge of one overwrite newer data: so each overlay must
    // be removed right after its merge, which on another host takes a storage pool.
    let mut left = Vec::new();
    for d in disks {
        match host.pool_has(&d.overlay)? {
            Some(true) => left.push(d),
            // Merged and removed by an earlier run.
            Some(false) => {}
            None => {
                let dir = Path::new(&d.overlay)
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                return Err(ReleaseError::VanishedMerge {
                    domain: domain.to_string(),
                    overlay: d.overlay.clone(),
                    detail: format!(
                        "no active libvirt storage pool on {} has {dir} as target, so it could not be removed once merged",
                        host.uri()
                    ),
                    fix: format!(
                        "define one (`virsh -c {} pool-create-as cgsnap dir --target {dir}`) and run release again, or merge it on that host by hand",
                        host.uri()
                    ),
                });
            }
        }
    }
    let mut merged = 0;
    for d in left {
        if stale(d) {
            overlay::remove_remote(host, domain, &d.overlay, report)?;
            continue;
        }
        ledger.mark(&who, &[d.target.as_str()], Mark::Started)?;
        match super::remote::merge(host, domain, d, opts, report) {
            Ok(Outcome::Gone) => {}
            Ok(Outcome::Merged) => {
                merged += 1;
                overlay::remove_remote(host, domain, &d.overlay, report)?;
            }
            Err(e) => {
                let fix = if e.held_open() {
                    format!(
                        "a process on {} still has it open (the VM renamed or migrated?): release through that VM, or stop the process and run release again",
                        host.uri()
                    )
                } else {
                    format!(
                        "merge it on {} (`qemu-img commit {}`) or, if the VM is gone for good, delete it there; then run release again",
                        host.uri(),
                        d.overlay
                    )
                };
                return Err(ReleaseError::VanishedMerge {
                    domain: domain.to_string(),
                    overlay: d.overlay.clone(),
                    detail: e.to_string(),
                    fix,
                });
            }
        }
    }
    if merged > 0 {
        report.note(&Note::MergedVanishedRemote {
            domain,
            uri: host.uri(),
            merged,
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "vanished_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "vanished_two_hosts_tests.rs"]
mod two_hosts;
