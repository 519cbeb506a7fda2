//! Releasing what a manifest records: every member of a snapshot, under its group's lock, with
//! the room check before any commit and the state moved to `released` only when all are done.

use super::error::ReleaseError;
use super::member::*;
use super::options::Options;
use crate::events::Events;
use crate::model::exit::{Classify, ExitCode};

/// Why a whole snapshot could not be released.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotReleaseError {
    /// Reading or writing the catalog (manifest, lock) failed.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    /// The manifest's state change is one its life cycle does not allow.
    #[error(transparent)]
    Transition(#[from] crate::catalog::TransitionError),
    /// One or more members' releases failed; the first one is the source.
    #[error("snapshot {id}: {source}{}", also(more))]
    Member {
        /// The snapshot's id.
        id: String,
        /// The first member's failure.
        #[source]
        source: Box<ReleaseError>,
        /// The other members' failures, after the first.
        more: Vec<String>,
    },
    /// A filesystem lacks room for what the commits would write into it; nothing was started.
    #[error(
        "snapshot {id}: no room to release: committing {} needs {} MiB more in {}, which has {} MiB free; free space there (or grow the filesystem) and run release again; until then the VMs keep writing to their overlays and nothing is lost",
        short.overlays.join(", "),
        mib(short.need),
        short.dir.display(),
        short.free >> 20
    )]
    NoRoom {
        /// The snapshot's id.
        id: String,
        /// The filesystem and how much room it lacks.
        short: crate::release::room::Shortage,
    },
    /// The id names a backup cut, which has no overlay to merge.
    #[error(
        "{id} is a backup cut, which changed no disk chain: end it with `cgsnap backup end {id}`"
    )]
    BackupCut {
        /// The cut's id.
        id: String,
    },
    /// A format-1 manifest has release marks that match several members.
    #[error(
        "snapshot {id}: its manifest (written in format 1) has release marks without a host ({}), and several of its members have that domain name, so whose disk each was is unknown; nothing was released: in snapshots/{id}.json replace each by {{\"uri\": \"URI\", \"domain\": \"DOMAIN\", \"target\": \"TARGET\"}} of the member a release switched back (`virsh -c URI domblklist DOMAIN` shows which is on its image), then run release again",
        marks.join(", ")
    )]
    UnresolvedMarks {
        /// The snapshot's id.
        id: String,
        /// The ambiguous marks, as the manifest has them.
        marks: Vec<String>,
    },
}

/// Further failures appended to the first one's line.
pub(super) fn also(more: &[String]) -> String {
    more.iter().map(|m| format!("; also: {m}")).collect()
}

/// Bytes in MiB, rounded up (a need of a few KiB is not "0 MiB"). Free space is rounded down
/// instead, so a refusal never reads as if the need fitted.
pub(super) fn mib(b: u64) -> u64 {
    b.div_ceil(1 << 20)
}

impl Classify for SnapshotReleaseError {
    fn exit_code(&self) -> ExitCode {
        match self {
            SnapshotReleaseError::Catalog(e) => e.exit_code(),
            SnapshotReleaseError::Transition(e) => e.exit_code(),
            SnapshotReleaseError::Member { source, .. } => source.exit_code(),
            SnapshotReleaseError::NoRoom { .. } => ExitCode::Precondition,
            SnapshotReleaseError::UnresolvedMarks { .. } => ExitCode::Malformed,
            SnapshotReleaseError::BackupCut { .. } => ExitCode::Usage,
        }
    }
}

/// Release a snapshot by ID under its group lock; a released or aborted one is left as is.
/// `ev` as for [`release_member`], called for each member.
pub fn release_snapshot(
    pool: &crate::hypervisor::pool::Pool,
    cat: &crate::catalog::Catalog,
    id: &str,
    opts: &Options,
    ev: Events,
) -> Result<crate::catalog::Manifest, SnapshotReleaseError> {
    use crate::catalog::SnapState;
    let mut man = cat.load(id)?;
    let _lock = cat.lock(&man.group)?;
    let mut man_now = cat.load(id)?;
    if man_now.backup.is_some() {
        return Err(SnapshotReleaseError::BackupCut { id: id.to_string() });
    }
    if !man_now.state.outstanding() {
        return Ok(man_now);
    }
    std::mem::swap(&mut man, &mut man_now);
    // A mark given to the wrong one of two same-named members would delete an overlay that
    // holds data (or keep a stale one to merge): never guessed.
    let unresolved = man.unresolved_marks();
    if !unresolved.is_empty() {
        return Err(SnapshotReleaseError::UnresolvedMarks {
            id: id.to_string(),
            marks: unresolved.into_iter().map(str::to_string).collect(),
        });
    }
    // Before any commit starts: a release that cannot fit fails here, changing nothing.
    let local: Vec<&crate::catalog::DiskRecord> = man
        .members
        .iter()
        .filter(|m| crate::hypervisor::is_local(&m.uri))
        .flat_map(|m| m.disks.iter())
        .collect();
    if let Err(short) = crate::release::room::check(&local) {
        return Err(SnapshotReleaseError::NoRoom {
            id: id.to_string(),
            short,
        });
    }
    man.transition(SnapState::Releasing)?;
    cat.write(&man)?;
    let members = man.members.clone();
    let ledger = crate::catalog::ledger::InManifest::new(cat, man);
    // Members are independent: release them in parallel, report every failure.
    let results: Vec<Result<(), ReleaseError>> = std::thread::scope(|s| {
        let ledger = &ledger;
        let handles: Vec<_> = members
            .iter()
            .map(|m| {
                s.spawn(move || {
                    let host = pool.get(&m.uri)?;
                    release_member(host.as_ref(), &m.domain, &m.disks, opts, ledger, ev)
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(&members)
            .map(|(h, m)| {
                h.join().unwrap_or_else(|_| {
                    Err(ReleaseError::Panicked {
                        domain: m.domain.clone(),
                        uri: m.uri.clone(),
                    })
                })
            })
            .collect()
    });
    let mut man = ledger.into_manifest();
    let mut errors = results.into_iter().filter_map(Result::err);
    if let Some(e) = errors.next() {
        // Members fail for unrelated reasons (one timed out, another needs a hand): each
        // needs its own fix, so none is hidden behind the first.
        let more: Vec<String> = errors.map(|e| e.to_string()).collect();
        man.error = Some(
            std::iter::once(e.to_string())
                .chain(more.iter().cloned())
                .collect::<Vec<_>>()
                .join("; "),
        );
        cat.write(&man)?;
        return Err(SnapshotReleaseError::Member {
            id: id.to_string(),
            source: Box::new(e),
            more,
        });
    }
    man.transition(SnapState::Released)?;
    man.released_at = Some(chrono::Utc::now());
    cat.write(&man)?;
    Ok(man)
}

/// Release every outstanding snapshot of `group`, e.g. one an interrupted demo or benchmark
/// run left behind (its members may be gone: see [`crate::release::vanished`]). Returns their IDs.
pub fn release_leftovers(
    pool: &crate::hypervisor::pool::Pool,
    cat: &crate::catalog::Catalog,
    group: &str,
    opts: &Options,
    ev: Events,
) -> Result<Vec<String>, SnapshotReleaseError> {
    let mut ids = Vec::new();
    for m in cat.outstanding(group)? {
        release_snapshot(pool, cat, &m.id, opts, ev)?;
        ids.push(m.id);
    }
    Ok(ids)
}
