//! Locks in the catalog directory (`locks/`): one per group, held by every command that
//! changes the group's snapshots, and the catalog-wide planning lock; and host-wide member
//! locks.
//!
//! Invariants:
//! - A lock is an `flock` on its file: the kernel drops it when the holder dies, so a killed
//!   run never blocks the next one. The pid written into the file only names the holder in
//!   errors.
//! - Lock files are their owner's alone (`locks/` 0700, files 0600): `flock` needs only a
//!   read descriptor, so a lock file others could open would let any local user hold every
//!   backup off.
//! - Member locks (host-wide, one per VM, outside any catalog) are held by a snapshot's
//!   watchdog while it may pause or resume the VM, so runs of different catalogs never meet on
//!   one VM.
//! - A member lock is keyed by the VM's libvirt UUID alone, not by (host URI, UUID) as member
//!   identity is elsewhere: one VM is reached under several URIs (`qemu:///system`,
//!   `qemu+unix:///system`, `qemu+ssh://thishost/system`), and a key per URI would let two runs
//!   that spell its host differently freeze it at once. Two VMs sharing a UUID on two hosts
//!   then share one lock: a run holding one keeps others off both (too much exclusion, never
//!   too little), and a watchdog holding both takes it once.
//! - The planning lock is held only from a snapshot's checks until its pending manifest is on
//!   disk, so every check that no other unreleased snapshot holds a member sees every snapshot
//!   that passed the same check before it.

use crate::catalog::{Catalog, CatalogError, io};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An exclusive lock (a group's or the planning lock), released on drop (or by the kernel if
/// the process dies).
pub struct GroupLock {
    _file: File,
}

impl Catalog {
    /// Take the group lock without waiting.
    pub fn lock(&self, group: &str) -> Result<GroupLock, CatalogError> {
        self.lock_file(&format!("{group}.lock"), Duration::ZERO)
            .map_err(|e| match e {
                LockError::Busy(pid) => CatalogError::Busy {
                    group: group.to_string(),
                    pid,
                },
                LockError::Catalog(e) => e,
            })
    }

    /// The catalog-wide planning lock. `snapshot` holds it from its checks until its pending
    /// manifest is written (a fraction of a second), so that two groups sharing a member cannot
    /// both pass the check that no unreleased snapshot holds it. Waits up to [`PLANNING_WAIT`].
    pub fn lock_planning(&self) -> Result<GroupLock, CatalogError> {
        self.lock_file(PLANNING_LOCK, PLANNING_WAIT)
            .map_err(|e| match e {
                LockError::Busy(pid) => CatalogError::PlanningBusy {
                    pid,
                    secs: PLANNING_WAIT.as_secs(),
                },
                LockError::Catalog(e) => e,
            })
    }

    /// An exclusive `flock` on `locks/NAME`, retried until `wait` has passed.
    fn lock_file(&self, name: &str, wait: Duration) -> Result<GroupLock, LockError> {
        flock_path(&self.dir.join("locks").join(name), wait)
    }
}

/// An exclusive `flock` on the file `path` (created 0600), retried until `wait` has passed;
/// the holder's pid is written into it.
fn flock_path(path: &Path, wait: Duration) -> Result<GroupLock, LockError> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    // Also a lock file made before its mode was set here (best effort: another owner's
    // file keeps its mode, and locking it still works).
    let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
    let start = std::time::Instant::now();
    loop {
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io(path)(err).into());
        }
        if start.elapsed() >= wait {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            return Err(LockError::Busy(pid.trim().to_string()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The pid is informational (named in the Busy error); the flock is the lock.
    f.set_len(0).map_err(io(path))?;
    f.rewind().map_err(io(path))?;
    writeln!(f, "{}", std::process::id()).map_err(io(path))?;
    Ok(GroupLock { _file: f })
}

/// Where member locks live: host-wide, whatever catalog a run uses (`$CGSNAP_LOCK_DIR`, else
/// `/run/lock/cgsnap-UID`, the owner's alone).
pub fn member_lock_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CGSNAP_LOCK_DIR") {
        return PathBuf::from(d);
    }
    // SAFETY: getuid has no failure mode.
    PathBuf::from(format!("/run/lock/cgsnap-{}", unsafe { libc::getuid() }))
}

/// The host-wide lock on one VM (by its libvirt UUID), held by a snapshot's watchdog for as
/// long as it may pause or resume that VM: two runs with different catalogs (whose group and
/// planning locks do not meet) can then never freeze one VM at once, nor can a watchdog whose
/// coordinator died resume a VM another run paused. Waits up to [`MEMBER_WAIT`]: a watchdog
/// still sweeping after its coordinator died lets go within a fraction of a second of the
/// snapshot's release. `Err(Some(pid))` when another process holds it, `Err(None)` when the
/// lock file cannot be made.
pub fn lock_member(uuid: &str) -> Result<GroupLock, Option<String>> {
    let dir = member_lock_dir();
    std::fs::create_dir_all(&dir).map_err(|_| None)?;
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    flock_path(&dir.join(format!("vm-{uuid}.lock")), MEMBER_WAIT).map_err(|e| match e {
        LockError::Busy(pid) => Some(pid),
        LockError::Catalog(_) => None,
    })
}

/// Longest wait for a member lock (see [`lock_member`]).
pub const MEMBER_WAIT: Duration = Duration::from_secs(3);

/// Lock file of [`Catalog::lock_planning`]; not a valid group name, so no group's lock.
const PLANNING_LOCK: &str = ".planning.lock";
/// Longest wait for the planning lock: planning takes well under a second.
pub const PLANNING_WAIT: Duration = Duration::from_secs(30);

enum LockError {
    /// Held by another process (its pid, as it wrote it).
    Busy(String),
    Catalog(CatalogError),
}

impl From<CatalogError> for LockError {
    fn from(e: CatalogError) -> Self {
        LockError::Catalog(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::exit::Classify;

    #[test]
    fn lock_files_are_the_owners_alone_and_exclusive() {
        let t = tempfile::tempdir().expect("tmp");
        let cat = Catalog::open(t.path()).expect("catalog");
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&t.path().join("locks")), 0o700);
        let held = cat.lock("g").expect("lock");
        assert_eq!(mode(&t.path().join("locks/g.lock")), 0o600);
        let e = cat.lock("g").err().expect("held");
        assert!(
            e.to_string().contains(&std::process::id().to_string()),
            "names the holder: {e}"
        );
        assert_eq!(e.exit_code(), crate::model::exit::ExitCode::Busy);
        cat.lock("h").expect("another group's lock is another lock");
        drop(held);
        cat.lock("g").expect("free again");
    }

    #[test]
    fn the_planning_lock_waits_for_its_holder() {
        let t = tempfile::tempdir().expect("tmp");
        let cat = Catalog::open(t.path()).expect("catalog");
        let held = cat.lock_planning().expect("planning lock");
        let start = std::time::Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(300));
                drop(held);
            });
            cat.lock_planning()
                .expect("granted once the holder is done");
        });
        assert!(start.elapsed() >= Duration::from_millis(300), "it waited");
    }
}
