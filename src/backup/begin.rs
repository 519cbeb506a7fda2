//! `cgsnap backup begin`: lock → plan → check → record → make the member directories → freeze,
//! start every member's backup job with its checkpoint, thaw → record; undo on every failure.
//!
//! Invariants (those of `snapshot::take`, and):
//! - the same consistency rule: every member is paused before any job starts and none is
//!   resumed before every member is paused (`snapshot::protocol`, with the same watchdog and
//!   freeze budget);
//! - no disk chain changes: the jobs only serve the disks over NBD and copy the blocks the
//!   guests overwrite into scratch files;
//! - a cut that fails leaves no job running and no checkpoint of its own (its bitmap would
//!   make the next incremental's base look newer than the last export), and its manifest
//!   `aborted`, or `failed` with the cause when that undo did not finish.

use super::end::{drop_checkpoint, end_job};
use super::prepare::{self, SOCKET_MAX};
use super::xml::{self, JobDisk};
use super::{BackupError, base};
use crate::catalog::{Catalog, Manifest, MemberRecord, SnapState};
use crate::events::{Events, Point};
use crate::hypervisor::is_local;
use crate::model::backup::{self as rec, BackupDisk, BackupMember, BackupMode, BackupRecord};
use crate::snapshot::preflight::{self, PlannedMember};
use crate::snapshot::protocol::{self, Cut, Env, Step, ms};
use crate::snapshot::watchdog::{self, WatchMember, Watchdog};
use crate::snapshot::{self, SnapshotError};
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// How `backup begin` cuts a group.
pub struct Options {
    /// Group, freeze budget, watchdog, connections, resume policy, min free space (the
    /// snapshot's; the negative controls and pre-creation do not apply).
    pub snap: snapshot::Options,
    /// Directory for the sockets and scratch files (a per-cut directory is made in it).
    pub scratch_dir: PathBuf,
    /// Base the cut on the group's last exported cut when that is sound; else full.
    pub incremental: bool,
    /// What else that base must satisfy (chain length, where its export lies).
    pub rules: base::Rules,
}

/// Take a backup cut of the group: returns its manifest, `taken` (every job serving).
pub fn begin(
    hosts: &[Arc<dyn crate::hypervisor::Host>],
    cat: &Catalog,
    opts: &Options,
    now: DateTime<Utc>,
    ev: Events,
) -> Result<Manifest, BackupError> {
    let t0 = Instant::now();
    let s = &opts.snap;
    let (_lock, id) = snapshot::claim(cat, &s.group, now)?;
    let (plan, mut man) = plan_and_record(hosts, cat, opts, &id, now)?;
    ev.probe.at(Point::Resolved);
    if let Err(e) = make_dirs(&plan, &man) {
        return Err(abort(cat, &mut man, &plan, e)?);
    }
    let mut dog = match start_watchdog(opts, &plan, cat, &id) {
        Ok(d) => d,
        Err(e) => return Err(abort(cat, &mut man, &plan, e)?),
    };
    let steps = match steps(opts, &plan, &man) {
        Ok(s) => s,
        Err(e) => {
            drop(dog);
            return Err(abort(cat, &mut man, &plan, e)?);
        }
    };
    ev.probe.at(Point::Watched);
    let preflight_ms = ms(t0.elapsed());
    if let Err(e) = dog.arm() {
        drop(dog);
        return Err(abort(cat, &mut man, &plan, e.into())?);
    }
    let env = Env {
        wall_clock: &Utc::now,
        resume_attempts: 5,
        resume: s.resume,
        probe: ev.probe,
    };
    let out = protocol::run(&steps, &env);
    let fired = if out.all_resumed() && out.first_error().is_none() {
        dog.disarm()
    } else {
        // A member may be paused without our knowing: the armed watchdog resumes it.
        dog.abandon()
    };
    snapshot::record_timings(&mut man, &out, preflight_ms);
    let Some(cause) = snapshot::failure_cause(&out, fired, s) else {
        man.transition(SnapState::Taken)?;
        cat.write(&man)?;
        return Ok(man);
    };
    let outcome = undo(cat, &mut man, &plan, &cause)?;
    Err(if fired {
        BackupError::Budget {
            id,
            budget_ms: s.freeze_budget.as_millis(),
            outcome,
        }
    } else {
        let stuck = snapshot::not_known_running(&plan);
        let cause = if stuck.is_empty() {
            cause
        } else {
            format!(
                "{cause}; NOT RESUMED: {}: resume it as soon as its libvirtd answers (`virsh -c URI resume DOMAIN`)",
                stuck.join(", ")
            )
        };
        BackupError::Cut { id, outcome, cause }
    })
}

/// Plan the group (holding the planning lock), check what a backup cut needs, choose its
/// base and write its `pending` manifest.
fn plan_and_record(
    hosts: &[Arc<dyn crate::hypervisor::Host>],
    cat: &Catalog,
    opts: &Options,
    id: &str,
    now: DateTime<Utc>,
) -> Result<(Vec<PlannedMember>, Manifest), BackupError> {
    let s = &opts.snap;
    if !opts.scratch_dir.exists() {
        use std::os::unix::fs::PermissionsExt;
        // Made searchable (not listable) by QEMU, which reaches its own directory below it.
        std::fs::create_dir_all(&opts.scratch_dir)
            .and_then(|()| {
                std::fs::set_permissions(&opts.scratch_dir, std::fs::Permissions::from_mode(0o711))
            })
            .map_err(|e| BackupError::Io {
                path: opts.scratch_dir.display().to_string(),
                detail: format!("cannot create the scratch directory: {e}"),
            })?;
    }
    let popts = preflight::Options {
        id,
        overlay_dir: Some(&opts.scratch_dir),
        min_free: s.min_free,
    };
    let planning = cat.lock_planning().map_err(SnapshotError::from)?;
    let plan = match snapshot::plan(hosts, cat, &s.group, &popts) {
        Ok(p) => p,
        Err(SnapshotError::Outstanding { group, id, state }) => {
            return Err(BackupError::Outstanding { group, id, state });
        }
        Err(e) => return Err(e.into()),
    };
    for p in &plan {
        check_member(p)?;
        prepare::check_reachable(&opts.scratch_dir, prepare::dac_owner(&p.domain_xml))?;
    }
    let (since, full_reason) = match opts.incremental {
        false => (None, None),
        true => match base::choose(&cat.list()?, &s.group, &plan, &opts.rules) {
            Ok(b) => (Some(b), None),
            Err(why) => (None, Some(why)),
        },
    };
    let record = record(&opts.scratch_dir, id, &plan, since, full_reason, s.min_free)?;
    let mut man = Manifest {
        members: plan
            .iter()
            .map(|p| {
                let disks = p
                    .disks
                    .iter()
                    .map(|d| crate::catalog::DiskRecord {
                        overlay: String::new(),
                        ..d.clone()
                    })
                    .collect();
                MemberRecord::new(
                    &p.member.domain,
                    p.member.host.uri(),
                    p.domain_xml.clone(),
                    disks,
                )
            })
            .collect(),
        ..Manifest::new(id, &s.group, SnapState::Pending, now)
    };
    man.hook_token = s.hook_token.clone();
    man.backup = Some(record);
    cat.write(&man)?;
    drop(planning);
    Ok((plan, man))
}

/// A member a backup cut can serve: local, no backup job already, images fit for bitmaps.
fn check_member(p: &PlannedMember) -> Result<(), BackupError> {
    let host = &p.member.host;
    let dom = &p.member.domain;
    if !is_local(host.uri()) {
        return Err(BackupError::Remote {
            domain: dom.clone(),
            uri: host.uri().to_string(),
        });
    }
    if host
        .backup_xml(dom)
        .map_err(|e| SnapshotError::Protocol {
            id: dom.clone(),
            outcome: "not started",
            cause: e.to_string(),
        })?
        .is_some()
    {
        return Err(BackupError::JobRunning {
            domain: dom.clone(),
        });
    }
    p.disks
        .iter()
        .try_for_each(|d| prepare::check_format(dom, d))
}

/// The backup record of a cut of `plan`: sockets and scratch files under `SCRATCH/ID/DOMAIN`.
fn record(
    scratch: &Path,
    id: &str,
    plan: &[PlannedMember],
    since: Option<String>,
    full_reason: Option<String>,
    min_free: u64,
) -> Result<BackupRecord, BackupError> {
    let mut members = Vec::with_capacity(plan.len());
    for p in plan {
        let dir = prepare::member_path(scratch, id, &p.member.domain);
        let socket = dir.join("nbd.sock").display().to_string();
        if socket.len() > SOCKET_MAX {
            return Err(BackupError::SocketPath {
                len: socket.len(),
                path: socket,
            });
        }
        let disks = p
            .disks
            .iter()
            .map(|d| BackupDisk {
                target: d.target.clone(),
                image: d.image.clone(),
                virtual_size: d.virtual_size,
                scratch: dir
                    .join(format!("{}.scratch", d.target))
                    .display()
                    .to_string(),
                nbd_uri: rec::nbd_uri(&d.target, &socket),
                dirty_context: since.as_ref().map(|_| rec::dirty_context(&d.target)),
            })
            .collect();
        members.push(BackupMember {
            domain: p.member.domain.clone(),
            uri: p.member.host.uri().to_string(),
            socket,
            disks,
        });
    }
    Ok(BackupRecord {
        mode: if since.is_some() {
            BackupMode::Incremental
        } else {
            BackupMode::Full
        },
        checkpoint: id.to_string(),
        since,
        full_reason,
        scratch_dir: scratch.join(id).display().to_string(),
        members,
        export: None,
        ended_at: None,
        min_free: Some(min_free),
    })
}

/// Make `SCRATCH/ID` (traversable, so QEMU reaches its own directory) and one private
/// directory per member, owned by the user QEMU runs it as.
fn make_dirs(plan: &[PlannedMember], man: &Manifest) -> Result<(), BackupError> {
    use std::os::unix::fs::PermissionsExt;
    let Some(b) = &man.backup else { return Ok(()) };
    let top = Path::new(&b.scratch_dir);
    std::fs::create_dir(top)
        .and_then(|()| std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o711)))
        .map_err(|e| BackupError::Io {
            path: top.display().to_string(),
            detail: e.to_string(),
        })?;
    for (p, m) in plan.iter().zip(&b.members) {
        let dir = Path::new(&m.socket).parent().unwrap_or(top);
        let owner = prepare::dac_owner(&p.domain_xml);
        prepare::member_dir(dir, owner)?;
        for d in &m.disks {
            prepare::scratch(&d.scratch, d.virtual_size, owner)?;
        }
    }
    Ok(())
}

/// The watchdog over every member, not yet armed.
fn start_watchdog(
    opts: &Options,
    plan: &[PlannedMember],
    cat: &Catalog,
    id: &str,
) -> Result<Watchdog, BackupError> {
    let watch: Vec<WatchMember> = plan
        .iter()
        .map(|p| WatchMember {
            uri: p.member.host.uri().to_string(),
            domain: p.member.domain.clone(),
        })
        .collect();
    let scope = watchdog::Scope {
        catalog: cat.dir().to_path_buf(),
        group: opts.snap.group.clone(),
        id: id.to_string(),
    };
    Ok(Watchdog::spawn(
        &opts.snap.exe,
        &watch,
        opts.snap.freeze_budget,
        Some(scope),
    )?)
}

/// One protocol step per member: start its backup job with the cut's checkpoint.
fn steps(opts: &Options, plan: &[PlannedMember], man: &Manifest) -> Result<Vec<Step>, BackupError> {
    let Some(b) = &man.backup else {
        return Ok(Vec::new());
    };
    let mut steps = Vec::with_capacity(plan.len());
    for (p, m) in plan.iter().zip(&b.members) {
        let host = match &opts.snap.connect_each {
            Some(open) => open(p.member.host.uri()).map_err(|e| BackupError::Cut {
                id: man.id.clone(),
                outcome: "not started",
                cause: e.to_string(),
            })?,
            None => p.member.host.clone(),
        };
        let disks: Vec<JobDisk> = m
            .disks
            .iter()
            .map(|d| JobDisk {
                target: &d.target,
                scratch: &d.scratch,
            })
            .collect();
        let targets: Vec<&str> = m.disks.iter().map(|d| d.target.as_str()).collect();
        steps.push(Step {
            host,
            domain: p.member.domain.clone(),
            cut: Cut::Backup {
                backup_xml: xml::backup_xml(&m.socket, b.since.as_deref(), &disks),
                checkpoint_xml: xml::checkpoint_xml(&b.checkpoint, &targets),
            },
        });
    }
    Ok(steps)
}

/// Abandon the cut before the freeze: its directories go, the manifest says `aborted`.
fn abort(
    cat: &Catalog,
    man: &mut Manifest,
    plan: &[PlannedMember],
    e: BackupError,
) -> Result<BackupError, BackupError> {
    let _ = undo(cat, man, plan, &e.to_string())?;
    Ok(e)
}

/// End whatever the cut started on every member (job, checkpoint, directories); the manifest
/// becomes `aborted`, or `failed` when some of it could not be undone. Returns which.
fn undo(
    cat: &Catalog,
    man: &mut Manifest,
    plan: &[PlannedMember],
    cause: &str,
) -> Result<&'static str, BackupError> {
    let mut left = Vec::new();
    for p in plan {
        let host = p.member.host.as_ref();
        let dom = &p.member.domain;
        if let Err(e) = end_job(host, dom) {
            left.push(e);
        }
        if let Err(e) = drop_checkpoint(host, dom, &man.id) {
            left.push(e);
        }
    }
    if let (true, Some(b)) = (left.is_empty(), &man.backup) {
        // The jobs are gone: their pre-created scratch files, QEMU's socket and our
        // directories go. A job that may still run keeps its directory: its scratch file
        // holds what the guest overwrote.
        let _ = std::fs::remove_dir_all(&b.scratch_dir);
    }
    let (state, outcome) = if left.is_empty() {
        (SnapState::Aborted, "rolled back")
    } else {
        (SnapState::Failed, "left for `cgsnap backup end`")
    };
    man.transition(state)?;
    man.error = Some(if left.is_empty() {
        cause.to_string()
    } else {
        format!("{cause}; not undone: {}", left.join("; "))
    });
    cat.write(man)?;
    Ok(outcome)
}
