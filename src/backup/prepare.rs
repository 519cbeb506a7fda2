//! What a backup cut checks and makes on this host before the freeze: images fit for
//! checkpoints, a private directory per member for its socket and scratch files.
//!
//! Invariants: the checks only read; a member directory is created new (never reused) and
//! belongs to the user QEMU runs that member as (its DAC label), mode 0700, because QEMU must
//! create the NBD socket there and the scratch files hold guest data.

use super::BackupError;
use crate::catalog::DiskRecord;
use crate::hypervisor::qemu_img;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Refuse an image that cannot hold persistent bitmaps: raw, or qcow2 v2 (compat 0.10).
pub fn check_format(domain: &str, d: &DiskRecord) -> Result<(), BackupError> {
    let fmt = |what: String, fix| BackupError::Format {
        domain: domain.to_string(),
        target: d.target.clone(),
        image: d.image.clone(),
        what,
        fix,
    };
    if d.format != "qcow2" {
        return Err(fmt(
            format!("{} format", d.format),
            "convert it with the VM shut off (`qemu-img convert -O qcow2 -o compat=1.1`) or leave the member out",
        ));
    }
    let info =
        qemu_img::run(&["info", "-U", "--output=json", &d.image]).map_err(|e| BackupError::Io {
            path: d.image.clone(),
            detail: e.to_string(),
        })?;
    let v: serde_json::Value = serde_json::from_slice(&info).map_err(|e| BackupError::Io {
        path: d.image.clone(),
        detail: format!("unreadable qemu-img info: {e}"),
    })?;
    let compat = v["format-specific"]["data"]["compat"]
        .as_str()
        .unwrap_or("");
    if compat != "1.1" {
        return Err(fmt(
            format!("qcow2 compat {compat}"),
            "upgrade it with the VM shut off (`qemu-img amend -o compat=1.1 IMAGE`)",
        ));
    }
    Ok(())
}

/// The `uid:gid` QEMU runs the domain as, from its live XML's DAC label (`+64055:+64055`).
pub fn dac_owner(xml: &str) -> Option<(u32, u32)> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let label = doc
        .descendants()
        .filter(|n| n.has_tag_name("seclabel") && n.attribute("model") == Some("dac"))
        .find_map(|n| n.children().find(|c| c.has_tag_name("label")))?
        .text()?;
    let (u, g) = label.split_once(':')?;
    let num = |s: &str| s.trim().trim_start_matches('+').parse::<u32>().ok();
    Some((num(u)?, num(g)?))
}

/// Create `dir` (new, its parent made as needed) owned by `owner`, mode 0700.
pub fn member_dir(dir: &Path, owner: Option<(u32, u32)>) -> Result<(), BackupError> {
    let io = |e: std::io::Error| BackupError::Io {
        path: dir.display().to_string(),
        detail: e.to_string(),
    };
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::create_dir(dir).map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(io)?;
    }
    Ok(())
}

/// Refuse a scratch directory QEMU, running as `owner`, could not reach: every directory
/// above its member directories must let that user search it.
pub fn check_reachable(scratch: &Path, owner: Option<(u32, u32)>) -> Result<(), BackupError> {
    use std::os::unix::fs::MetadataExt;
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    for dir in scratch.ancestors() {
        let Ok(md) = std::fs::metadata(dir) else {
            continue;
        };
        let mode = md.mode();
        let ok = mode & 0o001 != 0
            || (md.uid() == uid && mode & 0o100 != 0)
            || (md.gid() == gid && mode & 0o010 != 0);
        if !ok {
            return Err(BackupError::Io {
                path: dir.display().to_string(),
                detail: format!(
                    "QEMU (uid {uid}) cannot reach the scratch directory {} through it (mode {:o}): allow it (`chmod o+x {}`) or pass another --scratch-dir",
                    scratch.display(),
                    mode & 0o7777,
                    dir.display()
                ),
            });
        }
    }
    Ok(())
}

/// The scratch directory when `--scratch-dir` is not given: on a local disk, reachable by
/// QEMU (the catalog directory is its owner's alone).
pub const DEFAULT_SCRATCH: &str = "/var/tmp/cgsnap";

/// Pre-create a scratch file (qcow2 of `size` bytes, no data), outside the freeze: created by
/// libvirt inside `virDomainBackupBegin` it costs a blockdev-create job per disk in the
/// window. Owned like the member directory, so QEMU can open it before libvirt labels it.
pub fn scratch(path: &str, size: u64, owner: Option<(u32, u32)>) -> Result<(), BackupError> {
    qemu_img::create_qcow2(path, size, &[]).map_err(|e| BackupError::Io {
        path: path.to_string(),
        detail: e.to_string(),
    })?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| BackupError::Io {
            path: path.to_string(),
            detail: e.to_string(),
        })?;
    }
    Ok(())
}

/// Where one member's socket and scratch files live: `SCRATCH/ID/DOMAIN`.
pub fn member_path(scratch: &Path, id: &str, domain: &str) -> PathBuf {
    scratch.join(id).join(domain)
}

/// Longest path a unix socket may have (`sun_path` holds 108 bytes with the NUL).
pub const SOCKET_MAX: usize = 107;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dac_owner_reads_the_live_label_and_nothing_else() {
        let xml = "<domain><seclabel type='dynamic' model='dac' relabel='yes'><label>+64055:+994</label><imagelabel>+64055:+994</imagelabel></seclabel></domain>";
        assert_eq!(dac_owner(xml), Some((64055, 994)));
        let selinux = "<domain><seclabel type='dynamic' model='selinux'><label>system_u:r:svirt_t:s0:c1,c2</label></seclabel></domain>";
        assert_eq!(dac_owner(selinux), None);
        assert_eq!(dac_owner("<domain/>"), None);
    }
}
