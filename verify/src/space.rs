//! Free-space floor for the sandbox directory's filesystem.
//!
//! The sandbox directory usually shares a filesystem with production VMs' images and
//! overlays, and a restored database writes a lot into its sandbox overlays (WAL replay, the
//! end-of-recovery checkpoint, Cassandra flushes). If that filled the filesystem, QEMU would
//! pause the *production* VMs writing there (ENOSPC). So:
//!
//! Invariants:
//! - No sandbox starts unless the filesystem has at least the floor (`--min-free`) free
//!   ([`judge`] with [`Phase::Before`]); the directory need not exist yet: the nearest
//!   existing ancestor is measured, where it would be created.
//! - While sandboxes run, a [`Watch`] measures about once a second; the first reading below
//!   the floor (or one that cannot be taken) stops every guarded sandbox (domain destroyed,
//!   directory deleted) and is remembered: verify then ends as could-not-run, never with a
//!   verdict. A sandbox guarded after the trip is stopped at once, under the same lock, so
//!   none escapes between the trip and its registration.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Free bytes the sandbox filesystem must keep unless `--min-free` says otherwise: room for
/// the production VMs sharing it to go on writing while a restored database writes GBs.
pub const DEFAULT_MIN_FREE: u64 = 2 << 30;

/// How often the [`Watch`] measures.
pub const POLL: Duration = Duration::from_secs(1);

/// Why sandboxes may not start or keep running: too little room, or room not measurable.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    /// The measured path cannot be passed to `statvfs`.
    #[error("{}: path contains NUL", .0.display())]
    NulInPath(PathBuf),
    /// `statvfs` failed.
    #[error("statvfs {}: {source}", path.display())]
    Statvfs {
        /// The path measured.
        path: PathBuf,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// Below the floor before any sandbox started.
    #[error(
        "sandbox directory {} has {} free, below --min-free {}: {FIX}",
        dir.display(),
        size_text(*free),
        size_text(*floor)
    )]
    Below {
        /// The sandbox directory.
        dir: PathBuf,
        /// Free bytes measured.
        free: u64,
        /// The floor.
        floor: u64,
    },
    /// Fell below the floor while sandboxes ran (they were stopped).
    #[error(
        "sandbox directory {} fell to {} free, below --min-free {}: the sandboxes were \
         stopped so the filesystem does not fill up under the VMs sharing it; {FIX}",
        dir.display(),
        size_text(*free),
        size_text(*floor)
    )]
    Fell {
        /// The sandbox directory.
        dir: PathBuf,
        /// Free bytes measured.
        free: u64,
        /// The floor.
        floor: u64,
    },
    /// The free space could not be measured before any sandbox started.
    #[error(
        "cannot read the free space of sandbox directory {} ({source}): give a --sandbox-dir that can be measured",
        dir.display()
    )]
    Unmeasured {
        /// The sandbox directory.
        dir: PathBuf,
        /// Why the reading failed.
        #[source]
        source: Box<SpaceError>,
    },
    /// The free space could no longer be measured while sandboxes ran (they were stopped).
    #[error(
        "cannot read the free space of sandbox directory {} ({source}): the sandboxes were \
         stopped, their room unknown; give a --sandbox-dir that can be measured",
        dir.display()
    )]
    LostMeasure {
        /// The sandbox directory.
        dir: PathBuf,
        /// Why the reading failed.
        #[source]
        source: Box<SpaceError>,
    },
}

/// `dir` or its nearest existing ancestor (the sandbox root is created only when the first
/// sandbox starts).
pub fn measured(dir: &Path) -> &Path {
    dir.ancestors()
        .find(|a| a.exists())
        .unwrap_or_else(|| Path::new("/"))
}

/// Bytes available to unprivileged writers on the filesystem that holds (or would hold) `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64, SpaceError> {
    let at = measured(dir);
    let c = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())
        .map_err(|_| SpaceError::NulInPath(at.to_path_buf()))?;
    // SAFETY: `c` is a valid NUL-terminated path; statvfs only fills the plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` outlives the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(SpaceError::Statvfs {
            path: at.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// When a reading is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before any sandbox starts.
    Before,
    /// While sandboxes run.
    Running,
}

fn size_text(b: u64) -> String {
    // Below a GiB, one decimal of GiB hides the difference that matters (0.1 vs 0.1).
    if b < 1 << 30 {
        return format!("{} MiB ({b} bytes)", b >> 20);
    }
    format!("{:.1} GiB ({b} bytes)", b as f64 / (1u64 << 30) as f64)
}

const FIX: &str = "free space there, or give --sandbox-dir on another filesystem";

/// Whether sandboxes may start (`Before`) or keep running (`Running`) with `free` bytes free in
/// `dir`'s filesystem and a floor of `floor` bytes; the error is the one-line reason. A reading
/// that could not be taken counts as below the floor: unmeasured room is no room.
pub fn judge(
    dir: &Path,
    free: Result<u64, SpaceError>,
    floor: u64,
    phase: Phase,
) -> Result<(), SpaceError> {
    let dir = dir.to_path_buf();
    match (free, phase) {
        (Ok(f), _) if f >= floor => Ok(()),
        (Ok(free), Phase::Before) => Err(SpaceError::Below { dir, free, floor }),
        (Ok(free), Phase::Running) => Err(SpaceError::Fell { dir, free, floor }),
        (Err(e), Phase::Before) => Err(SpaceError::Unmeasured {
            dir,
            source: Box::new(e),
        }),
        (Err(e), Phase::Running) => Err(SpaceError::LostMeasure {
            dir,
            source: Box::new(e),
        }),
    }
}

/// Stops one sandbox (destroys its domain, deletes its directory).
pub type Stop = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct State {
    done: bool,
    tripped: Option<Arc<SpaceError>>,
    guarded: Vec<Stop>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in a stop closure must not disarm the guard: the state stays usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Measures the sandbox filesystem while sandboxes run and stops them all when it falls below
/// the floor. Dropping it ends the measuring thread (it does not stop the sandboxes: their
/// owners do).
pub struct Watch {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Start measuring `dir` every `poll` with `measure` (normally [`free_bytes`]).
    pub fn start(
        dir: PathBuf,
        floor: u64,
        poll: Duration,
        measure: impl Fn(&Path) -> Result<u64, SpaceError> + Send + 'static,
    ) -> std::io::Result<Watch> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("sandbox-space".into())
            .spawn(move || {
                loop {
                    let verdict = judge(&dir, measure(&dir), floor, Phase::Running);
                    let mut st = s.lock();
                    if st.done {
                        return;
                    }
                    if let Err(e) = verdict {
                        st.tripped = Some(Arc::new(e));
                        for stop in st.guarded.drain(..) {
                            stop();
                        }
                        return;
                    }
                    let (st, _) = s
                        .wake
                        .wait_timeout(st, poll)
                        .unwrap_or_else(|p| p.into_inner());
                    if st.done {
                        return;
                    }
                }
            })?;
        Ok(Watch {
            shared,
            thread: Some(thread),
        })
    }

    /// Have `stop` run when the floor is crossed; at once if it already was.
    pub fn guard(&self, stop: Stop) {
        let mut st = self.shared.lock();
        if st.tripped.is_some() {
            stop();
        } else {
            st.guarded.push(stop);
        }
    }

    /// Why the sandboxes were stopped, if they were.
    pub fn tripped(&self) -> Option<Arc<SpaceError>> {
        self.shared.lock().tripped.clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.shared.lock().done = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_below_a_gib_read_in_mib() {
        assert_eq!(size_text(100 << 20), "100 MiB (104857600 bytes)");
        assert_eq!(size_text(3 << 29), "1.5 GiB (1610612736 bytes)");
    }
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::time::Instant;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_floor_is_judged_before_and_while_running() {
        let d = Path::new("/var/lib/libvirt/images/cgsnap-verify");
        assert!(judge(d, Ok(2 * GIB), 2 * GIB, Phase::Before).is_ok());
        assert!(judge(d, Ok(5 * GIB), 2 * GIB, Phase::Running).is_ok());
        let e = judge(d, Ok(GIB), 2 * GIB, Phase::Before)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("sandbox directory /var/lib/libvirt/images/cgsnap-verify has 1.0 GiB (1073741824 bytes) free")
                && e.contains("below --min-free 2.0 GiB (2147483648 bytes)")
                && e.contains("--sandbox-dir on another filesystem")
                && !e.contains('\n'),
            "{e}"
        );
        let e = judge(d, Ok(GIB), 2 * GIB, Phase::Running)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fell to 1.0 GiB") && e.contains("stopped"),
            "{e}"
        );
        // Unmeasured room is no room, before and while running.
        for phase in [Phase::Before, Phase::Running] {
            let eio = SpaceError::Statvfs {
                path: PathBuf::from("/"),
                source: std::io::Error::other("EIO"),
            };
            let e = judge(d, Err(eio), 0, phase).unwrap_err().to_string();
            assert!(
                e.contains("cannot read the free space") && e.contains("EIO"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_missing_directory_is_measured_where_it_would_be_created() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().join("a/b/c");
        assert_eq!(measured(&d), t.path());
        assert!(free_bytes(&d).is_ok());
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn falling_below_the_floor_stops_every_sandbox_once_and_later_ones_at_once() {
        let free = Arc::new(AtomicU64::new(10 * GIB));
        let f = Arc::clone(&free);
        let w = Watch::start(
            PathBuf::from("/sb"),
            2 * GIB,
            Duration::from_millis(5),
            move |_| Ok(f.load(Ordering::SeqCst)),
        )
        .expect("watch");
        let stopped = Arc::new(AtomicUsize::new(0));
        let stop = || -> Stop {
            let s = Arc::clone(&stopped);
            Box::new(move || {
                s.fetch_add(1, Ordering::SeqCst);
            })
        };
        w.guard(stop());
        w.guard(stop());
        std::thread::sleep(Duration::from_millis(30));
        assert!(w.tripped().is_none());
        assert_eq!(stopped.load(Ordering::SeqCst), 0);
        free.store(GIB, Ordering::SeqCst);
        wait_until("tripped", || w.tripped().is_some());
        assert_eq!(stopped.load(Ordering::SeqCst), 2);
        assert!(
            w.tripped()
                .is_some_and(|m| m.to_string().contains("fell to 1.0 GiB"))
        );
        // Room coming back does not undo it; a sandbox guarded afterwards is stopped at once.
        free.store(10 * GIB, Ordering::SeqCst);
        w.guard(stop());
        assert_eq!(stopped.load(Ordering::SeqCst), 3);
        assert!(w.tripped().is_some());
    }

    #[test]
    fn dropping_the_watch_ends_it_promptly_without_stopping_anything() {
        let stopped = Arc::new(AtomicUsize::new(0));
        let s = Arc::clone(&stopped);
        let w = Watch::start(PathBuf::from("/sb"), 0, Duration::from_secs(3600), |_| {
            Ok(1)
        })
        .expect("watch");
        w.guard(Box::new(move || {
            s.fetch_add(1, Ordering::SeqCst);
        }));
        let start = Instant::now();
        drop(w);
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(stopped.load(Ordering::SeqCst), 0);
    }
}
