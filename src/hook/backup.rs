//! The backup-cut mode of `cgsnap hook pre --backup-to STAGING`: a consistent cut through
//! libvirt's backup API, exported into a staging directory the backup tool then reads, with
//! the disk chains never touched (nothing to merge back in `post`).
//!
//! Invariants:
//! - Each cut is exported to `STAGING/ID`, laid out by the images' absolute paths; an
//!   incremental is backed (by relative path) only by a cut exported under the same staging
//!   directory, so every archive of the directory holds the whole chain it needs and can be
//!   restored anywhere as a whole ([`crate::backup::base::Rules::export_under`]).
//! - The jobs end as soon as the export is complete: nothing reads them afterwards, and while
//!   they run every guest write pays a copy into the scratch files. A failed export ends them
//!   too; when ending fails, the cut stays outstanding for `post` (same token) to end.
//! - Only after a complete export, the staging directory is pruned of this group's cuts that
//!   are not links of the new cut's chain (an earlier chain, a failed export's leftovers):
//!   earlier archives hold them. Nothing else in the directory is ever removed.
//! - The summary line names the cut the way the snapshot mode does (`cgsnap: backup cut ID of
//!   group G ...`), so scripts find the ID the same way.

use crate::backup::{self, BackupError};
use crate::catalog::{Catalog, Manifest, SnapState};
use crate::events::Events;
use crate::hypervisor::Host;
use crate::hypervisor::pool::Pool;
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Chain length of a hook's cuts unless `--full-every` says otherwise: a full cut a week
/// with a daily schedule.
pub const DEFAULT_FULL_EVERY: usize = 7;

/// How `hook pre` takes and stages a backup cut.
pub struct Options {
    /// The cut (its `rules.export_under` is set to the staging directory here).
    pub begin: backup::Options,
    /// Where the backup tool reads the exports from.
    pub staging: PathBuf,
    /// Parallel NBD connections per disk.
    pub workers: usize,
}

/// Cut the group, export it under the staging directory, end the jobs, prune the staging
/// directory; returns the summary line.
pub fn pre(
    hosts: &[Arc<dyn Host>],
    pool: &Pool,
    cat: &Catalog,
    opts: Options,
    now: DateTime<Utc>,
    ev: Events,
) -> Result<String, BackupError> {
    let staging = staging_dir(&opts.staging)?;
    let mut begin = opts.begin;
    begin.rules.export_under = Some(staging.clone());
    let cut = backup::begin(hosts, cat, &begin, now, ev)?;
    let to = staging.join(&cut.id);
    let how = backup::export::Reading {
        workers: opts.workers,
        min_free: Some(begin.snap.min_free),
    };
    let exported = match backup::export::export(pool, cat, &cut.id, &to, how, ev) {
        Ok(m) => m,
        Err(e) => {
            // The export error is the one to report; an end that fails too leaves the cut
            // outstanding, and `post` of this job ends it.
            let _ = backup::end(pool, cat, &cut.id);
            return Err(e);
        }
    };
    backup::end(pool, cat, &cut.id)?;
    let pruned = prune(cat, &staging, &exported)?;
    Ok(line(&exported, &to, &pruned))
}

/// `dir`, created if needed, as a canonical path (what export records and the rules compare).
fn staging_dir(dir: &Path) -> Result<PathBuf, BackupError> {
    let io = |e: std::io::Error| BackupError::Staging {
        path: dir.display().to_string(),
        detail: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::canonicalize(dir).map_err(io)
}

/// Remove from `staging` the directories of this group's cuts that are not in `cut`'s chain;
/// returns their names. A directory is only ever removed when its name is a cut of the group
/// in the catalog (so a file of anyone else's, or another group's cut, stays).
fn prune(cat: &Catalog, staging: &Path, cut: &Manifest) -> Result<Vec<String>, BackupError> {
    // Under the group's lock, so no other job's cut of the group can be exported meanwhile; a
    // job holding it now is cutting the group, and the next complete export prunes instead.
    let Ok(_lock) = cat.lock(&cut.group) else {
        return Ok(Vec::new());
    };
    let history = cat.list()?;
    let keep = backup::base::chain(&history, &cut.id);
    let io = |p: &Path, e: std::io::Error| BackupError::Io {
        path: p.display().to_string(),
        detail: format!("cannot prune the staging directory: {e}"),
    };
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(staging).map_err(|e| io(staging, e))? {
        let entry = entry.map_err(|e| io(staging, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(m) = history.iter().find(|m| m.id == name) else {
            continue;
        };
        let ours = m.group == cut.group && m.backup.is_some();
        // A cut still being read by its own (stuck) export keeps its directory.
        let outstanding = m.state == SnapState::Taken;
        if !ours || outstanding || keep.contains(&name) || !entry.path().is_dir() {
            continue;
        }
        std::fs::remove_dir_all(entry.path()).map_err(|e| io(&entry.path(), e))?;
        removed.push(name);
    }
    removed.sort();
    Ok(removed)
}

/// The summary line of a staged cut.
fn line(m: &Manifest, to: &Path, pruned: &[String]) -> String {
    let disks: usize = m.members.iter().map(|x| x.disks.len()).sum();
    let cp = m
        .consistency_point
        .map(|c| c.to_rfc3339())
        .unwrap_or_default();
    let b = m.backup.as_ref();
    let mode = match (
        b.and_then(|b| b.since.as_ref()),
        b.and_then(|b| b.full_reason.as_ref()),
    ) {
        (Some(since), _) => format!("incremental since {since}"),
        (None, Some(why)) => format!("full ({why})"),
        (None, None) => "full".into(),
    };
    let read = b
        .and_then(|b| b.export.as_ref())
        .map_or(0, |e| e.bytes_read);
    let pruned = match pruned {
        [] => String::new(),
        p => format!("; pruned {} from the staging directory", p.join(", ")),
    };
    format!(
        "cgsnap: backup cut {} of group {} exported to {}: {} members, {} disks, {mode}, {} bytes read, freeze window {:.1} ms, consistency point {cp}{pruned}",
        m.id,
        m.group,
        to.display(),
        m.members.len(),
        disks,
        read,
        m.freeze_window_ms.unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backup::BackupRecord;

    fn cut(id: &str, group: &str, since: Option<&str>, state: SnapState) -> Manifest {
        let mut m = Manifest::new(id, group, state, Utc::now());
        m.backup = Some(BackupRecord::exported(id, since, "", 7));
        m
    }

    #[test]
    fn pruning_keeps_the_chain_and_everything_not_the_groups() {
        let t = tempfile::tempdir().expect("tmp");
        let cat = Catalog::open(&t.path().join("cat")).expect("catalog");
        let staging = t.path().join("staging");
        let cuts = [
            cut("g-1", "g", None, SnapState::Released),
            cut("g-2", "g", Some("g-1"), SnapState::Released),
            cut("g-3", "g", None, SnapState::Released),
            cut("g-4", "g", Some("g-3"), SnapState::Released),
            cut("h-1", "h", None, SnapState::Released),
            cut("g-5", "g", None, SnapState::Taken),
        ];
        for c in &cuts {
            cat.write(c).expect("write");
            std::fs::create_dir_all(staging.join(&c.id)).expect("dir");
        }
        std::fs::create_dir_all(staging.join("notes")).expect("dir");
        std::fs::write(staging.join("g-0"), b"a file, not a cut").expect("file");
        let removed = prune(&cat, &staging, &cuts[3]).expect("prune");
        assert_eq!(removed, vec!["g-1".to_string(), "g-2".to_string()]);
        for kept in ["g-3", "g-4", "h-1", "g-5", "notes", "g-0"] {
            assert!(staging.join(kept).exists(), "{kept} kept");
        }
        assert_eq!(
            backup::base::chain(&cat.list().expect("list"), &cuts[3].id),
            ["g-4", "g-3"]
        );
    }

    #[test]
    fn the_line_names_the_cut_like_the_snapshot_mode_and_says_the_mode() {
        let mut m = cut("g-2", "g", Some("g-1"), SnapState::Released);
        m.freeze_window_ms = Some(12.5);
        let l = line(&m, Path::new("/s/g-2"), &["g-0".into()]);
        assert!(
            l.starts_with("cgsnap: backup cut g-2 of group g exported to /s/g-2: 0 members, 0 disks, incremental since g-1, 7 bytes read, freeze window 12.5 ms"),
            "{l}"
        );
        assert!(
            l.ends_with("; pruned g-0 from the staging directory"),
            "{l}"
        );
        if let Some(b) = m.backup.as_mut() {
            b.since = None;
            b.full_reason = Some("the chain ending at g-1 holds 7 cuts".into());
        }
        let l = line(&m, Path::new("/s/g-2"), &[]);
        assert!(
            l.contains(", full (the chain ending at g-1 holds 7 cuts), "),
            "{l}"
        );
    }
}
