//! Release: merge every overlay of a snapshot back into its image and remove it.
//!
//! For each disk: active block-commit of the overlay into its backing image, wait until the
//! job is ready (mirror in sync), pivot the disk back to the image, then delete the overlay.
//!
//! Invariants:
//! - Idempotent and resumable: each disk's next step is derived from the live domain XML
//!   (disk on overlay → commit; our commit job running → wait/pivot; disk on image → only the
//!   file removal is left); the [`crate::catalog::ledger`] only tells whether a disk found on its image
//!   was switched by a release at all.
//! - An overlay file is deleted only when no disk of its domain has it as source or anywhere in
//!   its backing chain, no process holds it open (QEMU's image lock), and either a release
//!   switched its disk back or it holds no data (pre-created, never used). Each overlay goes
//!   right after its own disk's pivot. A member's file on another host is deleted only through
//!   libvirt on that host, never here.
//! - A commit is started only on an overlay whose backing file is the snapshot's image, and
//!   only our own kind of job (active commit) is waited for and pivoted.
//! - A member whose domain no longer exists is released offline by [`crate::vanished`], one
//!   that is shut off by [`crate::offline`].
//! - A commit that makes no progress towards ready for the timeout is cancelled (the disk stays
//!   on its overlay, nothing is lost) and reported; the manifest stays `releasing` so a later
//!   run retries. Progress, not total time: a large overlay copying steadily is never cut off
//!   (a retry would start its copy over), one the guest's writes outpace is.

use crate::catalog::ledger::{Ledger, Mark};
use crate::catalog::{DiskRecord, MemberId};
use crate::domxml;
use crate::events::{Events, Note, Point, Reporter};
use crate::hypervisor::{DomState, Host, HvError};
use crate::model::exit::{Classify, ExitCode};
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
        "member {domain} is {state}: overlays can only be committed while it runs; {}",
        not_running_fix(domain, *state)
    )]
    NotRunning { domain: String, state: DomState },
    #[error(
        "member {domain} is shut off with a managed save image, whose saved state writes to the overlays: start it (`virsh start {domain}` restores it) and run release again; removing the save image would discard what the guest had not yet written"
    )]
    ManagedSave { domain: String },
    #[error(
        "disk {target} of {domain} is back on its image, but no release switched it (the VM recreated or redefined from its old definition?): its overlay {overlay} holds data written after the snapshot and is kept; if that data is not needed, delete the overlay, then run release again"
    )]
    NotSwitchedByRelease {
        domain: String,
        target: String,
        overlay: String,
    },
    #[error(
        "overlay {overlay} of {domain} is no longer used by the domain, but a process still has it open; it is kept: run release again once that process is gone"
    )]
    HeldOpen { domain: String, overlay: String },
    #[error(
        "disk {target} of {domain} runs a block job of another kind ({job}), not a commit of ours: let it finish or abort it (`virsh blockjob {domain} {target} --abort`), then run release again"
    )]
    ForeignJob {
        domain: String,
        target: String,
        job: String,
    },
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
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
        "overlay {overlay} of {domain}/{target} now lies over {below}, not over the snapshot's image {image}: someone changed its chain, and a commit would write into {below}; merge it by hand"
    )]
    BackingChanged {
        domain: String,
        target: String,
        overlay: String,
        below: String,
        image: String,
    },
    #[error(
        "commit of {domain}/{target} still runs after its wait ended; nothing is lost: run release again"
    )]
    StillCommitting { domain: String, target: String },
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
    #[error(
        "release of member {domain} ({uri}) stopped on an internal error (its thread panicked); what it finished is recorded in the manifest: run release again, and report this"
    )]
    Panicked { domain: String, uri: String },
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

/// What brings a member that is not running back to where its commits can run.
fn not_running_fix(domain: &str, state: DomState) -> String {
    match state {
        DomState::ShutOff => format!("start it (`virsh start {domain}`) and run release again"),
        DomState::PausedOther => format!(
            "resume it once the cause is fixed (`virsh resume {domain}`; a VM paused on an I/O error usually has a full filesystem under its overlays: free space there first) and run release again"
        ),
        _ => format!(
            "bring it back to running (`virsh dompmwakeup {domain}` for a suspended guest, else `virsh start {domain}`) and run release again"
        ),
    }
}

impl Classify for ReleaseError {
    fn exit_code(&self) -> ExitCode {
        match self {
            ReleaseError::Xml(_) => ExitCode::Malformed,
            ReleaseError::Catalog(e) => e.exit_code(),
            // A member that vanished in the middle of its release: the next run merges its
            // overlays offline, so this is a release to retry, not an unknown domain.
            _ => ExitCode::ReleaseIncomplete,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long one disk's commit may go without progress towards ready ([`Progress`]).
    pub timeout: Duration,
    pub poll: Duration,
    /// Copy rate limit of each commit in bytes/s (0: unlimited), to spare the storage.
    pub bandwidth: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            poll: Duration::from_millis(20),
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
    if let Some(x) = live.filter(|_| src == d.overlay) {
        if x.mirror {
            // Only our own kind of job is ours to wait for and pivot: pivoting someone's copy
            // would switch the VM onto the copy's target.
            return match x.mirror_job.as_deref() {
                Some("active-commit") | None => Ok(DiskStep::Wait),
                Some(job) => Err(ReleaseError::ForeignJob {
                    domain: domain.to_string(),
                    target: d.target.clone(),
                    job: job.to_string(),
                }),
            };
        }
        // A shallow commit writes into whatever lies right below the overlay: that must be
        // the image the snapshot froze, not a file someone put in between.
        if let Some(below) = x.backing.first().filter(|b| **b != d.image) {
            return Err(ReleaseError::BackingChanged {
                domain: domain.to_string(),
                target: d.target.clone(),
                overlay: d.overlay.clone(),
                below: below.clone(),
                image: d.image.clone(),
            });
        }
        return Ok(DiskStep::Commit);
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
/// host and `report` is told ([`Note::OverlayStays`]).
pub fn remove_unused(
    host: &dyn Host,
    domain: &str,
    disks: &[DiskRecord],
    report: &dyn Reporter,
) -> Result<(), ReleaseError> {
    remove_unused_in(host, domain, &host.xml(domain)?, disks, report)
}

/// [`remove_unused`] against the domain XML `xml` just read.
fn remove_unused_in(
    host: &dyn Host,
    domain: &str,
    xml: &str,
    disks: &[DiskRecord],
    report: &dyn Reporter,
) -> Result<(), ReleaseError> {
    let local = crate::hypervisor::is_local(host.uri());
    for d in disks {
        if in_use(domain, xml, &d.overlay)? {
            continue;
        }
        if local {
            remove_local(domain, &d.overlay)?;
        } else {
            remove_remote(host, domain, &d.overlay, report)?;
        }
    }
    Ok(())
}

/// Delete an overlay on this host that no disk uses any more, unless some process still holds
/// it open: the domain's XML can lag behind QEMU (a snapshot call still in flight, libvirtd
/// restarted before saving its state), QEMU's lock is the last word. Gone already is done.
pub(crate) fn remove_local(domain: &str, overlay: &str) -> Result<(), ReleaseError> {
    if !Path::new(overlay).exists() {
        return Ok(());
    }
    if held_open(overlay) {
        return Err(ReleaseError::HeldOpen {
            domain: domain.to_string(),
            overlay: overlay.to_string(),
        });
    }
    std::fs::remove_file(overlay).map_err(|source| ReleaseError::Remove {
        path: overlay.to_string(),
        source,
    })
}

/// Remove an unused overlay on another host through the storage pool of its directory, or tell
/// `report` that it stays there.
pub(crate) fn remove_remote(
    host: &dyn Host,
    domain: &str,
    overlay: &str,
    report: &dyn Reporter,
) -> Result<(), ReleaseError> {
    if !host.pool_delete(overlay)? {
        report.note(&Note::OverlayStays {
            domain,
            overlay,
            uri: host.uri(),
        });
    }
    Ok(())
}

/// How often a commit still running reports its progress.
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
    report: &dyn Reporter,
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
                // A long commit says how far it got (the command line prints it on stderr:
                // the backup job's log), so nobody mistakes it for a hang; a short one stays
                // quiet.
                if Instant::now() >= next_report {
                    report.progress(&crate::events::Progress::Commit {
                        domain,
                        target: &d.target,
                        copied: j.cur,
                        total: j.end,
                    });
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

/// Release every listed disk of one member; safe to call again after any failure. `ledger`
/// holds what earlier runs of this release did ([`crate::catalog::ledger`]). `ev` hears progress and
/// notes; its probe is passed [`Point::CommitsStarted`] once commits are started.
pub fn release_member(
    host: &dyn Host,
    domain: &str,
    disks: &[DiskRecord],
    opts: &Options,
    ledger: &dyn Ledger,
    ev: Events,
) -> Result<(), ReleaseError> {
    let state = match host.state(domain) {
        Err(e) if e.kind == crate::hypervisor::HvErrorKind::NoDomain => {
            return crate::vanished::release(host, domain, disks, opts, ledger, ev.report);
        }
        r => r?,
    };
    let who = MemberId::new(host.uri(), domain);
    let xml = host.xml(domain)?;
    let steps = disks
        .iter()
        .map(|d| step_for(domain, &xml, d).map(|s| (d, s)))
        .collect::<Result<Vec<_>, _>>()?;
    for (d, s) in &steps {
        if matches!(s, DiskStep::Done) {
            check_found_done(host, domain, d, ledger)?;
        }
    }
    let pending = steps.iter().any(|(_, s)| !matches!(s, DiskStep::Done));
    if pending && !matches!(state, DomState::Running | DomState::PausedByUser) {
        if state == DomState::ShutOff {
            // Its saved memory names the overlays: merged and redefined under it, the restore
            // fails (overlay gone) or writes to an overlay nothing will ever merge.
            if host.has_managed_save(domain)? {
                return Err(ReleaseError::ManagedSave {
                    domain: domain.to_string(),
                });
            }
            let on_overlay: Vec<&DiskRecord> = steps
                .iter()
                .filter(|(_, s)| matches!(s, DiskStep::Commit))
                .map(|(d, _)| *d)
                .collect();
            return crate::offline::release(
                host,
                domain,
                &xml,
                disks,
                &on_overlay,
                opts,
                ledger,
                ev.report,
            );
        }
        return Err(ReleaseError::NotRunning {
            domain: domain.to_string(),
            state,
        });
    }
    let to_commit: Vec<&str> = steps
        .iter()
        .filter(|(_, s)| matches!(s, DiskStep::Commit))
        .map(|(d, _)| d.target.as_str())
        .collect();
    if !to_commit.is_empty() {
        ledger.mark(&who, &to_commit, Mark::Started)?;
    }
    // Start every commit first so the disks of one member merge concurrently.
    for (d, s) in &steps {
        if matches!(s, DiskStep::Commit) {
            host.commit_active(domain, &d.target, opts.bandwidth)?;
        }
    }
    if pending {
        ev.probe.at(Point::CommitsStarted { domain });
    }
    for (i, (d, s)) in steps.iter().enumerate() {
        if matches!(s, DiskStep::Done) {
            continue;
        }
        let switched = wait_and_pivot(host, domain, d, opts, ev.report).and_then(|()| {
            // Each overlay goes as soon as its own disk is back on its image: one left until
            // the member's other disks are done would be stale (the guest now writes to the
            // image) yet look mergeable if the member vanished meanwhile.
            let xml = host.xml(domain)?;
            match step_for(domain, &xml, d)? {
                DiskStep::Done => {
                    ledger.mark(&who, &[d.target.as_str()], Mark::Pivoted)?;
                    remove_unused_in(host, domain, &xml, std::slice::from_ref(*d), ev.report)
                }
                // The job went away without a pivot: it failed or someone cancelled it.
                DiskStep::Commit => Err(ReleaseError::CommitEnded {
                    domain: domain.to_string(),
                    target: d.target.clone(),
                    overlay: d.overlay.clone(),
                }),
                DiskStep::Wait => Err(ReleaseError::StillCommitting {
                    domain: domain.to_string(),
                    target: d.target.clone(),
                }),
            }
        });
        if let Err(e) = switched {
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
    // The disks found on their images at the start (checked above) leave only their files.
    remove_unused(host, domain, disks, ev.report)
}

/// A disk found back on its image while its overlay still exists: the overlay may go only if
/// a release switched the disk (its commit was marked started), or, on this host, if the
/// overlay holds no data of its own (pre-created and never written). Anything else switched
/// it, and the overlay may hold the only copy of what the guest wrote since the snapshot.
fn check_found_done(
    host: &dyn Host,
    domain: &str,
    d: &DiskRecord,
    ledger: &dyn Ledger,
) -> Result<(), ReleaseError> {
    if ledger.has(&MemberId::new(host.uri(), domain), &d.target, Mark::Started) {
        return Ok(());
    }
    let keeps_data = if crate::hypervisor::is_local(host.uri()) {
        Path::new(&d.overlay).exists() && crate::room::holds_data(&d.overlay).unwrap_or(true)
    } else {
        // Another host's file is only known through its storage pool: one that exists there
        // was written by a snapshot (remote overlays are created by the snapshot itself).
        host.pool_has(&d.overlay)? == Some(true)
    };
    if keeps_data {
        return Err(ReleaseError::NotSwitchedByRelease {
            domain: domain.to_string(),
            target: d.target.clone(),
            overlay: d.overlay.clone(),
        });
    }
    Ok(())
}

/// How long a process may still hold an overlay its domain has just let go of (QEMU closes
/// the node right after the pivot) before the overlay counts as held open.
const HELD_OPEN_WAIT: Duration = Duration::from_secs(3);

/// Whether some process (a QEMU) has the overlay open for writing, from QEMU's image locks:
/// `qemu-img info` without `-U` takes a shared lock, which a writer's lock refuses. It does not
/// open the backing image, whose lock the running VM holds again after the pivot.
fn held_open(path: &str) -> bool {
    let deadline = Instant::now() + HELD_OPEN_WAIT;
    loop {
        let out = std::process::Command::new("qemu-img")
            .args(["info", "-f", "qcow2", path])
            .output();
        let held = match out {
            Ok(o) if !o.status.success() => {
                crate::hypervisor::qemu_text::classify(&String::from_utf8_lossy(&o.stderr))
                    == crate::hypervisor::qemu_text::QemuFailure::HeldOpen
            }
            _ => false,
        };
        if !held || Instant::now() >= deadline {
            return held;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One disk of `domain` released with the default options and no earlier run (tests).
#[cfg(test)]
pub(crate) fn release_one(
    host: &dyn Host,
    domain: &str,
    d: &DiskRecord,
) -> Result<(), ReleaseError> {
    release_member(
        host,
        domain,
        std::slice::from_ref(d),
        &Options::default(),
        &crate::catalog::ledger::InMemory::default(),
        Events::NONE,
    )
}

/// Why a whole snapshot could not be released.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotReleaseError {
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error(transparent)]
    Transition(#[from] crate::catalog::TransitionError),
    #[error("snapshot {id}: {source}{}", also(more))]
    Member {
        id: String,
        #[source]
        source: Box<ReleaseError>,
        /// The other members' failures, after the first.
        more: Vec<String>,
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
    #[error(
        "snapshot {id}: its manifest (written in format 1) has release marks without a host ({}), and several of its members have that domain name, so whose disk each was is unknown; nothing was released: in snapshots/{id}.json replace each by {{\"uri\": \"URI\", \"domain\": \"DOMAIN\", \"target\": \"TARGET\"}} of the member a release switched back (`virsh -c URI domblklist DOMAIN` shows which is on its image), then run release again",
        marks.join(", ")
    )]
    UnresolvedMarks { id: String, marks: Vec<String> },
}

/// Further failures appended to the first one's line.
fn also(more: &[String]) -> String {
    more.iter().map(|m| format!("; also: {m}")).collect()
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
            SnapshotReleaseError::Transition(e) => e.exit_code(),
            SnapshotReleaseError::Member { source, .. } => source.exit_code(),
            SnapshotReleaseError::NoRoom { .. } => ExitCode::Precondition,
            SnapshotReleaseError::UnresolvedMarks { .. } => ExitCode::Malformed,
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
    if let Err(short) = crate::room::check(&local) {
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
/// run left behind (its members may be gone: see [`crate::vanished`]). Returns their IDs.
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
            &disk_xml(
                "/i/vda.ovl",
                "<backingStore type='file'><format type='qcow2'/><source file='/i/vda.qcow2'/></backingStore>",
            ),
        );
        // The job is gone at once, as one that failed (e.g. out of room) or was cancelled.
        host.fail_on("job_lost", "db");
        let d = record(Path::new("/i/vda.qcow2"), Path::new("/i/vda.ovl"));
        let e = release_one(&host, "db", &d).expect_err("still on its overlay");
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

    use crate::hypervisor::fake::one_disk as disk_xml;

    fn qcow2(path: &Path, backing: Option<&Path>) {
        let mut c = std::process::Command::new("qemu-img");
        c.args(["create", "-q", "-f", "qcow2"]);
        if let Some(b) = backing {
            c.args(["-F", "qcow2", "-b"]).arg(b);
        }
        assert!(c.arg(path).arg("1M").status().expect("qemu-img").success());
    }

    fn record(image: &Path, overlay: &Path) -> DiskRecord {
        DiskRecord {
            target: "vda".into(),
            image: image.to_string_lossy().into(),
            overlay: overlay.to_string_lossy().into(),
            format: "qcow2".into(),
            virtual_size: 1 << 20,
        }
    }

    #[test]
    fn an_overlay_found_switched_back_goes_only_if_a_release_switched_it_or_it_is_empty() {
        let t = tempfile::tempdir().expect("tempdir");
        let (image, overlay) = (t.path().join("vda.qcow2"), t.path().join("vda.ovl"));
        qcow2(&image, None);
        let d = record(&image, &overlay);
        let host = FakeHost::new("qemu:///system");
        host.add("db", &disk_xml(&d.image, ""));
        let release = |ledger: &crate::catalog::ledger::InMemory| {
            release_member(
                &host,
                "db",
                std::slice::from_ref(&d),
                &Options::default(),
                ledger,
                Events::NONE,
            )
        };
        // Pre-created and never used: no data, it goes.
        qcow2(&overlay, Some(&image));
        release(&Default::default()).expect("empty overlay removed");
        assert!(!overlay.exists());

        // Written to, but nothing says a release switched the disk back (the VM recreated
        // from its old definition): the overlay may hold the only copy of that data.
        qcow2(&overlay, Some(&image));
        let st = std::process::Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write 0 64k"])
            .arg(&overlay)
            .output()
            .expect("qemu-io");
        assert!(st.status.success(), "{st:?}");
        let e = release(&Default::default()).expect_err("kept");
        assert!(
            matches!(e, ReleaseError::NotSwitchedByRelease { .. }),
            "{e}"
        );
        assert!(
            e.to_string().contains("no release switched it") && e.to_string().contains("is kept"),
            "{e}"
        );
        assert_eq!(e.exit_code(), ExitCode::ReleaseIncomplete);
        assert!(overlay.exists());

        // A release started its commit (and died after the pivot): it goes.
        let ledger = crate::catalog::ledger::InMemory::default();
        let db = MemberId::new(host.uri(), "db");
        ledger.mark(&db, &["vda"], Mark::Started).expect("mark");
        release(&ledger).expect("ours");
        assert!(!overlay.exists());
    }

    #[test]
    fn an_overlay_some_process_holds_open_is_kept() {
        let t = tempfile::tempdir().expect("tempdir");
        let (image, overlay) = (t.path().join("vda.qcow2"), t.path().join("vda.ovl"));
        qcow2(&image, None);
        qcow2(&overlay, Some(&image));
        // A QEMU with its vCPUs stopped holds the overlay's write lock, as a VM whose
        // snapshot call libvirt has not yet recorded does.
        let mut qemu = std::process::Command::new("qemu-system-x86_64")
            .args([
                "-machine",
                "pc",
                "-accel",
                "tcg",
                "-display",
                "none",
                "-nodefaults",
                "-S",
            ])
            .arg("-drive")
            .arg(format!("file={},format=qcow2,if=virtio", overlay.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64");
        let d = record(&image, &overlay);
        let host = FakeHost::new("qemu:///system");
        host.add("db", &disk_xml(&d.image, ""));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !held_open(&d.overlay) {
            if let Ok(Some(st)) = qemu.try_wait() {
                let mut err = String::new();
                let _ =
                    std::io::Read::read_to_string(qemu.stderr.as_mut().expect("stderr"), &mut err);
                panic!("qemu exited ({st}): {err}");
            }
            assert!(Instant::now() < deadline, "qemu never locked the overlay");
            std::thread::sleep(Duration::from_millis(50));
        }
        let e = remove_unused(
            &host,
            "db",
            std::slice::from_ref(&d),
            &crate::events::NoReport,
        );
        let _ = qemu.kill();
        let _ = qemu.wait();
        let e = e.expect_err("held open");
        assert!(matches!(e, ReleaseError::HeldOpen { .. }), "{e}");
        assert!(overlay.exists());
        remove_unused(
            &host,
            "db",
            std::slice::from_ref(&d),
            &crate::events::NoReport,
        )
        .expect("free now");
        assert!(!overlay.exists());
    }

    #[test]
    fn no_commit_is_started_on_a_foreign_job_a_changed_chain_or_a_saved_vm() {
        let d = record(Path::new("/i/vda.qcow2"), Path::new("/i/vda.ovl"));
        let run = |xml: &str, state: DomState, saved: bool| {
            let host = FakeHost::new("qemu:///system");
            host.add("db", xml);
            host.set_state("db", state);
            if saved {
                host.fail_on("managed_save", "db");
            }
            let e = release_one(&host, "db", &d).expect_err("refused");
            let calls = host.calls();
            assert!(!calls.iter().any(|c| c.starts_with("commit")), "{calls:?}");
            assert!(!calls.iter().any(|c| c.starts_with("pivot")), "{calls:?}");
            assert_eq!(e.exit_code(), ExitCode::ReleaseIncomplete, "{e}");
            e
        };
        let copy = disk_xml(&d.overlay, "<mirror type='file' job='copy'/>");
        let e = run(&copy, DomState::Running, false);
        assert!(matches!(e, ReleaseError::ForeignJob { .. }), "{e}");
        assert!(e.to_string().contains("(copy)"), "{e}");

        let other_base = disk_xml(
            &d.overlay,
            "<backingStore type='file'><format type='qcow2'/><source file='/i/other.qcow2'/></backingStore>",
        );
        let e = run(&other_base, DomState::Running, false);
        assert!(matches!(e, ReleaseError::BackingChanged { .. }), "{e}");
        assert!(e.to_string().contains("/i/other.qcow2"), "{e}");

        let e = run(&disk_xml(&d.overlay, ""), DomState::ShutOff, true);
        assert!(matches!(e, ReleaseError::ManagedSave { .. }), "{e}");

        let e = run(&disk_xml(&d.overlay, ""), DomState::PausedOther, false);
        assert!(e.to_string().contains("virsh resume db"), "{e}");
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
        host.add("db", &disk_xml(&image.to_string_lossy(), ""));
        let d = record(&image, &here);
        let notes = crate::events::Collected::default();
        remove_unused(&host, "db", std::slice::from_ref(&d), &notes).expect("released");
        assert_eq!(std::fs::read(&here).expect("still here"), b"local data");
        // No pool there to remove it through: the operator is told it stays.
        let stays = notes.lines();
        assert_eq!(stays.len(), 1, "{stays:?}");
        assert!(
            stays[0].starts_with(&format!(
                "db: overlay {} stays on qemu+ssh://far/system: no active libvirt storage pool",
                d.overlay
            )),
            "{}",
            stays[0]
        );

        // The same on this host: the unused overlay goes.
        let local = FakeHost::new("qemu:///system");
        local.add("db", &host.xml("db").expect("xml"));
        remove_unused(
            &local,
            "db",
            std::slice::from_ref(&d),
            &crate::events::NoReport,
        )
        .expect("released");
        assert!(!here.exists());
    }
}
