//! One verification run ([`run`]): refuse what cannot be verified, start a sandbox per member
//! under the free-space watch, check every member and the cross-member rules, tear everything
//! down and give the report.
//!
//! Invariants: every refusal that is the operator's to fix (snapshot not held, memory, ack log,
//! copies, free space) happens before any sandbox starts; all sandboxes are removed when
//! [`run`] returns, whatever happened (they are dropped before it does); checks cut short by
//! the free-space watch make the run could-not-run, never a verdict.

use crate::chain;
use crate::cross::{self, Conn};
use crate::inputs::{self, InputError};
use crate::isolate::{self, IsolateError};
use crate::manifest::{ManifestView, MemberView};
use crate::profile::{Kind, MemberProfile, Profile};
use crate::report::{Check, MemberReport, Report};
use crate::sandbox::{Sandbox, SandboxError};
use crate::space::{self, SpaceError, Watch};
use crate::{cassandra, pg, stale};
use cgsnap_testbeds::workload::{Ack, WorkloadError};
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why verify could not run: no verdict was reached (exit 12 in the command line).
#[derive(Debug, thiserror::Error)]
pub enum CouldNotRun {
    /// The snapshot's images are not frozen any more and no copies were given.
    #[error(
        "cannot verify: snapshot {id} is {state}: verify a held (taken) snapshot, or a released one from copies with --images DIR"
    )]
    NotHeld {
        /// The snapshot.
        id: String,
        /// Its state.
        state: String,
    },
    /// A backup cut verified without its exports.
    #[error(
        "cannot verify: {0} is a backup cut, whose images were never frozen (the guests write on): verify its export with --images DIR (`cgsnap backup export {0} --to DIR`)"
    )]
    BackupNeedsImages(String),
    /// The manifest records no consistency point.
    #[error("cannot verify: snapshot {0} has no consistency point")]
    NoConsistencyPoint(String),
    /// The sandboxes would not fit in memory (or memory could not be judged).
    #[error("cannot verify: {0}")]
    Memory(#[from] IsolateError),
    /// The ack log could not be read.
    #[error("cannot verify: {0}")]
    AckLog(#[from] WorkloadError),
    /// A copy or the ack log does not fit the snapshot.
    #[error("cannot verify: {0}")]
    Input(#[from] InputError),
    /// Too little free space for the sandboxes.
    #[error("cannot verify: {0}")]
    Space(#[from] SpaceError),
    /// The sandboxes were stopped because free space fell (or could not be read).
    #[error("cannot verify: {0}")]
    Stopped(Arc<SpaceError>),
    /// No thread to watch free space.
    #[error(
        "cannot verify: no thread to watch the free space of sandbox directory {}: {source}",
        dir.display()
    )]
    NoWatch {
        /// The sandbox directory.
        dir: PathBuf,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// The profile does not say how to check a member.
    #[error("cannot verify: profile has no [[member]] for domain {0}: add one")]
    NoProfileMember(String),
    /// No loopback port from `--base-port` up could be bound for a sandbox's forward.
    #[error(
        "cannot verify: no free loopback port from {0} up for the sandbox forwards: pass another --base-port"
    )]
    NoFreePort(u16),
    /// A sandbox could not be made or started.
    #[error("cannot verify: {0}")]
    Sandbox(#[from] SandboxError),
}

/// What a member's checks need besides its profile and sandbox.
pub struct MemberCtx<'a> {
    /// The member's domain.
    pub domain: &'a str,
    /// The member's domain XML as saved in the manifest.
    pub domain_xml: &'a str,
    /// The snapshot's consistency point.
    pub cp: DateTime<Utc>,
    /// Every acknowledgement of the ack log (empty without one).
    pub acks: &'a [Ack],
    /// Largest acceptable data loss.
    pub rpo_seconds: f64,
    /// Longest wait for the member's database to be ready.
    pub ready_timeout: Duration,
    /// PostgreSQL: limit of each check query.
    pub statement_timeout: Duration,
}

/// One verification: the snapshot, how to check it, where to run the sandboxes.
pub struct Request<'a> {
    /// The snapshot.
    pub manifest: &'a ManifestView,
    /// What each member runs and what must hold.
    pub profile: &'a Profile,
    /// Read images from here (by file name) instead of the frozen images, e.g. a restored backup.
    pub images_dir: Option<&'a Path>,
    /// Directory the sandbox directories are made in.
    pub sandbox_root: PathBuf,
    /// First loopback port for the sandboxes' forwards (one per member).
    pub base_port: u16,
    /// The libvirt daemon every sandbox runs on; `None`: each member's own daemon. It must be
    /// on this host: sandbox overlays are created here.
    pub sandbox_uri: Option<&'a str>,
    /// Free bytes the sandbox root's filesystem must keep (see [`space`]).
    pub min_free: u64,
}

/// A started sandbox with the member and profile entry it is of.
type Started<'a> = (&'a MemberView, &'a MemberProfile, Sandbox);

/// Restore every member, run its checks and the cross-member checks, tear everything down.
pub fn run(req: &Request) -> Result<Report, CouldNotRun> {
    let started_at = Utc::now();
    let Checked {
        cp,
        acks,
        chain_notes,
    } = preflight(req)?;
    // What killed runs left holds room the floor must not be measured without.
    let mut notes = stale::sweep(&req.sandbox_root);
    notes.extend(chain_notes);
    // Declared before the sandboxes: it watches as long as any of them exists.
    let watch = start_watch(req)?;
    let sandboxes = start_sandboxes(req, &watch)?;
    let (members, mut clients) = check_members(req, cp, &acks, &sandboxes, &watch);
    let (cross_checks, note) = cross::checks(req.profile, &members, &mut clients, &watch);
    notes.extend(note);
    drop(clients);
    drop(sandboxes);
    // Checks cut short by stopped sandboxes prove nothing either way.
    if let Some(why) = watch.tripped() {
        return Err(CouldNotRun::Stopped(why));
    }
    drop(watch);
    let m = req.manifest;
    let mut report = Report {
        format_version: 1,
        snapshot_id: m.id.clone(),
        group: m.group.clone(),
        negative_control: m.negative_control_line(),
        consistency_point: Some(cp),
        // An older manifest of a control may still record its span as a window: it is none.
        freeze_window_ms: m.freeze_window_ms.filter(|_| !m.is_negative_control()),
        rpo_seconds: req.profile.rpo_seconds,
        verdict: String::new(),
        started_at,
        finished_at: Utc::now(),
        members,
        cross_checks,
        notes,
    };
    report.verdict = if report.passed() { "pass" } else { "fail" }.into();
    Ok(report)
}

/// What preflight found: the consistency point, the acknowledgements, the chains' notes.
struct Checked {
    cp: DateTime<Utc>,
    acks: Vec<Ack>,
    chain_notes: Vec<String>,
}

/// Everything refused before a sandbox starts: a snapshot that is not held (nor copied), a
/// backup cut without its exports, no consistency point, too little memory, an unreadable ack
/// log or one with nothing to check, a chain of exports with a missing or foreign link.
fn preflight(req: &Request) -> Result<Checked, CouldNotRun> {
    let m = req.manifest;
    if m.backup.is_some() && req.images_dir.is_none() {
        return Err(CouldNotRun::BackupNeedsImages(m.id.clone()));
    }
    // Frozen images are only frozen while the snapshot is held; copies (--images) outlive it.
    if m.state != "taken" && !(req.images_dir.is_some() && m.state == "released") {
        return Err(CouldNotRun::NotHeld {
            id: m.id.clone(),
            state: m.state.clone(),
        });
    }
    let cp = m
        .consistency_point
        .ok_or_else(|| CouldNotRun::NoConsistencyPoint(m.id.clone()))?;
    // The sandboxes (on this host: the caller refuses members on others) must leave the
    // running originals room.
    let need = m
        .members
        .iter()
        .map(|x| isolate::memory_kib(&x.domain_xml))
        .sum::<Result<u64, _>>()?;
    isolate::check_memory(need, isolate::available_kib()?)?;
    // A log that cannot be read or holds nothing to check is the operator's to fix, not a
    // finding about the snapshot.
    let acks = match &req.profile.ack_log {
        Some(p) => cgsnap_testbeds::workload::read_acks(p)?,
        None => Vec::new(),
    };
    let domains: Vec<&str> = m.members.iter().map(|x| x.domain.as_str()).collect();
    inputs::acks_cover(req.profile, &domains, &acks, cp)?;
    Ok(Checked {
        cp,
        acks,
        chain_notes: chains(req)?,
    })
}

/// Check the chain of exports each copy under `--images` is restored from; one note per
/// distinct chain, naming it.
fn chains(req: &Request) -> Result<Vec<String>, CouldNotRun> {
    let m = req.manifest;
    let Some(dir) = req.images_dir else {
        return Ok(Vec::new());
    };
    let all: Vec<&str> = m
        .members
        .iter()
        .flat_map(|x| x.disks.iter().map(|d| d.image.as_str()))
        .collect();
    let mut notes = Vec::new();
    for d in m.members.iter().flat_map(|x| &x.disks) {
        let copy = inputs::image_for(Some(dir), &all, d)?;
        let links = chain::check(&copy, &d.image, &m.group, &m.id, m.backup.is_some())?;
        if links.is_empty() {
            continue;
        }
        let note = format!(
            "restored from the chain of exports {}",
            chain::describe(&links)
        );
        if !notes.contains(&note) {
            notes.push(note);
        }
    }
    Ok(notes)
}

/// Judge the free-space floor, then watch it while the sandboxes run.
fn start_watch(req: &Request) -> Result<Watch, CouldNotRun> {
    let root = &req.sandbox_root;
    space::judge(
        root,
        space::free_bytes(root),
        req.min_free,
        space::Phase::Before,
    )?;
    Watch::start(root.clone(), req.min_free, space::POLL, |d| {
        space::free_bytes(d)
    })
    .map_err(|source| CouldNotRun::NoWatch {
        dir: root.clone(),
        source,
    })
}

/// The first port from `start` up that 127.0.0.1 can bind now: an ephemeral connection or
/// another service on a fixed port must not fail the whole verification (QEMU refuses a
/// forward whose port is taken). Tried over at most 100 ports.
fn free_port_from(start: u16) -> Option<u16> {
    (start..=start.saturating_add(99))
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
}

/// Start one sandbox per member (all boot at once), each guarded by the watch.
fn start_sandboxes<'a>(req: &'a Request, watch: &Watch) -> Result<Vec<Started<'a>>, CouldNotRun> {
    let m = req.manifest;
    let all: Vec<&str> = m
        .members
        .iter()
        .flat_map(|x| x.disks.iter().map(|d| d.image.as_str()))
        .collect();
    let mut sandboxes = Vec::new();
    let mut next_port = req.base_port;
    for mem in &m.members {
        if let Some(why) = watch.tripped() {
            return Err(CouldNotRun::Stopped(why));
        }
        let prof = req
            .profile
            .members
            .iter()
            .find(|p| p.domain == mem.domain)
            .ok_or_else(|| CouldNotRun::NoProfileMember(mem.domain.clone()))?;
        let images = mem
            .disks
            .iter()
            .map(|d| inputs::image_for(req.images_dir, &all, d).map(|p| (d.target.clone(), p)))
            .collect::<Result<Vec<_>, _>>()?;
        let name = stale::sandbox_name(&mem.domain, std::process::id());
        let port = free_port_from(next_port).ok_or(CouldNotRun::NoFreePort(req.base_port))?;
        next_port = port.saturating_add(1);
        let sb = Sandbox::start(
            req.sandbox_uri.unwrap_or(&mem.uri),
            &mem.domain_xml,
            &name,
            &images,
            &req.sandbox_root.join(&name),
            (port, prof.port),
        )?;
        watch.guard(sb.stopper());
        sandboxes.push((mem, prof, sb));
    }
    Ok(sandboxes)
}

/// Check every member in turn (until the watch trips); returns the member reports and their
/// connections for the cross-member checks.
fn check_members(
    req: &Request,
    cp: DateTime<Utc>,
    acks: &[Ack],
    sandboxes: &[Started],
    watch: &Watch,
) -> (Vec<MemberReport>, Vec<Option<Conn>>) {
    let mut members = Vec::new();
    let mut clients = Vec::new();
    for (mem, prof, sb) in sandboxes {
        if watch.tripped().is_some() {
            break;
        }
        let ctx = MemberCtx {
            domain: &mem.domain,
            domain_xml: &mem.domain_xml,
            cp,
            acks,
            rpo_seconds: req.profile.rpo_seconds,
            ready_timeout: Duration::from_secs(req.profile.ready_timeout_seconds),
            statement_timeout: Duration::from_secs(req.profile.statement_timeout_seconds),
        };
        let (r, conn) = check_member(&ctx, mem, prof, sb);
        members.push(r);
        clients.push(conn);
    }
    (members, clients)
}

/// The checks of one member by its kind, with where it ran and its stand-ins.
fn check_member(
    ctx: &MemberCtx,
    mem: &MemberView,
    prof: &MemberProfile,
    sb: &Sandbox,
) -> (MemberReport, Option<Conn>) {
    let (mut r, conn) = match prof.kind {
        Kind::Postgres => {
            let (r, c) = pg::check_member(ctx, prof, sb);
            (r, c.map(|c| Conn::Pg(Box::new(c))))
        }
        Kind::Cassandra => {
            let (r, c) = cassandra::check_member(ctx, prof, sb);
            (r, c.map(|c| Conn::Cql(Box::new(c))))
        }
    };
    r.host = mem.uri.clone();
    r.sandbox_host = sb.uri.clone();
    if !sb.stand_ins.is_empty() {
        r.checks.push(Check {
            name: "disks outside the snapshot get blank stand-ins".into(),
            ok: true,
            evidence: sb.stand_ins.join("; "),
        });
    }
    (r, conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_forward_port_is_skipped() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let busy = held.local_addr().expect("addr").port();
        let got = free_port_from(busy).expect("a free port");
        assert!(got > busy, "{got} must skip the busy {busy}");
        drop(held);
        assert_eq!(free_port_from(busy), Some(busy), "free again");
    }
}
