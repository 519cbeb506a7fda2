//! The freeze → snapshot → thaw protocol over [`Host`], with timings.
//!
//! # Why the cut is consistent even though members resume early
//! Let `P_i` be the instant member `i` is paused and `R_i` the instant it is resumed. A paused
//! VM executes nothing: it neither writes its disks nor sends a packet. Its snapshot, taken at
//! any instant in `[P_i, R_i]`, therefore records exactly its state at `P_i`. Suppose a write
//! `w_b` in B's snapshot depends on a write `w_a` of A (A sent something after `w_a`, B acted
//! on it before `P_b`). Then `w_a` happened before A's send, which happened before `P_b`. If
//! `w_a` were missing from A's snapshot it happened after `P_a`, i.e. while A was resumed:
//! after `R_a`. So `R_a < P_b`. The protocol forbids exactly that: **no member is resumed
//! before every member is paused** (`max P_i < min R_i`). Within that rule a member may be
//! resumed as soon as its own snapshot is done; it need not wait for the slowest member.
//! The *consistency point* is reported as the wall-clock instant the last pause completed.
//!
//! # Resume policy
//! [`Resume::Early`] resumes each member as soon as its own snapshot is done: a fast member is
//! frozen for less time, but resumed guests then compete for the CPUs with the snapshots still
//! running, which stretches the freeze of everyone else. [`Resume::Together`] (the default)
//! holds every member until the last snapshot is done and then resumes all in parallel: every
//! member's freeze equals the group window, and that window is shorter on a host whose CPUs
//! the guests keep busy. Both obey the rule above; the benchmark measures both in the same
//! rounds (`bench --resume together,early`).
//!
//! Invariants enforced here:
//! - all members are paused (in parallel) before any snapshot starts and before any resume;
//! - if any pause fails, nothing is snapshotted and every paused member is resumed;
//! - every member that was paused is resumed, whatever its snapshot did (retrying the resume);
//! - timings come from one monotonic clock; wall-clock time only names the consistency point.

use crate::events::{NoProbe, Point, Probe};
use crate::hypervisor::{DomState, Host, HvError, HvErrorKind};
use crate::model::negative::{ControlKind, NegativeControl};
use chrono::{DateTime, Utc};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// When a member is resumed (see module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Resume {
    /// Each member as soon as its own snapshot is done.
    Early,
    /// All members together, once every snapshot is done. The default: on the 2-core reference
    /// host it gave a shorter window and shorter member freezes at N = 8 and the same below
    /// (same-run A/B, `docs/bench/default/`).
    #[default]
    Together,
}

/// What to do to one member.
pub struct Step {
    /// The connection the member is paused, snapshotted and resumed through.
    pub host: Arc<dyn Host>,
    /// The member's domain.
    pub domain: String,
    /// How its disks are cut.
    pub cut: Cut,
}

/// How a paused member's disks are cut: both cover every listed disk at one instant.
#[derive(Debug, Clone)]
pub enum Cut {
    /// An external disk-only snapshot: the disks switch to overlays.
    Snapshot {
        /// The `<domainsnapshot>` XML.
        xml: String,
        /// Let libvirt reuse pre-created overlays.
        reuse: bool,
    },
    /// A pull-mode backup job with a checkpoint: the chains stay as they are.
    Backup {
        /// The `<domainbackup>` XML.
        backup_xml: String,
        /// The `<domaincheckpoint>` XML.
        checkpoint_xml: String,
    },
}

/// What happened to one member, with its timings in milliseconds (`None`: not attempted).
#[derive(Debug, Default, Clone)]
pub struct MemberOutcome {
    /// Paused (by us, or found paused after a pause whose reply was lost).
    pub paused: bool,
    /// Its snapshot succeeded.
    pub snapshotted: bool,
    /// Resumed by us.
    pub resumed: bool,
    /// The pause call.
    pub pause_ms: Option<f64>,
    /// The snapshot call.
    pub snapshot_ms: Option<f64>,
    /// The resume call(s), retries included.
    pub resume_ms: Option<f64>,
    /// Pause start to resume end.
    pub freeze_ms: Option<f64>,
    /// The first call of this member that failed.
    pub error: Option<HvError>,
    pause_start: Option<Instant>,
    resume_end: Option<Instant>,
    snap_start: Option<Instant>,
    snap_end: Option<Instant>,
    pause_end: Option<Instant>,
}

/// What a run of the protocol did, member by member and as a group.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// One per step, in step order.
    pub members: Vec<MemberOutcome>,
    /// Wall-clock instant the last pause completed; `None` when a pause failed.
    pub consistency_point: Option<DateTime<Utc>>,
    /// First pause start to last resume end: the group's freeze window. `None` for a
    /// negative control, whose members were never frozen together.
    pub freeze_window_ms: Option<f64>,
    /// What a negative control did instead (`None` for the real protocol).
    pub negative_control: Option<NegativeControl>,
    /// First pause start to last pause end.
    pub pause_ms: f64,
    /// First snapshot start to last snapshot end.
    pub snapshot_ms: f64,
    /// Longest single resume call.
    pub resume_ms: f64,
}

impl Outcome {
    /// The first member's error, in step order.
    pub fn first_error(&self) -> Option<&HvError> {
        self.members.iter().find_map(|m| m.error.as_ref())
    }
    /// Every member that was paused was resumed by us.
    pub fn all_resumed(&self) -> bool {
        self.members.iter().all(|m| !m.paused || m.resumed)
    }
}

/// What the caller injects: the time source, the resume policy, and the [`Probe`] that tests
/// and benchmarks hook in with ([`Point::Pausing`], [`Point::Paused`], [`Point::Frozen`],
/// [`Point::Snapped`], and the freeze window).
pub struct Env<'a> {
    /// Names the consistency point.
    pub wall_clock: &'a (dyn Fn() -> DateTime<Utc> + Sync),
    /// Resume calls per member before giving up (at least one).
    pub resume_attempts: u32,
    /// When members are resumed.
    pub resume: Resume,
    /// Hears the protocol's points and the freeze window.
    pub probe: &'a dyn Probe,
}

impl Env<'static> {
    /// Real clock, no probe.
    pub fn plain(resume_attempts: u32) -> Self {
        Env {
            wall_clock: &Utc::now,
            resume_attempts,
            resume: Resume::default(),
            probe: &NoProbe,
        }
    }
}

struct Gate {
    /// Members that paused or failed to.
    arrived: usize,
    /// Members done with their snapshot, or with nothing to snapshot ([`Resume::Together`]).
    done: usize,
    failed: bool,
    consistency_point: Option<DateTime<Utc>>,
}

/// A fresh barrier: every member thread arrives once, paused or failed to pause.
fn gate() -> (Mutex<Gate>, Condvar) {
    (
        Mutex::new(Gate {
            arrived: 0,
            done: 0,
            failed: false,
            consistency_point: None,
        }),
        Condvar::new(),
    )
}

/// Milliseconds, the unit of every timing in manifests and reports.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn resume_with_retry(step: &Step, attempts: u32) -> Result<(), HvError> {
    let mut last = None;
    for i in 0..attempts.max(1) {
        match step.host.resume(&step.domain) {
            Ok(()) => return Ok(()),
            // Already running: the watchdog resumed it after the freeze budget expired.
            Err(_) if matches!(step.host.state(&step.domain), Ok(DomState::Running)) => {
                return Ok(());
            }
            Err(e) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(20 * u64::from(i + 1)));
                // The call may have failed because libvirtd restarted: a paused VM survives
                // that, so resume through a fresh connection.
                let _ = step.host.reconnect();
            }
        }
    }
    Err(last.unwrap_or_else(|| unreachable_error(step)))
}

fn unreachable_error(step: &Step) -> HvError {
    HvError {
        uri: step.host.uri().to_string(),
        op: "resume",
        target: step.domain.clone(),
        message: "resume was not attempted".into(),
        kind: crate::hypervisor::HvErrorKind::Other,
    }
}

/// After a failed pause: is the member paused all the same? Asks again over a fresh
/// connection when the first question fails; `false` when it cannot tell (the caller
/// then hands the member to the watchdog, see `snapshot::take`).
fn paused_anyway(host: &dyn Host, domain: &str, err: &HvError) -> bool {
    // Gone needs no second look (the other members wait for it, paused).
    if err.kind == HvErrorKind::NoDomain {
        return false;
    }
    matches!(host.state_rechecked(domain), Ok(DomState::PausedByUser))
}

/// One member's whole protocol, run on its own thread: pause, wait for every member to have
/// paused (or failed to), snapshot unless any failed, wait for every snapshot under
/// [`Resume::Together`], resume.
fn member_thread(
    step: &Step,
    index: usize,
    gate: &(Mutex<Gate>, Condvar),
    n: usize,
    env: &Env,
) -> MemberOutcome {
    let mut out = MemberOutcome::default();
    let t = pause(step, index, env, &mut out);
    let failed = all_paused(gate, n, &out, env);
    if out.paused && !failed {
        snapshot(step, index, env, &mut out);
    }
    if env.resume == Resume::Together {
        all_done(gate, n);
    }
    if out.paused {
        resume(step, env, t, &mut out);
    }
    out
}

/// Pause the member, recording whether it is paused; returns the instant the pause started.
fn pause(step: &Step, index: usize, env: &Env, out: &mut MemberOutcome) -> Instant {
    env.probe.at(Point::Pausing { order: index });
    let t = Instant::now();
    out.pause_start = Some(t);
    let pause = step.host.suspend(&step.domain);
    let t_paused = Instant::now();
    out.pause_ms = Some(ms(t_paused - t));
    out.pause_end = Some(t_paused);
    out.paused = pause.is_ok();
    if let Err(e) = pause {
        // The pause may have happened though its reply was lost (connection dropped, libvirtd
        // restarted): a member found paused is resumed with the others.
        out.paused = paused_anyway(step.host.as_ref(), &step.domain, &e);
        out.error = Some(e);
    } else {
        env.probe.at(Point::Paused { order: index });
    }
    t
}

/// Barrier: wait until every member has either paused or failed to. The last to arrive names
/// the consistency point when none failed. Returns whether any failed.
fn all_paused(gate: &(Mutex<Gate>, Condvar), n: usize, out: &MemberOutcome, env: &Env) -> bool {
    let (lock, cv) = gate;
    let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
    g.arrived += 1;
    g.failed |= !out.paused || out.error.is_some();
    if g.arrived == n {
        if !g.failed {
            g.consistency_point = Some((env.wall_clock)());
            env.probe.at(Point::Frozen);
        }
        cv.notify_all();
    }
    while g.arrived < n {
        g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
    }
    g.failed
}

/// Snapshot the (paused) member, recording the result and its timing.
fn snapshot(step: &Step, index: usize, env: &Env, out: &mut MemberOutcome) {
    let s = Instant::now();
    out.snap_start = Some(s);
    let r = match &step.cut {
        Cut::Snapshot { xml, reuse } => step.host.snapshot(&step.domain, xml, *reuse),
        Cut::Backup {
            backup_xml,
            checkpoint_xml,
        } => step
            .host
            .backup_begin(&step.domain, backup_xml, checkpoint_xml),
    };
    match r {
        Ok(()) => out.snapshotted = true,
        Err(e) => out.error = Some(e),
    }
    let e = Instant::now();
    out.snap_end = Some(e);
    out.snapshot_ms = Some(ms(e - s));
    env.probe.at(Point::Snapped { order: index });
}

/// Barrier of [`Resume::Together`]: wait until every member is done with its snapshot.
fn all_done(gate: &(Mutex<Gate>, Condvar), n: usize) {
    // Every thread arrives here exactly once, whatever its pause or snapshot did, so no
    // member can wait forever for another.
    let (lock, cv) = gate;
    let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
    g.done += 1;
    if g.done == n {
        cv.notify_all();
    }
    while g.done < n {
        g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
    }
}

/// Resume the member (retrying), recording its freeze from `paused_at`; a resume error is
/// kept only when nothing failed before it.
fn resume(step: &Step, env: &Env, paused_at: Instant, out: &mut MemberOutcome) {
    let r = Instant::now();
    match resume_with_retry(step, env.resume_attempts) {
        Ok(()) => out.resumed = true,
        Err(e) => {
            if out.error.is_none() {
                out.error = Some(e);
            }
        }
    }
    let re = Instant::now();
    out.resume_ms = Some(ms(re - r));
    out.resume_end = Some(re);
    out.freeze_ms = Some(ms(re - paused_at));
}

/// Pause all, snapshot each, resume by `env.resume` (see module docs).
pub fn run(steps: &[Step], env: &Env) -> Outcome {
    env.probe.window(true);
    let out = run_members(steps, env);
    env.probe.window(false);
    out
}

fn run_members(steps: &[Step], env: &Env) -> Outcome {
    let n = steps.len();
    let gate = gate();
    let shared = &gate;
    let members: Vec<MemberOutcome> = std::thread::scope(|s| {
        let handles: Vec<_> = steps
            .iter()
            .enumerate()
            .map(|(i, st)| s.spawn(move || member_thread(st, i, shared, n, env)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let g = gate.0.lock().unwrap_or_else(|p| p.into_inner());
    let span = |a: Vec<Instant>, b: Vec<Instant>| match (a.iter().min(), b.iter().max()) {
        (Some(a), Some(b)) if b >= a => Some(ms(*b - *a)),
        _ => None,
    };
    let starts = |f: fn(&MemberOutcome) -> Option<Instant>| -> Vec<Instant> {
        members.iter().filter_map(f).collect()
    };
    Outcome {
        consistency_point: g.consistency_point,
        freeze_window_ms: span(starts(|m| m.pause_start), starts(|m| m.resume_end)),
        negative_control: None,
        pause_ms: span(starts(|m| m.pause_start), starts(|m| m.pause_end)).unwrap_or(0.0),
        snapshot_ms: span(starts(|m| m.snap_start), starts(|m| m.snap_end)).unwrap_or(0.0),
        resume_ms: members
            .iter()
            .filter_map(|m| m.resume_ms)
            .fold(0.0, f64::max),
        members: members.clone(),
    }
}

/// NEGATIVE CONTROL, for testing verifiers only: members one after the other, each paused,
/// snapshotted and resumed before the next is touched, `gap` apart. This breaks the rule above
/// on purpose (members resume before others pause), so the result is *not* a consistent cut:
/// it has no freeze window, only the span of [`NegativeControl`] (the members' own freezes
/// plus the gaps). The reported consistency point is the first member's pause (nominal).
pub fn run_staggered(steps: &[Step], env: &Env, gap: Duration) -> Outcome {
    let mut members = Vec::new();
    let mut cp = None;
    for (i, st) in steps.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(gap);
        }
        let gate = gate();
        let m = member_thread(st, 0, &gate, 1, env);
        let g = gate.0.lock().unwrap_or_else(|p| p.into_inner());
        if cp.is_none() {
            cp = g.consistency_point;
        }
        members.push(m);
    }
    let first = members.iter().find_map(|m| m.pause_start);
    let last = members.iter().filter_map(|m| m.resume_end).max();
    let control = NegativeControl {
        kind: ControlKind::UnsafeStagger,
        span_ms: first
            .zip(last)
            .map(|(a, b)| ms(b.saturating_duration_since(a))),
        deliberate_gap_ms: gap.as_millis() as u64 * steps.len().saturating_sub(1) as u64,
        max_member_freeze_ms: members.iter().filter_map(|m| m.freeze_ms).reduce(f64::max),
    };
    Outcome {
        consistency_point: cp,
        freeze_window_ms: None,
        negative_control: Some(control),
        pause_ms: members.iter().filter_map(|m| m.pause_ms).sum(),
        snapshot_ms: members.iter().filter_map(|m| m.snapshot_ms).sum(),
        resume_ms: members
            .iter()
            .filter_map(|m| m.resume_ms)
            .fold(0.0, f64::max),
        members,
    }
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
