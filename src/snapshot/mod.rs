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

pub mod disk_order;
pub mod preflight;
pub mod protocol;
pub mod tuning;
pub mod watchdog;

use crate::catalog::{
    self, Catalog, CatalogError, Manifest, MemberRecord, Phases, SnapState, TransitionError,
};
use crate::events::{Events, Point};
use crate::group::{self, GroupError};
use crate::hypervisor::is_local;
use crate::hypervisor::{Host, HvErrorKind};
use crate::model::exit::{Classify, ExitCode};
use crate::release;
use crate::snapshot::watchdog::{WatchMember, Watchdog, WatchdogError};
use chrono::{DateTime, Utc};
use preflight::{PlannedMember, PreflightError};
use protocol::{Env, Resume, Step, ms};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Group(#[from] GroupError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Watchdog(#[from] WatchdogError),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(
        "group {group} already has an unreleased snapshot {id} ({state}): release it first with `cgsnap release {id}` once no backup job reads its images any more (the job that took it releases it with its own `hook post --token`)"
    )]
    Outstanding {
        group: String,
        id: String,
        state: SnapState,
    },
    #[error(
        "member {domain} ({uri}) is in snapshot {id} of group {group}, not yet released ({state}): a VM in several groups can be in one unreleased snapshot at a time; release it first with `cgsnap release {id}`"
    )]
    MemberHeld {
        domain: String,
        uri: String,
        id: String,
        group: String,
        state: SnapState,
    },
    #[error(
        "--unsafe-disk-order names disk {target}, which no member of group {group} has: list targets as shown by `virsh domblklist`"
    )]
    UnknownTarget { group: String, target: String },
    #[error("cannot pre-create overlay {path}: {detail}; nothing was frozen")]
    Precreate { path: String, detail: String },
    #[error("snapshot {id} failed and was {outcome}: {cause}")]
    Protocol {
        id: String,
        outcome: &'static str,
        cause: String,
    },
    #[error(
        "snapshot {id} exceeded the freeze budget of {budget_ms} ms; the watchdog resumed the members and the snapshot was {outcome}: raise --freeze-budget or reduce the group"
    )]
    Budget {
        id: String,
        budget_ms: u128,
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

pub struct Options {
    pub group: String,
    pub freeze_budget: Duration,
    pub overlay_dir: Option<PathBuf>,
    pub min_free: u64,
    /// Create overlays with qemu-img before the freeze (local hosts only) and let libvirt reuse them.
    pub precreate: bool,
    /// The cgsnap binary, started as the watchdog.
    pub exe: PathBuf,
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
    /// When members are resumed (see [`protocol`](crate::snapshot::protocol) module docs).
    pub resume: Resume,
    /// The backup job taking the snapshot (`hook pre --token`), recorded in the manifest from
    /// its first write so that only that job's `hook post --token` releases it.
    pub hook_token: Option<String>,
}

pub type Opener = Arc<dyn Fn(&str) -> crate::hypervisor::HvResult<Arc<dyn Host>> + Send + Sync>;

/// Create `d`'s overlay; on failure nothing of it is left (a file that was already there is
/// never touched).
fn precreate(d: &catalog::DiskRecord) -> Result<(), SnapshotError> {
    // Claim the path first, exclusively: qemu-img would silently truncate a file that is
    // already there, and a file of that name belongs to someone else (another catalog's run
    // that picked the same snapshot ID, or anything not ours). The preflight refuses existing
    // overlays; this closes the race between that check and here.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&d.overlay)
        .map_err(|e| SnapshotError::Precreate {
            path: d.overlay.clone(),
            detail: if e.kind() == std::io::ErrorKind::AlreadyExists {
                "it already exists (another run's overlay?): nothing was overwritten; check `cgsnap list` and remove the file if it is nobody's".to_string()
            } else {
                e.to_string()
            },
        })?;
    let made = fill_overlay(d);
    if made.is_err() {
        let _ = std::fs::remove_file(&d.overlay);
    }
    made
}

/// Write the qcow2 header of `d`'s (just claimed) overlay and give it the image's owner.
fn fill_overlay(d: &catalog::DiskRecord) -> Result<(), SnapshotError> {
    // -u: do not open the backing image (QEMU holds its write lock); the size is given instead.
    let out = std::process::Command::new("qemu-img")
        .args([
            "create", "-q", "-f", "qcow2", "-u", "-F", &d.format, "-b", &d.image, &d.overlay,
        ])
        .arg(d.virtual_size.to_string())
        .output()
        .map_err(|e| SnapshotError::Precreate {
            path: d.overlay.clone(),
            detail: format!("qemu-img: {e}"),
        })?;
    if !out.status.success() {
        return Err(SnapshotError::Precreate {
            path: d.overlay.clone(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    // The overlay belongs to whoever owns the image: an unprivileged (session) QEMU must be
    // able to write it; a system daemon relabels it anyway.
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(&d.image)
        .and_then(|m| std::os::unix::fs::chown(&d.overlay, Some(m.uid()), Some(m.gid())));
    owner.map_err(|e| SnapshotError::Precreate {
        path: d.overlay.clone(),
        detail: format!("cannot give it the owner of {}: {e}", d.image),
    })
}

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

/// A rollback that left members on their overlays: each one's release error (which names it).
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct RollbackError(pub Vec<release::ReleaseError>);

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
fn not_known_running(plan: &[PlannedMember]) -> Vec<String> {
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
fn abort_unfrozen(
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
    group::validate_name(&opts.group)?;
    let _lock = cat.lock(&opts.group)?;
    let id = catalog::new_id(&opts.group, now);
    let popts = preflight::Options {
        id: &id,
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
        Some((order, _)) => Some(disk_order::prepare(&plan, &id, &opts.group, order, reuse)?),
        None => None,
    };
    let mut man = manifest(&id, &opts.group, now, &plan);
    man.hook_token = opts.hook_token.clone();
    cat.write(&man)?;
    drop(planning);

    if reuse {
        let mut created = Vec::new();
        let made: Result<(), SnapshotError> =
            plan.iter().flat_map(|p| p.disks.iter()).try_for_each(|d| {
                precreate(d)?;
                created.push(&d.overlay);
                Ok(())
            });
        if let Err(e) = made {
            // Nothing is in use yet: every file this run created is empty and can go (and
            // only those: one found already there is someone else's).
            for o in created {
                let _ = std::fs::remove_file(o);
            }
            man.transition(SnapState::Aborted)?;
            man.error = Some(e.to_string());
            cat.write(&man)?;
            return Err(e);
        }
    }

    ev.probe.at(Point::Resolved);
    if let (Some(staged), Some((order, gap))) = (staged, &opts.unsafe_disk_order) {
        return disk_order::take(cat, man, &plan, &staged, order, *gap, opts, t0, ev);
    }

    let watch: Vec<WatchMember> = plan
        .iter()
        .map(|p| WatchMember {
            uri: p.member.host.uri().to_string(),
            domain: p.member.domain.clone(),
        })
        .collect();
    // The staggered control keeps the watchdog armed across all its gaps; the budget bounds
    // each member's own freeze there, so it grows by one gap per member.
    let budget = opts.freeze_budget + opts.unsafe_stagger.unwrap_or_default() * plan.len() as u32;
    let scope = crate::snapshot::watchdog::Scope {
        catalog: cat.dir().to_path_buf(),
        group: opts.group.clone(),
        id: id.clone(),
    };
    let mut dog = match Watchdog::spawn(&opts.exe, &watch, budget, Some(scope)) {
        Ok(d) => d,
        Err(e) => {
            abort_unfrozen(cat, &mut man, &plan, &opts.release, &e.to_string(), ev)?;
            return Err(e.into());
        }
    };
    let mut steps = Vec::with_capacity(plan.len());
    for p in &plan {
        let host = match &opts.connect_each {
            Some(open) => match open(p.member.host.uri()) {
                Ok(h) => h,
                Err(e) => {
                    drop(dog);
                    abort_unfrozen(cat, &mut man, &plan, &opts.release, &e.to_string(), ev)?;
                    return Err(SnapshotError::Protocol {
                        id,
                        outcome: "rolled back",
                        cause: e.to_string(),
                    });
                }
            },
            None => p.member.host.clone(),
        };
        steps.push(Step {
            host,
            domain: p.member.domain.clone(),
            snapshot_xml: p.snapshot_xml.clone(),
            reuse,
        });
    }
    ev.probe.at(Point::Watched);
    let preflight_ms = ms(t0.elapsed());
    if let Err(e) = dog.arm() {
        // The watchdog is gone (killed?): freezing without it could leave a VM paused.
        drop(dog);
        abort_unfrozen(cat, &mut man, &plan, &opts.release, &e.to_string(), ev)?;
        return Err(e.into());
    }
    let env = Env {
        wall_clock: &Utc::now,
        resume_attempts: 5,
        resume: opts.resume,
        probe: ev.probe,
    };
    let out = match opts.unsafe_stagger {
        None => protocol::run(&steps, &env),
        Some(gap) => {
            man.unsafe_stagger_ms = Some(gap.as_millis() as u64);
            protocol::run_staggered(&steps, &env, gap)
        }
    };
    let fired = if out.all_resumed() && out.first_error().is_none() {
        dog.disarm()
    } else {
        // Some member could not be resumed by us (e.g. libvirtd restarting), or a call failed
        // and a member may be paused without our knowing (a pause whose reply was lost): the
        // watchdog, still armed, resumes every member still paused when its pipe closes; wait
        // for that before rolling back.
        dog.abandon()
    };

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
    let cause = if fired {
        Some(format!(
            "freeze budget of {} ms exceeded",
            opts.freeze_budget.as_millis()
        ))
    } else {
        out.first_error().map(|e| e.to_string())
    };
    let Some(cause) = cause else {
        man.transition(SnapState::Taken)?;
        cat.write(&man)?;
        return Ok(man);
    };
    let cut: Vec<bool> = out.members.iter().map(|m| m.paused).collect();
    let outcome = roll_back_into(&mut man, &plan, &opts.release, &cut, &cause, ev)?;
    // Both we and the watchdog tried; if a member is still (or maybe) paused, say so and how
    // to end it rather than let the message claim otherwise.
    let stuck = not_known_running(&plan);
    let cause = if stuck.is_empty() {
        cause
    } else {
        format!(
            "{cause}; NOT RESUMED: {}: resume it as soon as its libvirtd answers (`virsh -c URI resume DOMAIN`)",
            stuck.join(", ")
        )
    };
    cat.write(&man)?;
    Err(if fired {
        SnapshotError::Budget {
            id,
            budget_ms: opts.freeze_budget.as_millis(),
            outcome,
        }
    } else {
        SnapshotError::Protocol { id, outcome, cause }
    })
}

/// Path of the manifest for display.
pub fn manifest_path(cat: &Catalog, id: &str) -> PathBuf {
    Path::new(cat.dir())
        .join("snapshots")
        .join(format!("{id}.json"))
}

#[cfg(test)]
mod tests;
