//! The scratch guard: while `backup export` reads a cut, the filesystem of the cut's scratch
//! files is watched, so that no guest ever pays for it filling up.
//!
//! Why: while a job serves, every guest write to a block the export has not read yet first
//! copies the old block into the member's scratch file (copy-before-write). When that
//! filesystem is full, QEMU fails the guest's write (ENOSPC) and, under libvirt's default
//! error policy, pauses the guest. A backup is worth less than a running database, so the
//! cut gives way, never the guest.
//!
//! Invariants:
//! - Every [`POLL`] the scratch filesystem's free bytes are read; the first reading below the
//!   floor (`--min-free`), or one that cannot be taken, trips the guard. So does a member
//!   paused on an I/O error (a burst faster than the poll, or a floor of 0).
//! - A trip ends every member's backup job, which removes the copy-before-write filter: the
//!   guests' writes go straight to their images again. Then every member paused on an I/O
//!   error is resumed: QEMU retries the write it stopped on, now without the copy, so no
//!   guest write is lost; if the cause was not ours it fails again and the member pauses
//!   again, for the operator, as before. No member paused otherwise is ever resumed here.
//! - The guard deletes nothing and trips at most once. What it did is its [`Trip`]: the
//!   export that started it fails with it (unless every block had been read already), and the
//!   cut, its export incomplete, is never a base for an incremental.

use super::end::end_job;
use crate::hypervisor::Host;
use crate::release::room::free_bytes;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the guard measures. A guest under TCG writes some 100 MiB/s at most, so the
/// default floor (256 MiB) leaves more than two seconds of room between two readings.
pub const POLL: Duration = Duration::from_millis(100);

/// One member whose job the guard may end.
pub struct Member {
    /// Its host.
    pub host: Arc<dyn Host>,
    /// Its domain.
    pub domain: String,
}

/// What tripped the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The scratch filesystem fell below the floor.
    Low {
        /// Free bytes read.
        free: u64,
    },
    /// Its free space could not be read.
    Unmeasured {
        /// Why.
        detail: String,
    },
    /// A member paused on an I/O error while its job ran.
    Paused {
        /// The member.
        domain: String,
    },
}

/// What the guard did when it tripped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trip {
    /// The cut's scratch directory.
    pub dir: PathBuf,
    /// The floor it kept.
    pub floor: u64,
    /// Why it tripped.
    pub cause: Cause,
    /// Members paused on an I/O error that it resumed once their jobs had ended.
    pub resumed: Vec<String>,
    /// What it could not do (a job that would not end, a resume that failed).
    pub left: Vec<String>,
}

impl fmt::Display for Trip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = self.dir.display();
        match &self.cause {
            Cause::Low { free } => write!(
                f,
                "the scratch filesystem of {dir} was down to {} MiB free, below --min-free {} MiB",
                free >> 20,
                self.floor >> 20
            )?,
            Cause::Unmeasured { detail } => write!(
                f,
                "the free space of the scratch filesystem of {dir} could not be read ({detail})"
            )?,
            Cause::Paused { domain } => write!(
                f,
                "{domain} paused on an I/O error while its job ran (scratch files under {dir})"
            )?,
        }
        f.write_str(": every job of the cut was ended so the guests write on")?;
        if !self.resumed.is_empty() {
            write!(f, "; resumed {}", self.resumed.join(", "))?;
        }
        if !self.left.is_empty() {
            write!(f, "; NOT DONE: {}", self.left.join("; "))?;
        }
        Ok(())
    }
}

struct Shared {
    stop: Mutex<bool>,
    wake: Condvar,
    trip: Mutex<Option<Trip>>,
}

/// A running guard; it stops when finished or dropped.
pub struct Guard {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

impl Guard {
    /// Watch `dir`'s filesystem against `floor` free bytes, and `members`, from now on.
    pub fn start(members: Vec<Member>, dir: PathBuf, floor: u64) -> Guard {
        let shared = Arc::new(Shared {
            stop: Mutex::new(false),
            wake: Condvar::new(),
            trip: Mutex::new(None),
        });
        let s = shared.clone();
        let handle = std::thread::spawn(move || watch(&s, &members, &dir, floor));
        Guard {
            shared,
            handle: Some(handle),
        }
    }

    /// Stop watching; what the guard did if it tripped.
    pub fn finish(mut self) -> Option<Trip> {
        self.stop();
        self.shared
            .trip
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn stop(&mut self) {
        *self.shared.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.shared.wake.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Measure until stopped or tripped.
fn watch(s: &Shared, members: &[Member], dir: &Path, floor: u64) {
    loop {
        let stop = s.stop.lock().unwrap_or_else(|p| p.into_inner());
        let (stop, _) = s
            .wake
            .wait_timeout_while(stop, POLL, |stop| !*stop)
            .unwrap_or_else(|p| p.into_inner());
        if *stop {
            return;
        }
        drop(stop);
        if let Some(cause) = check(members, dir, floor) {
            let trip = trip(members, dir, floor, cause);
            *s.trip.lock().unwrap_or_else(|p| p.into_inner()) = Some(trip);
            return;
        }
    }
}

/// Why the guard must trip now, if it must.
fn check(members: &[Member], dir: &Path, floor: u64) -> Option<Cause> {
    match free_bytes(dir) {
        Ok(free) if free < floor => return Some(Cause::Low { free }),
        Ok(_) => {}
        Err(e) => {
            return Some(Cause::Unmeasured {
                detail: e.to_string(),
            });
        }
    }
    members
        .iter()
        .find(|m| m.host.paused_on_io_error(&m.domain).unwrap_or(false))
        .map(|m| Cause::Paused {
            domain: m.domain.clone(),
        })
}

/// End every job, then resume the members paused on an I/O error.
fn trip(members: &[Member], dir: &Path, floor: u64, cause: Cause) -> Trip {
    let mut left = Vec::new();
    for m in members {
        if let Err(e) = end_job(m.host.as_ref(), &m.domain) {
            left.push(e);
        }
    }
    let mut resumed = Vec::new();
    for m in members {
        if !m.host.paused_on_io_error(&m.domain).unwrap_or(false) {
            continue;
        }
        match m.host.resume(&m.domain) {
            Ok(()) => resumed.push(m.domain.clone()),
            Err(e) => left.push(format!(
                "{} stays paused on an I/O error: {e}; resume it (`virsh resume {}`) once its images' filesystem has room",
                m.domain, m.domain
            )),
        }
    }
    Trip {
        dir: dir.to_path_buf(),
        floor,
        cause,
        resumed,
        left,
    }
}

#[cfg(test)]
#[path = "guard_tests.rs"]
mod tests;
