//! Stand-ins for the disks a group snapshot left out but the guest can write: shareable disks
//! and disks the domain excludes itself (`<disk snapshot='no'>`: swap, scratch space).
//!
//! Invariants:
//! - The sandbox never gets such a disk's original: it is live data of a running VM (for a
//!   shareable disk, of a whole cluster), and a restored guest would write to it. It gets a
//!   blank qcow2 of the same virtual size instead (read from the original's header with
//!   `qemu-img info -U`, which never writes or locks; 1 GiB when it cannot be read), so device
//!   names and order stay what the guest expects.
//! - Read-only disks (cdroms, `<readonly/>`) keep their source: the guest cannot write them.
//!   Every other device (disk, LUN, floppy, and any kind this code does not know) counts as
//!   writable.

use std::path::{Path, PathBuf};
use std::process::Command;
use xmltree::{Element, XMLNode};

/// Size of a stand-in whose original cannot be read here (network disk, another host).
const FALLBACK_SIZE: u64 = 1 << 30;

/// A writable disk of the saved domain XML that the snapshot did not take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    /// The disk's target.
    pub target: String,
    /// Its source file or device, if it has one.
    pub source: Option<String>,
    /// Why the snapshot left it out: `shareable` or `snapshot='no'` (or `'manual'`).
    pub reason: String,
}

fn child<'a>(e: &'a Element, name: &str) -> Option<&'a Element> {
    e.children.iter().find_map(|c| match c {
        XMLNode::Element(x) if x.name == name => Some(x),
        _ => None,
    })
}

/// A `<disk>` element the guest can write (a disk, LUN or floppy without `<readonly/>`; a
/// cdrom is read-only whatever the XML says): a sandbox must never get its original.
pub fn is_writable(disk: &Element) -> bool {
    let device = disk.attributes.get("device").map_or("disk", String::as_str);
    device != "cdrom" && child(disk, "readonly").is_none()
}

/// Writable disks of the domain `root` whose target is not in `snapshotted`.
pub fn left_out(root: &Element, snapshotted: &[String]) -> Vec<LeftOut> {
    let Some(devices) = child(root, "devices") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for d in devices.children.iter().filter_map(|c| match c {
        XMLNode::Element(x) if x.name == "disk" => Some(x),
        _ => None,
    }) {
        let target = child(d, "target")
            .and_then(|t| t.attributes.get("dev").cloned())
            .unwrap_or_default();
        if !is_writable(d) || snapshotted.contains(&target) {
            continue;
        }
        let source = child(d, "source").and_then(|s| {
            s.attributes
                .get("file")
                .or_else(|| s.attributes.get("dev"))
                .cloned()
        });
        let reason = if child(d, "shareable").is_some() {
            "shareable".to_string()
        } else {
            match d.attributes.get("snapshot") {
                Some(m) => format!("snapshot='{m}'"),
                None => "not in the snapshot".to_string(),
            }
        };
        out.push(LeftOut {
            target,
            source,
            reason,
        });
    }
    out
}

/// Virtual size of an image from its header, without locking or writing it.
pub fn virtual_size(source: &str) -> Option<u64> {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json", source])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["virtual-size"].as_u64()
}

/// Why a blank stand-in could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StandInError {
    /// `qemu-img` could not be run.
    #[error("qemu-img: {0}")]
    Spawn(#[source] std::io::Error),
    /// `qemu-img create` failed.
    #[error("blank stand-in for {target}: {stderr}")]
    Create {
        /// The disk it stands in for.
        target: String,
        /// What qemu-img said.
        stderr: String,
    },
}

/// Create a blank qcow2 stand-in for `d` in `dir`; returns its path and a line for the report.
pub fn create(d: &LeftOut, dir: &Path) -> Result<(PathBuf, String), StandInError> {
    let probed = d.source.as_deref().and_then(virtual_size);
    let size = probed.unwrap_or(FALLBACK_SIZE);
    let path = dir.join(format!("{}.blank.qcow2", d.target));
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg(size.to_string())
        .output()
        .map_err(StandInError::Spawn)?;
    if !out.status.success() {
        return Err(StandInError::Create {
            target: d.target.clone(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let line = format!(
        "{} ({}, source {}): blank {} MiB disk in the sandbox{}",
        d.target,
        d.reason,
        d.source.as_deref().unwrap_or("none"),
        size >> 20,
        if probed.is_none() {
            " (size unknown here)"
        } else {
            ""
        }
    );
    Ok((path, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_writable_disks_outside_the_snapshot() {
        let xml = "<domain><devices>\
            <disk type='file' device='disk'><source file='/img/a.qcow2'/><target dev='vda'/></disk>\
            <disk type='file' device='disk' snapshot='no'><source file='/img/swap.raw'/><target dev='vdb'/></disk>\
            <disk type='block' device='disk'><source dev='/dev/sdz'/><target dev='vdc'/><shareable/></disk>\
            <disk type='file' device='cdrom'><source file='/x.iso'/><target dev='hdc'/><readonly/></disk>\
            <disk type='file' device='disk'><source file='/img/ro.raw'/><target dev='vdd'/><readonly/></disk>\
            <disk type='file' device='floppy'><source file='/img/boot.img'/><target dev='fda'/></disk>\
            <disk type='file' device='floppy'><source file='/img/ro.img'/><target dev='fdb'/><readonly/></disk>\
            </devices></domain>";
        let root = Element::parse(xml.as_bytes()).expect("xml");
        let l = left_out(&root, &["vda".to_string()]);
        assert_eq!(
            l,
            vec![
                LeftOut {
                    target: "vdb".into(),
                    source: Some("/img/swap.raw".into()),
                    reason: "snapshot='no'".into()
                },
                LeftOut {
                    target: "vdc".into(),
                    source: Some("/dev/sdz".into()),
                    reason: "shareable".into()
                },
                LeftOut {
                    target: "fda".into(),
                    source: Some("/img/boot.img".into()),
                    reason: "not in the snapshot".into()
                },
            ]
        );
    }

    #[test]
    fn stand_in_has_the_size_of_the_original_and_is_blank() {
        let t = tempfile::tempdir().expect("tmp");
        let orig = t.path().join("swap.raw");
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "raw"])
            .arg(&orig)
            .arg("48M")
            .status()
            .expect("qemu-img");
        assert!(st.success());
        let d = LeftOut {
            target: "vdb".into(),
            source: Some(orig.to_string_lossy().into_owned()),
            reason: "snapshot='no'".into(),
        };
        let (p, line) = create(&d, t.path()).expect("create");
        assert_eq!(virtual_size(&p.to_string_lossy()), Some(48 << 20), "{line}");
        assert!(line.contains("blank 48 MiB"), "{line}");
        let unknown = LeftOut {
            target: "vdc".into(),
            source: None,
            reason: "shareable".into(),
        };
        let (p, line) = create(&unknown, t.path()).expect("create");
        assert_eq!(virtual_size(&p.to_string_lossy()), Some(FALLBACK_SIZE));
        assert!(line.contains("size unknown"), "{line}");
    }
}
