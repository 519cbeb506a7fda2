//! cgsnap-verify: restore a group snapshot into a sandbox and prove the databases recovered.
//!
//! - [`profile`]: what each member runs and what must hold (TOML, strict);
//! - [`sandbox`]: throwaway overlays + renamed transient domains, loopback-only networking;
//!   [`stand_in`]: blank disks in place of writable disks the snapshot left out; [`isolate`]:
//!   what a sandbox must not share with the running original or the host; [`space`]: the
//!   free-space floor of the sandbox directory's filesystem; [`stale`]: sandbox directories
//!   left by a killed run;
//! - [`pg`]: PostgreSQL checks; [`cassandra`]: Cassandra checks, with [`replay`] (commit log
//!   replay from the log) and [`bound`] (loss bound by sync mode); [`beacon`]: beacon checks
//!   of every kind; [`report`]: JSON, HTML and Prometheus output.
//!
//! Invariants: frozen images are never written (every sandbox writes to its own overlays), nor
//! is any live disk (writable disks outside the snapshot get blank stand-ins);
//! all sandboxes are removed when [`run`] returns, whatever happened; the verdict is `pass`
//! only if every check of every member and every cross-member check passed.
//!
//! Sandboxes never fill the filesystem they share with production VMs: none starts below the
//! free-space floor (`min_free`), and if free space falls below it while they run they are all
//! stopped and verify could not run (no verdict). Sandbox directories of runs that were killed
//! are removed before the floor is measured.
//!
//! The report never implies a check that did not run: when the cross-member beacon order
//! could not be checked for some members (no beacon), a note says so ([`beacon::order`]).
//!
//! Nothing passes for want of evidence: a member whose profile asks for the lost-commit check
//! must have acknowledgements of its `ack_db`/`ack_kind` before the consistency point in the
//! ack log, else verify could not run (checked before any sandbox starts: the log does not
//! cover the snapshot, or the profile names the wrong database or kind). Copies given with
//! `--images` are found by their original absolute path under DIR, or by file name only when
//! that name is unique among the snapshot's disks, and must have the recorded virtual size.

pub mod beacon;
pub mod bound;
pub mod cassandra;
pub mod isolate;
pub mod pg;
pub mod profile;
pub mod replay;
pub mod report;
pub mod sandbox;
pub mod space;
pub mod stale;
pub mod stand_in;

use cgsnap_testbeds::cql::Cql;
use cgsnap_testbeds::workload::Ack;
use chrono::{DateTime, Utc};
use profile::{Kind, Profile};
use report::{Check, Report};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The parts of a cgsnap manifest verification needs (the manifest is the catalog's format).
#[derive(Debug, Clone, Deserialize)]
pub struct ManifestView {
    pub id: String,
    pub group: String,
    pub state: String,
    pub consistency_point: Option<DateTime<Utc>>,
    pub freeze_window_ms: Option<f64>,
    pub members: Vec<MemberView>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MemberView {
    pub domain: String,
    pub uri: String,
    pub domain_xml: String,
    pub disks: Vec<DiskView>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DiskView {
    pub target: String,
    pub image: String,
    /// Virtual size of the image in bytes, as recorded at snapshot time.
    #[serde(default)]
    pub virtual_size: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot verify: {0}")]
pub struct CouldNotRun(pub String);

/// What a member's checks need besides its profile and sandbox.
pub struct MemberCtx<'a> {
    pub domain: &'a str,
    /// The member's domain XML as saved in the manifest.
    pub domain_xml: &'a str,
    pub cp: DateTime<Utc>,
    pub acks: &'a [Ack],
    pub rpo_seconds: f64,
    pub ready_timeout: Duration,
    /// PostgreSQL: limit of each check query.
    pub statement_timeout: Duration,
}

/// A connection to a restored member, for the cross-member checks.
pub enum Conn {
    // Boxed: both are hundreds of bytes, and of very different sizes.
    Pg(Box<pg::Session>),
    Cql(Box<Cql>),
}

impl Conn {
    /// One integer from a one-row query (SQL or CQL, by the member's kind).
    pub fn scalar(&mut self, query: &str) -> Result<i64, String> {
        match self {
            Conn::Pg(c) => pg::scalar(c, query),
            Conn::Cql(c) => c.scalar(query),
        }
    }
}

pub struct Request<'a> {
    pub manifest: &'a ManifestView,
    pub profile: &'a Profile,
    /// Read images from here (by file name) instead of the frozen images, e.g. a restored backup.
    pub images_dir: Option<&'a Path>,
    pub sandbox_root: PathBuf,
    /// First loopback port for the sandboxes' forwards (one per member).
    pub base_port: u16,
    /// The libvirt daemon every sandbox runs on; `None`: each member's own daemon. It must be
    /// on this host: sandbox overlays are created here.
    pub sandbox_uri: Option<&'a str>,
    /// Free bytes the sandbox root's filesystem must keep (see [`space`]).
    pub min_free: u64,
}

/// Where the copy of `image` is under `dir`: a backup extracted with its paths (`borg
/// extract`, `restic restore`) has it at DIR/<original absolute path>; a flat copy at
/// DIR/<file name>, which is used only if no other image of the snapshot (`all`) has that file
/// name (disks of different domains are often all called `vda.qcow2`).
pub fn image_in(
    dir: &Path,
    image: &str,
    all: &[&str],
    exists: impl Fn(&Path) -> bool,
) -> Result<PathBuf, String> {
    let full = dir.join(image.trim_start_matches('/'));
    if exists(&full) {
        return Ok(full);
    }
    let name = Path::new(image)
        .file_name()
        .ok_or_else(|| format!("image path {image} has no file name"))?;
    let flat = dir.join(name);
    if !exists(&flat) {
        return Err(format!(
            "{image} not found under --images {} (by full path or file name)",
            dir.display()
        ));
    }
    if let Some(other) = all
        .iter()
        .find(|o| **o != image && Path::new(o).file_name() == Some(name))
    {
        return Err(format!(
            "--images {}: disks {image} and {other} share the file name {}, so {} could be either: \
             lay the copies out by their original paths ({})",
            dir.display(),
            name.to_string_lossy(),
            flat.display(),
            full.display()
        ));
    }
    Ok(flat)
}

/// A copy must be the image it stands for: its virtual size is the one recorded at snapshot
/// time (`None`: not recorded or not readable here; the overlay creation reports the latter).
pub fn check_size(
    copy: &Path,
    image: &str,
    recorded: Option<u64>,
    found: Option<u64>,
) -> Result<(), String> {
    match (recorded, found) {
        (Some(r), Some(f)) if r != f => Err(format!(
            "copy {} of {image} has virtual size {f} bytes, the snapshot recorded {r}: give the copy of this snapshot's image",
            copy.display()
        )),
        _ => Ok(()),
    }
}

fn image_for(req: &Request, disk: &DiskView) -> Result<PathBuf, CouldNotRun> {
    let Some(dir) = req.images_dir else {
        return Ok(PathBuf::from(&disk.image));
    };
    let all: Vec<&str> = req
        .manifest
        .members
        .iter()
        .flat_map(|m| m.disks.iter().map(|d| d.image.as_str()))
        .collect();
    let copy = image_in(dir, &disk.image, &all, Path::exists).map_err(CouldNotRun)?;
    let found = stand_in::virtual_size(&copy.to_string_lossy());
    check_size(&copy, &disk.image, disk.virtual_size, found).map_err(CouldNotRun)?;
    Ok(copy)
}

/// Acknowledgements of `db`/`kind` before the consistency point.
pub fn acked_before<'a>(
    acks: &'a [Ack],
    db: &'a str,
    kind: &'a str,
    cp: DateTime<Utc>,
) -> impl Iterator<Item = &'a Ack> + 'a {
    acks.iter()
        .filter(move |a| a.db == db && a.kind == kind && a.at < cp)
}

/// Every member of the snapshot (`domains`) with a lost-commit check has something to check:
/// with no acknowledgement before the cut the check would pass on nothing.
pub fn acks_cover(
    profile: &Profile,
    domains: &[&str],
    acks: &[Ack],
    cp: DateTime<Utc>,
) -> Result<(), String> {
    for m in profile
        .members
        .iter()
        .filter(|m| domains.contains(&m.domain.as_str()))
    {
        let (Some(db), Some(kind)) = (&m.ack_db, &m.ack_kind) else {
            continue;
        };
        if acked_before(acks, db, kind, cp).next().is_none() {
            let log = profile
                .ack_log
                .as_deref()
                .map_or_else(|| "the ack log".into(), |p| p.display().to_string());
            return Err(format!(
                "member {}: {log} has no acknowledged {kind} of {db} before the consistency point {cp}: \
                 run the workload while snapshotting, or fix ack_db/ack_kind (or remove them to skip the lost-commit check)",
                m.domain
            ));
        }
    }
    Ok(())
}

/// Restore every member, run its checks and the cross-member checks, tear everything down.
pub fn run(req: &Request) -> Result<Report, CouldNotRun> {
    let started_at = Utc::now();
    let m = req.manifest;
    // Frozen images are only frozen while the snapshot is held; copies (--images) outlive it.
    if m.state != "taken" && !(req.images_dir.is_some() && m.state == "released") {
        return Err(CouldNotRun(format!(
            "snapshot {} is {}: verify a held (taken) snapshot, or a released one from copies with --images DIR",
            m.id, m.state
        )));
    }
    let cp = m
        .consistency_point
        .ok_or_else(|| CouldNotRun(format!("snapshot {} has no consistency point", m.id)))?;
    // The sandboxes (on this host: the caller refuses members on others) must leave the
    // running originals room.
    let need = m
        .members
        .iter()
        .map(|x| isolate::memory_kib(&x.domain_xml))
        .sum::<Result<u64, String>>()
        .map_err(CouldNotRun)?;
    isolate::check_memory(need, isolate::available_kib().map_err(CouldNotRun)?)
        .map_err(CouldNotRun)?;
    // Before anything boots: a log that cannot be read or holds nothing to check is the
    // operator's to fix, not a finding about the snapshot.
    let acks = match &req.profile.ack_log {
        Some(p) => cgsnap_testbeds::workload::read_acks(p).map_err(CouldNotRun)?,
        None => Vec::new(),
    };
    let domains: Vec<&str> = m.members.iter().map(|x| x.domain.as_str()).collect();
    acks_cover(req.profile, &domains, &acks, cp).map_err(CouldNotRun)?;
    // What killed runs left holds room the floor must not be measured without.
    let mut notes = stale::sweep(&req.sandbox_root);
    let root = &req.sandbox_root;
    space::judge(
        root,
        space::free_bytes(root),
        req.min_free,
        space::Phase::Before,
    )
    .map_err(CouldNotRun)?;
    // Declared before the sandboxes: it watches as long as any of them exists.
    let watch = space::Watch::start(root.clone(), req.min_free, space::POLL, |d| {
        space::free_bytes(d)
    })
    .map_err(|e| {
        CouldNotRun(format!(
            "no thread to watch the free space of sandbox directory {}: {e}",
            root.display()
        ))
    })?;
    let mut sandboxes = Vec::new();
    for (i, mem) in m.members.iter().enumerate() {
        if let Some(why) = watch.tripped() {
            return Err(CouldNotRun(why));
        }
        let prof = req
            .profile
            .members
            .iter()
            .find(|p| p.domain == mem.domain)
            .ok_or_else(|| {
                CouldNotRun(format!(
                    "profile has no [[member]] for domain {}: add one",
                    mem.domain
                ))
            })?;
        let images = mem
            .disks
            .iter()
            .map(|d| image_for(req, d).map(|p| (d.target.clone(), p)))
            .collect::<Result<Vec<_>, _>>()?;
        let name = stale::sandbox_name(&mem.domain, std::process::id());
        let port = req.base_port + i as u16;
        let sb = sandbox::Sandbox::start(
            req.sandbox_uri.unwrap_or(&mem.uri),
            &mem.domain_xml,
            &name,
            &images,
            &req.sandbox_root.join(&name),
            (port, prof.port),
        )
        .map_err(CouldNotRun)?;
        watch.guard(sb.stopper());
        sandboxes.push((mem, prof, sb));
    }
    let ready_timeout = Duration::from_secs(req.profile.ready_timeout_seconds);
    let mut members = Vec::new();
    let mut clients = Vec::new();
    for (mem, prof, sb) in &sandboxes {
        if watch.tripped().is_some() {
            break;
        }
        let ctx = MemberCtx {
            domain: &mem.domain,
            domain_xml: &mem.domain_xml,
            cp,
            acks: &acks,
            rpo_seconds: req.profile.rpo_seconds,
            ready_timeout,
            statement_timeout: Duration::from_secs(req.profile.statement_timeout_seconds),
        };
        let (r, conn) = match prof.kind {
            Kind::Postgres => {
                let (r, c) = pg::check_member(&ctx, prof, sb);
                (r, c.map(|c| Conn::Pg(Box::new(c))))
            }
            Kind::Cassandra => {
                let (r, c) = cassandra::check_member(&ctx, prof, sb);
                (r, c.map(|c| Conn::Cql(Box::new(c))))
            }
        };
        let mut r = r;
        r.host = mem.uri.clone();
        r.sandbox_host = sb.uri.clone();
        if !sb.stand_ins.is_empty() {
            r.checks.push(Check {
                name: "disks outside the snapshot get blank stand-ins".into(),
                ok: true,
                evidence: sb.stand_ins.join("; "),
            });
        }
        members.push(r);
        clients.push(conn);
    }
    // Profile order: the order beacons are written in.
    let beacons: Vec<(&str, Option<i64>)> = req
        .profile
        .members
        .iter()
        .filter_map(|p| members.iter().find(|m| m.domain == p.domain))
        .map(|m| (m.domain.as_str(), m.newest_beacon_seq))
        .collect();
    let (mut cross_checks, note) = beacon::order(&beacons);
    notes.extend(note);
    for x in req
        .profile
        .cross
        .iter()
        .filter(|_| watch.tripped().is_none())
    {
        let idx = |d: &str| members.iter().position(|m| m.domain == d);
        let val = |d: &str, sql: &str, clients: &mut Vec<Option<Conn>>| -> Result<i64, String> {
            let i = idx(d).ok_or_else(|| format!("no member {d}"))?;
            clients[i]
                .as_mut()
                .ok_or_else(|| format!("{d} did not come up"))?
                .scalar(sql)
        };
        let res = val(&x.ahead_domain, &x.ahead_sql, &mut clients)
            .and_then(|a| val(&x.behind_domain, &x.behind_sql, &mut clients).map(|b| (a, b)));
        cross_checks.push(match res {
            Ok((a, b)) => Check {
                name: x.name.clone(),
                ok: b <= a,
                evidence: format!("{}: {b}, {}: {a}", x.behind_domain, x.ahead_domain),
            },
            Err(e) => Check {
                name: x.name.clone(),
                ok: false,
                evidence: e,
            },
        });
    }
    drop(clients);
    drop(sandboxes);
    // Checks cut short by stopped sandboxes prove nothing either way.
    if let Some(why) = watch.tripped() {
        return Err(CouldNotRun(why));
    }
    drop(watch);
    let mut report = Report {
        format_version: 1,
        snapshot_id: m.id.clone(),
        group: m.group.clone(),
        consistency_point: Some(cp),
        freeze_window_ms: m.freeze_window_ms,
        rpo_seconds: req.profile.rpo_seconds,
        verdict: String::new(),
        started_at,
        finished_at: Utc::now(),
        members,
        cross_checks,
        notes,
    };
    report.verdict = if report.passed() {
        "pass".into()
    } else {
        "fail".into()
    };
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn copies_are_found_by_full_path_or_by_a_unique_file_name() {
        let dir = Path::new("/restore");
        let all = ["/img/a/vda.qcow2", "/img/b/vda.qcow2", "/img/b/vdb.qcow2"];
        let have = |files: &'static [&'static str]| {
            move |p: &Path| files.iter().any(|f| p == Path::new(f))
        };
        // Full paths: used, whatever the names.
        let full = have(&["/restore/img/a/vda.qcow2", "/restore/vda.qcow2"]);
        assert_eq!(
            image_in(dir, all[0], &all, full),
            Ok(PathBuf::from("/restore/img/a/vda.qcow2"))
        );
        // Flat with a unique name: used.
        assert_eq!(
            image_in(dir, all[2], &all, have(&["/restore/vdb.qcow2"])),
            Ok(PathBuf::from("/restore/vdb.qcow2"))
        );
        // Flat with a name two disks share: refused, naming both and the layout.
        let e = image_in(dir, all[1], &all, have(&["/restore/vda.qcow2"])).unwrap_err();
        assert!(
            e.contains("disks /img/b/vda.qcow2 and /img/a/vda.qcow2 share the file name vda.qcow2")
                && e.contains("/restore/img/b/vda.qcow2"),
            "{e}"
        );
        let e = image_in(dir, all[2], &all, have(&[])).unwrap_err();
        assert!(
            e.contains("/img/b/vdb.qcow2 not found under --images /restore"),
            "{e}"
        );
    }

    #[test]
    fn a_copy_of_another_size_is_refused() {
        let p = Path::new("/restore/vda.qcow2");
        assert!(check_size(p, "/img/vda.qcow2", Some(1 << 30), Some(1 << 30)).is_ok());
        assert!(check_size(p, "/img/vda.qcow2", None, Some(1 << 30)).is_ok());
        assert!(check_size(p, "/img/vda.qcow2", Some(1 << 30), None).is_ok());
        let e = check_size(p, "/img/vda.qcow2", Some(1 << 30), Some(2 << 30)).unwrap_err();
        assert!(
            e.contains("copy /restore/vda.qcow2 of /img/vda.qcow2 has virtual size 2147483648"),
            "{e}"
        );
    }

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0)
            .single()
            .expect("time")
    }

    fn ack(db: &str, kind: &str, s: i64) -> Ack {
        Ack {
            db: db.into(),
            kind: kind.into(),
            id: s,
            at: at(s),
        }
    }

    #[test]
    fn a_lost_commit_check_with_nothing_to_check_cannot_run() {
        let text = cgsnap_testbeds::pair::profile_text(Path::new("/s"));
        let p = profile::parse(Path::new("p.toml"), &text).expect("profile");
        let cp = at(10);
        let acks = vec![ack("orders", "order", 1), ack("payments", "payment", 2)];
        let both = ["cgsnap-orders", "cgsnap-payments"];
        assert_eq!(acks_cover(&p, &both, &acks, cp), Ok(()));
        // Payments acknowledged only after the cut: nothing to check for that member.
        let late = vec![ack("orders", "order", 1), ack("payments", "payment", 11)];
        let e = acks_cover(&p, &both, &late, cp).unwrap_err();
        assert!(
            e.contains("member cgsnap-payments")
                && e.contains("no acknowledged payment of payments"),
            "{e}"
        );
        assert!(acks_cover(&p, &both, &[], cp).is_err());
        // Only members of the snapshot are held to it.
        assert_eq!(acks_cover(&p, &["cgsnap-orders"], &late, cp), Ok(()));
        assert_eq!(acked_before(&acks, "orders", "order", at(1)).count(), 0);
        assert_eq!(acked_before(&acks, "orders", "order", at(2)).count(), 1);
    }
}
