//! cgsnap-verify: restore a group snapshot into a sandbox and prove the databases recovered.
//!
//! - [`profile`]: what each member runs and what must hold (TOML, strict);
//! - [`sandbox`]: throwaway overlays + renamed transient domains, loopback-only networking;
//!   [`stand_in`]: blank disks in place of writable disks the snapshot left out; [`isolate`]:
//!   what a sandbox must not share with the running original or the host;
//! - [`pg`]: PostgreSQL checks; [`cassandra`]: Cassandra checks, with [`replay`] (commit log
//!   replay from the log) and [`bound`] (loss bound by sync mode); [`beacon`]: beacon checks
//!   of every kind; [`report`]: JSON, HTML and Prometheus output.
//!
//! Invariants: frozen images are never written (every sandbox writes to its own overlays), nor
//! is any live disk (writable disks outside the snapshot get blank stand-ins);
//! all sandboxes are removed when [`run`] returns, whatever happened; the verdict is `pass`
//! only if every check of every member and every cross-member check passed.

pub mod beacon;
pub mod bound;
pub mod cassandra;
pub mod isolate;
pub mod pg;
pub mod profile;
pub mod replay;
pub mod report;
pub mod sandbox;
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
}

/// A connection to a restored member, for the cross-member checks.
pub enum Conn {
    // Boxed: both are hundreds of bytes, and of very different sizes.
    Pg(Box<postgres::Client>),
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
}

fn image_for(req: &Request, image: &str) -> Result<PathBuf, CouldNotRun> {
    match req.images_dir {
        None => Ok(PathBuf::from(image)),
        Some(d) => {
            // A backup extracted with its paths (`borg extract`, `restic restore`) has the image
            // at DIR/<original absolute path>; a flat copy has it at DIR/<file name>.
            let full = d.join(image.trim_start_matches('/'));
            let name = Path::new(image)
                .file_name()
                .ok_or_else(|| CouldNotRun(format!("image path {image} has no file name")))?;
            let flat = d.join(name);
            [full, flat]
                .into_iter()
                .find(|p| p.exists())
                .ok_or_else(|| {
                    CouldNotRun(format!(
                        "{image} not found under --images {} (by full path or file name)",
                        d.display()
                    ))
                })
        }
    }
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
    let mut sandboxes = Vec::new();
    for (i, mem) in m.members.iter().enumerate() {
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
            .map(|d| image_for(req, &d.image).map(|p| (d.target.clone(), p)))
            .collect::<Result<Vec<_>, _>>()?;
        let name = format!("{}-verify-{}", mem.domain, std::process::id());
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
        sandboxes.push((mem, prof, sb));
    }
    let acks = match &req.profile.ack_log {
        Some(p) => cgsnap_testbeds::workload::read_acks(p).map_err(CouldNotRun)?,
        None => Vec::new(),
    };
    let ready_timeout = Duration::from_secs(req.profile.ready_timeout_seconds);
    let mut members = Vec::new();
    let mut clients = Vec::new();
    for (mem, prof, sb) in &sandboxes {
        let ctx = MemberCtx {
            domain: &mem.domain,
            domain_xml: &mem.domain_xml,
            cp,
            acks: &acks,
            rpo_seconds: req.profile.rpo_seconds,
            ready_timeout,
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
    let mut cross_checks = Vec::new();
    // Beacons are written to members in profile order, each committed before the next: in a
    // consistent cut a later member never holds a newer beacon than an earlier one.
    let order: Vec<(&String, i64)> = req
        .profile
        .members
        .iter()
        .filter_map(|p| {
            members
                .iter()
                .find(|m| m.domain == p.domain)
                .and_then(|m| m.newest_beacon_seq.map(|s| (&m.domain, s)))
        })
        .collect();
    for w in order.windows(2) {
        cross_checks.push(Check {
            name: format!("beacon order {} ≥ {}", w[0].0, w[1].0),
            ok: w[0].1 >= w[1].1,
            evidence: format!(
                "{} has beacon {}, {} has beacon {}",
                w[0].0, w[0].1, w[1].0, w[1].1
            ),
        });
    }
    for x in &req.profile.cross {
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
    };
    report.verdict = if report.passed() {
        "pass".into()
    } else {
        "fail".into()
    };
    Ok(report)
}
