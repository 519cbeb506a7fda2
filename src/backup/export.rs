//! `cgsnap backup export`: read every disk of a serving cut into qcow2 files laid out by
//! their absolute image paths under a directory (what `verify --images` expects), all disks
//! in parallel, with progress.
//!
//! Invariants:
//! - A full cut's files hold only the allocated extents; an incremental's hold only the
//!   blocks changed since its base and are backed (by relative path) by the base's export,
//!   which must be where the base's manifest says.
//! - Files are written as `FILE.cgsnap-partial` and renamed only once every disk succeeded,
//!   so a failed or killed export never leaves a file that looks like an export; the next
//!   export of the cut removes such leftovers. An existing export file is never overwritten.
//! - The manifest records the export (and so makes the cut a base for the next incremental)
//!   only after the files and the sidecar are in place.
//! - The scratch filesystem is guarded for as long as the disks are read ([`guard`]): when the
//!   guard ends the jobs, the export fails (exit 13) and the manifest says why.

use super::copy::{self, CopyJob, CopyStats, Tally};
use super::{BackupError, guard};
use crate::catalog::{Catalog, Manifest, SnapState};
use crate::events::{Events, Point, Progress};
use crate::hypervisor::pool::Pool;
use crate::model::backup::{
    BackupMode, BackupRecord, EXPORT_SIDECAR, ExportRecord, ExportSidecar, SIDECAR_FORMAT,
    SidecarDisk,
};
use crate::snapshot::preflight::DEFAULT_MIN_FREE;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Suffix of a file an export is still writing.
pub const PARTIAL_SUFFIX: &str = "cgsnap-partial";

/// One disk to export: where it goes and what backs it.
struct Planned {
    domain: String,
    target: String,
    image: String,
    virtual_size: u64,
    file: PathBuf,
    job: CopyJob,
}

/// How an export reads a cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// Parallel NBD connections per disk.
    pub workers: usize,
    /// Free bytes the scratch filesystem must keep while the export runs ([`guard`]); `None`:
    /// what the cut was begun with, else [`DEFAULT_MIN_FREE`].
    pub min_free: Option<u64>,
}

/// Export the cut `id` under `to`, its scratch filesystem guarded; `pool` reaches the
/// members, whose jobs the guard ends when it trips.
pub fn export(
    pool: &Pool,
    cat: &Catalog,
    id: &str,
    to: &Path,
    how: Reading,
    ev: Events,
) -> Result<Manifest, BackupError> {
    let group = cat.load(id)?.group;
    // `backup end` must not stop the jobs under a running export.
    let _lock = cat.lock(&group)?;
    let mut man = cat.load(id)?;
    let Some(b) = man.backup.clone() else {
        return Err(BackupError::NotBackup { id: id.to_string() });
    };
    if man.state != SnapState::Taken {
        return Err(BackupError::State {
            id: id.to_string(),
            state: man.state,
            fix: "only a cut whose jobs serve its disks (taken) can be exported; take a new one with `cgsnap backup begin`".into(),
        });
    }
    if let Some(e) = &b.export {
        return Err(BackupError::State {
            id: id.to_string(),
            state: man.state,
            fix: format!("it was exported to {} already", e.dir),
        });
    }
    let to = absolute_dir(to)?;
    let parent = match &b.since {
        Some(base) => Some(base_dir(cat, base)?),
        None => None,
    };
    let plan = plan(&man, &to, parent.as_deref(), how.workers.max(1))?;
    let guard = guard::Guard::start(
        guarded(pool, &b)?,
        PathBuf::from(&b.scratch_dir),
        how.min_free.or(b.min_free).unwrap_or(DEFAULT_MIN_FREE),
    );
    ev.probe.at(Point::Exporting { id });
    let t0 = Instant::now();
    let copied = run_all(id, &plan, ev);
    let stats = match (copied, guard.finish()) {
        // Every block was read before any trip: the export is whole (its jobs may be gone).
        (Ok(stats), _) => stats,
        (Err(_), Some(trip)) => {
            remove_partials(&plan);
            man.error = Some(format!("export stopped: {trip}"));
            cat.write(&man)?;
            return Err(BackupError::ScratchGuard {
                id: id.to_string(),
                trip: Box::new(trip),
            });
        }
        (Err(e), None) => {
            remove_partials(&plan);
            return Err(e);
        }
    };
    for p in &plan {
        if let Err(e) = std::fs::rename(partial(&p.file), &p.file) {
            remove_partials(&plan);
            return Err(io(&p.file, e));
        }
    }
    write_sidecar(&to, &man, &plan)?;
    if let Some(rec) = man.backup.as_mut() {
        rec.export = Some(ExportRecord {
            dir: to.display().to_string(),
            parent_dir: parent.map(|p| p.display().to_string()),
            finished_at: chrono::Utc::now(),
            bytes_read: stats.iter().map(|s| s.bytes_read).sum(),
            bytes_zeroed: stats.iter().map(|s| s.bytes_zeroed).sum(),
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    cat.write(&man)?;
    Ok(man)
}

/// Every member of the cut, connected, for the guard.
fn guarded(pool: &Pool, b: &BackupRecord) -> Result<Vec<guard::Member>, BackupError> {
    b.members
        .iter()
        .map(|m| {
            let host = pool.get(&m.uri).map_err(|e| BackupError::Export {
                id: b.checkpoint.clone(),
                cause: format!(
                    "{}: {e}: its job could not be ended if the scratch filesystem filled",
                    m.domain
                ),
            })?;
            Ok(guard::Member {
                host,
                domain: m.domain.clone(),
            })
        })
        .collect()
}

fn io(path: &Path, e: std::io::Error) -> BackupError {
    BackupError::Io {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// `to`, created if needed, as an absolute path.
fn absolute_dir(to: &Path) -> Result<PathBuf, BackupError> {
    std::fs::create_dir_all(to).map_err(|e| io(to, e))?;
    std::fs::canonicalize(to).map_err(|e| io(to, e))
}

/// Where the base cut `base` was exported; refused when that is not known or gone.
fn base_dir(cat: &Catalog, base: &str) -> Result<PathBuf, BackupError> {
    let missing = |why: String| BackupError::Export {
        id: base.to_string(),
        cause: format!(
            "{why}: the incremental cannot be exported without its base; end this cut and take a full one (`cgsnap backup begin` without --incremental)"
        ),
    };
    let m = cat
        .load(base)
        .map_err(|e| missing(format!("base cut {base}: {e}")))?;
    let Some(e) = m.backup.and_then(|b| b.export) else {
        return Err(missing(format!("base cut {base} was never exported")));
    };
    let dir = PathBuf::from(&e.dir);
    if !dir.join(EXPORT_SIDECAR).exists() {
        return Err(missing(format!(
            "the export of base cut {base} is no longer at {}",
            dir.display()
        )));
    }
    Ok(dir)
}

/// `image`'s place under `dir`: its absolute path repeated below it.
pub fn under(dir: &Path, image: &str) -> PathBuf {
    dir.join(image.trim_start_matches('/'))
}

fn partial(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(format!(".{PARTIAL_SUFFIX}"));
    PathBuf::from(s)
}

/// `target` relative to the directory `from` (both absolute): what a qcow2 in `from`
/// records as its backing file, so the chain can move as a whole.
fn relative(target: &Path, from: &Path) -> PathBuf {
    let t: Vec<Component> = target.components().collect();
    let f: Vec<Component> = from.components().collect();
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}

/// Every disk's file, partial file and copy job; refuses an existing export file.
fn plan(
    man: &Manifest,
    to: &Path,
    parent: Option<&Path>,
    workers: usize,
) -> Result<Vec<Planned>, BackupError> {
    let Some(b) = &man.backup else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for m in &b.members {
        for d in &m.disks {
            let file = under(to, &d.image);
            if file.exists() {
                return Err(BackupError::Io {
                    path: file.display().to_string(),
                    detail: "exists already: export to a new directory".into(),
                });
            }
            let dir = file.parent().unwrap_or(to).to_path_buf();
            std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
            // A leftover of an export killed before its rename is ours to replace.
            let _ = std::fs::remove_file(partial(&file));
            let backing = match parent {
                None => None,
                Some(p) => {
                    let base = under(p, &d.image);
                    if !base.exists() {
                        return Err(BackupError::Export {
                            id: man.id.clone(),
                            cause: format!("base export file {} is missing", base.display()),
                        });
                    }
                    Some(relative(&base, &dir))
                }
            };
            out.push(Planned {
                domain: m.domain.clone(),
                target: d.target.clone(),
                image: d.image.clone(),
                virtual_size: d.virtual_size,
                job: CopyJob {
                    source_uri: d.nbd_uri.clone(),
                    dirty_context: d.dirty_context.clone(),
                    target: partial(&file),
                    backing,
                    workers,
                },
                file,
            });
        }
    }
    Ok(out)
}

/// Copy every disk at once, reporting progress every few seconds; the first failure wins.
fn run_all(id: &str, plan: &[Planned], ev: Events) -> Result<Vec<CopyStats>, BackupError> {
    let tallies: Vec<Tally> = plan.iter().map(|_| Tally::default()).collect();
    let finished = AtomicU64::new(0);
    let t0 = Instant::now();
    let results: Vec<Result<CopyStats, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = plan
            .iter()
            .zip(&tallies)
            .map(|(p, t)| {
                let finished = &finished;
                s.spawn(move || {
                    let r = copy::copy_disk(&p.job, t)
                        .map_err(|e| format!("{}/{}: {e}", p.domain, p.target));
                    finished.fetch_add(1, Ordering::Relaxed);
                    r
                })
            })
            .collect();
        let mut last = Instant::now();
        while finished.load(Ordering::Relaxed) < plan.len() as u64 {
            std::thread::sleep(Duration::from_millis(200));
            if last.elapsed() >= Duration::from_secs(5) {
                last = Instant::now();
                let sum = |f: fn(&Tally) -> &AtomicU64| -> u64 {
                    tallies.iter().map(|t| f(t).load(Ordering::Relaxed)).sum()
                };
                let done = sum(|t| &t.done);
                let secs = t0.elapsed().as_secs_f64().max(0.001);
                ev.report.progress(&Progress::Export {
                    id,
                    done,
                    total: sum(|t| &t.planned),
                    rate: (done as f64 / secs) as u64,
                });
            }
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("copy thread panicked".into()))
            })
            .collect()
    });
    results
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|cause| BackupError::Export {
            id: id.to_string(),
            cause,
        })
}

fn remove_partials(plan: &[Planned]) {
    for p in plan {
        let _ = std::fs::remove_file(partial(&p.file));
    }
}

fn write_sidecar(to: &Path, man: &Manifest, plan: &[Planned]) -> Result<(), BackupError> {
    let b = man.backup.as_ref();
    let side = ExportSidecar {
        format: SIDECAR_FORMAT.into(),
        id: man.id.clone(),
        group: man.group.clone(),
        mode: b.map_or(BackupMode::Full, |b| b.mode),
        since: b.and_then(|b| b.since.clone()),
        disks: plan
            .iter()
            .map(|p| SidecarDisk {
                domain: p.domain.clone(),
                target: p.target.clone(),
                image: p.image.clone(),
                virtual_size: p.virtual_size,
            })
            .collect(),
    };
    let path = to.join(EXPORT_SIDECAR);
    let body = serde_json::to_vec_pretty(&side).map_err(|e| BackupError::Io {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    std::fs::write(&path, body).map_err(|e| io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_paths_are_relative_to_the_new_file_directory() {
        assert_eq!(
            relative(
                Path::new("/b/full/var/img/a.qcow2"),
                Path::new("/b/inc1/var/img")
            ),
            PathBuf::from("../../../full/var/img/a.qcow2")
        );
        assert_eq!(
            under(Path::new("/x"), "/var/lib/a.qcow2"),
            PathBuf::from("/x/var/lib/a.qcow2")
        );
        assert_eq!(
            partial(Path::new("/x/a.qcow2")),
            PathBuf::from("/x/a.qcow2.cgsnap-partial")
        );
    }
}
