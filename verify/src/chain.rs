//! The chain of backup exports a copy under `--images` is restored from: the cut's own export
//! and, for an incremental, every export it is backed by down to a full one.
//!
//! Invariants:
//! - Every link is a file of a cgsnap export directory (`cgsnap-export.json` at the top, the
//!   file at the image's absolute path below it) of the same group and the same disk; each
//!   incremental link is backed by the export of exactly the cut it was incremental to; the
//!   last link is a full export with no backing file. Anything else is refused, the link named.
//! - A copy that is not in an export directory (an overlay snapshot's image restored by a
//!   backup tool) has no chain: it is read as it is, unless the snapshot is a backup cut.

use crate::inputs::InputError;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The name of the record at the top of an export directory.
const SIDECAR: &str = "cgsnap-export.json";

/// What verify reads of an export's record.
#[derive(Debug, Deserialize)]
struct Sidecar {
    id: String,
    group: String,
    mode: String,
    since: Option<String>,
    disks: Vec<SidecarDisk>,
}

#[derive(Debug, Deserialize)]
struct SidecarDisk {
    image: String,
}

/// One link of a chain: the cut exported, full or incremental, and the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The cut.
    pub id: String,
    /// `full` or `incremental`.
    pub mode: String,
    /// The link's file.
    pub file: PathBuf,
}

/// The chain `copy` (the copy of `image`, for snapshot `id` of `group`) is restored from,
/// newest first; empty for a copy outside any export directory when `backup` is false.
pub fn check(
    copy: &Path,
    image: &str,
    group: &str,
    id: &str,
    backup: bool,
) -> Result<Vec<Link>, InputError> {
    let mut links: Vec<Link> = Vec::new();
    let mut file = copy.to_path_buf();
    let mut want = Some(id.to_string());
    loop {
        let foreign = |why: String| InputError::ChainLink {
            copy: copy.to_path_buf(),
            link: file.clone(),
            why,
        };
        let side = match sidecar_of(&file, image) {
            Some(s) => s,
            None if links.is_empty() && !backup => return Ok(links),
            None => {
                return Err(foreign(format!(
                    "it is not the file of {image} in a cgsnap export directory"
                )));
            }
        };
        if side.group != group {
            return Err(foreign(format!(
                "it is an export of group {}, not {group}",
                side.group
            )));
        }
        if !side.disks.iter().any(|d| d.image == image) {
            return Err(foreign(format!(
                "its export {} has no disk {image}",
                side.id
            )));
        }
        if let Some(w) = &want
            && side.id != *w
        {
            return Err(foreign(format!(
                "it is the export of {}, the chain needs {w}",
                side.id
            )));
        }
        let backing = backing_of(&file).map_err(&foreign)?;
        links.push(Link {
            id: side.id.clone(),
            mode: side.mode.clone(),
            file: file.clone(),
        });
        match (side.mode.as_str(), backing) {
            ("full", None) => return Ok(links),
            ("full", Some(b)) => {
                return Err(foreign(format!(
                    "a full export with a backing file ({})",
                    b.display()
                )));
            }
            (_, None) => {
                return Err(foreign("an incremental export without its base".into()));
            }
            (_, Some(b)) => {
                if !b.exists() {
                    return Err(InputError::ChainMissing {
                        copy: copy.to_path_buf(),
                        link: b,
                        of: file.clone(),
                    });
                }
                want = side.since.clone();
                file = b;
            }
        }
    }
}

/// The one-line name of a chain, as the report gives it: `C (incremental) <- B <- A (full)`.
pub fn describe(links: &[Link]) -> String {
    links
        .iter()
        .map(|l| format!("{} ({})", l.id, l.mode))
        .collect::<Vec<_>>()
        .join(" <- ")
}

/// The export record of the directory `file` is the copy of `image` in, if it is one.
fn sidecar_of(file: &Path, image: &str) -> Option<Sidecar> {
    let rel = image.trim_start_matches('/');
    let s = file.to_str()?;
    let dir = s.strip_suffix(rel)?;
    let body = std::fs::read(Path::new(dir).join(SIDECAR)).ok()?;
    serde_json::from_slice(&body).ok()
}

/// The backing file of a qcow2, resolved as QEMU does (relative to the file's directory).
fn backing_of(file: &Path) -> Result<Option<PathBuf>, String> {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(file)
        .output()
        .map_err(|e| format!("cannot run qemu-img info: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "qemu-img info: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("qemu-img info: {e}"))?;
    Ok(v["backing-filename"].as_str().map(|b| {
        let p = Path::new(b);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            normal(&file.parent().unwrap_or(Path::new("/")).join(p))
        }
    }))
}

/// `p` with its `.` and `..` components resolved lexically, as QEMU opens a relative backing
/// file (and so a refusal names the file as a person would look for it).
fn normal(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_backing_paths_resolve_like_qemu_opens_them() {
        assert_eq!(
            normal(Path::new("/e/inc/var/img/../../../full/var/img/a.qcow2")),
            PathBuf::from("/e/full/var/img/a.qcow2")
        );
        assert_eq!(
            describe(&[
                Link {
                    id: "g-2".into(),
                    mode: "incremental".into(),
                    file: "/x".into()
                },
                Link {
                    id: "g-1".into(),
                    mode: "full".into(),
                    file: "/y".into()
                }
            ]),
            "g-2 (incremental) <- g-1 (full)"
        );
    }
}
