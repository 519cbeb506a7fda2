//! PostgreSQL checks on a restored member: recovery, B-tree integrity (amcheck), invariants,
//! newest beacon, acknowledged commits.
//!
//! Invariant: every check records its evidence (numbers, the failing query) so the report can
//! show *why* it passed or failed, not only that it did.

use crate::profile::MemberProfile;
use crate::report::{Check, MemberReport};
use crate::sandbox::{Sandbox, Wait};
use crate::{MemberCtx, beacon};
use chrono::{DateTime, Utc};
use postgres::{Client, NoTls};
use std::time::{Duration, Instant};

pub fn conninfo(m: &MemberProfile, port: u16) -> String {
    format!(
        "host=127.0.0.1 port={port} user={} password={} dbname={} connect_timeout=5",
        m.user, m.password, m.dbname
    )
}

/// Connect, retrying while the forward or the server is still coming up.
pub fn connect(info: &str, timeout: Duration) -> Result<Client, String> {
    let start = Instant::now();
    loop {
        match Client::connect(info, NoTls) {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() > timeout => return Err(e.to_string()),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Ready without a console marker: the first connection that succeeds (PostgreSQL refuses
/// connections until crash recovery is done). A failure marker on the console still ends the
/// wait at once. Returns how the wait ended and the connection.
fn wait_connect(
    sb: &Sandbox,
    info: &str,
    failure: Option<&str>,
    timeout: Duration,
) -> (Wait, Option<Client>) {
    loop {
        if failure.is_some_and(|f| sb.console_text().contains(f)) {
            return (Wait::Failed(sb.started.elapsed()), None);
        }
        if let Ok(c) = Client::connect(info, NoTls) {
            return (Wait::Ready(sb.started.elapsed()), Some(c));
        }
        if sb.started.elapsed() > timeout {
            return (Wait::TimedOut, None);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn check(name: &str, ok: bool, evidence: String) -> Check {
    Check {
        name: name.to_string(),
        ok,
        evidence,
    }
}

pub fn amcheck(c: &mut Client) -> Check {
    let r = c
        .batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        .and_then(|_| {
            c.query_one(
                "SELECT count(bt_index_check(i.indexrelid)) FROM pg_index i
               JOIN pg_class r ON r.oid = i.indexrelid
               JOIN pg_am a ON a.oid = r.relam
              WHERE a.amname = 'btree' AND r.relpersistence <> 't' AND i.indisvalid",
                &[],
            )
        });
    match r {
        Ok(row) => check(
            "amcheck",
            true,
            format!("{} B-tree indexes verified", row.get::<_, i64>(0)),
        ),
        Err(e) => check("amcheck", false, e.to_string()),
    }
}

pub fn invariant(c: &mut Client, sql: &str) -> Check {
    match c.query_one(sql, &[]).and_then(|r| r.try_get::<_, bool>(0)) {
        Ok(v) => check(&format!("invariant: {sql}"), v, format!("returned {v}")),
        Err(e) => check(&format!("invariant: {sql}"), false, e.to_string()),
    }
}

/// Newest beacon `(seq, ts)`, if any.
pub fn newest_beacon(c: &mut Client, table: &str) -> Result<Option<(i64, DateTime<Utc>)>, String> {
    let rows = c
        .query(
            &format!("SELECT seq, ts FROM {table} ORDER BY seq DESC LIMIT 1"),
            &[],
        )
        .map_err(|e| e.to_string())?;
    Ok(rows.first().map(|r| (r.get(0), r.get(1))))
}

/// Acknowledged ids (before the consistency point) missing from `table`.
pub fn lost_acked(c: &mut Client, table: &str, ids: &[i64]) -> Result<Vec<i64>, String> {
    let rows = c
        .query(
            &format!("SELECT x FROM unnest($1::bigint[]) x WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE t.id = x) ORDER BY x LIMIT 20"),
            &[&ids],
        )
        .map_err(|e| e.to_string())?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub fn scalar(c: &mut Client, sql: &str) -> Result<i64, String> {
    c.query_one(sql, &[])
        .and_then(|r| r.try_get::<_, i64>(0))
        .map_err(|e| format!("{sql}: {e}"))
}

/// The server's own PANIC/FATAL lines from a console, as evidence (the last few).
fn server_errors(console: &str) -> String {
    let lines: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("PANIC:") || l.contains("FATAL:"))
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

/// Every check of one restored PostgreSQL member; the connection is returned for the
/// cross-member checks (`None` if the server never came up).
pub fn check_member(
    ctx: &MemberCtx,
    prof: &MemberProfile,
    sb: &Sandbox,
) -> (MemberReport, Option<Client>) {
    let mut r = MemberReport::new(ctx.domain, &sb.name);
    let info = conninfo(prof, sb.host_port);
    let (waited, mut first) = match &prof.ready_marker {
        Some(m) => (
            sb.wait_marker(m, prof.failure_marker.as_deref(), ctx.ready_timeout),
            None,
        ),
        None => wait_connect(sb, &info, prof.failure_marker.as_deref(), ctx.ready_timeout),
    };
    let ready = match waited {
        Wait::Ready(d) => Some(d),
        _ => None,
    };
    r.recovery_seconds = ready.map(|d| d.as_secs_f64());
    let console = sb.console_text();
    let recovered =
        console.contains("automatic recovery in progress") || console.contains("redo done");
    r.checks.push(check(
        "recovery",
        ready.is_some(),
        match waited {
            Wait::Ready(d) => format!(
                "ready {:.1} s after boot; {}",
                d.as_secs_f64(),
                if recovered {
                    "crash recovery replayed WAL"
                } else if console.contains("database system") {
                    "no WAL replay was needed"
                } else {
                    "WAL replay not visible (the server log is not on the console)"
                }
            ),
            Wait::Failed(d) => format!(
                "the database did not start ({:.1} s after boot): {}",
                d.as_secs_f64(),
                server_errors(&console)
            ),
            Wait::TimedOut => format!(
                "not ready within {} s: {}",
                ctx.ready_timeout.as_secs(),
                server_errors(&console)
            ),
        },
    ));
    let client = match first.take() {
        Some(c) => Some(c),
        None => ready.and_then(|_| connect(&info, Duration::from_secs(60)).ok()),
    };
    let Some(mut c) = client else {
        if ready.is_some() {
            r.checks
                .push(check("connect", false, "no connection within 60 s".into()));
        }
        return (r, None);
    };
    r.checks.push(amcheck(&mut c));
    for q in &prof.invariants {
        r.checks.push(invariant(&mut c, q));
    }
    if let Some(t) = &prof.beacon_table {
        beacon::checks(&mut r, newest_beacon(&mut c, t), t, ctx.cp, ctx.rpo_seconds);
    }
    if let (Some(db), Some(kind), Some(table)) = (&prof.ack_db, &prof.ack_kind, &prof.ack_table) {
        let ids: Vec<i64> = ctx
            .acks
            .iter()
            .filter(|a| &a.db == db && &a.kind == kind && a.at < ctx.cp)
            .map(|a| a.id)
            .collect();
        match lost_acked(&mut c, table, &ids) {
            Ok(lost) => {
                r.lost_acked_commits = Some(lost.len());
                r.checks.push(check(
                    "acknowledged commits before the consistency point present",
                    lost.is_empty(),
                    if lost.is_empty() {
                        format!("all {} acknowledged {kind} rows present", ids.len())
                    } else {
                        format!("missing (first 20): {lost:?} of {} acknowledged", ids.len())
                    },
                ));
            }
            Err(e) => r
                .checks
                .push(check("acknowledged commits present", false, e)),
        }
    }
    (r, Some(c))
}
