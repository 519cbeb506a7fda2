//! Running `qemu-img` (Debian's qemu-utils): the one place that spawns it for the engine's
//! image checks and creations, so every caller reports a missing tool and a failed call the
//! same way.
//!
//! Invariant: a call succeeds only when qemu-img exited 0; its stdout is returned untouched
//! and a failure carries qemu-img's own first stderr lines, trimmed.

use std::process::Command;

/// Why a `qemu-img` call failed.
#[derive(Debug, thiserror::Error)]
pub enum QemuImgError {
    /// It could not be started.
    #[error("cannot run qemu-img {sub}: {source}; install qemu-utils")]
    Spawn {
        /// The subcommand (`create`, `info`, ...).
        sub: String,
        /// Why.
        source: std::io::Error,
    },
    /// It ran and exited non-zero.
    #[error("qemu-img {sub} failed: {stderr}")]
    Failed {
        /// The subcommand.
        sub: String,
        /// What it said.
        stderr: String,
    },
}

/// Run `qemu-img ARGS`; its stdout on success.
pub fn run(args: &[&str]) -> Result<Vec<u8>, QemuImgError> {
    let sub = args.first().copied().unwrap_or_default().to_string();
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(|source| QemuImgError::Spawn {
            sub: sub.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(QemuImgError::Failed {
            sub,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// Create an empty qcow2 image of `size` bytes at `path`, with `extra` options before the
/// path (e.g. `-u -F qcow2 -b BACKING` for an overlay).
pub fn create_qcow2(path: &str, size: u64, extra: &[&str]) -> Result<(), QemuImgError> {
    let size = size.to_string();
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[path, &size]);
    run(&args).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_an_image_and_reports_qemu_imgs_own_error() {
        let t = tempfile::tempdir().expect("tmp");
        let img = t.path().join("a.qcow2");
        let p = img.to_string_lossy();
        create_qcow2(&p, 1 << 20, &[]).expect("create");
        let info = run(&["info", "--output=json", &p]).expect("info");
        let v: serde_json::Value = serde_json::from_slice(&info).expect("json");
        assert_eq!(v["virtual-size"], 1 << 20);
        let e = run(&["info", "/nonexistent/b.qcow2"]).expect_err("missing");
        let text = e.to_string();
        assert!(
            text.starts_with("qemu-img info failed: ") && text.contains("/nonexistent/b.qcow2"),
            "{text}"
        );
    }
}
