//! The catalog: where manifests live (its locks: [`lock`], retention: [`prune`], release
//! marks: [`ledger`]). The manifest types are [`crate::model::manifest`], re-exported here.
//!
//! Layout under the catalog directory (default `/var/lib/cgsnap`):
//! `snapshots/<ID>.json` (one manifest per snapshot), `locks/<GROUP>.lock`, `reports/<ID>/`
//! (verification reports) and `metrics/cgsnap.prom` (the default metrics directory).
//!
//! Invariants:
//! - A manifest is written to a temporary file, fsynced, renamed over the old one and the
//!   directory fsynced: a reader sees the old or the new manifest, never a torn one.
//! - A manifest is written *before* anything is frozen (state `pending`), so a crash at any
//!   later point leaves a record of every overlay that may exist; `release` can finish it.

pub mod ledger;
pub mod lock;
pub mod policy;
pub mod prune;

pub use crate::model::manifest::*;

use crate::model::exit::{Classify, ExitCode};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a catalog operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A file or directory of the catalog could not be read, written or created.
    #[error("catalog {path}: {source} (check --catalog / CGSNAP_CATALOG and permissions)")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A manifest is not valid JSON, misses fields, or has a format this cgsnap cannot read.
    #[error(
        "malformed manifest {path}: {detail}; restore it from a copy or move it out of the catalog"
    )]
    Malformed {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// No manifest has this ID.
    #[error("unknown snapshot {id:?}: see `cgsnap list`")]
    UnknownSnapshot {
        /// The ID asked for.
        id: String,
    },
    /// A release by group name found no manifest of that group.
    #[error("group {group} has no snapshot in the catalog: nothing to release")]
    NoSnapshot {
        /// The group asked for.
        group: String,
    },
    /// Another process holds the group's lock.
    #[error(
        "another cgsnap run (pid {pid}) holds the lock on group {group}: wait for it to finish, or check `ps -p {pid}`"
    )]
    Busy {
        /// The group.
        group: String,
        /// The process holding the lock, as its lock file records it.
        pid: String,
    },
    /// Another process held the catalog's planning lock for as long as this run waited.
    #[error(
        "another cgsnap run (pid {pid}) has been planning a snapshot for {secs} s (it holds the catalog's planning lock): check `ps -p {pid}`, then run again"
    )]
    PlanningBusy {
        /// The process holding the lock, as its lock file records it.
        pid: String,
        /// Seconds this run waited for the lock.
        secs: u64,
    },
}

impl Classify for CatalogError {
    fn exit_code(&self) -> ExitCode {
        match self {
            CatalogError::Io { .. } => ExitCode::Internal,
            CatalogError::Malformed { .. } => ExitCode::Malformed,
            CatalogError::UnknownSnapshot { .. } | CatalogError::NoSnapshot { .. } => {
                ExitCode::NotFound
            }
            CatalogError::Busy { .. } | CatalogError::PlanningBusy { .. } => ExitCode::Busy,
        }
    }
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CatalogError + '_ {
    move |source| CatalogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Replace `path` with `body` atomically: written to `tmp` (same directory), fsynced, renamed
/// over `path`, so a reader sees the old or the new content, never a torn one. An error names
/// the file it concerns.
pub(crate) fn replace_file(
    tmp: &Path,
    path: &Path,
    body: &[u8],
) -> Result<(), (PathBuf, std::io::Error)> {
    let at = |p: &Path| {
        let p = p.to_path_buf();
        move |e| (p, e)
    };
    let mut f = File::create(tmp).map_err(at(tmp))?;
    f.write_all(body).map_err(at(tmp))?;
    f.sync_all().map_err(at(tmp))?;
    fs::rename(tmp, path).map_err(at(path))
}

/// Snapshot IDs sort by time and name their group: `GROUP-YYYYMMDDTHHMMSSmmmZ`.
pub fn new_id(group: &str, now: DateTime<Utc>) -> String {
    format!("{group}-{}", now.format("%Y%m%dT%H%M%S%3fZ"))
}

/// A catalog directory, opened (its `snapshots/` and `locks/` exist).
pub struct Catalog {
    pub(crate) dir: PathBuf,
}

impl Catalog {
    /// Open the catalog in `dir`, creating its directories if missing.
    pub fn open(dir: &Path) -> Result<Self, CatalogError> {
        let p = dir.join("snapshots");
        fs::create_dir_all(&p).map_err(io(&p))?;
        // Its owner's alone, like the lock files in it (see crate::catalog::lock); best effort on a
        // directory someone else owns.
        let p = dir.join("locks");
        fs::create_dir_all(&p).map_err(io(&p))?;
        let _ = fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The catalog's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `verify` writes the report of snapshot `id` by default.
    pub fn report_dir(&self, id: &str) -> PathBuf {
        self.dir.join("reports").join(id)
    }

    /// The verification reports the catalog holds for `manifests`, by snapshot ID. A report
    /// that cannot be read is left out: it was written by `verify` itself, and a torn one must
    /// not stop the metrics or retention.
    pub fn verifications(&self, manifests: &[Manifest]) -> BTreeMap<String, VerifyView> {
        manifests
            .iter()
            .filter_map(|m| {
                let b = fs::read(self.report_dir(&m.id).join("report.json")).ok()?;
                let v: VerifyView = serde_json::from_slice(&b).ok()?;
                Some((m.id.clone(), v))
            })
            .collect()
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join("snapshots").join(format!("{id}.json"))
    }

    /// Atomically replace the manifest of `m.id`.
    pub fn write(&self, m: &Manifest) -> Result<(), CatalogError> {
        let path = self.path_of(&m.id);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(m).map_err(|e| CatalogError::Malformed {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        replace_file(&tmp, &path, &body).map_err(|(p, e)| io(&p)(e))?;
        self.sync_snapshots_dir()
    }

    /// Make a rename or removal in `snapshots/` durable.
    fn sync_snapshots_dir(&self) -> Result<(), CatalogError> {
        let dir = self.dir.join("snapshots");
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&dir))
    }

    /// Remove the manifest of `id` (retention; the caller holds its group's lock). Removing an
    /// absent manifest succeeds, so an interrupted prune can simply run again.
    pub fn remove(&self, id: &str) -> Result<(), CatalogError> {
        let path = self.path_of(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path)(e)),
            _ => {}
        }
        self.sync_snapshots_dir()
    }

    /// Read a manifest from `body` (the content of `path`, named in errors): refuses formats
    /// other than [`READ_VERSIONS`] and upgrades format 1 release marks where it can.
    pub fn parse(path: &Path, body: &[u8]) -> Result<Manifest, CatalogError> {
        let mut m: Manifest =
            serde_json::from_slice(body).map_err(|e| CatalogError::Malformed {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        if !READ_VERSIONS.contains(&m.format_version) {
            return Err(CatalogError::Malformed {
                path: path.to_path_buf(),
                detail: format!(
                    "format_version {} is not supported (this cgsnap reads {} to {FORMAT_VERSION})",
                    m.format_version, READ_VERSIONS[0]
                ),
            });
        }
        m.upgrade_marks();
        Ok(m)
    }

    /// The manifest of snapshot `id`.
    pub fn load(&self, id: &str) -> Result<Manifest, CatalogError> {
        let path = self.path_of(id);
        let body = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CatalogError::UnknownSnapshot { id: id.to_string() });
            }
            Err(e) => return Err(io(&path)(e)),
        };
        Self::parse(&path, &body)
    }

    /// All manifests, oldest first. A malformed manifest is an error naming its file.
    pub fn list(&self) -> Result<Vec<Manifest>, CatalogError> {
        let dir = self.dir.join("snapshots");
        let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        let mut out = Vec::with_capacity(paths.len());
        for p in paths {
            let body = fs::read(&p).map_err(io(&p))?;
            out.push(Self::parse(&p, &body)?);
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The newest manifest of a group.
    pub fn latest(&self, group: &str) -> Result<Option<Manifest>, CatalogError> {
        Ok(self.list()?.into_iter().rev().find(|m| m.group == group))
    }

    /// Manifests of a group whose overlays may still be in use.
    pub fn outstanding(&self, group: &str) -> Result<Vec<Manifest>, CatalogError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|m| m.group == group && m.state.outstanding())
            .collect())
    }
}

#[cfg(test)]
mod tests;
