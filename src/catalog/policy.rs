//! The DR policy of a group, stored beside the catalog as `CATALOG/policies/GROUP.toml`:
//! how old its newest verified restore point may be, and its RPO and RTO targets.
//!
//! ```toml
//! # cgsnap DR policy of group pg-pair (`cgsnap group policy pg-pair`)
//! max_restore_point_age = "26h"
//! rpo = "5m"
//! rto = "15m"
//! ```
//!
//! Invariants:
//! - Strict: every key is required and no other key is accepted, so a typo (`rpo_target`) is
//!   an error naming the file, never a target silently left out of the compliance status.
//! - Kept with the catalog, not in domain metadata: the policy outlives its members (a group
//!   whose VMs were all deleted is exactly one an auditor asks about), and `report` and
//!   `metrics` read it without a hypervisor connection.
//! - Written atomically (temporary file, fsync, rename), like manifests.

use crate::catalog::{Catalog, replace_file};
use crate::group::validate_name;
use crate::model::duration;
use crate::model::exit::{Classify, ExitCode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A group's DR targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The newest verified restore point may be at most this old (from its consistency point).
    pub max_restore_point_age: Duration,
    /// Recovery point objective: the data loss a verified restore may show, per member.
    pub rpo: Duration,
    /// Recovery time objective: boot of the restored copy to its database ready, per member.
    pub rto: Duration,
}

/// Changes to a group's policy; `None` keeps what is stored.
#[derive(Debug, Clone, Copy, Default)]
pub struct Change {
    /// New maximum age of the newest verified restore point.
    pub max_restore_point_age: Option<Duration>,
    /// New RPO target.
    pub rpo: Option<Duration>,
    /// New RTO target.
    pub rto: Option<Duration>,
}

impl Change {
    /// Whether it changes nothing (a `show`).
    pub fn is_empty(&self) -> bool {
        self.max_restore_point_age.is_none() && self.rpo.is_none() && self.rto.is_none()
    }
}

/// The file's form: durations as `duration::parse` reads them.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    max_restore_point_age: String,
    rpo: String,
    rto: String,
}

/// Why a policy could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The group name cannot name a file.
    #[error(transparent)]
    Name(#[from] crate::group::GroupError),
    /// The policy file or its directory could not be read or written.
    #[error("policy {path}: {source} (check --catalog / CGSNAP_CATALOG and permissions)")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid policy.
    #[error("malformed policy {path}: {detail}; fix it or set it again with `cgsnap group policy`")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A first policy must name every target.
    #[error(
        "group {group} has no policy yet: give {missing} too (e.g. `cgsnap group policy {group} --max-age 26h --rpo 5m --rto 15m`)"
    )]
    Incomplete {
        /// The group.
        group: String,
        /// The flags missing, comma-separated.
        missing: String,
    },
}

impl Classify for PolicyError {
    fn exit_code(&self) -> ExitCode {
        match self {
            PolicyError::Name(e) => e.exit_code(),
            PolicyError::Io { .. } => ExitCode::Internal,
            PolicyError::Malformed { .. } => ExitCode::Malformed,
            PolicyError::Incomplete { .. } => ExitCode::Usage,
        }
    }
}

fn dir(cat: &Catalog) -> PathBuf {
    cat.dir().join("policies")
}

fn path(cat: &Catalog, group: &str) -> Result<PathBuf, PolicyError> {
    validate_name(group)?;
    Ok(dir(cat).join(format!("{group}.toml")))
}

fn parse(path: &Path, text: &str) -> Result<Policy, PolicyError> {
    let bad = |detail: String| PolicyError::Malformed {
        path: path.to_path_buf(),
        detail,
    };
    let f: PolicyFile = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
    let d = |key: &str, v: &str| duration::parse(v).map_err(|e| bad(format!("{key}: {e}")));
    Ok(Policy {
        max_restore_point_age: d("max_restore_point_age", &f.max_restore_point_age)?,
        rpo: d("rpo", &f.rpo)?,
        rto: d("rto", &f.rto)?,
    })
}

/// The policy of `group`, if one is set.
pub fn load(cat: &Catalog, group: &str) -> Result<Option<Policy>, PolicyError> {
    let p = path(cat, group)?;
    match fs::read_to_string(&p) {
        Ok(t) => parse(&p, &t).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PolicyError::Io { path: p, source }),
    }
}

/// Every policy set in the catalog, by group.
pub fn all(cat: &Catalog) -> Result<BTreeMap<String, Policy>, PolicyError> {
    let d = dir(cat);
    let entries = match fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => return Err(PolicyError::Io { path: d, source }),
    };
    let mut out = BTreeMap::new();
    for e in entries {
        let e = e.map_err(|source| PolicyError::Io {
            path: d.clone(),
            source,
        })?;
        let p = e.path();
        let Some(group) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".toml"))
        else {
            continue;
        };
        if validate_name(group).is_err() {
            continue;
        }
        let t = fs::read_to_string(&p).map_err(|source| PolicyError::Io {
            path: p.clone(),
            source,
        })?;
        out.insert(group.to_string(), parse(&p, &t)?);
    }
    Ok(out)
}

/// Apply `change` to the policy of `group` (a first policy must name every target) and store
/// it; returns the policy now in force.
pub fn set(cat: &Catalog, group: &str, change: &Change) -> Result<Policy, PolicyError> {
    let p = path(cat, group)?;
    let old = load(cat, group)?;
    let pick =
        |new: Option<Duration>, old: Option<Duration>, flag: &'static str| new.or(old).ok_or(flag);
    let fields = (
        pick(
            change.max_restore_point_age,
            old.map(|o| o.max_restore_point_age),
            "--max-age",
        ),
        pick(change.rpo, old.map(|o| o.rpo), "--rpo"),
        pick(change.rto, old.map(|o| o.rto), "--rto"),
    );
    let (Ok(max_restore_point_age), Ok(rpo), Ok(rto)) = fields else {
        let missing: Vec<&str> = [fields.0.err(), fields.1.err(), fields.2.err()]
            .into_iter()
            .flatten()
            .collect();
        return Err(PolicyError::Incomplete {
            group: group.to_string(),
            missing: missing.join(", "),
        });
    };
    let policy = Policy {
        max_restore_point_age,
        rpo,
        rto,
    };
    let file = PolicyFile {
        max_restore_point_age: duration::format(policy.max_restore_point_age),
        rpo: duration::format(policy.rpo),
        rto: duration::format(policy.rto),
    };
    let body = toml::to_string(&file).map_err(|e| PolicyError::Malformed {
        path: p.clone(),
        detail: e.to_string(),
    })?;
    let text =
        format!("# cgsnap DR policy of group {group} (`cgsnap group policy {group}`)\n{body}");
    let d = dir(cat);
    fs::create_dir_all(&d).map_err(|source| PolicyError::Io { path: d, source })?;
    let tmp = p.with_extension("toml.tmp");
    replace_file(&tmp, &p, text.as_bytes())
        .map_err(|(path, source)| PolicyError::Io { path, source })?;
    Ok(policy)
}

/// Remove the policy of `group`; returns whether there was one.
pub fn clear(cat: &Catalog, group: &str) -> Result<bool, PolicyError> {
    let p = path(cat, group)?;
    match fs::remove_file(&p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(PolicyError::Io { path: p, source }),
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
