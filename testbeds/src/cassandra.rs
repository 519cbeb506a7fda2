//! Multi-disk Cassandra guests: root, commit log and data on three virtio disks, reachable from
//! the host only through a loopback forward to the CQL port.
//!
//! Invariants:
//! - No Cassandra code is part of this project: the images are built from Debian packages plus
//!   a binary distribution the user names with `CGSNAP_CASSANDRA_HOME` (`cassandra/build.sh`,
//!   embedded, cached on its inputs including the distribution's identity).
//! - The commit log sync mode is a property of the guest, on its kernel command line (and so in
//!   the domain XML a snapshot manifest saves); the guest applies it at every boot.
//! - Each guest gets private copies of the commit log/data templates and an overlay on the
//!   shared root, so guests never share a writable image.

use crate::assets::AssetError;
use crate::guest::{DiskSource, Spec};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The Cassandra image build script.
pub const BUILD_SCRIPT: &str = include_str!("../cassandra/build.sh");
/// Environment variable naming the Cassandra binary distribution to use.
pub const HOME_VAR: &str = "CGSNAP_CASSANDRA_HOME";
/// Why Cassandra testbeds and tests cannot run without a distribution, and the fix.
pub const UNSET_HELP: &str = "CGSNAP_CASSANDRA_HOME is not set (point it at a Cassandra 2.2 to 5.0 binary distribution: bin/, conf/, lib/)";
/// CQL port inside the guest.
pub const CQL_PORT: u16 = 9042;
/// What the guest's init prints on the console once CQL is up.
pub const READY_MARKER: &str = "CGSNAP-CASS: ready";
/// What the guest's init prints on the console, followed by the server's own error line, when
/// the server exits or logs a fatal error before CQL is up (or a disk does not mount).
pub const ERROR_MARKER: &str = "CGSNAP-CASS: error";
/// Keyspace of the workload tables.
pub const KEYSPACE: &str = "cgsnap";

/// How Cassandra makes acknowledged writes durable (`commitlog_sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "commitlog_sync")]
pub enum SyncMode {
    /// A write is acknowledged after its commit log entry is synced.
    Batch,
    /// Writes are acknowledged at once; the commit log is synced every `period_ms`.
    Periodic {
        /// `commitlog_sync_period` in milliseconds.
        period_ms: u64,
    },
}

impl SyncMode {
    /// Guest kernel command line options carrying the mode (read by the guest's init).
    pub fn kernel_args(self) -> String {
        match self {
            SyncMode::Batch => "cgsnap.cass_sync=batch".into(),
            SyncMode::Periodic { period_ms } => {
                format!("cgsnap.cass_sync=periodic cgsnap.cass_sync_period_ms={period_ms}")
            }
        }
    }

    /// The mode a guest kernel command line asks for; `None` if it names none or is malformed.
    pub fn from_kernel_args(cmdline: &str) -> Option<SyncMode> {
        let opt = |k: &str| {
            cmdline
                .split_whitespace()
                .find_map(|o| o.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
        };
        match opt("cgsnap.cass_sync")? {
            "batch" => Some(SyncMode::Batch),
            "periodic" => Some(SyncMode::Periodic {
                period_ms: opt("cgsnap.cass_sync_period_ms")?.parse().ok()?,
            }),
            _ => None,
        }
    }
}

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncMode::Batch => write!(f, "batch"),
            SyncMode::Periodic { period_ms } => write!(f, "periodic ({period_ms} ms)"),
        }
    }
}

/// A Cassandra binary distribution on this host.
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution {
    /// The distribution's top directory.
    pub home: PathBuf,
    /// From `lib/apache-cassandra-VERSION.jar`.
    pub version: String,
}

/// Why no Cassandra distribution can be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DistError {
    /// [`HOME_VAR`] is not set.
    #[error("{UNSET_HELP}")]
    Unset,
    #[error("{HOME_VAR}={home} is not a Cassandra binary distribution: {detail}")]
    /// The directory is not a binary distribution.
    Invalid {
        /// The directory named.
        home: PathBuf,
        /// What is missing or wrong.
        detail: String,
    },
}

/// The version in the name of the server jar (`apache-cassandra-4.1.3.jar`); the other jars of
/// the family (`apache-cassandra-thrift-*`, `-clientutil-*`) do not start with a digit.
pub fn jar_version<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<String> {
    names.into_iter().find_map(|n| {
        let v = n.strip_prefix("apache-cassandra-")?.strip_suffix(".jar")?;
        v.starts_with(|c: char| c.is_ascii_digit())
            .then(|| v.to_string())
    })
}

/// Check that `home` has the layout of a binary tarball and read its version.
pub fn inspect(home: &Path) -> Result<Distribution, DistError> {
    let bad = |detail: String| DistError::Invalid {
        home: home.to_path_buf(),
        detail,
    };
    for f in [
        "bin/cassandra",
        "bin/nodetool",
        "conf/cassandra.yaml",
        "conf/cassandra-env.sh",
    ] {
        if !home.join(f).is_file() {
            return Err(bad(format!("{f} missing")));
        }
    }
    let lib = home.join("lib");
    let names: Vec<String> = std::fs::read_dir(&lib)
        .map_err(|e| bad(format!("{}: {e}", lib.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let version = jar_version(names.iter().map(String::as_str))
        .ok_or_else(|| bad("lib/ has no apache-cassandra-VERSION.jar".into()))?;
    Ok(Distribution {
        home: home.to_path_buf(),
        version,
    })
}

/// The distribution named by `CGSNAP_CASSANDRA_HOME`.
pub fn distribution() -> Result<Distribution, DistError> {
    match std::env::var_os(HOME_VAR) {
        Some(h) if !h.is_empty() => inspect(Path::new(&h)),
        _ => Err(DistError::Unset),
    }
}

/// The Cassandra guest's images.
#[derive(Debug, Clone)]
pub struct Images {
    /// Root file system (shared, used through overlays).
    pub root: PathBuf,
    /// Commit log disk template.
    pub commitlog: PathBuf,
    /// Data disk template.
    pub data: PathBuf,
}

/// Build (or reuse) the Cassandra images in `dir` from `dist` (minutes the first time), with
/// the `cassandra.yaml` edits of its version `v` (checked by [`crate::cass_config::check`]).
pub fn ensure(
    dir: &Path,
    dist: &Distribution,
    v: crate::cass_config::Version,
) -> Result<Images, AssetError> {
    let err = |detail: String| AssetError {
        dir: dir.to_path_buf(),
        detail,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    // Beside the script, which applies them and hashes them into the image's inputs.
    let edits = crate::cass_config::edits_file(&dist.version, v);
    for (name, text) in [
        ("cass-yaml.sh", crate::cass_yaml::SCRIPT),
        ("cass-watch.sh", crate::cass_watch::SCRIPT),
        (crate::cass_config::EDITS_FILE, edits.as_str()),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| err(format!("{}: {e}", p.display())))?;
    }
    // The script reads the distribution from its environment: pass the one checked here.
    crate::assets::run_image_script(
        dir,
        "cassandra-build.sh",
        BUILD_SCRIPT,
        &[(HOME_VAR, dist.home.as_os_str())],
    )?;
    Ok(Images {
        root: dir.join("cass-root.qcow2"),
        commitlog: dir.join("cass-commitlog.qcow2"),
        data: dir.join("cass-data.qcow2"),
    })
}

/// A Cassandra guest forwarding `127.0.0.1:port` to its CQL port.
pub fn spec(name: &str, port: u16, images: &Images, sync: SyncMode) -> Spec {
    let mut s = Spec::writer(name, 3);
    s.mode = "idle";
    // A 512 MiB heap plus metaspace, off-heap structures and page cache.
    s.memory_mib = 1536;
    s.sources = vec![
        DiskSource::Overlay(images.root.clone()),
        DiskSource::Copy(images.commitlog.clone()),
        DiskSource::Copy(images.data.clone()),
    ];
    s.cmdline = format!(
        "cgsnap.root=/dev/vda cgsnap.init=/sbin/cgsnap-cass-init {}",
        sync.kernel_args()
    );
    s.forward = Some((port, CQL_PORT));
    s
}

/// Address for the CQL client of a guest's forwarded port.
pub fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_mode_round_trips_through_the_kernel_command_line() {
        for m in [SyncMode::Batch, SyncMode::Periodic { period_ms: 2000 }] {
            let cmdline = format!(
                "console=ttyS0 cgsnap.root=/dev/vda {} quiet",
                m.kernel_args()
            );
            assert_eq!(SyncMode::from_kernel_args(&cmdline), Some(m));
        }
        assert_eq!(SyncMode::from_kernel_args("console=ttyS0"), None);
        assert_eq!(
            SyncMode::from_kernel_args("cgsnap.cass_sync=periodic"),
            None
        );
        assert_eq!(SyncMode::from_kernel_args("cgsnap.cass_sync=group"), None);
    }

    #[test]
    fn server_jar_names_the_version() {
        let names = [
            "apache-cassandra-thrift-3.11.16.jar",
            "guava-27.0-jre.jar",
            "apache-cassandra-3.11.16.jar",
        ];
        assert_eq!(jar_version(names), Some("3.11.16".into()));
        assert_eq!(
            jar_version(["apache-cassandra-5.0-rc1.jar"]),
            Some("5.0-rc1".into())
        );
        assert_eq!(
            jar_version(["apache-cassandra-clientutil-2.2.19.jar"]),
            None
        );
    }

    #[test]
    fn distribution_layout_is_checked() {
        let d = std::env::temp_dir().join(format!("cgsnap-dist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        for sub in ["bin", "conf", "lib"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        let e = inspect(&d).expect_err("empty layout");
        assert!(e.to_string().contains("bin/cassandra missing"), "{e}");
        for f in [
            "bin/cassandra",
            "bin/nodetool",
            "conf/cassandra.yaml",
            "conf/cassandra-env.sh",
        ] {
            std::fs::write(d.join(f), "").expect("touch");
        }
        let e = inspect(&d).expect_err("no jar");
        assert!(
            e.to_string().contains("apache-cassandra-VERSION.jar"),
            "{e}"
        );
        std::fs::write(d.join("lib/apache-cassandra-4.1.3.jar"), "").expect("jar");
        assert_eq!(inspect(&d).expect("valid").version, "4.1.3");
        std::fs::remove_dir_all(&d).expect("cleanup");
        assert!(DistError::Unset.to_string().contains("bin/, conf/, lib/"));
    }
}
