//! `cgsnap prune`: catalog retention, for nightly jobs that would otherwise grow the catalog
//! (manifests with each member's domain XML, verification reports) without bound.
//!
//! Invariants:
//! - Only finished snapshots (`aborted`, `released`) are removed. A `pending`, `taken`,
//!   `failed` or `releasing` manifest is the only record of overlays that may hold data.
//! - Per group, the newest `keep` finished snapshots, the newest one whose verification passed
//!   (the latest DR evidence; never a negative control) and every snapshot younger than
//!   `min_age` are kept.
//! - The lock of every affected group is taken before anything is removed, and a busy group
//!   fails the whole run (exit 5) before any removal: nothing is pruned under a running
//!   snapshot, release or verify.
//! - A snapshot's report directory is removed before its manifest: if prune dies in between,
//!   the next run still finds the manifest and finishes; no report is ever orphaned.

use crate::catalog::lock::GroupLock;
use crate::catalog::{Catalog, CatalogError, Manifest};
use crate::group::{self, GroupError};
use crate::model::exit::{Classify, ExitCode};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

/// Why a prune failed.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// The catalog could not be read, or a group's lock is held by another run.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The group given is not a valid group name.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// A manifest or report directory could not be removed.
    #[error(
        "cannot remove {path} while pruning {id}: {source}; fix its permissions and run prune again"
    )]
    Remove {
        /// The snapshot being pruned.
        id: String,
        /// The file or directory that stayed.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Classify for PruneError {
    fn exit_code(&self) -> ExitCode {
        match self {
            PruneError::Catalog(e) => e.exit_code(),
            PruneError::Group(e) => e.exit_code(),
            PruneError::Remove { .. } => ExitCode::Internal,
        }
    }
}

/// How much of each group's history prune keeps.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Finished snapshots kept per group, newest first.
    pub keep: usize,
    /// Nothing younger than this is removed.
    pub min_age: Duration,
}

/// What prune does (or would do) to one group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupPlan {
    /// The group.
    pub group: String,
    /// IDs of the snapshots to remove, newest first.
    pub remove: Vec<String>,
    /// Number of the group's snapshots (in any state) that stay.
    pub kept: usize,
}

/// The snapshots to remove, per group (only groups in `group` when given). `manifests` are
/// oldest first (as `Catalog::list`); `passed` holds the IDs whose verification passed.
pub fn plan(
    manifests: &[Manifest],
    passed: &BTreeSet<String>,
    only: Option<&str>,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Vec<GroupPlan> {
    let mut groups: BTreeMap<&str, Vec<&Manifest>> = BTreeMap::new();
    for m in manifests.iter().rev() {
        if only.is_none_or(|g| g == m.group) {
            groups.entry(m.group.as_str()).or_default().push(m);
        }
    }
    let cutoff = chrono::Duration::from_std(policy.min_age)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    groups
        .into_iter()
        .map(|(g, newest_first)| {
            let evidence = newest_first
                .iter()
                .find(|m| !m.is_negative_control() && passed.contains(&m.id))
                .map(|m| m.id.as_str());
            let remove: Vec<String> = newest_first
                .iter()
                .filter(|m| !m.state.outstanding())
                .skip(policy.keep)
                .filter(|m| m.created_at < cutoff && Some(m.id.as_str()) != evidence)
                .map(|m| m.id.clone())
                .collect();
            GroupPlan {
                group: g.to_string(),
                kept: newest_first.len() - remove.len(),
                remove,
            }
        })
        .collect()
}

/// Apply the policy to the catalog (or only report with `dry_run`).
pub fn run(
    cat: &Catalog,
    only: Option<&str>,
    policy: &Policy,
    dry_run: bool,
    now: DateTime<Utc>,
) -> Result<Vec<GroupPlan>, PruneError> {
    if let Some(g) = only {
        group::validate_name(g)?;
    }
    // Lock first, then read: what is planned cannot change underneath.
    let groups: BTreeSet<String> = cat
        .list()?
        .into_iter()
        .map(|m| m.group)
        .filter(|g| only.is_none_or(|o| o == g))
        .collect();
    let _locks: Vec<GroupLock> = groups
        .iter()
        .map(|g| cat.lock(g))
        .collect::<Result<_, _>>()?;
    let manifests = cat.list()?;
    let passed: BTreeSet<String> = cat
        .verifications(&manifests)
        .into_iter()
        .filter(|(_, r)| r.verdict == "pass")
        .map(|(id, _)| id)
        .collect();
    let plans = plan(&manifests, &passed, only, policy, now);
    if dry_run {
        return Ok(plans);
    }
    for id in plans.iter().flat_map(|p| p.remove.iter()) {
        let gone = |path: PathBuf| {
            move |source| PruneError::Remove {
                id: id.clone(),
                path,
                source,
            }
        };
        let reports = cat.report_dir(id);
        match std::fs::remove_dir_all(&reports) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(gone(reports)(e));
            }
            _ => {}
        }
        cat.remove(id).map_err(|e| match e {
            CatalogError::Io { path, source } => gone(path)(source),
            other => other.into(),
        })?;
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::SnapState;

    fn m(id: &str, group: &str, state: SnapState, day: i64) -> Manifest {
        Manifest::new(id, group, state, self::day(day))
    }

    fn day(d: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(d * 86400, 0).expect("ts")
    }

    #[test]
    fn keeps_newest_outstanding_young_and_last_evidence() {
        use SnapState::*;
        let mut control = m("a-6", "a", Released, 6);
        control.unsafe_stagger_ms = Some(1000);
        let ms = vec![
            m("a-1", "a", Released, 1),
            m("a-2", "a", Released, 2), // newest passing verification
            m("a-3", "a", Failed, 3),   // holds overlays
            m("a-4", "a", Aborted, 4),
            m("a-5", "a", Released, 5),
            control, // passed, but a negative control is no evidence
            m("a-7", "a", Released, 7),
            m("a-8", "a", Taken, 8),
            m("b-1", "b", Released, 1),
        ];
        let passed: BTreeSet<String> = ["a-2", "a-6"].iter().map(|s| s.to_string()).collect();
        let policy = Policy {
            keep: 2,
            min_age: Duration::from_secs(3 * 86400 + 1),
        };
        let p = plan(&ms, &passed, None, &policy, day(8));
        // Finished newest first: a-7, a-6 kept (keep 2); a-5 younger than 3 days; a-4 goes;
        // a-2 is the evidence; a-1 goes. a-3 (failed) and a-8 (taken) are never candidates.
        assert_eq!(p[0].group, "a");
        assert_eq!(p[0].remove, vec!["a-4".to_string(), "a-1".to_string()]);
        assert_eq!(p[0].kept, 6);
        assert_eq!(p[1].group, "b");
        assert!(p[1].remove.is_empty(), "b-1 is within keep");
        let only_b = plan(&ms, &passed, Some("b"), &policy, day(8));
        assert_eq!(only_b.len(), 1);
        // keep 0, no minimum age: everything finished but the evidence.
        let all = Policy {
            keep: 0,
            min_age: Duration::ZERO,
        };
        let p = plan(&ms, &passed, Some("a"), &all, day(8));
        assert_eq!(p[0].remove, ["a-7", "a-6", "a-5", "a-4", "a-1"]);
    }
}
