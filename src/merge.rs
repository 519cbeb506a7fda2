//! Offline merge of a snapshot overlay into the image below it (`qemu-img commit`), for
//! members no QEMU runs: deleted ([`crate::vanished`]) or shut off ([`crate::offline`]).
//!
//! Invariants: an overlay is merged only into the image the manifest recorded, checked against
//! the overlay's own backing file; `qemu-img commit` takes QEMU's image locks, so it fails
//! rather than write under a process that has either file open; merging the same overlay again
//! (after a crash) writes the same data. The overlay is never deleted here: callers delete it
//! once nothing names it any more.

use crate::catalog::DiskRecord;
use std::path::Path;
use std::process::Command;

fn stderr_line(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The backing file an overlay's header names, resolved against the overlay's directory.
fn backing_of(overlay: &str) -> Result<Option<String>, String> {
    // -U: read the header without taking locks; the commit below takes them.
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json", overlay])
        .output()
        .map_err(|e| format!("qemu-img: {e}"))?;
    if !out.status.success() {
        return Err(stderr_line(&out));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("qemu-img info output: {e}"))?;
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

/// Merge the disk's overlay into its image; the error is a one-line detail for the caller's
/// message.
pub fn merge(d: &DiskRecord) -> Result<(), String> {
    if !Path::new(&d.image).exists() {
        return Err(format!("its image {} is gone", d.image));
    }
    match backing_of(&d.overlay)? {
        Some(b) if same_file(&b, &d.image) => {}
        Some(b) => {
            return Err(format!(
                "its backing file is {b}, not the snapshot's image {}",
                d.image
            ));
        }
        None => return Err("it has no backing file".into()),
    }
    // -d: do not empty the overlay afterwards; the caller deletes it.
    let out = Command::new("qemu-img")
        .args(["commit", "-q", "-d", "-f", "qcow2", &d.overlay])
        .output()
        .map_err(|e| format!("qemu-img: {e}"))?;
    if !out.status.success() {
        return Err(stderr_line(&out));
    }
    Ok(())
}
