//! Offline merge of a snapshot overlay into the image below it (`qemu-img commit`), for
//! members no QEMU runs: deleted ([`crate::release::vanished`]) or shut off ([`crate::release::offline`]).
//!
//! Invariants: an overlay is merged only into the image the manifest recorded, checked against
//! the overlay's own backing file; `qemu-img commit` takes QEMU's image locks, so it fails
//! rather than write under a process that has either file open; merging the same overlay again
//! (after a crash) writes the same data. The overlay is never deleted here: callers delete it
//! once nothing names it any more.

use crate::catalog::DiskRecord;
use crate::hypervisor::qemu_text::QemuFailure;
use std::path::Path;
use std::process::Command;

/// Why an overlay was not merged; each message is a one-line detail for the caller's.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// `qemu-img` could not be run.
    #[error("qemu-img: {0}")]
    Spawn(#[source] std::io::Error),
    /// `qemu-img` failed: its first line of stderr, and what it says.
    #[error("{detail}")]
    Failed {
        /// The first line of `qemu-img`'s stderr.
        detail: String,
        /// What that line says (e.g. an image lock held).
        failure: QemuFailure,
    },
    /// `qemu-img info` printed JSON that could not be read.
    #[error("qemu-img info output: {0}")]
    InfoOutput(#[source] serde_json::Error),
    /// The image the manifest recorded no longer exists.
    #[error("its image {image} is gone")]
    ImageGone {
        /// Path of the missing image.
        image: String,
    },
    /// The overlay is not backed by the image the manifest recorded.
    #[error(transparent)]
    Backing(#[from] BackingMismatch),
}

/// An overlay whose backing file is not the snapshot's image: merging it would write into
/// something else. Shared by the local merge and the merge on another host.
#[derive(Debug, thiserror::Error)]
pub enum BackingMismatch {
    /// The overlay's backing file is not the image the manifest recorded.
    #[error("its backing file is {backing}, not the snapshot's image {image}")]
    Other {
        /// Path of the overlay's backing file.
        backing: String,
        /// Path of the image the manifest recorded.
        image: String,
    },
    /// The overlay has no backing file at all.
    #[error("it has no backing file")]
    Missing,
}

/// Whether the backing file `found` (as the overlay's header or libvirt names it) is the
/// recorded `image`, compared by `same`.
pub fn check_backing(
    found: Option<&str>,
    image: &str,
    same: impl Fn(&str, &str) -> bool,
) -> Result<(), BackingMismatch> {
    match found {
        Some(b) if same(b, image) => Ok(()),
        Some(b) => Err(BackingMismatch::Other {
            backing: b.to_string(),
            image: image.to_string(),
        }),
        None => Err(BackingMismatch::Missing),
    }
}

impl MergeError {
    /// Refused because some process has the overlay or its image open (QEMU's image locks).
    pub fn held_open(&self) -> bool {
        matches!(
            self,
            MergeError::Failed {
                failure: QemuFailure::HeldOpen,
                ..
            }
        )
    }

    fn failed(out: &std::process::Output) -> Self {
        let detail = stderr_line(out);
        let failure = crate::hypervisor::qemu_text::classify(&detail);
        MergeError::Failed { detail, failure }
    }
}

fn stderr_line(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The backing file an overlay's header names, resolved against the overlay's directory.
fn backing_of(overlay: &str) -> Result<Option<String>, MergeError> {
    // -U: read the header without taking locks; the commit below takes them.
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json", overlay])
        .output()
        .map_err(MergeError::Spawn)?;
    if !out.status.success() {
        return Err(MergeError::failed(&out));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(MergeError::InfoOutput)?;
    Ok(v.get("full-backing-filename")
        .or_else(|| v.get("backing-filename"))
        .and_then(|b| b.as_str())
        .map(str::to_string))
}

fn same_file(a: &str, b: &str) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Merge the disk's overlay into its image.
pub fn merge(d: &DiskRecord) -> Result<(), MergeError> {
    if !Path::new(&d.image).exists() {
        return Err(MergeError::ImageGone {
            image: d.image.clone(),
        });
    }
    check_backing(backing_of(&d.overlay)?.as_deref(), &d.image, same_file)?;
    // -d: do not empty the overlay afterwards; the caller deletes it.
    let out = Command::new("qemu-img")
        .args(["commit", "-q", "-d", "-f", "qcow2", &d.overlay])
        .output()
        .map_err(MergeError::Spawn)?;
    if !out.status.success() {
        return Err(MergeError::failed(&out));
    }
    Ok(())
}
