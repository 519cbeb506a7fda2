//! Room for a release: a commit copies the data an overlay holds into its image, so the
//! image's filesystem must have room for it. Overlays sit next to their images by default, so
//! the very data that filled a filesystem while a snapshot was held is what its release must
//! write there again; a commit that runs out of room fails half-way. Checked before any commit
//! starts, it is one clear error and no work wasted.
//!
//! Invariants:
//! - Only what a commit adds counts: data of the overlay itself (depth 0 of its map) over
//!   ranges where the image itself holds no data. Overwriting data the image already has needs
//!   no room, so a busy database that rewrites its pages is not refused.
//! - Summed per filesystem (device) over every checked disk: members of a snapshot are
//!   released in parallel and may share one.
//! - Only files on this host are measured: remote members and images that are not regular
//!   files (block devices) are skipped, as are overlays already gone.
//! - It is an estimate taken while the guests write, from the overlays' metadata as of their
//!   last flush (QEMU caches it until the guest flushes): a commit that runs out of room
//!   anyway fails without losing anything (the disk stays on its overlay) and is reported.

use crate::catalog::DiskRecord;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why the data of an image could not be measured (the room check then skips it; the commit
/// reports its own error).
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// `qemu-img map` could not be run.
    #[error("qemu-img map {path}: {source} (is qemu-img installed?)")]
    Spawn {
        /// Path of the image being measured.
        path: String,
        /// The error from starting `qemu-img`.
        #[source]
        source: std::io::Error,
    },
    /// `qemu-img map` failed: the first line of its stderr.
    #[error("qemu-img map {path}: {detail}")]
    Failed {
        /// Path of the image being measured.
        path: String,
        /// The first line of `qemu-img`'s stderr.
        detail: String,
    },
    /// `qemu-img map` printed JSON that could not be read.
    #[error("qemu-img map {path}: unreadable output: {source}")]
    Output {
        /// Path of the image being measured.
        path: String,
        /// The JSON parser's error.
        #[source]
        source: serde_json::Error,
    },
}

/// Not enough room in one filesystem for the commits of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortage {
    /// Directory of the first image on that filesystem (named in the error).
    pub dir: PathBuf,
    /// Overlays whose data would be written there.
    pub overlays: Vec<String>,
    /// Bytes the commits would write there, margin included ([`with_margin`]).
    pub need: u64,
    /// Bytes free there for unprivileged writers ([`free_bytes`]).
    pub free: u64,
}

/// Room a commit needs beyond the data itself: qcow2 metadata (L2 and refcount entries) grows
/// with it, plus a fixed reserve so a filesystem is not filled to its last block.
pub fn with_margin(data: u64) -> u64 {
    data + data / 64 + (4 << 20)
}

/// `statvfs(2)` of a path.
pub fn statvfs(path: &Path) -> std::io::Result<libc::statvfs> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("path contains NUL"))?;
    // SAFETY: valid NUL-terminated path; statvfs fills a plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// Bytes available to unprivileged writers in the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let st = statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Ranges `[start, end)` where the image itself (not its backing chain) holds data, from
/// `qemu-img map --output=json`. `-U`: the image is open by a running VM.
fn data_ranges(path: &str, format: &str) -> Result<Vec<(u64, u64)>, MeasureError> {
    let out = Command::new("qemu-img")
        .args(["map", "--output=json", "-U", "-f", format, path])
        .output()
        .map_err(|source| MeasureError::Spawn {
            path: path.to_string(),
            source,
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(MeasureError::Failed {
            path: path.to_string(),
            detail: err.lines().next().unwrap_or("failed").trim().to_string(),
        });
    }
    parse_map(&out.stdout).map_err(|source| MeasureError::Output {
        path: path.to_string(),
        source,
    })
}

#[derive(serde::Deserialize)]
struct Extent {
    start: u64,
    length: u64,
    depth: u64,
    data: bool,
}

/// The depth-0 data extents of a `qemu-img map` listing, sorted.
fn parse_map(json: &[u8]) -> Result<Vec<(u64, u64)>, serde_json::Error> {
    let extents: Vec<Extent> = serde_json::from_slice(json)?;
    let mut r: Vec<(u64, u64)> = extents
        .into_iter()
        .filter(|e| e.depth == 0 && e.data)
        .map(|e| (e.start, e.start + e.length))
        .collect();
    r.sort_unstable();
    Ok(r)
}

/// Bytes of `top` not covered by `below` (both sorted, non-overlapping within themselves).
fn uncovered(top: &[(u64, u64)], below: &[(u64, u64)]) -> u64 {
    let mut total = 0;
    let mut j = 0;
    for &(s, e) in top {
        let mut pos = s;
        while j < below.len() && below[j].1 <= pos {
            j += 1;
        }
        let mut k = j;
        while pos < e {
            match below.get(k) {
                Some(&(bs, be)) if bs < e => {
                    if bs > pos {
                        total += bs - pos;
                    }
                    pos = pos.max(be);
                    k += 1;
                }
                _ => {
                    total += e - pos;
                    pos = e;
                }
            }
        }
    }
    total
}

/// Whether a local qcow2 file holds data of its own (not only its backing file's).
pub fn holds_data(path: &str) -> Result<bool, MeasureError> {
    Ok(!data_ranges(path, "qcow2")?.is_empty())
}

/// Bytes a commit of `d`'s overlay would add to its image.
pub fn need(d: &DiskRecord) -> Result<u64, MeasureError> {
    let top = data_ranges(&d.overlay, "qcow2")?;
    if top.is_empty() {
        return Ok(0);
    }
    let format = if d.format.is_empty() {
        "qcow2"
    } else {
        &d.format
    };
    Ok(uncovered(&top, &data_ranges(&d.image, format)?))
}

/// Check that every filesystem holding an image of `disks` has room for what their commits
/// add. An image that cannot be measured is skipped (the commit reports its own error).
pub fn check(disks: &[&DiskRecord]) -> Result<(), Shortage> {
    let mut per_fs: BTreeMap<u64, Shortage> = BTreeMap::new();
    for d in disks {
        let (Ok(img), true) = (std::fs::metadata(&d.image), Path::new(&d.overlay).exists()) else {
            continue;
        };
        if !img.is_file() {
            continue;
        }
        let Ok(bytes) = need(d) else { continue };
        if bytes == 0 {
            continue;
        }
        let dir = Path::new(&d.image)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let e = per_fs.entry(img.dev()).or_insert_with(|| Shortage {
            dir,
            overlays: Vec::new(),
            need: 0,
            free: 0,
        });
        e.need += bytes;
        e.overlays.push(d.overlay.clone());
    }
    for (_, mut s) in per_fs {
        let Ok(free) = free_bytes(&s.dir) else {
            continue;
        };
        if with_margin(s.need) > free {
            s.need = with_margin(s.need);
            s.free = free;
            return Err(s);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_the_image_lacks_counts() {
        let top = [(0, 10), (20, 30), (40, 50)];
        assert_eq!(uncovered(&top, &[]), 30);
        assert_eq!(uncovered(&top, &[(0, 50)]), 0);
        assert_eq!(uncovered(&top, &[(5, 25)]), 5 + 5 + 10);
        assert_eq!(
            uncovered(&top, &[(2, 3), (4, 6), (45, 100)]),
            2 + 1 + 4 + 10 + 5
        );
        assert_eq!(uncovered(&[(0, 100)], &[(10, 20), (30, 40)]), 80);
        assert_eq!(uncovered(&[], &[(0, 1)]), 0);
    }

    #[test]
    fn parses_depth_zero_data_only() {
        let json = br#"[{ "start": 0, "length": 512, "depth": 1, "present": true, "zero": false, "data": true, "offset": 1},
{ "start": 512, "length": 1024, "depth": 0, "present": true, "zero": false, "data": true, "offset": 2},
{ "start": 1536, "length": 64, "depth": 0, "present": true, "zero": true, "data": false}]"#;
        assert_eq!(parse_map(json).expect("parse"), vec![(512, 1536)]);
        assert!(parse_map(b"not json").is_err());
    }

    /// Real images: an overlay's data over ranges its image lacks counts, an overwrite of the
    /// image's own data does not.
    #[test]
    fn measures_real_images() {
        let t = tempfile::tempdir().expect("tmp");
        let p = |n: &str| t.path().join(n).to_string_lossy().into_owned();
        let (img, ov) = (p("img.qcow2"), p("ov.qcow2"));
        let run = |args: &[&str]| {
            let o = Command::new(args[0])
                .args(&args[1..])
                .output()
                .expect("spawn");
            assert!(o.status.success(), "{args:?}: {o:?}");
        };
        run(&["qemu-img", "create", "-q", "-f", "qcow2", &img, "64M"]);
        run(&["qemu-io", "-f", "qcow2", "-c", "write -P 1 0 1M", &img]);
        run(&[
            "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &img, &ov,
        ]);
        // 512 KiB over the image's data, 512 KiB beyond it, 2 MiB elsewhere, zeroes.
        for c in ["write -P 2 512k 1M", "write -P 3 8M 2M", "write -z 16M 1M"] {
            run(&["qemu-io", "-f", "qcow2", "-c", c, &ov]);
        }
        let d = DiskRecord {
            target: "vda".into(),
            image: img.clone(),
            overlay: ov.clone(),
            format: "qcow2".into(),
            virtual_size: 64 << 20,
        };
        assert_eq!(need(&d).expect("need"), (512 << 10) + (2 << 20));
        check(&[&d]).expect("a temp dir has 7 MiB to spare");
        let missing = DiskRecord {
            overlay: p("gone.qcow2"),
            ..d.clone()
        };
        check(&[&missing]).expect("no overlay, nothing to commit");
    }
}
