//! `snapshot::take` as its steps: lock and plan, record `pending`, pre-create, start the
//! watchdog, open the members' connections, arm, cut, then record `taken` or roll back.
//!
//! Invariants (the order of the steps is what guarantees them):
//! - nothing is paused before the group lock is held, the plan is complete, the manifest is
//!   on disk (state `pending`) and the watchdog is armed;
//! - a step that fails after the manifest is written but before the freeze leaves it
//!   `aborted` and the run's unused overlays deleted (if that write fails, its error is
//!   returned instead);
//! - after the cut, a call that failed or a member we could not resume hands the members to
//!   the watchdog before anything is rolled back.

use super::disk_order::{self, Staged};
use super::precreate::precreate_all;
use super::protocol::{self, Cut, Env, Outcome, Step, ms};
use super::rollback::{abort_unfrozen, not_known_running, roll_back_into};
use super::watchdog::{self, WatchMember, Watchdog};
use super::{Options, SnapshotError, plan, preflight};
use crate::catalog::{self, Catalog, Manifest, MemberRecord, Phases, SnapState};
use crate::events::{Events, Point};
use crate::group;
use crate::hypervisor::{Host, HvError, is_local};
use chrono::{DateTime, Utc};
use preflight::PlannedMember;
use std::sync::Arc;
use std::time::Instant;

/// The start of every cut of a group, overlay snapshot or backup cut: its name checked, its
/// lock held (for the whole cut: one cut of a group at a time) and the new cut's ID, so both
/// kinds refuse the same names and serialize the same way.
pub fn claim(
    cat: &Catalog,
    group: &str,
    now: DateTime<Utc>,
) -> Result<(catalog::lock::GroupLock, String), SnapshotError> {
    group::validate_name(group)?;
    let lock = cat.lock(group)?;
    Ok((lock, catalog::new_id(group, now)))
}

/// Take a group snapshot. `now` names the snapshot; timings use the monotonic clock. `ev`
/// hears the notes of a rollback; its probe is passed [`Point::Resolved`], [`Point::Watched`]
/// and the protocol's points (see [`crate::events`]).
pub fn take(
    hosts: &[Arc<dyn Host>],
    cat: &Catalog,
    opts: &Options,
    now: DateTime<Utc>,
    ev: Events,
) -> Result<Manifest, SnapshotError> {
    let t0 = Instant::now();
    let (_lock, id) = claim(cat, &opts.group, now)?;
    let Recorded {
        plan,
        staged,
        reuse,
        mut man,
    } = plan_and_record(hosts, cat, opts, &id, now)?;
    let run = Run {
        cat,
        opts,
        plan: &plan,
        ev,
    };
    if reuse {
        run.precreate_or_abort(&mut man)?;
    }
    ev.probe.at(Point::Resolved);
    if let (Some(staged), Some((order, gap))) = (staged, &opts.unsafe_disk_order) {
        return disk_order::take(cat, man, &plan, &staged, order, *gap, opts, t0, ev);
    }
    let mut dog = run.start_watchdog(&mut man, &id)?;
    // Filled in place, so that connections already opened stay open until the abort is written.
    let mut steps = Vec::with_capacity(plan.len());
    if let Err(e) = run.member_steps(reuse, &mut steps) {
        drop(dog);
        run.abort(&mut man, &e.to_string())?;
        return Err(SnapshotError::Protocol {
            id,
            outcome: "rolled back",
            cause: e.to_string(),
        });
    }
    ev.probe.at(Point::Watched);
    let preflight_ms = ms(t0.elapsed());
    if let Err(e) = dog.arm() {
        // The watchdog is gone (killed?): freezing without it could leave a VM paused.
        drop(dog);
        run.abort(&mut man, &e.to_string())?;
        return Err(e.into());
    }
    let (out, fired) = run.cut(&mut man, &steps, dog);
    record_timings(&mut man, &out, preflight_ms);
    let Some(cause) = failure_cause(&out, fired, opts) else {
        man.transition(SnapState::Taken)?;
        cat.write(&man)?;
        return Ok(man);
    };
    Err(run.roll_back(man, id, &out, cause, fired)?)
}

/// A planned snapshot whose `pending` manifest is on disk.
struct Recorded {
    plan: Vec<PlannedMember>,
    /// The stages of the per-disk negative control, when it was asked for.
    staged: Option<Vec<Staged>>,
    /// Whether overlays are pre-created (and libvirt reuses them).
    reuse: bool,
    man: Manifest,
}

/// Plan the group (holding the catalog's planning lock) and write its `pending` manifest.
fn plan_and_record(
    hosts: &[Arc<dyn Host>],
    cat: &Catalog,
    opts: &Options,
    id: &str,
    now: DateTime<Utc>,
) -> Result<Recorded, SnapshotError> {
    let popts = preflight::Options {
        id,
        overlay_dir: opts.overlay_dir.as_deref(),
        min_free: opts.min_free,
    };
    // From the checks until the pending manifest is written, no other group's run can pass
    // the same checks for a member this one is about to freeze.
    let planning = cat.lock_planning()?;
    let plan = plan(hosts, cat, &opts.group, &popts)?;
    let reuse = opts.precreate && plan.iter().all(|p| is_local(p.member.host.uri()));
    // Everything that can fail without touching a disk fails before the manifest exists.
    let staged = match &opts.unsafe_disk_order {
        Some((order, _)) => Some(disk_order::prepare(&plan, id, &opts.group, order, reuse)?),
        None => None,
    };
    let mut man = manifest(id, &opts.group, now, &plan);
    man.hook_token = opts.hook_token.clone();
    // A negative control is marked from its first write: a run that dies mid-cut must not
    // leave a manifest that looks like a real snapshot.
    man.unsafe_stagger_ms = opts.unsafe_stagger.map(|g| g.as_millis() as u64);
    if let Some((order, gap)) = &opts.unsafe_disk_order {
        man.unsafe_disk_order = Some(order.clone());
        man.unsafe_disk_gap_ms = Some(gap.as_millis() as u64);
    }
    cat.write(&man)?;
    drop(planning);
    Ok(Recorded {
        plan,
        staged,
        reuse,
        man,
    })
}

/// The `pending` manifest of a new snapshot of `plan`.
fn manifest(id: &str, group: &str, now: DateTime<Utc>, plan: &[PlannedMember]) -> Manifest {
    Manifest {
        members: plan
            .iter()
            .map(|p| {
                let uri = p.member.host.uri();
                MemberRecord::new(&p.member.domain, uri, p.domain_xml.clone(), p.disks.clone())
            })
            .collect(),
        ..Manifest::new(id, group, SnapState::Pending, now)
    }
}

/// What every step after the manifest is written works on.
struct Run<'a> {
    cat: &'a Catalog,
    opts: &'a Options,
    plan: &'a [PlannedMember],
    ev: Events<'a>,
}

impl Run<'_> {
    /// Pre-create every overlay; on failure the manifest is written `aborted` with the cause.
    fn precreate_or_abort(&self, man: &mut Manifest) -> Result<(), SnapshotError> {
        let Err(e) = precreate_all(self.plan) else {
            return Ok(());
        };
        man.transition(SnapState::Aborted)?;
        man.error = Some(e.to_string());
        self.cat.write(man)?;
        Err(e)
    }

    /// Abandon the snapshot before anything was frozen (see [`abort_unfrozen`]).
    fn abort(&self, man: &mut Manifest, cause: &str) -> Result<(), SnapshotError> {
        abort_unfrozen(self.cat, man, self.plan, &self.opts.release, cause, self.ev)
    }

    /// Start the watchdog over every member, not yet armed; on failure abort.
    fn start_watchdog(&self, man: &mut Manifest, id: &str) -> Result<Watchdog, SnapshotError> {
        let watch: Vec<WatchMember> = self
            .plan
            .iter()
            .map(|p| WatchMember {
                uri: p.member.host.uri().to_string(),
                domain: p.member.domain.clone(),
            })
            .collect();
        // The staggered control keeps the watchdog armed across all its gaps; the budget bounds
        // each member's own freeze there, so it grows by one gap per member.
        let opts = self.opts;
        let budget =
            opts.freeze_budget + opts.unsafe_stagger.unwrap_or_default() * self.plan.len() as u32;
        let scope = watchdog::Scope {
            catalog: self.cat.dir().to_path_buf(),
            group: opts.group.clone(),
            id: id.to_string(),
        };
        match Watchdog::spawn(&opts.exe, &watch, budget, Some(scope)) {
            Ok(d) => Ok(d),
            Err(e) => {
                self.abort(man, &e.to_string())?;
                Err(e.into())
            }
        }
    }

    /// One protocol step per member, each on its own connection when `connect_each` says so.
    fn member_steps(&self, reuse: bool, steps: &mut Vec<Step>) -> Result<(), HvError> {
        for p in self.plan {
            let host = match &self.opts.connect_each {
                Some(open) => open(p.member.host.uri())?,
                None => p.member.host.clone(),
            };
            steps.push(Step {
                host,
                domain: p.member.domain.clone(),
                cut: Cut::Snapshot {
                    xml: p.snapshot_xml.clone(),
                    reuse,
                },
            });
        }
        Ok(())
    }

    /// Freeze and cut (or the staggered control, marked in `man`), then end the watchdog.
    /// Returns the outcome and whether the watchdog fired.
    fn cut(&self, man: &mut Manifest, steps: &[Step], dog: Watchdog) -> (Outcome, bool) {
        let env = Env {
            wall_clock: &Utc::now,
            resume_attempts: 5,
            resume: self.opts.resume,
            probe: self.ev.probe,
        };
        let out = match self.opts.unsafe_stagger {
            None => protocol::run(steps, &env),
            Some(gap) => {
                man.unsafe_stagger_ms = Some(gap.as_millis() as u64);
                let out = protocol::run_staggered(steps, &env, gap);
                man.negative_control = out.negative_control.clone();
                out
            }
        };
        let fired = if out.all_resumed() && out.first_error().is_none() {
            dog.disarm()
        } else {
            // Some member could not be resumed by us (e.g. libvirtd restarting), or a call
            // failed and a member may be paused without our knowing (a pause whose reply was
            // lost): the watchdog, still armed, resumes every member still paused when its pipe
            // closes; wait for that before rolling back.
            dog.abandon()
        };
        (out, fired)
    }

    /// Roll back a failed cut, write the manifest and return the error to report.
    fn roll_back(
        &self,
        mut man: Manifest,
        id: String,
        out: &Outcome,
        cause: String,
        fired: bool,
    ) -> Result<SnapshotError, SnapshotError> {
        let opts = self.opts;
        let cut: Vec<bool> = out.members.iter().map(|m| m.paused).collect();
        let outcome = roll_back_into(&mut man, self.plan, &opts.release, &cut, &cause, self.ev)?;
        // Both we and the watchdog tried; if a member is still (or maybe) paused, say so and how
        // to end it rather than let the message claim otherwise.
        let stuck = not_known_running(self.plan);
        let cause = if stuck.is_empty() {
            cause
        } else {
            format!(
                "{cause}; NOT RESUMED: {}: resume it as soon as its libvirtd answers (`virsh -c URI resume DOMAIN`)",
                stuck.join(", ")
            )
        };
        self.cat.write(&man)?;
        Ok(if fired {
            SnapshotError::Budget {
                id,
                budget_ms: opts.freeze_budget.as_millis(),
                outcome,
            }
        } else {
            SnapshotError::Protocol { id, outcome, cause }
        })
    }
}

/// Copy the protocol's timings into the manifest.
pub(crate) fn record_timings(man: &mut Manifest, out: &Outcome, preflight_ms: f64) {
    man.consistency_point = out.consistency_point;
    man.freeze_window_ms = out.freeze_window_ms;
    man.phases = Phases {
        preflight_ms,
        pause_ms: out.pause_ms,
        snapshot_ms: out.snapshot_ms,
        resume_ms: out.resume_ms,
    };
    for (rec, m) in man.members.iter_mut().zip(&out.members) {
        rec.freeze_ms = m.freeze_ms;
        rec.pause_ms = m.pause_ms;
        rec.snapshot_ms = m.snapshot_ms;
        rec.resume_ms = m.resume_ms;
    }
}

/// Why the cut failed, if it did: the budget when the watchdog fired, else the first error.
pub(crate) fn failure_cause(out: &Outcome, fired: bool, opts: &Options) -> Option<String> {
    if fired {
        Some(format!(
            "freeze budget of {} ms exceeded",
            opts.freeze_budget.as_millis()
        ))
    } else {
        out.first_error().map(|e| e.to_string())
    }
}
