//! `cgsnap backup end`: end every member's backup job, tidy the checkpoints, remove the
//! cut's directory. No merge: the disk chains never changed.
//!
//! Invariants:
//! - Idempotent and resumable: each member's next step comes from libvirt (a job still there
//!   is aborted and waited for; a member gone or shut off has none); an ended cut ends again
//!   as a no-op.
//! - The checkpoint of the group's last *exported* cut is never deleted: after a cut whose
//!   export completed, the older checkpoints of the group go; after one whose export did not,
//!   its own goes (libvirt merges its bitmap into its parent's, so the last exported cut's
//!   bitmap still covers every write since that cut).
//! - The scratch directory is removed only once every job is gone (its files hold what the
//!   guests overwrote while a job ran).

use super::BackupError;
use crate::catalog::{Catalog, Manifest, SnapState};
use crate::hypervisor::pool::Pool;
use crate::hypervisor::{DomState, Host, HvErrorKind};
use std::time::{Duration, Instant};

/// How long a job may take to go once aborted (QEMU cancels its copy-before-write jobs).
const JOB_END_TIMEOUT: Duration = Duration::from_secs(60);

/// End the backup cut `id`; returns its manifest, `released`.
pub fn end(pool: &Pool, cat: &Catalog, id: &str) -> Result<Manifest, BackupError> {
    let group = cat.load(id)?.group;
    let _lock = cat.lock(&group)?;
    let mut man = cat.load(id)?;
    let Some(b) = man.backup.clone() else {
        return Err(BackupError::NotBackup { id: id.to_string() });
    };
    if !man.state.outstanding() {
        return Ok(man);
    }
    man.transition(SnapState::Releasing)?;
    cat.write(&man)?;
    let exported = b.export.is_some();
    let mut failures = Vec::new();
    for m in &b.members {
        let host = match pool.get(&m.uri) {
            Ok(h) => h,
            Err(e) => {
                failures.push(format!("{}: {e}", m.domain));
                continue;
            }
        };
        if let Err(e) = end_job(host.as_ref(), &m.domain) {
            failures.push(e);
            continue;
        }
        let tidy = if exported {
            drop_older(host.as_ref(), &m.domain, &group, &b.checkpoint)
        } else {
            drop_checkpoint(host.as_ref(), &m.domain, &b.checkpoint)
        };
        if let Err(e) = tidy {
            failures.push(e);
        }
    }
    if !failures.is_empty() {
        man.error = Some(failures.join("; "));
        cat.write(&man)?;
        return Err(BackupError::End {
            id: id.to_string(),
            failures: failures.join("; "),
        });
    }
    let _ = std::fs::remove_dir_all(&b.scratch_dir);
    man.transition(SnapState::Released)?;
    let now = chrono::Utc::now();
    man.released_at = Some(now);
    if let Some(rec) = man.backup.as_mut() {
        rec.ended_at = Some(now);
    }
    cat.write(&man)?;
    Ok(man)
}

/// The member's domain no longer runs a QEMU (gone or shut off): it has no job, and its
/// checkpoints can only be forgotten, not deleted.
fn not_running(host: &dyn Host, dom: &str) -> bool {
    match host.state_rechecked(dom) {
        Err(e) => e.kind == HvErrorKind::NoDomain,
        Ok(s) => s == DomState::ShutOff,
    }
}

/// End the domain's backup job, if it has one, and wait until libvirt says it is gone.
pub(crate) fn end_job(host: &dyn Host, dom: &str) -> Result<(), String> {
    let ask = |h: &dyn Host| match h.backup_xml(dom) {
        Ok(x) => Ok(x.is_some()),
        Err(e) if e.kind == HvErrorKind::NoDomain => Ok(false),
        Err(e) if e.kind == HvErrorKind::ConnectionLost => {
            // libvirtd restarted: the job survives it (libvirt recovers it); ask again anew.
            let _ = h.reconnect();
            h.backup_xml(dom).map(|x| x.is_some())
        }
        Err(e) => Err(e),
    };
    let failed = |e: crate::hypervisor::HvError| format!("{dom}: {e}");
    if !ask(host).or_else(|e| {
        if not_running(host, dom) {
            Ok(false)
        } else {
            Err(failed(e))
        }
    })? {
        return Ok(());
    }
    match host.backup_abort(dom) {
        Ok(()) => {}
        // It ended between the question and the abort.
        Err(_) if !ask(host).unwrap_or(true) => return Ok(()),
        Err(e) => return Err(failed(e)),
    }
    let t0 = Instant::now();
    while ask(host).map_err(failed)? {
        if t0.elapsed() > JOB_END_TIMEOUT {
            return Err(format!(
                "{dom}: its backup job was aborted but is still there after {} s: see `virsh domjobinfo {dom}`",
                JOB_END_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Delete the checkpoint `name` of the domain if it has it (only its metadata when a bitmap of
/// it is missing). A domain that is gone has none; one shut off keeps it (libvirt deletes
/// checkpoints of running domains only).
pub(crate) fn drop_checkpoint(host: &dyn Host, dom: &str, name: &str) -> Result<(), String> {
    if not_running(host, dom) {
        return Ok(());
    }
    let names = host.checkpoints(dom).map_err(|e| format!("{dom}: {e}"))?;
    if !names.iter().any(|n| n == name) {
        return Ok(());
    }
    // A checkpoint whose bitmap QEMU lost on some disk cannot be deleted (libvirt would merge
    // that bitmap into its parent's): only libvirt's record of it goes, and its bitmaps on
    // the other disks stay in the images, unused (`qemu-img bitmap --remove` with the VM off).
    let broken = matches!(host.checkpoint_probe(dom, name),
        Err(e) if e.kind == HvErrorKind::CheckpointInconsistent);
    match host.checkpoint_delete(dom, name, broken) {
        Ok(()) => Ok(()),
        Err(e) if e.kind == HvErrorKind::NoCheckpoint => Ok(()),
        Err(e) => Err(format!("{dom}: {e}")),
    }
}

/// Delete the group's checkpoints older than `keep` (ids sort by time within a group).
fn drop_older(host: &dyn Host, dom: &str, group: &str, keep: &str) -> Result<(), String> {
    if not_running(host, dom) {
        return Ok(());
    }
    let names = host.checkpoints(dom).map_err(|e| format!("{dom}: {e}"))?;
    for n in names
        .iter()
        .filter(|n| of_group(n, group) && n.as_str() < keep)
    {
        drop_checkpoint(host, dom, n)?;
    }
    Ok(())
}

/// Whether checkpoint `name` is one of `group`'s cuts: `GROUP-` and exactly a cut's time
/// stamp (`20261203T153512123Z`), so group `db` never claims group `db-1`'s checkpoints.
fn of_group(name: &str, group: &str) -> bool {
    let Some(stamp) = name.strip_prefix(group).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let b = stamp.as_bytes();
    b.len() == 19
        && b[8] == b'T'
        && b[18] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 8 || i == 18 || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::of_group;

    #[test]
    fn a_group_claims_only_its_own_cut_checkpoints() {
        assert!(of_group("db-20261203T153512123Z", "db"));
        assert!(!of_group("db-1-20261203T153512123Z", "db"));
        assert!(of_group("db-1-20261203T153512123Z", "db-1"));
        assert!(!of_group("db-20261203T153512123Z.x", "db"));
        assert!(!of_group("virtnbdbackup.0", "db"));
    }
}
