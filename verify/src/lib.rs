//! cgsnap-verify: restore a group snapshot into a sandbox and prove the databases recovered.
//!
//! - [`profile`]: what each member runs and what must hold (TOML, strict);
//! - [`sandbox`]: throwaway overlays + renamed transient domains, loopback-only networking;
//! - [`pg`]: PostgreSQL checks; [`report`]: JSON, HTML and Prometheus output.
//!
//! Invariants: frozen images are never written (every sandbox writes to its own overlays);
//! all sandboxes are removed when [`run`] returns, whatever happened; the verdict is `pass`
//! only if every check of every member and every cross-member check passed.

pub mod pg;
pub mod profile;
pub mod report;
pub mod sandbox;

use chrono::{DateTime, Utc};
use profile::Profile;
use report::{Check, MemberReport, Report};
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

/// The server's own PANIC/FATAL lines from a console, as evidence (the last few).
fn server_errors(console: &str) -> String {
    let lines: Vec<&str> = console
        .lines()
        .filter(|l| {
            l.contains("PANIC:") || l.contains("FATAL:") || l.contains("LOG:  startup process")
        })
        .collect();
    if lines.is_empty() {
        return "no server error on the console".into();
    }
    lines[lines.len().saturating_sub(3)..]
        .iter()
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[derive(Debug, thiserror::Error)]
#[error("cannot verify: {0}")]
pub struct CouldNotRun(pub String);

pub struct Request<'a> {
    pub manifest: &'a ManifestView,
    pub profile: &'a Profile,
    /// Read images from here (by file name) instead of the frozen images, e.g. a restored backup.
    pub images_dir: Option<&'a Path>,
    pub sandbox_root: PathBuf,
    /// First loopback port for the sandboxes' forwards (one per member).
    pub base_port: u16,
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
            &mem.uri,
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
    let timeout = Duration::from_secs(req.profile.ready_timeout_seconds);
    let mut members = Vec::new();
    let mut clients = Vec::new();
    for (mem, prof, sb) in &sandboxes {
        let mut r = MemberReport {
            domain: mem.domain.clone(),
            sandbox: sb.name.clone(),
            recovery_seconds: None,
            newest_beacon_seq: None,
            newest_beacon_ts: None,
            data_loss_seconds: None,
            lost_acked_commits: None,
            checks: Vec::new(),
        };
        let waited = sb.wait_marker(&prof.ready_marker, prof.failure_marker.as_deref(), timeout);
        let ready = match waited {
            sandbox::Wait::Ready(d) => Some(d),
            _ => None,
        };
        r.recovery_seconds = ready.map(|d| d.as_secs_f64());
        let console = sb.console_text();
        let recovered =
            console.contains("automatic recovery in progress") || console.contains("redo done");
        r.checks.push(Check {
            name: "recovery".into(),
            ok: ready.is_some(),
            evidence: match waited {
                sandbox::Wait::Ready(d) => format!(
                    "ready {:.1} s after boot; {}",
                    d.as_secs_f64(),
                    if recovered {
                        "crash recovery replayed WAL"
                    } else {
                        "no WAL replay was needed"
                    }
                ),
                sandbox::Wait::Failed(d) => format!(
                    "the database did not start ({:.1} s after boot): {}",
                    d.as_secs_f64(),
                    server_errors(&console)
                ),
                sandbox::Wait::TimedOut => format!(
                    "not ready within {} s: {}",
                    timeout.as_secs(),
                    server_errors(&console)
                ),
            },
        });
        let client = ready.and_then(|_| {
            pg::connect(&pg::conninfo(prof, sb.host_port), Duration::from_secs(60)).ok()
        });
        let Some(mut c) = client else {
            if ready.is_some() {
                r.checks.push(Check {
                    name: "connect".into(),
                    ok: false,
                    evidence: "no connection within 60 s".into(),
                });
            }
            members.push(r);
            clients.push(None);
            continue;
        };
        r.checks.push(pg::amcheck(&mut c));
        for q in &prof.invariants {
            r.checks.push(pg::invariant(&mut c, q));
        }
        if let Some(t) = &prof.beacon_table {
            match pg::newest_beacon(&mut c, t) {
                Ok(Some((seq, ts))) => {
                    let loss = (cp - ts).num_milliseconds() as f64 / 1000.0;
                    r.newest_beacon_seq = Some(seq);
                    r.newest_beacon_ts = Some(ts);
                    r.data_loss_seconds = Some(loss);
                    // Beacon timestamps are taken on this host's clock before their commit; the
                    // consistency point on the same clock after every member paused. A frozen
                    // member cannot hold a beacon stamped after the point.
                    r.checks.push(Check {
                        name: "no write after the consistency point".into(),
                        ok: loss >= 0.0,
                        evidence: format!(
                            "newest beacon stamped {:.3} s {} the consistency point",
                            loss.abs(),
                            if loss >= 0.0 { "before" } else { "after" }
                        ),
                    });
                    r.checks.push(Check {
                        name: "data loss within RPO".into(),
                        ok: loss <= req.profile.rpo_seconds,
                        evidence: format!("newest beacon {seq} at {ts}: {loss:.3} s before the consistency point (RPO {} s)", req.profile.rpo_seconds),
                    });
                }
                Ok(None) => r.checks.push(Check {
                    name: "data loss within RPO".into(),
                    ok: false,
                    evidence: format!("no beacon in {t}"),
                }),
                Err(e) => r.checks.push(Check {
                    name: "data loss within RPO".into(),
                    ok: false,
                    evidence: e,
                }),
            }
        }
        if let (Some(db), Some(kind), Some(table)) = (&prof.ack_db, &prof.ack_kind, &prof.ack_table)
        {
            let ids: Vec<i64> = acks
                .iter()
                .filter(|a| &a.db == db && &a.kind == kind && a.at < cp)
                .map(|a| a.id)
                .collect();
            match pg::lost_acked(&mut c, table, &ids) {
                Ok(lost) => {
                    r.lost_acked_commits = Some(lost.len());
                    r.checks.push(Check {
                        name: "acknowledged commits before the consistency point present".into(),
                        ok: lost.is_empty(),
                        evidence: if lost.is_empty() {
                            format!("all {} acknowledged {kind} rows present", ids.len())
                        } else {
                            format!("missing (first 20): {lost:?} of {} acknowledged", ids.len())
                        },
                    });
                }
                Err(e) => r.checks.push(Check {
                    name: "acknowledged commits present".into(),
                    ok: false,
                    evidence: e,
                }),
            }
        }
        members.push(r);
        clients.push(Some(c));
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
        let val = |d: &str,
                   sql: &str,
                   clients: &mut Vec<Option<postgres::Client>>|
         -> Result<i64, String> {
            let i = idx(d).ok_or_else(|| format!("no member {d}"))?;
            let c = clients[i]
                .as_mut()
                .ok_or_else(|| format!("{d} did not come up"))?;
            pg::scalar(c, sql)
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
