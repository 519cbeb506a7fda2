//! Guest kernel and initramfs, built once by the embedded `guest/build.sh` and cached.
//!
//! Invariant: the build script is the single definition of the guest's user space; it decides
//! itself (by hashing its inputs) whether the cached files are current.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest kernel/initramfs build script (run by [`ensure`]).
pub const BUILD_SCRIPT: &str = include_str!("../guest/build.sh");
/// Steps shared by the root-file-system image builds, sourced by them as `rootfs.sh`.
pub const ROOTFS_LIB: &str = include_str!("../lib/rootfs.sh");
/// Cache directory without `$CGSNAP_GUEST_CACHE`.
pub const DEFAULT_CACHE: &str = "/var/cache/cgsnap/guest";

/// A build script failed; `detail` is its exit status and output tail.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the guest kernel/initramfs in {dir}: {detail}")]
pub struct AssetError {
    /// The output (cache) directory.
    pub dir: PathBuf,
    /// What failed.
    pub detail: String,
}

/// The built guest kernel and initramfs.
#[derive(Debug, Clone)]
pub struct Assets {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs with the guest's `/init`.
    pub initrd: PathBuf,
}

/// Cache directory: `$CGSNAP_GUEST_CACHE` or [`DEFAULT_CACHE`].
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CGSNAP_GUEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

/// Run an embedded build script (written to `dir/file`) with `dir` as its output directory.
/// The script itself decides whether its cached outputs are current.
pub fn run_script(dir: &Path, file: &str, body: &str) -> Result<(), AssetError> {
    run_script_env(dir, file, body, &[])
}

/// [`run_script`] with extra environment variables for the script.
fn run_script_env(
    dir: &Path,
    file: &str,
    body: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> Result<(), AssetError> {
    let err = |detail: String| AssetError {
        dir: dir.to_path_buf(),
        detail,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let script = dir.join(file);
    std::fs::write(&script, body).map_err(|e| err(e.to_string()))?;
    let out = Command::new("bash")
        .arg(&script)
        .arg(dir)
        .envs(env.iter().copied())
        .output()
        .map_err(|e| err(format!("bash: {e}")))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        return Err(err(format!("{file} failed: {}", tail.join(" | "))));
    }
    Ok(())
}

/// [`run_script_env`] for a root-file-system image build: writes [`ROOTFS_LIB`] beside it as
/// `rootfs.sh`, where the script sources it from.
pub fn run_image_script(
    dir: &Path,
    file: &str,
    body: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> Result<(), AssetError> {
    std::fs::create_dir_all(dir).map_err(|e| AssetError {
        dir: dir.to_path_buf(),
        detail: e.to_string(),
    })?;
    let lib = dir.join("rootfs.sh");
    std::fs::write(&lib, ROOTFS_LIB).map_err(|e| AssetError {
        dir: dir.to_path_buf(),
        detail: format!("{}: {e}", lib.display()),
    })?;
    run_script_env(dir, file, body, env)
}

/// Build (or reuse) the guest assets in `dir`.
pub fn ensure(dir: &Path) -> Result<Assets, AssetError> {
    run_script(dir, "build.sh", BUILD_SCRIPT)?;
    let err = |detail: String| AssetError {
        dir: dir.to_path_buf(),
        detail,
    };
    let a = Assets {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
    };
    if !a.kernel.exists() || !a.initrd.exists() {
        return Err(err("build.sh did not produce vmlinuz and initrd.img".into()));
    }
    Ok(a)
}
