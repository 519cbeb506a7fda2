//! Cassandra checks on a restored member: CQL-ready time (the RTO), commit log replay seen in
//! the server log, the sync mode the guest really ran with, workload tables present, invariant
//! queries, newest beacon, and acknowledged writes against the loss bound of the sync mode.
//!
//! Invariants: every check records its evidence; a member is judged by the bound of the sync
//! mode its profile states, and if the saved domain XML shows the guest booted with another
//! mode that is itself a violation (a looser profile would excuse real loss); only CQL that
//! Cassandra 2.2 to 5.0 accept is sent (see `cgsnap_testbeds::cql`). The acknowledged-writes
//! check never passes on nothing: with no write acknowledged before the cut it fails. Beacon
//! acknowledgements are optional (beacons written by `cgsnap beacon` are not logged): without
//! any, the beacon bound check is not made and the beacon's RPO check still applies.

use crate::bound;
use crate::profile::MemberProfile;
use crate::replay;
use crate::report::{Check, MemberReport};
use crate::sandbox::{Sandbox, Wait};
use crate::{MemberCtx, beacon};
use cgsnap_testbeds::cassandra::SyncMode;
use cgsnap_testbeds::cql::{Cql, SchemaSource};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// After the guest's ready marker, how long the CQL port may still take to answer a query.
const CQL_AFTER_MARKER: Duration = Duration::from_secs(120);

fn check(name: &str, ok: bool, evidence: String) -> Check {
    Check {
        name: name.to_string(),
        ok,
        evidence,
    }
}

/// Judge one invariant row: several columns must all be equal (null as 0: `max` of an empty
/// table), a single column must be non-zero. Returns whether it holds and the evidence.
pub fn invariant_holds(values: &[Option<i64>]) -> (bool, String) {
    let v: Vec<i64> = values.iter().map(|x| x.unwrap_or(0)).collect();
    match v.as_slice() {
        [] => (false, "the query returned no column".into()),
        [x] if *x != 0 => (true, format!("returned {x}")),
        [x] => (false, format!("returned {x}")),
        [first, rest @ ..] if rest.iter().all(|x| x == first) => {
            (true, format!("all columns equal {first}"))
        }
        _ => (false, format!("columns differ: {v:?}")),
    }
}

/// The kernel command line in a domain XML, if it has one.
pub fn cmdline_of(domain_xml: &str) -> Option<&str> {
    let start = domain_xml.find("<cmdline>")? + "<cmdline>".len();
    let len = domain_xml[start..].find("</cmdline>")?;
    Some(&domain_xml[start..start + len])
}

/// The profile's sync mode against the one the guest was booted with (if its XML says).
pub fn sync_check(profiled: SyncMode, domain_xml: &str) -> Option<Check> {
    let booted = cmdline_of(domain_xml).and_then(SyncMode::from_kernel_args)?;
    Some(check(
        "commit log sync mode as profiled",
        booted == profiled,
        format!("guest booted with commitlog_sync {booted}, profile states {profiled}"),
    ))
}

/// `keyspace.table` → `(keyspace, table)`.
fn split_table(t: &str) -> Option<(&str, &str)> {
    t.split_once('.')
}

fn tables_check(c: &Cql, prof: &MemberProfile) -> Option<Check> {
    let tables: Vec<&String> = [&prof.beacon_table, &prof.ack_table]
        .into_iter()
        .flatten()
        .collect();
    if tables.is_empty() {
        return None;
    }
    let res = c
        .schema_source()
        .map_err(|e| e.to_string())
        .and_then(|src| {
            let mut missing = Vec::new();
            for t in &tables {
                let (ks, tb) =
                    split_table(t).ok_or_else(|| format!("{t}: name it keyspace.table"))?;
                if !c.table_exists(src, ks, tb).map_err(|e| e.to_string())? {
                    missing.push(t.as_str());
                }
            }
            Ok((src, missing))
        });
    Some(match res {
        Ok((src, missing)) => {
            let from = match src {
                SchemaSource::SystemSchema => "system_schema.tables",
                SchemaSource::Legacy => "system.schema_columnfamilies",
            };
            check(
                "workload tables present",
                missing.is_empty(),
                if missing.is_empty() {
                    format!("{} found in {from}", tables.len())
                } else {
                    format!("missing from {from}: {}", missing.join(", "))
                },
            )
        }
        Err(e) => check("workload tables present", false, e),
    })
}

fn acks_of(ctx: &MemberCtx, db: &str, kind: &str) -> Vec<(i64, DateTime<Utc>)> {
    ctx.acks
        .iter()
        .filter(|a| a.db == db && a.kind == kind)
        .map(|a| (a.id, a.at))
        .collect()
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn acked_writes_check(c: &Cql, ctx: &MemberCtx, prof: &MemberProfile, r: &mut MemberReport) {
    let (Some(db), Some(kind), Some(table)) = (&prof.ack_db, &prof.ack_kind, &prof.ack_table)
    else {
        return;
    };
    let Ok(mode) = prof.sync_mode() else { return };
    let limit = bound::loss_bound(mode);
    let name = format!(
        "acknowledged writes before the cut present (bound {})",
        secs(limit)
    );
    match c.ids(table, "id") {
        Ok(present) => {
            let l = bound::acked_loss(&acks_of(ctx, db, kind), &present, ctx.cp, limit);
            if l.expected == 0 {
                r.checks.push(check(
                    &name,
                    false,
                    format!("no {kind} write acknowledged before the cut: nothing to check"),
                ));
                return;
            }
            r.lost_acked_commits = Some(l.lost);
            let first: Vec<i64> = l.beyond_bound.iter().take(20).copied().collect();
            r.checks.push(check(
                &name,
                l.ok(),
                format!(
                    "{} of {} acknowledged {kind} writes missing, oldest {} before the cut; {} beyond the bound{}",
                    l.lost,
                    l.expected,
                    l.oldest_lost_age.map(secs).unwrap_or_else(|| "-".into()),
                    l.beyond_bound.len(),
                    if first.is_empty() {
                        String::new()
                    } else {
                        format!(" (first 20: {first:?})")
                    }
                ),
            ));
        }
        Err(e) => r.checks.push(check(&name, false, e.to_string())),
    }
}

fn beacon_checks(c: &Cql, ctx: &MemberCtx, prof: &MemberProfile, r: &mut MemberReport) {
    let Some(t) = &prof.beacon_table else { return };
    beacon::checks(r, c.newest_beacon(t), t, ctx.cp, ctx.rpo_seconds);
    // Beacons acknowledged in the ack log (kind `beacon` of this member's `ack_db`) must be
    // present up to the loss bound.
    let (Some(db), Ok(mode)) = (&prof.ack_db, prof.sync_mode()) else {
        return;
    };
    let acks = acks_of(ctx, db, "beacon");
    if acks.is_empty() {
        return;
    }
    let limit = bound::loss_bound(mode);
    let need = bound::required_beacon(&acks, ctx.cp, limit);
    r.checks.push(check(
        "beacon loss within the sync mode's bound",
        bound::beacon_within_bound(need, r.newest_beacon_seq),
        format!(
            "commitlog_sync {mode}: beacon {} acknowledged more than {} before the cut must be present; newest recovered {}",
            need.map(|s| s.to_string()).unwrap_or_else(|| "none".into()),
            secs(limit),
            r.newest_beacon_seq
                .map(|s| s.to_string())
                .unwrap_or_else(|| "none".into())
        ),
    ));
}

/// Every check of one restored Cassandra member; the connection is returned for the
/// cross-member checks (`None` if the node never answered CQL).
pub fn check_member(
    ctx: &MemberCtx,
    prof: &MemberProfile,
    sb: &Sandbox,
) -> (MemberReport, Option<Cql>) {
    let mut r = MemberReport::new(ctx.domain, &sb.name);
    if let Ok(mode) = prof.sync_mode() {
        r.loss_bound_seconds = Some(bound::loss_bound(mode).as_secs_f64());
        r.checks.extend(sync_check(mode, ctx.domain_xml));
    }
    // The profile guarantees a marker for Cassandra members.
    let ready_marker = prof.ready_marker.as_deref().unwrap_or_default();
    let marker = sb.wait_marker(
        ready_marker,
        prof.failure_marker.as_deref(),
        ctx.ready_timeout,
    );
    let conn = match marker {
        Wait::TimedOut => Err(format!(
            "no {:?} within {} s",
            ready_marker,
            ctx.ready_timeout.as_secs()
        )),
        Wait::Failed(d) => Err(format!(
            "the node reported it cannot start {:.1} s after boot: {}",
            d.as_secs_f64(),
            prof.failure_marker
                .as_deref()
                .and_then(|f| sb.marker_line(f))
                .unwrap_or_default()
        )),
        Wait::Stopped => Err("the sandbox was stopped before the node was ready".into()),
        Wait::Ready(_) => {
            Cql::connect_ready(&format!("127.0.0.1:{}", sb.host_port), CQL_AFTER_MARKER)
                .map_err(|e| e.to_string())
        }
    };
    let replay = replay::parse(&sb.console_text());
    r.replayed_mutations = replay.mutations;
    let (c, version) = match conn {
        Ok(x) => x,
        Err(e) => {
            r.checks.push(check("recovery (CQL-ready)", false, e));
            r.checks.push(replay::check(&replay));
            return (r, None);
        }
    };
    // Members are checked one after another while all sandboxes boot at once: a node that was
    // already answering when its turn came gets an upper bound of its RTO, never a flattering one.
    let rto = sb.started.elapsed();
    r.recovery_seconds = Some(rto.as_secs_f64());
    r.server_version = Some(version.to_string());
    r.checks.push(check(
        "recovery (CQL-ready)",
        true,
        format!(
            "Cassandra {version} answered CQL {:.1} s after boot",
            rto.as_secs_f64()
        ),
    ));
    r.checks.push(replay::check(&replay));
    r.checks.extend(tables_check(&c, prof));
    for q in &prof.invariants {
        let (ok, ev) = match c.single_row_i64(q) {
            Ok(v) => invariant_holds(&v),
            Err(e) => (false, e.to_string()),
        };
        r.checks.push(check(&format!("invariant: {q}"), ok, ev));
    }
    beacon_checks(&c, ctx, prof, &mut r);
    acked_writes_check(&c, ctx, prof, &mut r);
    (r, Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invariant_rows_are_judged() {
        assert!(invariant_holds(&[Some(5), Some(5)]).0);
        assert!(invariant_holds(&[Some(0), None]).0, "empty table");
        let (ok, e) = invariant_holds(&[Some(4), Some(5)]);
        assert!(!ok && e.contains("[4, 5]"), "{e}");
        assert!(invariant_holds(&[Some(1)]).0);
        assert!(!invariant_holds(&[Some(0)]).0);
        assert!(!invariant_holds(&[None]).0);
        assert!(!invariant_holds(&[]).0);
    }

    #[test]
    fn booted_sync_mode_must_match_the_profile() {
        let xml = "<domain><os><kernel>/k</kernel><cmdline>console=ttyS0 cgsnap.cass_sync=periodic cgsnap.cass_sync_period_ms=10000</cmdline></os></domain>";
        assert_eq!(
            cmdline_of(xml),
            Some("console=ttyS0 cgsnap.cass_sync=periodic cgsnap.cass_sync_period_ms=10000")
        );
        let same = sync_check(SyncMode::Periodic { period_ms: 10_000 }, xml).expect("check");
        assert!(same.ok);
        // A profile claiming batch would hold the node to a tighter bound: flagged too, since
        // the profile is wrong; one claiming a longer period would excuse real loss.
        let c = sync_check(SyncMode::Batch, xml).expect("check");
        assert!(!c.ok && c.evidence.contains("periodic (10000 ms)"), "{c:?}");
        assert!(
            !sync_check(SyncMode::Periodic { period_ms: 60_000 }, xml)
                .expect("check")
                .ok
        );
        assert!(sync_check(SyncMode::Batch, "<domain><os/></domain>").is_none());
    }

    #[test]
    fn tables_are_named_with_their_keyspace() {
        assert_eq!(split_table("cgsnap.events"), Some(("cgsnap", "events")));
        assert_eq!(split_table("events"), None);
    }
}
