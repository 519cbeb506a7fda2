//! The printing side of the engine's events: the [`Reporter`] that writes progress and notes
//! on stderr, and the test-only [`Probe`] that holds a run at named points.
//!
//! Invariant: without a `CGSNAP_TEST_HOLD_*_MS` variable the probe is [`NoProbe`], so a
//! production run is never held; every hold is announced on stderr before it starts (tests wait
//! for those lines).

use cgsnap::events::{NoProbe, Note, Point, Probe, Progress, Reporter};
use std::time::Duration;

/// The engine's progress and notes, printed on stderr as `cgsnap: ...` lines.
pub struct Stderr;

impl Reporter for Stderr {
    fn progress(&self, p: &Progress<'_>) {
        eprintln!("cgsnap: {p}");
    }
    fn note(&self, n: &Note<'_>) {
        eprintln!("cgsnap: {n}");
    }
}

/// Test-only fault injection: holds the run at the points named by `CGSNAP_TEST_HOLD_*_MS`
/// (milliseconds), each announced on stderr, so that an integration test can break something
/// right there (kill the process, restart libvirtd, delete a VM).
#[derive(Default)]
pub struct EnvHolds {
    /// Every member paused, before the snapshots.
    frozen: Option<Duration>,
    /// Each member after its snapshot, before its resume.
    snapped: Option<Duration>,
    /// Member `i` waits `i` times this before its pause.
    pausing: Option<Duration>,
    /// Group resolved (preflight done, overlays pre-created), before the watchdog.
    resolved: Option<Duration>,
    /// Watchdog ready, before it is armed.
    watched: Option<Duration>,
    /// A release's commits started, before it waits for them.
    commit: Option<Duration>,
    /// An export's guard started, before it reads.
    exporting: Option<Duration>,
}

impl EnvHolds {
    /// The holds set in the environment, read once; `None` when no hold is set.
    pub fn from_env() -> Option<Self> {
        let hold = |var: &str| {
            std::env::var(var)
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis)
        };
        let h = EnvHolds {
            frozen: hold("CGSNAP_TEST_HOLD_FROZEN_MS"),
            snapped: hold("CGSNAP_TEST_HOLD_SNAPPED_MS"),
            pausing: hold("CGSNAP_TEST_HOLD_PAUSING_MS"),
            resolved: hold("CGSNAP_TEST_HOLD_RESOLVED_MS"),
            watched: hold("CGSNAP_TEST_HOLD_WATCHED_MS"),
            commit: hold("CGSNAP_TEST_HOLD_COMMIT_MS"),
            exporting: hold("CGSNAP_TEST_HOLD_EXPORTING_MS"),
        };
        let any = [
            h.frozen,
            h.snapped,
            h.pausing,
            h.resolved,
            h.watched,
            h.commit,
            h.exporting,
        ]
        .iter()
        .any(Option::is_some);
        any.then_some(h)
    }
}

/// Say where the run stands, then hold it there (when `hold` is set).
fn hold_at(hold: Option<Duration>, what: &str) {
    if let Some(h) = hold {
        eprintln!("cgsnap: {what}");
        std::thread::sleep(h);
    }
}

impl Probe for EnvHolds {
    fn at(&self, point: Point<'_>) {
        match point {
            Point::Resolved => hold_at(self.resolved, "members resolved, not yet frozen"),
            Point::Watched => hold_at(self.watched, "watchdog ready, not yet armed"),
            Point::Pausing { order } => {
                if let Some(h) = self.pausing {
                    std::thread::sleep(h * order as u32);
                }
            }
            Point::Paused { .. } => {
                if self.pausing.is_some() {
                    eprintln!("cgsnap: member paused");
                }
            }
            Point::Frozen => hold_at(self.frozen, "all members frozen"),
            Point::Snapped { .. } => hold_at(self.snapped, "member snapshotted, not yet resumed"),
            Point::CommitsStarted { domain } => {
                hold_at(self.commit, &format!("commits of {domain} started"))
            }
            Point::Exporting { id } => hold_at(
                self.exporting,
                &format!("export of {id} guarded, not yet read"),
            ),
        }
    }
}

/// The probe of a command: [`EnvHolds`] when a hold is set, else none.
pub fn env_probe() -> Box<dyn Probe> {
    match EnvHolds::from_env() {
        Some(h) => Box::new(h),
        None => Box::new(NoProbe),
    }
}
