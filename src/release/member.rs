//! Releasing one member: each disk's next step from the live domain XML (commit, wait and
//! pivot, or only the overlay's removal), dispatching members that are gone to
//! [`super::vanished`] and shut-off ones to [`super::offline`].
//!
//! Invariant: idempotent and resumable; a disk found on its image counts as switched back only
//! when the ledger says a release did it.

use super::error::ReleaseError;
use super::options::Options;
use super::overlay::*;
use super::pivot::*;
use crate::catalog::ledger::{Ledger, Mark};
use crate::catalog::{DiskRecord, MemberId};
use crate::domxml;
use crate::events::{Events, Point};
use crate::hypervisor::{DomState, Host};
use std::path::Path;

pub(super) enum DiskStep {
    /// Disk writes to the overlay, no job: start a commit.
    Commit,
    /// A commit job is running (maybe started by a crashed run): wait and pivot.
    Wait,
    /// Disk is back on its image: only the overlay file may remain.
    Done,
}

pub(super) fn step_for(domain: &str, xml: &str, d: &DiskRecord) -> Result<DiskStep, ReleaseError> {
    let disks = domxml::disks(domain, xml)?;
    let live = disks.iter().find(|x| x.target == d.target);
    let src = live.and_then(|x| x.source.as_deref()).unwrap_or("");
    if let Some(x) = live.filter(|_| src == d.overlay) {
        if x.mirror {
            // Only our own kind of job is ours to wait for and pivot: pivoting someone's copy
            // would switch the VM onto the copy's target.
            return match x.mirror_job.as_deref() {
                Some("active-commit") | None => Ok(DiskStep::Wait),
                Some(job) => Err(ReleaseError::ForeignJob {
                    domain: domain.to_string(),
                    target: d.target.clone(),
                    job: job.to_string(),
                }),
            };
        }
        // A shallow commit writes into whatever lies right below the overlay: that must be
        // the image the snapshot froze, not a file someone put in between.
        if let Some(below) = x.backing.first().filter(|b| **b != d.image) {
            return Err(ReleaseError::BackingChanged {
                domain: domain.to_string(),
                target: d.target.clone(),
                overlay: d.overlay.clone(),
                below: below.clone(),
                image: d.image.clone(),
            });
        }
        return Ok(DiskStep::Commit);
    }
    if src == d.image {
        return Ok(DiskStep::Done);
    }
    Err(ReleaseError::ChainChanged {
        domain: domain.to_string(),
        target: d.target.clone(),
        actual: if src.is_empty() {
            "nothing".into()
        } else {
            src.into()
        },
        overlay: d.overlay.clone(),
    })
}

/// Release every listed disk of one member; safe to call again after any failure. `ledger`
/// holds what earlier runs of this release did ([`crate::catalog::ledger`]). `ev` hears progress and
/// notes; its probe is passed [`Point::CommitsStarted`] once commits are started.
pub fn release_member(
    host: &dyn Host,
    domain: &str,
    disks: &[DiskRecord],
    opts: &Options,
    ledger: &dyn Ledger,
    ev: Events,
) -> Result<(), ReleaseError> {
    let state = match host.state(domain) {
        Err(e) if e.kind == crate::hypervisor::HvErrorKind::NoDomain => {
            return crate::release::vanished::release(host, domain, disks, opts, ledger, ev.report);
        }
        r => r?,
    };
    let m = Member {
        host,
        domain,
        who: MemberId::new(host.uri(), domain),
        opts,
        ledger,
        ev,
    };
    let xml = host.xml(domain)?;
    let steps = disks
        .iter()
        .map(|d| step_for(domain, &xml, d).map(|s| (d, s)))
        .collect::<Result<Vec<_>, _>>()?;
    for (d, s) in &steps {
        if matches!(s, DiskStep::Done) {
            check_found_done(host, domain, d, ledger)?;
        }
    }
    let pending = steps.iter().any(|(_, s)| !matches!(s, DiskStep::Done));
    if pending && !matches!(state, DomState::Running | DomState::PausedByUser) {
        return m.not_live(state, &xml, disks, &steps);
    }
    m.start_commits(&steps)?;
    if pending {
        ev.probe.at(Point::CommitsStarted { domain });
    }
    m.switch_all_back(&steps)?;
    // The disks found on their images at the start (checked above) leave only their files.
    remove_unused(host, domain, disks, ev.report)
}

/// One member being released, and what its steps share.
struct Member<'a> {
    host: &'a dyn Host,
    domain: &'a str,
    who: MemberId,
    opts: &'a Options,
    ledger: &'a dyn Ledger,
    ev: Events<'a>,
}

impl Member<'_> {
    /// A member with disks left to release that QEMU does not run: a shut-off one is merged
    /// offline, anything else (paused by an error, crashed, ...) is refused.
    fn not_live(
        &self,
        state: DomState,
        xml: &str,
        disks: &[DiskRecord],
        steps: &[(&DiskRecord, DiskStep)],
    ) -> Result<(), ReleaseError> {
        let domain = self.domain;
        if state != DomState::ShutOff {
            return Err(ReleaseError::NotRunning {
                domain: domain.to_string(),
                state,
            });
        }
        // Its saved memory names the overlays: merged and redefined under it, the restore
        // fails (overlay gone) or writes to an overlay nothing will ever merge.
        if self.host.has_managed_save(domain)? {
            return Err(ReleaseError::ManagedSave {
                domain: domain.to_string(),
            });
        }
        let on_overlay: Vec<&DiskRecord> = steps
            .iter()
            .filter(|(_, s)| matches!(s, DiskStep::Commit))
            .map(|(d, _)| *d)
            .collect();
        crate::release::offline::release(
            self.host,
            domain,
            xml,
            disks,
            &on_overlay,
            self.opts,
            self.ledger,
            self.ev.report,
        )
    }

    /// Mark, then start, every commit, so the disks of one member merge concurrently.
    fn start_commits(&self, steps: &[(&DiskRecord, DiskStep)]) -> Result<(), ReleaseError> {
        let to_commit: Vec<&str> = steps
            .iter()
            .filter(|(_, s)| matches!(s, DiskStep::Commit))
            .map(|(d, _)| d.target.as_str())
            .collect();
        if !to_commit.is_empty() {
            self.ledger.mark(&self.who, &to_commit, Mark::Started)?;
        }
        for (d, s) in steps {
            if matches!(s, DiskStep::Commit) {
                self.host
                    .commit_active(self.domain, &d.target, self.opts.bandwidth)?;
            }
        }
        Ok(())
    }

    /// Wait for, and pivot, every disk not yet back on its image; on the first failure, cancel
    /// the member's later commits.
    fn switch_all_back(&self, steps: &[(&DiskRecord, DiskStep)]) -> Result<(), ReleaseError> {
        for (i, (d, s)) in steps.iter().enumerate() {
            if matches!(s, DiskStep::Done) {
                continue;
            }
            if let Err(e) = self.switch_back(d) {
                // Leave no commit of this member running behind the error (e.g. one still
                // copying at a rate limit): its disks stay on their overlays, and the next
                // release starts every commit afresh with its own options.
                for (later, s) in &steps[i + 1..] {
                    if !matches!(s, DiskStep::Done) {
                        let _ = self.host.abort_job(self.domain, &later.target);
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// One disk: wait for its commit, pivot, then remove its overlay at once.
    fn switch_back(&self, d: &DiskRecord) -> Result<(), ReleaseError> {
        let (host, domain) = (self.host, self.domain);
        wait_and_pivot(host, domain, d, self.opts, self.ev.report)?;
        // Each overlay goes as soon as its own disk is back on its image: one left until the
        // member's other disks are done would be stale (the guest now writes to the image) yet
        // look mergeable if the member vanished meanwhile.
        let xml = host.xml(domain)?;
        match step_for(domain, &xml, d)? {
            DiskStep::Done => {
                self.ledger
                    .mark(&self.who, &[d.target.as_str()], Mark::Pivoted)?;
                remove_unused_in(host, domain, &xml, std::slice::from_ref(d), self.ev.report)
            }
            // The job went away without a pivot: it failed or someone cancelled it.
            DiskStep::Commit => Err(ReleaseError::CommitEnded {
                domain: domain.to_string(),
                target: d.target.clone(),
                overlay: d.overlay.clone(),
            }),
            DiskStep::Wait => Err(ReleaseError::StillCommitting {
                domain: domain.to_string(),
                target: d.target.clone(),
            }),
        }
    }
}

/// A disk found back on its image while its overlay still exists: the overlay may go only if
/// a release switched the disk (its commit was marked started), or, on this host, if the
/// overlay holds no data of its own (pre-created and never written). Anything else switched
/// it, and the overlay may hold the only copy of what the guest wrote since the snapshot.
pub(super) fn check_found_done(
    host: &dyn Host,
    domain: &str,
    d: &DiskRecord,
    ledger: &dyn Ledger,
) -> Result<(), ReleaseError> {
    if ledger.has(&MemberId::new(host.uri(), domain), &d.target, Mark::Started) {
        return Ok(());
    }
    let keeps_data = if crate::hypervisor::is_local(host.uri()) {
        Path::new(&d.overlay).exists()
            && crate::release::room::holds_data(&d.overlay).unwrap_or(true)
    } else {
        // Another host's file is only known through its storage pool: one that exists there
        // was written by a snapshot (remote overlays are created by the snapshot itself).
        host.pool_has(&d.overlay)? == Some(true)
    };
    if keeps_data {
        return Err(ReleaseError::NotSwitchedByRelease {
            domain: domain.to_string(),
            target: d.target.clone(),
            overlay: d.overlay.clone(),
        });
    }
    Ok(())
}

/// One disk of `domain` released with the default options and no earlier run (tests).
#[cfg(test)]
pub(crate) fn release_one(
    host: &dyn Host,
    domain: &str,
    d: &DiskRecord,
) -> Result<(), ReleaseError> {
    release_member(
        host,
        domain,
        std::slice::from_ref(d),
        &Options::default(),
        &crate::catalog::ledger::InMemory::default(),
        Events::NONE,
    )
}
