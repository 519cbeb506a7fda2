//! Pre-creating overlays with `qemu-img` before the freeze, so that libvirt only reuses them
//! inside it (local hosts only).
//!
//! Invariants: a path is claimed exclusively before anything is written to it, so a file
//! already there (someone else's) is never touched; on any failure every file this run
//! created is removed, and nothing was frozen yet.

use crate::catalog::DiskRecord;
use crate::snapshot::SnapshotError;
use crate::snapshot::preflight::PlannedMember;

/// Create every overlay of `plan`; on failure none of those this call created is left.
pub(crate) fn precreate_all(plan: &[PlannedMember]) -> Result<(), SnapshotError> {
    let mut created = Vec::new();
    let made: Result<(), SnapshotError> =
        plan.iter().flat_map(|p| p.disks.iter()).try_for_each(|d| {
            precreate(d)?;
            created.push(&d.overlay);
            Ok(())
        });
    if made.is_err() {
        // Nothing is in use yet: every file this run created is empty and can go (and
        // only those: one found already there is someone else's).
        for o in created {
            let _ = std::fs::remove_file(o);
        }
    }
    made
}

/// Create `d`'s overlay; on failure nothing of it is left (a file that was already there is
/// never touched).
pub(crate) fn precreate(d: &DiskRecord) -> Result<(), SnapshotError> {
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
fn fill_overlay(d: &DiskRecord) -> Result<(), SnapshotError> {
    // -u: do not open the backing image (QEMU holds its write lock); the size is given instead.
    let backing = ["-u", "-F", &d.format, "-b", &d.image];
    crate::hypervisor::qemu_img::create_qcow2(&d.overlay, d.virtual_size, &backing).map_err(
        |e| SnapshotError::Precreate {
            path: d.overlay.clone(),
            detail: e.to_string(),
        },
    )?;
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
