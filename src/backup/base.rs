//! Which cut an incremental is based on, or why it must be full.
//!
//! Invariant: the base is the newest ended cut of the group whose export completed and is
//! still where its manifest says (under the directory the [`Rules`] name, if any), whose
//! chain is shorter than the rules allow, taken of the same members with the same disks
//! (targets and sizes), whose checkpoint every member still has with whole bitmaps. Anything
//! else makes the cut full, with the reason recorded: never an incremental on a doubtful base,
//! and never one whose export would fail for want of its base's files.

use crate::catalog::Manifest;
use crate::hypervisor::HvErrorKind;
use crate::model::backup::EXPORT_SIDECAR;
use crate::model::manifest::SnapState;
use crate::snapshot::preflight::PlannedMember;
use std::path::PathBuf;

/// What a base must satisfy besides being sound.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// The most cuts a chain may hold, its full cut included, before the next cut is full
    /// again (`Some(1)`: always full). A restore reads every link, so an unbounded chain
    /// makes restores ever slower and one damaged link loses every later point.
    pub full_every: Option<usize>,
    /// A directory the base's export must lie under: a hook's staging directory, so every
    /// archive the backup tool makes of it holds the whole chain.
    pub export_under: Option<PathBuf>,
}

/// The cuts of the chain ending at `id`, newest first (one for a full cut), following
/// `since` through the catalog.
pub fn chain(history: &[Manifest], id: &str) -> Vec<String> {
    let mut out = vec![id.to_string()];
    while let Some(since) = out.last().and_then(|cur| {
        history
            .iter()
            .find(|m| m.id == *cur)
            .and_then(|m| m.backup.as_ref())
            .and_then(|b| b.since.clone())
    }) {
        // A corrupt catalog with a loop cannot hang a cut: a link seen twice ends the walk.
        if out.contains(&since) {
            break;
        }
        out.push(since);
    }
    out
}

/// The base of an incremental (`Ok`), or why the cut is full (`Err`).
pub fn choose(
    history: &[Manifest],
    group: &str,
    plan: &[PlannedMember],
    rules: &Rules,
) -> Result<String, String> {
    let Some(base) = history
        .iter()
        .filter(|m| m.group == group && m.state == SnapState::Released)
        .filter(|m| m.backup.as_ref().is_some_and(|b| b.export.is_some()))
        .max_by(|a, b| a.created_at.cmp(&b.created_at))
    else {
        return Err(format!(
            "group {group} has no exported backup cut to be incremental to"
        ));
    };
    check_export(history, base, rules)?;
    let cp = base
        .backup
        .as_ref()
        .map(|b| b.checkpoint.clone())
        .unwrap_or_default();
    let same_members = base.members.len() == plan.len()
        && plan.iter().all(|p| {
            base.members
                .iter()
                .any(|r| r.domain == p.member.domain && r.uri == p.member.host.uri())
        });
    if !same_members {
        return Err(format!(
            "the members of group {group} changed since {}",
            base.id
        ));
    }
    for p in plan {
        let Some(rec) = base
            .members
            .iter()
            .find(|r| r.domain == p.member.domain && r.uri == p.member.host.uri())
        else {
            continue;
        };
        for d in &p.disks {
            match rec.disks.iter().find(|b| b.target == d.target) {
                None => {
                    return Err(format!(
                        "disk {} of {} was added since {}",
                        d.target, p.member.domain, base.id
                    ));
                }
                Some(b) if b.virtual_size != d.virtual_size => {
                    return Err(format!(
                        "disk {} of {} was resized since {} ({} to {} bytes)",
                        d.target, p.member.domain, base.id, b.virtual_size, d.virtual_size
                    ));
                }
                Some(b) if b.image != d.image => {
                    return Err(format!(
                        "disk {} of {} is on {} now, {} at {}",
                        d.target, p.member.domain, d.image, b.image, base.id
                    ));
                }
                Some(_) => {}
            }
        }
        match p.member.host.checkpoint_probe(&p.member.domain, &cp) {
            Ok(()) => {}
            Err(e) if e.kind == HvErrorKind::NoCheckpoint => {
                return Err(format!("checkpoint {cp} of {} is missing", p.member.domain));
            }
            Err(e) if e.kind == HvErrorKind::CheckpointInconsistent => {
                return Err(format!(
                    "checkpoint {cp} of {} has a missing or inconsistent bitmap: {}",
                    p.member.domain, e.message
                ));
            }
            Err(e) => {
                return Err(format!(
                    "checkpoint {cp} of {} cannot be checked: {e}",
                    p.member.domain
                ));
            }
        }
    }
    Ok(base.id.clone())
}

/// The base's export is still in place, where the rules want it, and its chain has room.
fn check_export(history: &[Manifest], base: &Manifest, rules: &Rules) -> Result<(), String> {
    let dir = base
        .backup
        .as_ref()
        .and_then(|b| b.export.as_ref())
        .map(|e| PathBuf::from(&e.dir))
        .unwrap_or_default();
    if !dir.join(EXPORT_SIDECAR).exists() {
        return Err(format!(
            "the export of {} is no longer at {}",
            base.id,
            dir.display()
        ));
    }
    if let Some(under) = &rules.export_under
        && !dir.starts_with(under)
    {
        return Err(format!(
            "{} was exported to {}, outside {}",
            base.id,
            dir.display(),
            under.display()
        ));
    }
    let len = chain(history, &base.id).len();
    match rules.full_every {
        Some(n) if len >= n => Err(format!(
            "the chain ending at {} holds {len} cuts, the most --full-every {n} allows",
            base.id
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backup::BackupRecord;
    use chrono::Utc;
    use std::path::Path;

    /// An ended cut exported to `dir` (a sidecar is written there).
    fn cut(id: &str, since: Option<&str>, dir: &Path) -> Manifest {
        std::fs::create_dir_all(dir).expect("dir");
        std::fs::write(dir.join(EXPORT_SIDECAR), b"{}").expect("sidecar");
        let mut m = Manifest::new(id, "g", SnapState::Released, Utc::now());
        m.backup = Some(BackupRecord {
            ended_at: Some(Utc::now()),
            ..BackupRecord::exported(id, since, &dir.display().to_string(), 0)
        });
        m
    }

    #[test]
    fn a_base_needs_its_export_in_place_under_the_staging_and_room_in_its_chain() {
        let t = tempfile::tempdir().expect("tmp");
        let s = t.path().join("staging");
        let h = vec![
            cut("g-1", None, &s.join("g-1")),
            cut("g-2", Some("g-1"), &s.join("g-2")),
        ];
        assert_eq!(chain(&h, "g-1").len(), 1);
        assert_eq!(chain(&h, "g-2").len(), 2);
        assert_eq!(check_export(&h, &h[1], &Rules::default()), Ok(()));
        let every = |n| Rules {
            full_every: Some(n),
            export_under: None,
        };
        assert_eq!(check_export(&h, &h[1], &every(3)), Ok(()));
        assert_eq!(
            check_export(&h, &h[1], &every(2)),
            Err("the chain ending at g-2 holds 2 cuts, the most --full-every 2 allows".into())
        );
        assert!(
            check_export(&h, &h[0], &every(1)).is_err(),
            "1: always full"
        );
        let under = |d: &Path| Rules {
            full_every: None,
            export_under: Some(d.to_path_buf()),
        };
        assert_eq!(check_export(&h, &h[1], &under(&s)), Ok(()));
        let e = check_export(&h, &h[1], &under(&t.path().join("other"))).expect_err("outside");
        assert!(
            e.starts_with("g-2 was exported to ") && e.ends_with("other"),
            "{e}"
        );
        std::fs::remove_file(s.join("g-2").join(EXPORT_SIDECAR)).expect("rm");
        let e = check_export(&h, &h[1], &Rules::default()).expect_err("gone");
        assert!(e.starts_with("the export of g-2 is no longer at "), "{e}");
    }

    #[test]
    fn a_chain_that_loops_is_counted_without_hanging() {
        let t = tempfile::tempdir().expect("tmp");
        let h = vec![
            cut("g-1", Some("g-2"), &t.path().join("a")),
            cut("g-2", Some("g-1"), &t.path().join("b")),
        ];
        assert!(chain(&h, "g-1").len() <= h.len() + 1);
    }
}
