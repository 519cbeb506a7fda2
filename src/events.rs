//! What the engine tells its caller while it works, and where tests and benchmarks hook in.
//!
//! The library writes nothing to stdout or stderr. Everything it has to say on the way (a long
//! commit's progress, a note on what it did or left behind) goes to a [`Reporter`] the caller
//! implements; the command line prints it on stderr. The points where fault injection and
//! benchmark measurements hook in are calls to a [`Probe`]; production passes [`NoProbe`],
//! so no option struct carries a test knob.
//!
//! Both travel together as [`Events`], a separate argument of the engine's entry points
//! (`snapshot::take`, `release::release_snapshot`, `release::release_member`, `hook::pre`,
//! `hook::post`), not as fields of their `Options`: options say *what* to do and stay plain
//! data (built from flags, `Copy`, `Debug`, with a `Default`), events say *who listens* and
//! are borrowed for the call only (no `Arc`, no `'static`). And a caller cannot forget them:
//! every call site names its reporter and probe, where an option with a quiet default would
//! silently drop the notes of a caller that built its options with `..Default::default()`.
//!
//! Invariants:
//! - reporters and probes are called from the engine's worker threads (one per member), so
//!   they are `Send + Sync` and must not block for long, except a probe whose purpose is to
//!   hold the engine at its point (fault injection);
//! - a probe never changes what the engine does, only when: every point is passed the same
//!   way whatever the probe is, and [`NoProbe`] makes each call a no-op;
//! - [`Point::Frozen`] is passed while every member is paused: anything slow there lengthens
//!   the freeze window (which is what the fault injection wants).

use crate::model::manifest::SnapState;
use std::fmt;

/// Progress of a long-running step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress<'a> {
    /// A commit still running (reported every 30 s): `copied` of `total` bytes.
    Commit {
        /// The member whose disk is committed.
        domain: &'a str,
        /// The disk's target (`vda`).
        target: &'a str,
        /// Bytes copied so far.
        copied: u64,
        /// Bytes to copy in all (grows while the guest writes).
        total: u64,
    },
    /// An export still running (reported every few seconds): bytes read or zeroed so far.
    Export {
        /// The cut exported.
        id: &'a str,
        /// Bytes read or zeroed so far, every disk together.
        done: u64,
        /// Bytes to read or zero in all, as far as planned yet.
        total: u64,
        /// Bytes per second since the export started.
        rate: u64,
    },
}

impl fmt::Display for Progress<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Progress::Commit {
                domain,
                target,
                copied,
                total,
            } => write!(
                f,
                "committing {domain}/{target}: {} of {} MiB copied",
                copied >> 20,
                total >> 20
            ),
            Progress::Export {
                id,
                done,
                total,
                rate,
            } => {
                let eta = match (*rate, total.saturating_sub(*done)) {
                    (0, _) => "-".to_string(),
                    (r, left) => format!("{} s", left / r),
                };
                write!(
                    f,
                    "exporting {id}: {} of {} MiB, {} MiB/s, ETA {eta}",
                    done >> 20,
                    total >> 20,
                    rate >> 20
                )
            }
        }
    }
}

/// Something the operator should know about a step that succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note<'a> {
    /// An overlay on another host, no longer used, could not be removed there (no storage
    /// pool for its directory): it stays, and the operator removes it.
    OverlayStays {
        /// The member the overlay belonged to.
        domain: &'a str,
        /// Path of the overlay on that host.
        overlay: &'a str,
        /// The host it stays on.
        uri: &'a str,
    },
    /// A member that no longer exists had its overlays merged into its images on this host.
    MergedVanished {
        /// The member that no longer exists.
        domain: &'a str,
        /// The host it was defined on.
        uri: &'a str,
        /// Number of overlays merged.
        merged: usize,
    },
    /// The same on another host, through a paused helper domain there.
    MergedVanishedRemote {
        /// The member that no longer exists.
        domain: &'a str,
        /// The host it was defined on, where the helper ran.
        uri: &'a str,
        /// Number of overlays merged.
        merged: usize,
    },
    /// A shut-off member had its overlays merged offline and its disks defined on its images.
    MergedShutOff {
        /// The shut-off member.
        domain: &'a str,
        /// Number of overlays merged.
        merged: usize,
    },
    /// `hook post` left another job's snapshot outstanding.
    OtherJobs {
        /// The snapshot left outstanding.
        id: &'a str,
        /// Its group.
        group: &'a str,
        /// Its state.
        state: SnapState,
        /// The hook token of the job that took it, if any.
        token: Option<&'a str>,
        /// It is a backup cut (ended, not released).
        cut: bool,
    },
}

impl fmt::Display for Note<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::OverlayStays {
                domain,
                overlay,
                uri,
            } => write!(
                f,
                "{domain}: overlay {overlay} stays on {uri}: no active libvirt storage pool there has its directory as target; no disk uses it any more, remove it on that host (or define a pool for that directory so that release removes it)"
            ),
            Note::MergedVanished {
                domain,
                uri,
                merged,
            } => write!(
                f,
                "{domain} no longer exists on {uri}: merged {merged} overlay(s) into their images offline"
            ),
            Note::MergedVanishedRemote {
                domain,
                uri,
                merged,
            } => write!(
                f,
                "{domain} no longer exists on {uri}: merged {merged} overlay(s) into their images there, through a paused helper domain"
            ),
            Note::MergedShutOff { domain, merged } => write!(
                f,
                "{domain} is shut off: merged {merged} overlay(s) into their images offline and defined its disks on them"
            ),
            Note::OtherJobs {
                id,
                group,
                state,
                token,
                cut,
            } => {
                let owner = match token {
                    Some(t) => format!("token {t}"),
                    None => "no token".to_string(),
                };
                let (what, fix) = match cut {
                    true => ("backup cut", "end it with `cgsnap backup end"),
                    false => ("snapshot", "release it with `cgsnap release"),
                };
                write!(
                    f,
                    "{what} {id} of group {group} ({state}, {owner}) belongs to another job and was left outstanding: once that job is done, {fix} {id}`"
                )
            }
        }
    }
}

/// Receives the engine's progress and notes (see module docs).
pub trait Reporter: Send + Sync {
    /// A long-running step is still running.
    fn progress(&self, progress: &Progress<'_>);
    /// A step succeeded with something the operator should know.
    fn note(&self, note: &Note<'_>);
}

/// A reporter that drops everything (tests, callers that only want the result).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoReport;

impl Reporter for NoReport {
    fn progress(&self, _: &Progress<'_>) {}
    fn note(&self, _: &Note<'_>) {}
}

/// A point in a snapshot or release where a test or benchmark may hook in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point<'a> {
    /// Every member resolved and planned, overlays pre-created; nothing frozen yet, no
    /// watchdog yet.
    Resolved,
    /// The watchdog is ready but not yet armed.
    Watched,
    /// A member is about to be paused; `order` is its place among the members paused
    /// together (0 for the first).
    Pausing {
        /// Place among the members paused together (0 for the first).
        order: usize,
    },
    /// A member was paused (its pause call succeeded).
    Paused {
        /// Place among the members paused together (0 for the first).
        order: usize,
    },
    /// Every member is paused, no snapshot started yet (the freeze window is open).
    Frozen,
    /// A member's snapshot call returned; it is still paused.
    Snapped {
        /// Place among the members paused together (0 for the first).
        order: usize,
    },
    /// An export's scratch guard runs and no disk has been read yet.
    Exporting {
        /// The cut exported.
        id: &'a str,
    },
    /// A release started the commits of `domain`'s disks and has not yet waited for them.
    CommitsStarted {
        /// The member whose commits were started.
        domain: &'a str,
    },
}

/// Where tests and benchmarks hook into the engine (see module docs). Every method does
/// nothing unless implemented.
pub trait Probe: Send + Sync {
    /// The engine passes `point`.
    fn at(&self, _point: Point<'_>) {}
    /// The freeze window opens (`true`, just before the first pause) or closes (`false`,
    /// after the last resume).
    fn window(&self, _open: bool) {}
}

/// The production probe: no hooks.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProbe;

impl Probe for NoProbe {}

/// Who listens to one engine call: its reporter and its probe.
#[derive(Clone, Copy)]
pub struct Events<'a> {
    /// Receives progress and notes.
    pub report: &'a dyn Reporter,
    /// Hooks into the engine's points.
    pub probe: &'a dyn Probe,
}

impl Events<'static> {
    /// Nobody listens.
    pub const NONE: Events<'static> = Events {
        report: &NoReport,
        probe: &NoProbe,
    };
}

impl<'a> Events<'a> {
    /// `report` listens, no probe.
    pub fn reporting(report: &'a dyn Reporter) -> Self {
        Events {
            report,
            probe: &NoProbe,
        }
    }

    /// The same reporter without the probe: for work nested in another step that is no hook
    /// point of its own (the release inside a snapshot's rollback).
    pub fn unprobed(self) -> Self {
        Events::reporting(self.report)
    }
}

/// A reporter that keeps every line as it would be printed (tests).
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Collected(std::sync::Mutex<Vec<String>>);

#[cfg(test)]
impl Collected {
    pub(crate) fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
impl Reporter for Collected {
    fn progress(&self, p: &Progress<'_>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(p.to_string());
    }
    fn note(&self, n: &Note<'_>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(n.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_the_ones_printed_on_stderr() {
        let p = Progress::Commit {
            domain: "db",
            target: "vda",
            copied: 3 << 20,
            total: 10 << 20,
        };
        assert_eq!(p.to_string(), "committing db/vda: 3 of 10 MiB copied");
        let n = Note::MergedShutOff {
            domain: "db",
            merged: 2,
        };
        assert_eq!(
            n.to_string(),
            "db is shut off: merged 2 overlay(s) into their images offline and defined its disks on them"
        );
        let n = Note::OtherJobs {
            id: "g-1",
            group: "g",
            state: SnapState::Taken,
            token: None,
            cut: false,
        };
        assert!(
            n.to_string()
                .starts_with("snapshot g-1 of group g (taken, no token) belongs")
        );
        let n = Note::OtherJobs {
            id: "g-2",
            group: "g",
            state: SnapState::Taken,
            token: Some("t"),
            cut: true,
        };
        assert!(
            n.to_string()
                .starts_with("backup cut g-2 of group g (taken, token t) belongs to another job")
                && n.to_string()
                    .ends_with("end it with `cgsnap backup end g-2`"),
            "{n}"
        );
    }
}
