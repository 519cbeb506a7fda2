//! Release: merge every overlay of a snapshot back into its image and remove it.
//!
//! For each disk: active block-commit of the overlay into its backing image, wait until the
//! job is ready (mirror in sync), pivot the disk back to the image, then delete the overlay.
//!
//! Invariants:
//! - Idempotent and resumable: each disk's next step is derived from the live domain XML, not
//!   from what a previous run remembers (disk on overlay → commit; job running → wait/pivot;
//!   disk on image → only the file removal is left).
//! - An overlay file is deleted only when no disk of its domain has it as source or anywhere in
//!   its backing chain; a pre-created overlay that was never used holds no guest data. A
//!   member's file on another host is deleted only through libvirt on that host, never here.
//! - A member whose domain no longer exists is released offline by [`crate::vanished`], one
//!   that is shut off by [`crate::offline`].
//! - A commit that makes no progress towards ready for the timeout is cancelled (the disk stays
//!   on its overlay, nothing is lost) and reported; the manifest stays `releasing` so a later
//!   run retries. Progress, not total time: a large overlay copying steadily is never cut off
//!   (a retry would start its copy over), one the guest's writes outpace is.

use crate::catalog::DiskRecord;
use crate::domxml;
use crate::exit::{Classify, ExitCode};
use crate::hypervisor::{DomState, Host, HvError};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(
        "commit of {domain}/{target} did not converge: no progress towards ready for {secs:.1} s ({cur}/{end} bytes); the disk stays on its overlay, nothing is lost: retry `cgsnap release` when the guest writes less, or raise --timeout"
    )]
    NotConverged {
        domain: String,
        target: String,
        secs: f64,
        cur: u64,
        end: u64,
    },
    #[error(
        "commit of {domain}/{target} ended without switching the disk back to its image (the job failed, e.g. the image's filesystem ran out of room, or someone cancelled it); the disk stays on its overlay {overlay}, nothing is lost: see libvirtd's log, then run release again"
    )]
    CommitEnded {
        domain: String,
        target: String,
        overlay: String,
    },
    #[error(
        "member {domain} is {state}: overlays can only be committed while it runs; start it (`virsh start {domain}`) and run release again"
    )]
    NotRunning { domain: String, state: DomState },
    #[error(
        "disk {target} of {domain} is now on {actual}, not on the snapshot overlay {overlay} nor its image: its chain was changed by someone else; merge it by hand"
    )]
    ChainChanged {
        domain: String,
        target: String,
        actual: String,
        overlay: String,
    },
    #[error(
        "member {domain} no longer exists and its overlay {overlay} cannot be merged offline ({detail}); it is kept: {fix}"
    )]
    VanishedMerge {
        domain: String,
        overlay: String,
        detail: String,
        fix: String,
    },
    #[error(
        "member {domain} no longer exists, but domain {user} uses its overlay {overlay} (renamed?): rename it back (`virsh domrename {user} {domain}`, start it) and run release again"
    )]
    VanishedButUsed {
        domain: String,
        overlay: String,
        user: String,
    },
    #[error(
        "member {domain} is shut off and its overlay {overlay} cannot be merged offline ({detail}); it is kept: start it (`virsh start {domain}`) and run release again"
    )]
    OfflineMerge {
        domain: String,
        overlay: String,
        detail: String,
    },
    #[error(
        "member {domain} was started while its overlays were merged offline; nothing is lost: run release again (it now commits online)"
    )]
    StartedDuringRelease { domain: String },
    #[error("cannot remove overlay {path}: {source}")]
    Remove {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Xml(#[from] domxml::XmlError),
    #[error(transparent)]
    Hv(#[from] HvError),
}

impl Classify for ReleaseError {
    fn exit_code(&self) -> ExitCode {
        match self {
            ReleaseError::Xml(_) => ExitCode::Malformed,
            ReleaseError::Hv(e) if e.kind == crate::hypervisor::HvErrorKind::NoDomain => {
                ExitCode::NotFound
            }
            _ => ExitCode::ReleaseIncomplete,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long one disk's commit may go without progress towards ready ([`Progress`]).
    pub timeout: Duration,
    pub poll: Duration,
    /// Fault injection for tests: pause this long once the commits are started, before
    /// waiting for them (so a test can kill the process mid-release).
    pub hold_after_commit: Option<Duration>,
    /// Copy rate limit of each commit in bytes/s (0: unlimited), to spare the storage.
    pub bandwidth: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            poll: Duration::from_millis(20),
            hold_after_commit: None,
            bandwidth: 0,
        }
    }
}

enum DiskStep {
    /// Disk writes to the overlay, no job: start a commit.
    Commit,
    /// A commit job is running (maybe started by a crashed run): wait and pivot.
    Wait,
    /// Disk is back on its image: only the overlay file may remain.
    Done,
}

fn step_for(domain: &str, xml: &str, d: &DiskRecord) -> Result<DiskStep, ReleaseError> {
    let disks = domxml::disks(domain, xml)?;
    let live = disks.iter().find(|x| x.target == d.target);
    let src = live.and_then(|x| x.source.as_deref()).unwrap_or("");
    if src == d.overlay {
        let mirror = live.is_some_and(|x| x.mirror);
        return Ok(if mirror {
            DiskStep::Wait
        } else {
            DiskStep::Commit
        });
    }
    if src == d.image {
        return Ok(DiskStep::Done);
    }
    Err(ReleaseError::ChainChanged {
        domain: domain.to_string(),
        target: d.target.clone(),
        actual: if src.is_empty() {
            "nothing".into()
        } else {
            src.into()
        },
        overlay: d.overlay.clone(),
    })
}

/// True when some disk of the domain still uses `path` (as top image or backing file).
pub(crate) fn in_use(domain: &str, xml: &str, path: &str) -> Result<bool, ReleaseError> {
    Ok(domxml::disks(domain, xml)?
        .iter()
        .any(|d| d.source.as_deref() == Some(path) || d.backing.iter().any(|b| b == path)))
}

/// Remove overlay files of `disks` that no disk of the domain uses any more.
///
/// On this host directly. On another host only through libvirt (the storage pool whose target
/// is the overlay's directory): a path there names a file there, and a file of the same name
/// here belongs to someone else. Without such a pool the overlay, no longer used, stays on its
/// host and is reported on stderr.
pub fn remove_unused(
    host: &dyn Host,
    domain: &str,
    disks: &[DiskRecord],
) -> Result<(), ReleaseError> {
    let xml = host.xml(domain)?;
    let local = crate::snapshot::is_local(host.uri());
    for d in disks {
        if in_use(domain, &xml, &d.overlay)? {
            continue;
        }
        if !local {
            remove_remote(host, domain, &d.overlay)?;
            continue;
        }
        if Path::new(&d.overlay).exists() {
            std::fs::remove_file(&d.overlay).map_err(|source| ReleaseError::Remove {
                path: d.overlay.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Remove an unused overlay on another host through the storage pool of its directory, or say
/// on stderr that it stays there.
pub(crate) fn remove_remote(
    host: &dyn Host,
    domain: &str,
    overlay: &str,
) -> Result<(), ReleaseError> {
    if !host.pool_delete(overlay)? {
        eprintln!(
            "cgsnap: {domain}: overlay {overlay} stays on {}: no active libvirt storage pool there has its directory as target; no disk uses it any more, remove it on that host (or define a pool for that directory so that release removes it)",
            host.uri()
        );
    }
    Ok(())
}

/// How often a commit still running reports its progress on stderr.
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// Least drop in the bytes a commit has left to copy that counts as progress: small enough for
/// any real copy rate, large enough that a copy the guest's writes outpace (the bytes left
/// wobble up and down) does not keep postponing its deadline.
const MIN_GAIN: u64 = 1 << 20;

/// A commit's progress towards ready: its deadline is `timeout` after the bytes left to copy
/// last reached a new low by at least [`MIN_GAIN`] (or after the wait began).
struct Progress {
    best: Option<u64>,
    since: Instant,
}

impl Progress {
    fn new(now: Instant) -> Self {
        Self {
            best: None,
            since: now,
        }
    }

    fn observe(&mut self, cur: u64, end: u64, now: Instant) {
        let left = end.saturating_sub(cur);
        match self.best {
            Some(b) if left.saturating_add(MIN_GAIN) > b => {}
            Some(_) => {
                self.best = Some(left);
                self.since = now;
            }
            // The first reading is the baseline; the clock still runs from the start.
            None => self.best = Some(left),
        }
    }

    fn stalled(&self, now: Instant, timeout: Duration) -> bool {
        now.duration_since(self.since) >= timeout
    }
}

/// Wait for the job on one disk to be ready, then pivot. Cancels the job once it has made no
/// progress for the timeout.
pub(crate) fn wait_and_pivot(
    host: &dyn Host,
    domain: &str,
    d: &DiskRecord,
    opts: &Options,
) -> Result<(), ReleaseError> {
    let mut progress = Progress::new(Instant::now());
    let mut next_report = Instant::now() + REPORT_EVERY;
    let mut last;
    loop {
        match host.block_job(domain, &d.target)? {
            None => return Ok(()), // pivoted or finished by a concurrent actor: XML decides next.
            Some(j) => {
                last = (j.cur, j.end);
                progress.observe(j.cur, j.end, Instant::now());
                // A long commit says how far it got (stderr: the backup job's log), so nobody
                // mistakes it for a hang; a short one stays quiet.
                if Instant::now() >= next_report {
                    eprintln!(
                        "cgsnap: committing {domain}/{}: {} of {} MiB copied",
                        d.target,
                        j.cur >> 20,
                        j.end >> 20
                    );
                    next_report += REPORT_EVERY;
                }
                if j.is_ready() {
                    match host.pivot(domain, &d.target) {
                        Ok(()) => return Ok(()),
                        // Not ready after all (guest wrote in between): keep waiting.
                        Err(e) if progress.stalled(Instant::now(), opts.timeout) => {
                            return Err(e.into());
                        }
                        Err(_) => {}
                    }
                }
            }
        }
        if progress.stalled(Instant::now(), opts.timeout) {
            // Cancel: the disk stays on its overlay, which keeps every write.
            let _ = host.abort_job(domain, &d.target);
            return Err(ReleaseError::NotConverged {
                domain: domain.to_string(),
                target: d.target.clone(),
                secs: opts.timeout.as_secs_f64(),
                cur: last.0,
                end: last.1,
            });
        }
        std::thread::sleep(opts.poll);
    }
}

/// Release every listed disk of one member; safe to call again after any failure.
pub fn release_member(
    host: &dyn Host,
    domain: &str,
    disks: &[DiskRecord],
    opts: &Options,
) -> Result<(), ReleaseError> {
    let state = match host.state(domain) {
        Err(e) if e.kind == crate::hypervisor::HvErrorKind::NoDomain => {
            return crate::vanished::release(host, domain, disks, opts);
        }
        r => r?,
    };
    let xml = host.xml(domain)?;
    let steps = disks
        .iter()
        .map(|d| step_for(domain, &xml, d).map(|s| (d, s)))
        .collect::<Result<Vec<_>, _>>()?;
    let pending = steps.iter().any(|(_, s)| !matches!(s, DiskStep::Done));
    if pending && !matches!(state, DomState::Running | DomState::PausedByUser) {
        if state == DomState::ShutOff {
            let on_overlay: Vec<&DiskRecord> = steps
                .iter()
                .filter(|(_, s)| matches!(s, DiskStep::Commit))
                .map(|(d, _)| *d)
                .collect();
            return crate::offline::release(host, domain, &xml, disks, &on_overlay, opts);
        }
        return Err(ReleaseError::NotRunning {
            domain: domain.to_string(),
            state,
        });
    }
    // Start every commit first so the disks of one member merge concurrently.
    for (d, s) in &steps {
        if matches!(s, DiskStep::Commit) {
            host.commit_active(domain, &d.target, opts.bandwidth)?;
        }
    }
    if let Some(h) = opts.hold_after_commit.filter(|_| pending) {
        eprintln!("cgsnap: commits of {domain} started");
        std::thread::sleep(h);
    }
    for (i, (d, s)) in steps.iter().enumerate() {
        if matches!(s, DiskStep::Done) {
            continue;
        }
        if let Err(e) = wait_and_pivot(host, domain, d, opts) {
            // Leave no commit of this member running behind the error (e.g. one still
            // copying at a rate limit): its disks stay on their overlays, and the next release
            // starts every commit afresh with its own options.
            for (later, s) in &steps[i + 1..] {
                if !matches!(s, DiskStep::Done) {
                    let _ = host.abort_job(domain, &later.target);
                }
            }
            return Err(e);
        }
    }
    // Re-read: every disk must now be on its image before anything is deleted.
    let xml = host.xml(domain)?;
    for d in disks {
        let step = step_for(domain, &xml, d)?;
        if matches!(step, DiskStep::Commit) {
            // The job went away without a pivot: it failed or someone cancelled it.
            return Err(ReleaseError::CommitEnded {
                domain: domain.to_string(),
                target: d.target.clone(),
                overlay: d.overlay.clone(),
            });
        }
        if !matches!(step, DiskStep::Done) {
            return Err(ReleaseError::ChainChanged {
                domain: domain.to_string(),
                target: d.target.clone(),
                actual: d.overlay.clone(),
                overlay: d.overlay.clone(),
            });
        }
    }
    remove_unused(host, domain, disks)
}

/// Why a whole snapshot could not be released.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotReleaseError {
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error("snapshot {id}: {source}")]
    Member {
        id: String,
        #[source]
        source: Box<ReleaseError>,
    },
    #[error(
        "snapshot {id}: no room to release: committing {} needs {} MiB more in {}, which has {} MiB free; free space there (or grow the filesystem) and run release again; until then the VMs keep writing to their overlays and nothing is lost",
        short.overlays.join(", "),
        mib(short.need),
        short.dir.display(),
        short.free >> 20
    )]
    NoRoom {
        id: String,
        short: crate::room::Shortage,
    },
}

/// Bytes in MiB, rounded up (a need of a few KiB is not "0 MiB"). Free space is rounded down
/// instead, so a refusal never reads as if the need fitted.
fn mib(b: u64) -> u64 {
    b.div_ceil(1 << 20)
}

impl Classify for SnapshotReleaseError {
    fn exit_code(&self) -> ExitCode {
        match self {
            SnapshotReleaseError::Catalog(e) => e.exit_code(),
            SnapshotReleaseError::Member { source, .. } => source.exit_code(),
            SnapshotReleaseError::NoRoom { .. } => ExitCode::Precondition,
        }
    }
}

/// Release a snapshot by ID under its group lock; a released or aborted one is left as is.
pub fn release_snapshot(
    pool: &crate::hypervisor::pool::Pool,
    cat: &crate::catalog::Catalog,
    id: &str,
    opts: &Options,
) -> Result<crate::catalog::Manifest, SnapshotReleaseError> {
    use crate::catalog::SnapState;
    let mut man = cat.load(id)?;
    let _lock = cat.lock(&man.group)?;
    let mut man_now = cat.load(id)?;
    if !man_now.state.outstanding() {
        return Ok(man_now);
    }
    std::mem::swap(&mut man, &mut man_now);
    // Before any commit starts: a release that cannot fit fails here, changing nothing.
    let local: Vec<&crate::catalog::DiskRecord> = man
        .members
        .iter()
        .filter(|m| crate::snapshot::is_local(&m.uri))
        .flat_map(|m| m.disks.iter())
        .collect();
    if let Err(short) = crate::room::check(&local) {
        return Err(SnapshotReleaseError::NoRoom {
            id: id.to_string(),
            short,
        });
    }
    man.state = SnapState::Releasing;
    cat.write(&man)?;
    // Members are independent: release them in parallel, report the first failure.
    let results: Vec<Result<(), ReleaseError>> = std::thread::scope(|s| {
        let handles: Vec<_> = man
            .members
            .iter()
            .map(|m| {
                s.spawn(move || {
                    let host = pool.get(&m.uri)?;
                    release_member(host.as_ref(), &m.domain, &m.disks, opts)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(ReleaseError::Remove {
                        path: String::new(),
                        source: std::io::Error::other("release thread panicked"),
                    })
                })
            })
            .collect()
    });
    if let Some(e) = results.into_iter().find_map(Result::err) {
        man.error = Some(e.to_string());
        cat.write(&man)?;
        return Err(SnapshotReleaseError::Member {
            id: id.to_string(),
            source: Box::new(e),
        });
    }
    man.state = SnapState::Released;
    man.released_at = Some(chrono::Utc::now());
    cat.write(&man)?;
    Ok(man)
}

/// Release every outstanding snapshot of `group`, e.g. one an interrupted demo or benchmark
/// run left behind (its members may be gone: see [`crate::vanished`]). Returns their IDs.
pub fn release_leftovers(
    pool: &crate::hypervisor::pool::Pool,
    cat: &crate::catalog::Catalog,
    group: &str,
    opts: &Options,
) -> Result<Vec<String>, SnapshotReleaseError> {
    let mut ids = Vec::new();
    for m in cat.outstanding(group)? {
        release_snapshot(pool, cat, &m.id, opts)?;
        ids.push(m.id);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::fake::FakeHost;

    #[test]
    fn a_steady_copy_is_never_cut_off_a_stalled_one_is() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let timeout = Duration::from_secs(10);
        // 40 GiB copied at 100 MiB/s: far longer than the timeout, gaining all the time.
        let mut p = Progress::new(t0);
        let end = 40u64 << 30;
        for sec in 0..400 {
            p.observe(sec * (100 << 20), end, s(sec));
            assert!(!p.stalled(s(sec), timeout), "copying at {sec} s");
        }
        // Then the guest's writes keep it about 64 KiB short of ready: no new low.
        let base = 400;
        for k in 0..10 {
            let wobble = if k % 2 == 0 { 64 << 10 } else { 300 << 10 };
            p.observe(end - wobble, end + (k << 10), s(base + k));
        }
        assert!(!p.stalled(s(base + 9), timeout));
        assert!(p.stalled(s(base + 10), timeout), "10 s without a gain");

        // A small overlay (below the least gain) that never gets ready: the clock runs from
        // the start.
        let mut p = Progress::new(t0);
        for sec in 0..=10 {
            p.observe(sec * 100, 64 << 10, s(sec));
        }
        assert!(p.stalled(s(10), timeout));
    }

    #[test]
    fn a_commit_that_ends_without_a_pivot_is_reported_and_the_overlay_kept() {
        let host = FakeHost::new("qemu:///system");
        host.add(
            "db",
            "<domain><devices><disk type='file' device='disk'><driver type='qcow2'/>\
             <source file='/i/vda.ovl'/><backingStore type='file'><format type='qcow2'/>\
             <source file='/i/vda.qcow2'/></backingStore><target dev='vda'/></disk></devices></domain>",
        );
        // The job is gone at once, as one that failed (e.g. out of room) or was cancelled.
        host.fail_on("job_lost", "db");
        let d = DiskRecord {
            target: "vda".into(),
            image: "/i/vda.qcow2".into(),
            overlay: "/i/vda.ovl".into(),
            format: "qcow2".into(),
            virtual_size: 1 << 20,
        };
        let e = release_member(&host, "db", std::slice::from_ref(&d), &Options::default())
            .expect_err("still on its overlay");
        assert!(matches!(e, ReleaseError::CommitEnded { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("commit of db/vda ended without switching")
                && e.to_string().contains("nothing is lost"),
            "{e}"
        );
        assert_eq!(e.exit_code(), ExitCode::ReleaseIncomplete);
        let calls = host.calls();
        assert!(calls.contains(&"commit:db".to_string()), "{calls:?}");
        assert!(!calls.iter().any(|c| c.starts_with("pivot")), "{calls:?}");
    }

    #[test]
    fn a_remote_member_s_overlay_path_never_touches_a_file_here() {
        // A same-named file on this host (same image layout on every host of a cluster) is
        // someone else's: released on another host, it must survive.
        let t = tempfile::tempdir().expect("tempdir");
        let here = t.path().join("vda.qcow2.x.cgsnap-overlay");
        std::fs::write(&here, b"local data").expect("local file");
        let image = t.path().join("vda.qcow2");
        let host = FakeHost::new("qemu+ssh://far/system");
        host.add(
            "db",
            &format!(
                "<domain><devices><disk type='file' device='disk'><driver type='qcow2'/>\
                 <source file='{}'/><target dev='vda'/></disk></devices></domain>",
                image.display()
            ),
        );
        let d = DiskRecord {
            target: "vda".into(),
            image: image.to_string_lossy().into(),
            overlay: here.to_string_lossy().into(),
            format: "qcow2".into(),
            virtual_size: 1 << 20,
        };
        remove_unused(&host, "db", std::slice::from_ref(&d)).expect("released");
        assert_eq!(std::fs::read(&here).expect("still here"), b"local data");

        // The same on this host: the unused overlay goes.
        let local = FakeHost::new("qemu:///system");
        local.add("db", &host.xml("db").expect("xml"));
        remove_unused(&local, "db", std::slice::from_ref(&d)).expect("released");
        assert!(!here.exists());
    }
}
