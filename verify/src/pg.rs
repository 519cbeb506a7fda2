//! PostgreSQL checks on a restored member: recovery, B-tree integrity (amcheck), invariants,
//! newest beacon, acknowledged commits.
//!
//! Invariants: every check records its evidence (numbers, the failing query) so the report can
//! show *why* it passed or failed, not only that it did. Every query runs under a
//! `statement_timeout` and a `lock_timeout` set for the session at connect time (a restored
//! server can hang on a damaged index or a lock held by a recovered prepared transaction); a
//! query that hits one returns an error, and an error always fails its check. TCP keepalives
//! and a TCP user timeout end a connection whose peer stopped answering at the TCP level (the
//! peer is the sandbox's QEMU port forward on this host, so they catch a QEMU that died, not a
//! guest that hangs mid-query). For that, every query also has a client-side deadline
//! ([`deadline`]: the statement timeout plus a margin), enforced by [`Session`]: a query with
//! no answer by then fails its check saying so, and the connection is abandoned (every later
//! query on it fails naming the one that hung), since it may still deliver that late answer.
//! The lost-commit count is exact; only its evidence list is cut to the first 20 ids.

mod session;

pub use session::{DEADLINE_MARGIN, Deadlined, QueryError, Session, deadline};

use crate::profile::MemberProfile;
use crate::report::{Check, MemberReport};
use crate::sandbox::{Sandbox, Wait};
use crate::{MemberCtx, beacon};
use chrono::{DateTime, Utc};
use postgres::{Client, Config, NoTls};
use std::time::{Duration, Instant};

/// How long a check query may wait for a lock before it fails.
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Connection settings of a restored member reached through its loopback forward.
pub fn config(m: &MemberProfile, port: u16, statement_timeout: Duration) -> Config {
    let mut c = Config::new();
    c.host("127.0.0.1")
        .port(port)
        .user(&m.user)
        .password(&m.password)
        .dbname(&m.dbname)
        .connect_timeout(Duration::from_secs(5))
        .options(&session_options(statement_timeout, LOCK_TIMEOUT))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(60));
    c
}

/// The `options` startup parameter setting both limits (in ms, at least 1: 0 disables them).
pub fn session_options(statement: Duration, lock: Duration) -> String {
    let ms = |d: Duration| d.as_millis().max(1);
    format!(
        "-c statement_timeout={} -c lock_timeout={}",
        ms(statement),
        ms(lock)
    )
}

/// Connect, retrying while the forward or the server is still coming up.
pub fn connect(info: &Config, timeout: Duration) -> Result<Client, postgres::Error> {
    let start = Instant::now();
    loop {
        match info.connect(NoTls) {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() > timeout => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Ready without a console marker: the first connection that succeeds (PostgreSQL refuses
/// connections until crash recovery is done). A failure marker on the console still ends the
/// wait at once. Returns how the wait ended and the connection.
fn wait_connect(
    sb: &Sandbox,
    info: &Config,
    failure: Option<&str>,
    timeout: Duration,
) -> (Wait, Option<Client>) {
    loop {
        if sb.is_stopped() {
            return (Wait::Stopped, None);
        }
        if failure.is_some_and(|f| sb.console_text().contains(f)) {
            return (Wait::Failed(sb.started.elapsed()), None);
        }
        if let Ok(c) = info.connect(NoTls) {
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

/// B-tree indexes of the connected database that `bt_index_check` accepts: plain indexes
/// (`relkind 'i'`; a partitioned index has no storage and makes it raise an error), valid,
/// and not temporary.
pub const AMCHECK_SQL: &str = "SELECT count(bt_index_check(i.indexrelid)) FROM pg_index i
               JOIN pg_class r ON r.oid = i.indexrelid
               JOIN pg_am a ON a.oid = r.relam
              WHERE a.amname = 'btree' AND r.relkind = 'i' AND r.relpersistence <> 't' AND i.indisvalid";

/// B-tree integrity of every checkable index (`bt_index_check`, the extension created if needed).
pub fn amcheck(c: &mut Session) -> Check {
    let r = c
        .run("CREATE EXTENSION amcheck", |c| {
            Ok(c.batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck")?)
        })
        .and_then(|_| {
            c.run("amcheck", |c| {
                Ok(c.query_one(AMCHECK_SQL, &[])
                    .and_then(|r| r.try_get::<_, i64>(0))?)
            })
        });
    match r {
        Ok(n) => check("amcheck", true, format!("{n} B-tree indexes verified")),
        Err(e) => check("amcheck", false, e.to_string()),
    }
}

/// A profile invariant: `sql` returns one boolean, which must be true.
pub fn invariant(c: &mut Session, sql: &str) -> Check {
    let q = sql.to_string();
    let r = c.run(sql, move |c| {
        Ok(c.query_one(&q, &[]).and_then(|r| r.try_get::<_, bool>(0))?)
    });
    match r {
        Ok(v) => check(&format!("invariant: {sql}"), v, format!("returned {v}")),
        Err(e) => check(&format!("invariant: {sql}"), false, e.to_string()),
    }
}

/// Newest beacon `(seq, ts)`, if any.
pub fn newest_beacon(
    c: &mut Session,
    table: &str,
) -> Result<Option<(i64, DateTime<Utc>)>, QueryError> {
    let sql = format!("SELECT seq, ts FROM {table} ORDER BY seq DESC LIMIT 1");
    c.run("newest beacon", move |c| {
        let rows = c.query(&sql, &[])?;
        let newest = rows
            .first()
            .map(|r| Ok::<_, postgres::Error>((r.try_get(0)?, r.try_get(1)?)))
            .transpose()?;
        Ok(newest)
    })
}

/// Acknowledged ids (before the consistency point) missing from `table`: how many, exactly,
/// and the first 20 of them as evidence.
pub fn lost_acked(
    c: &mut Session,
    table: &str,
    ids: &[i64],
) -> Result<(usize, Vec<i64>), QueryError> {
    let missing = format!(
        "FROM unnest($1::bigint[]) x WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE t.id = x)"
    );
    let (sql, all) = (format!("SELECT count(*) {missing}"), ids.to_vec());
    let count: i64 = c.run("count of lost acknowledged rows", move |c| {
        Ok(c.query_one(&sql, &[&all]).and_then(|r| r.try_get(0))?)
    })?;
    let (sql, all) = (
        format!("SELECT x {missing} ORDER BY x LIMIT 20"),
        ids.to_vec(),
    );
    let first = c.run("first lost acknowledged rows", move |c| {
        Ok(c.query(&sql, &[&all])?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<Vec<i64>, _>>()?)
    })?;
    let count = usize::try_from(count)?;
    Ok((count, first))
}

/// The lost-commit check from the number of acknowledged rows and the lost ones. No
/// acknowledged row means nothing was checked: that never passes (run time refuses it before
/// any sandbox starts; this keeps the check honest on its own).
pub fn lost_check(kind: &str, acked: usize, lost: Result<(usize, Vec<i64>), QueryError>) -> Check {
    const NAME: &str = "acknowledged commits before the consistency point present";
    match lost {
        _ if acked == 0 => check(
            NAME,
            false,
            format!("no acknowledged {kind} row before the consistency point: nothing to check"),
        ),
        Ok((0, _)) => check(
            NAME,
            true,
            format!("all {acked} acknowledged {kind} rows present"),
        ),
        Ok((n, first)) => check(
            NAME,
            false,
            format!("{n} of {acked} acknowledged {kind} rows missing (first 20: {first:?})"),
        ),
        Err(e) => check(NAME, false, e.to_string()),
    }
}

/// One integer from a one-row query (a cross-member check's side).
pub fn scalar(c: &mut Session, sql: &str) -> Result<i64, QueryError> {
    let q = sql.to_string();
    c.run(sql, move |c| {
        c.query_one(&q, &[])
            .and_then(|r| r.try_get::<_, i64>(0))
            .map_err(|source| QueryError::Scalar { sql: q, source })
    })
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
) -> (MemberReport, Option<Session>) {
    let mut r = MemberReport::new(ctx.domain, &sb.name);
    let info = config(prof, sb.host_port, ctx.statement_timeout);
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
            Wait::Stopped => "the sandbox was stopped before the database was ready".into(),
        },
    ));
    let client = match first.take() {
        Some(c) => Some(c),
        None => ready.and_then(|_| connect(&info, Duration::from_secs(60)).ok()),
    };
    let Some(c) = client else {
        if ready.is_some() {
            r.checks
                .push(check("connect", false, "no connection within 60 s".into()));
        }
        return (r, None);
    };
    let mut c = Session::new(c, deadline(ctx.statement_timeout));
    r.checks.push(amcheck(&mut c));
    for q in &prof.invariants {
        r.checks.push(invariant(&mut c, q));
    }
    if let Some(t) = &prof.beacon_table {
        beacon::checks(&mut r, newest_beacon(&mut c, t), t, ctx.cp, ctx.rpo_seconds);
    }
    if let (Some(db), Some(kind), Some(table)) = (&prof.ack_db, &prof.ack_kind, &prof.ack_table) {
        let ids: Vec<i64> = crate::acked_before(ctx.acks, db, kind, ctx.cp)
            .map(|a| a.id)
            .collect();
        let lost = if ids.is_empty() {
            Ok((0, Vec::new()))
        } else {
            lost_acked(&mut c, table, &ids)
        };
        if let (Ok((n, _)), false) = (&lost, ids.is_empty()) {
            r.lost_acked_commits = Some(*n);
        }
        r.checks.push(lost_check(kind, ids.len(), lost));
    }
    (r, Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_time_limited() {
        let o = session_options(Duration::from_secs(600), LOCK_TIMEOUT);
        assert_eq!(o, "-c statement_timeout=600000 -c lock_timeout=30000");
        // 0 would mean "no limit" to the server.
        assert!(session_options(Duration::ZERO, Duration::ZERO).contains("statement_timeout=1 "));
        let m = crate::profile::parse(
            std::path::Path::new("p.toml"),
            &cgsnap_testbeds::pair::profile_text(std::path::Path::new("/s")),
        )
        .expect("profile");
        let c = config(&m.members[0], 40100, Duration::from_secs(600));
        assert_eq!(c.get_options(), Some(o.as_str()));
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(60)));
        assert!(c.get_keepalives());
        assert_eq!(c.get_ports(), &[40100]);
    }

    #[test]
    fn amcheck_skips_partitioned_indexes() {
        assert!(AMCHECK_SQL.contains("r.relkind = 'i'"));
    }

    #[test]
    fn lost_commits_are_counted_exactly_and_nothing_to_check_fails() {
        let first: Vec<i64> = (1..=20).collect();
        let c = lost_check("order", 500, Ok((137, first)));
        assert!(!c.ok && c.evidence.starts_with("137 of 500"), "{c:?}");
        let c = lost_check("order", 500, Ok((0, Vec::new())));
        assert!(c.ok && c.evidence.contains("all 500"), "{c:?}");
        let c = lost_check("order", 0, Ok((0, Vec::new())));
        assert!(!c.ok && c.evidence.contains("nothing to check"), "{c:?}");
        let c = lost_check(
            "order",
            5,
            Err(QueryError::Lost(
                "canceling statement due to statement timeout".into(),
            )),
        );
        assert!(!c.ok, "{c:?}");
    }
}
