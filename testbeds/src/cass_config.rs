//! What a Cassandra version needs from the testbed: whether it is supported at all, which
//! `cassandra.yaml` keys of the testbed's edits it accepts, and whether the image's Java runs it.
//!
//! Invariants:
//! - This table is the one source of the version-specific edits: [`edits_file`] is written
//!   beside `cassandra/build.sh`, which applies it (`yaml_apply`) and hashes it into the image's
//!   inputs, and copies it into the image, where the init reads the batch window from it.
//! - Cassandra 2.2 to 5.0 refuse unknown keys ("Invalid yaml. Please remove properties"), so a
//!   key is set only on versions that know it; removing a key a version lacks is harmless.
//! - The period key's spelling is also detected from the shipped file by `cass_sync` (yaml.sh);
//!   [`period_key`] states what that detection must find for each version (tested together).
//! - Everything is refused before anything is built or booted: [`check`] runs right after the
//!   distribution is found.

use std::path::Path;

/// Environment variable naming another Debian JRE package for the image.
pub const JRE_VAR: &str = "CGSNAP_CASSANDRA_JRE_PACKAGE";
/// The image's JRE package without [`JRE_VAR`] (Debian 12 has no other Java).
pub const DEFAULT_JRE: &str = "openjdk-17-jre-headless";
/// Name of the edits file written beside the build script.
pub const EDITS_FILE: &str = "cass-yaml-edits";

/// A supported Cassandra release line (`major.minor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

/// Why a distribution cannot be used by the testbed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The version is outside 2.2 to 5.0, or not a version at all.
    #[error(
        "Cassandra {version} is not supported: the testbed runs 2.2, 3.0 to 3.11, 4.0, 4.1 and 5.0; point CGSNAP_CASSANDRA_HOME at a distribution of one of those"
    )]
    Unsupported {
        /// The version read from the server jar.
        version: String,
    },
    /// The image's Java cannot run this distribution.
    #[error(
        "Cassandra {version} needs Java {needs}, but the image gets Java {have} ({package}) and the distribution's conf/ shows no preparation for it: use a distribution built for Java {have}, or set CGSNAP_CASSANDRA_JRE_PACKAGE to a Debian package of Java {suggest} (e.g. openjdk-{suggest}-jre-headless)"
    )]
    Java {
        /// The distribution's version.
        version: String,
        /// The Java versions Apache documents for it ("8 or 11").
        needs: String,
        /// The image's Java.
        have: u32,
        /// The image's JRE package.
        package: String,
        /// The Java to suggest (the newest documented one).
        suggest: u32,
    },
}

/// `major.minor` of a version string ("2.2.18", "5.0-rc1", "3.11.16"); `None` if malformed.
pub fn parse(version: &str) -> Option<Version> {
    let mut it = version.split(['.', '-']);
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some(Version { major, minor })
}

/// The version if the testbed supports it: 2.2, 3.0 to 3.11, 4.0, 4.1, 5.0.
pub fn supported(version: &str) -> Result<Version, ConfigError> {
    let ok = |v: &Version| match v.major {
        2 => v.minor == 2,
        3 => v.minor <= 11,
        4 => v.minor <= 1,
        5 => v.minor == 0,
        _ => false,
    };
    parse(version)
        .filter(ok)
        .ok_or_else(|| ConfigError::Unsupported {
            version: version.to_string(),
        })
}

const fn at_least(v: Version, major: u32, minor: u32) -> bool {
    v.major > major || (v.major == major && v.minor >= minor)
}

/// One edit of a top-level `cassandra.yaml` key (see yaml.sh).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// `key: value`.
    Set(&'static str, &'static str),
    /// `key:` with a one-item list.
    List(&'static str, &'static str),
    /// The key's active definition removed.
    Unset(&'static str),
}

impl Edit {
    /// The key edited.
    pub fn key(self) -> &'static str {
        match self {
            Edit::Set(k, _) | Edit::List(k, _) | Edit::Unset(k) => k,
        }
    }
}

/// The static `cassandra.yaml` edits of the image for version `v`, in order (the seed
/// provider's nested block and the sync mode are applied by build.sh and `cass_sync`).
pub fn yaml_edits(v: Version) -> Vec<Edit> {
    let mut e = vec![
        Edit::Set("cluster_name", "'cgsnap'"),
        Edit::List("data_file_directories", "/cassdata/data"),
        Edit::Set("commitlog_directory", "/casscommit/commitlog"),
        Edit::Set("saved_caches_directory", "/cassdata/saved_caches"),
    ];
    // Hints moved out of the system keyspace into files in 3.0.
    if at_least(v, 3, 0) {
        e.push(Edit::Set("hints_directory", "/cassdata/hints"));
    }
    // Change data capture came with 3.8 (the 3.0.x line never had it).
    if at_least(v, 3, 8) {
        e.push(Edit::Set("cdc_raw_directory", "/cassdata/cdc_raw"));
    }
    // The guest's address on QEMU's user-mode network; the host reaches it only via a forward.
    for k in [
        "listen_interface",
        "rpc_interface",
        "broadcast_address",
        "broadcast_rpc_address",
    ] {
        e.push(Edit::Unset(k));
    }
    e.extend([
        Edit::Set("listen_address", "10.0.2.15"),
        Edit::Set("rpc_address", "10.0.2.15"),
        Edit::Set("start_native_transport", "true"),
        Edit::Set("native_transport_port", "9042"),
    ]);
    // Thrift is not used and costs memory on a small guest; 4.0 removed it and its keys.
    if !at_least(v, 4, 0) {
        e.push(Edit::Set("start_rpc", "false"));
    }
    e
}

/// The commit log period key as the shipped file of `v` spells it (4.1 added unit suffixes).
pub fn period_key(v: Version) -> &'static str {
    if at_least(v, 4, 1) {
        "commitlog_sync_period"
    } else {
        "commitlog_sync_period_in_ms"
    }
}

/// The period's value in that spelling ("10000ms" from 4.1, "10000" before).
pub fn period_value(v: Version, period_ms: u64) -> String {
    if at_least(v, 4, 1) {
        format!("{period_ms}ms")
    } else {
        period_ms.to_string()
    }
}

/// `commitlog_sync_batch_window_in_ms` for batch mode: required before 4.0, deprecated after
/// (4.0 syncs every batch write at once).
pub fn batch_window_ms(v: Version) -> Option<u32> {
    (!at_least(v, 4, 0)).then_some(2)
}

/// The edits file build.sh applies: `version V`, then `set|list|unset KEY [VALUE]` lines and
/// `batch_window_ms N` where batch mode needs a window.
pub fn edits_file(version: &str, v: Version) -> String {
    let mut s = format!(
        "# cassandra.yaml edits for Cassandra {version}, written by cgsnap (cass_config.rs)\nversion {version}\n"
    );
    for e in yaml_edits(v) {
        match e {
            Edit::Set(k, val) => s.push_str(&format!("set {k} {val}\n")),
            Edit::List(k, item) => s.push_str(&format!("list {k} {item}\n")),
            Edit::Unset(k) => s.push_str(&format!("unset {k}\n")),
        }
    }
    if let Some(w) = batch_window_ms(v) {
        s.push_str(&format!("batch_window_ms {w}\n"));
    }
    s
}

/// The Java versions Apache documents for `v`.
pub fn documented_java(v: Version) -> &'static [u32] {
    match (v.major, v.minor) {
        (5, _) => &[11, 17],
        (4, _) => &[8, 11],
        _ => &[8],
    }
}

/// The Java major version of a Debian JRE package name (`openjdk-17-jre-headless` is 17);
/// `None` when the name carries none.
pub fn package_java(package: &str) -> Option<u32> {
    package
        .split('-')
        .find_map(|p| p.parse().ok().filter(|n| *n >= 8))
}

/// What a distribution's `conf/` says about newer Javas: the names of `jvm*.options` files and
/// of the files whose active lines carry `--add-exports`/`--add-opens`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JavaConf {
    /// `conf/jvm*.options` file names.
    pub option_files: Vec<String>,
    /// Files among `cassandra-env.sh` and `jvm*.options` with module-access flags.
    pub flag_files: Vec<String>,
}

/// Whether an active line of a conf file opens JDK modules (needed from Java 9 on).
pub fn has_module_flags(text: &str) -> bool {
    text.lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with('#'))
        .any(|l| l.contains("--add-exports") || l.contains("--add-opens"))
}

/// Read [`JavaConf`] from a `conf/` directory (unreadable files count as absent).
pub fn read_java_conf(conf: &Path) -> JavaConf {
    let mut c = JavaConf::default();
    let names = std::fs::read_dir(conf)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned());
    for n in names {
        let options = n.starts_with("jvm") && n.ends_with(".options");
        if options {
            c.option_files.push(n.clone());
        }
        if options || n == "cassandra-env.sh" {
            let text = std::fs::read_to_string(conf.join(&n)).unwrap_or_default();
            if has_module_flags(&text) {
                c.flag_files.push(n);
            }
        }
    }
    c.option_files.sort();
    c.flag_files.sort();
    c
}

/// Whether the conf was prepared for Java `java` beyond what Apache documents: a
/// `jvmJAVA-*.options` file, or module flags in a file not made for a documented Java >= 9
/// (4.x ships `jvm11-*.options` with such flags; they say nothing about 17).
fn prepared_for(v: Version, java: u32, conf: &JavaConf) -> bool {
    let own = format!("jvm{java}-");
    if java >= 9 && conf.option_files.iter().any(|f| f.starts_with(&own)) {
        return true;
    }
    let documented_file = |f: &str| {
        documented_java(v)
            .iter()
            .any(|j| *j >= 9 && f.starts_with(&format!("jvm{j}-")))
    };
    java >= 9 && conf.flag_files.iter().any(|f| !documented_file(f))
}

/// Whether the image's Java (from `package`) runs `version`; a package name without a Java
/// version is taken on trust (the image build still checks that `java` runs).
pub fn check_java(
    version: &str,
    v: Version,
    package: &str,
    conf: &JavaConf,
) -> Result<(), ConfigError> {
    let Some(have) = package_java(package) else {
        return Ok(());
    };
    let doc = documented_java(v);
    if doc.contains(&have) || prepared_for(v, have, conf) {
        return Ok(());
    }
    let needs: Vec<String> = doc.iter().map(u32::to_string).collect();
    Err(ConfigError::Java {
        version: version.to_string(),
        needs: needs.join(" or "),
        have,
        package: package.to_string(),
        suggest: doc.iter().copied().max().unwrap_or(8),
    })
}

/// The image's JRE package: [`JRE_VAR`] or [`DEFAULT_JRE`].
pub fn jre_package() -> String {
    std::env::var(JRE_VAR)
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_JRE.to_string())
}

/// Everything that must hold before a testbed image is built from the distribution of
/// `version` in `home` (a [`crate::cassandra::Distribution`]'s fields: that module uses this
/// one, not the other way round).
pub fn check(version: &str, home: &Path) -> Result<Version, ConfigError> {
    let v = supported(version)?;
    let conf = read_java_conf(&home.join("conf"));
    check_java(version, v, &jre_package(), &conf)?;
    Ok(v)
}

#[cfg(test)]
#[path = "cass_config_tests.rs"]
mod tests;
