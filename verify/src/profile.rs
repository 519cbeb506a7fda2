//! Verification profiles: which member runs which database and what must hold after restore.
//!
//! Invariants: parsing is strict (`deny_unknown_fields`, a format version); a profile names
//! members by domain, and every member of the snapshot must have an entry (checked at run time).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub format_version: u32,
    /// Largest acceptable data loss (consistency point minus newest recovered beacon).
    pub rpo_seconds: f64,
    /// Acknowledgement log of the workload (JSON lines), for the lost-commit check.
    #[serde(default)]
    pub ack_log: Option<PathBuf>,
    /// Longest time a member may take to reach ready after boot.
    #[serde(default = "default_ready")]
    pub ready_timeout_seconds: u64,
    #[serde(rename = "member")]
    pub members: Vec<MemberProfile>,
    /// Cross-member invariants: `behind` must not exceed `ahead` (each a one-value query).
    #[serde(default, rename = "cross")]
    pub cross: Vec<Cross>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Cross {
    pub name: String,
    pub ahead_domain: String,
    pub ahead_sql: String,
    pub behind_domain: String,
    pub behind_sql: String,
}

fn default_ready() -> u64 {
    300
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Postgres,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemberProfile {
    pub domain: String,
    pub kind: Kind,
    /// Database port inside the guest (forwarded to a loopback port in the sandbox).
    pub port: u16,
    pub user: String,
    pub password: String,
    #[serde(default = "default_db")]
    pub dbname: String,
    /// Console line the guest prints once the database accepts connections.
    pub ready_marker: String,
    /// Console line the guest prints when the database cannot start (e.g. recovery failed):
    /// the member fails at once instead of waiting out the ready timeout.
    #[serde(default)]
    pub failure_marker: Option<String>,
    /// SQL queries returning one boolean each; all must be true.
    #[serde(default)]
    pub invariants: Vec<String>,
    /// Table with `(seq bigint, ts timestamptz)` beacons, if the group runs `cgsnap beacon`.
    #[serde(default)]
    pub beacon_table: Option<String>,
    /// Name of this database in the acknowledgement log (`db` field), if any.
    #[serde(default)]
    pub ack_db: Option<String>,
    /// `table.column` holding the acknowledged ids of `ack_kind` rows, for the lost-commit check.
    #[serde(default)]
    pub ack_kind: Option<String>,
    #[serde(default)]
    pub ack_table: Option<String>,
}

fn default_db() -> String {
    "postgres".into()
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed profile {path}: {detail}")]
    Malformed { path: PathBuf, detail: String },
}

pub fn parse(path: &Path, text: &str) -> Result<Profile, ProfileError> {
    let p: Profile = toml::from_str(text).map_err(|e| ProfileError::Malformed {
        path: path.to_path_buf(),
        detail: e.to_string().replace('\n', " "),
    })?;
    if p.format_version != FORMAT_VERSION {
        return Err(ProfileError::Malformed {
            path: path.to_path_buf(),
            detail: format!(
                "format_version {} is not supported (expected {FORMAT_VERSION})",
                p.format_version
            ),
        });
    }
    Ok(p)
}

pub fn load(path: &Path) -> Result<Profile, ProfileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
format_version = 1
rpo_seconds = 5
[[member]]
domain = "a"
kind = "postgres"
port = 5432
user = "postgres"
password = "x"
ready_marker = "READY"
invariants = ["SELECT true"]
beacon_table = "cgsnap_beacon"
"#;

    #[test]
    fn parses_and_rejects_unknown_fields_and_versions() {
        let p = parse(Path::new("p.toml"), OK).expect("parse");
        assert_eq!(p.members[0].dbname, "postgres");
        assert_eq!(p.ready_timeout_seconds, 300);
        let bad = OK.replace("port = 5432", "port = 5432\nprot = 1");
        let e = parse(Path::new("p.toml"), &bad).unwrap_err();
        assert!(
            e.to_string().contains("p.toml") && e.to_string().contains("prot"),
            "{e}"
        );
        let e = parse(
            Path::new("p.toml"),
            &OK.replace("format_version = 1", "format_version = 2"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("format_version 2"));
        assert!(parse(Path::new("p.toml"), "rpo_seconds = ").is_err());
    }
}
