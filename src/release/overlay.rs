//! Overlay files: whether a domain still uses one, whether a process holds it open, and
//! their removal (locally, or through libvirt on the member's host).
//!
//! Invariant: an overlay is removed only when no disk of its domain has it as source or in its
//! backing chain and no process holds it open (QEMU's image lock); a file on another host is
//! removed only through libvirt on that host.

use super::error::ReleaseError;
use crate::catalog::DiskRecord;
use crate::domxml;
use crate::events::{Note, Reporter};
use crate::hypervisor::Host;
use std::path::Path;
use std::time::{Duration, Instant};

/// True when some disk of the domain still uses `path` (as top image or backing file).
pub(crate) fn in_use(domain: &str, xml: &str, path: &str) -> Result<bool, ReleaseError> {
    Ok(domxml::disks(domain, xml)?
        .iter()
        .any(|d| d.source.as_deref() == Some(path) || d.backing.iter().any(|b| b == path)))
}

/// Remove overlay files of `disks` that no disk of the domain uses any more.
///
/// On this host directly. On another host only through libvirt (the storage pool whose target
/// is the overlay's directory): a path there names a file there, and a file of the same name
/// here belongs to someone else. Without such a pool the overlay, no longer used, stays on its
/// host and `report` is told ([`Note::OverlayStays`]).
pub fn remove_unused(
    host: &dyn Host,
    domain: &str,
    disks: &[DiskRecord],
    report: &dyn Reporter,
) -> Result<(), ReleaseError> {
    remove_unused_in(host, domain, &host.xml(domain)?, disks, report)
}

/// [`remove_unused`] against the domain XML `xml` just read.
pub(super) fn remove_unused_in(
    host: &dyn Host,
    domain: &str,
    xml: &str,
    disks: &[DiskRecord],
    report: &dyn Reporter,
) -> Result<(), ReleaseError> {
    let local = crate::hypervisor::is_local(host.uri());
    for d in disks {
        if in_use(domain, xml, &d.overlay)? {
            continue;
        }
        if local {
            remove_local(domain, &d.overlay)?;
        } else {
            remove_remote(host, domain, &d.overlay, report)?;
        }
    }
    Ok(())
}

/// Delete an overlay on this host that no disk uses any more, unless some process still holds
/// it open: the domain's XML can lag behind QEMU (a snapshot call still in flight, libvirtd
/// restarted before saving its state), QEMU's lock is the last word. Gone already is done.
pub(crate) fn remove_local(domain: &str, overlay: &str) -> Result<(), ReleaseError> {
    if !Path::new(overlay).exists() {
        return Ok(());
    }
    if held_open(overlay) {
        return Err(ReleaseError::HeldOpen {
            domain: domain.to_string(),
            overlay: overlay.to_string(),
        });
    }
    std::fs::remove_file(overlay).map_err(|source| ReleaseError::Remove {
        path: overlay.to_string(),
        source,
    })
}

/// Remove an unused overlay on another host through the storage pool of its directory, or tell
/// `report` that it stays there.
pub(crate) fn remove_remote(
    host: &dyn Host,
    domain: &str,
    overlay: &str,
    report: &dyn Reporter,
) -> Result<(), ReleaseError> {
    if !host.pool_delete(overlay)? {
        report.note(&Note::OverlayStays {
            domain,
            overlay,
            uri: host.uri(),
        });
    }
    Ok(())
}

/// How long a process may still hold an overlay its domain has just let go of (QEMU closes
/// the node right after the pivot) before the overlay counts as held open.
pub(super) const HELD_OPEN_WAIT: Duration = Duration::from_secs(3);

/// Whether some process (a QEMU) has the overlay open for writing, from QEMU's image locks:
/// `qemu-img info` without `-U` takes a shared lock, which a writer's lock refuses. It does not
/// open the backing image, whose lock the running VM holds again after the pivot.
pub(super) fn held_open(path: &str) -> bool {
    let deadline = Instant::now() + HELD_OPEN_WAIT;
    loop {
        let out = std::process::Command::new("qemu-img")
            .args(["info", "-f", "qcow2", path])
            .output();
        let held = match out {
            Ok(o) if !o.status.success() => {
                crate::hypervisor::qemu_text::classify(&String::from_utf8_lossy(&o.stderr))
                    == crate::hypervisor::qemu_text::QemuFailure::HeldOpen
            }
            _ => false,
        };
        if !held || Instant::now() >= deadline {
            return held;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
