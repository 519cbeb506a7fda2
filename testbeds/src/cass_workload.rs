//! Cassandra workloads: numbered events with per-write acknowledgement records and beacons,
//! alone or paired with a PostgreSQL `orders` database.
//!
//! Invariants:
//! - One client writes sequentially and waits for each acknowledgement, so event ids are
//!   written in order and the commit log holds them in order: any crash-consistent image holds
//!   events `1..=n` without a gap, and `count == max(id)` (checked after restore).
//! - Live, under load, that equality cannot be read: Cassandra has no snapshot across
//!   partitions, so a `count(*)` scan misses rows written into token ranges it already passed
//!   while `max(id)` sees them. [`live_gaps`] reads `max(id)` first and then every id: all ids
//!   up to that max were acknowledged before the scan began, so each one missing is a gap.
//! - Every acknowledged write is appended to the [`AckLog`] (`db = "cassandra"`, kinds `event`
//!   and `beacon`), flushed per write, so loss after a restore is counted, not guessed.
//! - Paired with PostgreSQL: order `n` is committed there before event `n` (referencing order
//!   `n`) is written to Cassandra, and each beacon goes to PostgreSQL first; in a consistent
//!   cut `max(events.order_id) <= max(orders.id)` and PostgreSQL's newest beacon is not older.

use crate::cql::Cql;
use crate::workload::{self, AckLog, Role, WorkloadError};
use chrono::Utc;
use std::path::Path;
use std::time::{Duration, Instant};

/// Name of the Cassandra store in the acknowledgement log.
pub const ACK_DB: &str = "cassandra";
/// The events table (`keyspace.table`).
pub const EVENTS: &str = "cgsnap.events";
/// The beacon table (`keyspace.table`).
pub const BEACONS: &str = "cgsnap.cgsnap_beacon";
/// A beacon every this many events.
const BEACON_EVERY: i64 = 5;

/// Create keyspace and tables (idempotent; CQL every supported version accepts).
pub fn init_schema(c: &Cql) -> Result<(), crate::cql::CqlError> {
    c.execute(&format!(
        "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}} AND durable_writes = true",
        crate::cassandra::KEYSPACE
    ))?;
    c.execute(&format!(
        "CREATE TABLE IF NOT EXISTS {EVENTS} (id bigint PRIMARY KEY, order_id bigint, at timestamp)"
    ))?;
    c.execute(&format!(
        "CREATE TABLE IF NOT EXISTS {BEACONS} (seq bigint PRIMARY KEY, ts timestamp)"
    ))
}

/// Writes events and beacons to one Cassandra node.
struct Writer {
    c: Cql,
    event: scylla::statement::prepared::PreparedStatement,
    beacon: scylla::statement::prepared::PreparedStatement,
}

impl Writer {
    fn new(addr: &str) -> Result<Self, WorkloadError> {
        let (c, _) = Cql::connect_ready(addr, Duration::from_secs(60))?;
        let event = c.prepare(&format!(
            "INSERT INTO {EVENTS} (id, order_id, at) VALUES (?, ?, ?)"
        ))?;
        let beacon = c.prepare(&format!("INSERT INTO {BEACONS} (seq, ts) VALUES (?, ?)"))?;
        Ok(Self { c, event, beacon })
    }
    fn max(&self, cql: &str) -> Result<i64, WorkloadError> {
        Ok(self.c.scalar(cql)?)
    }
}

/// Run the Cassandra-only workload until `until` (or forever); returns acknowledged writes.
pub fn run_single(addr: &str, log: &Path, until: Option<Duration>) -> Result<u64, WorkloadError> {
    let w = Writer::new(addr)?;
    let mut acks = AckLog::open(log)?;
    let mut n = w.max(&format!("SELECT max(id) FROM {EVENTS}"))?;
    let mut seq = w.max(&format!("SELECT max(seq) FROM {BEACONS}"))?;
    let start = Instant::now();
    let mut writes = 0;
    while until.is_none_or(|d| start.elapsed() < d) {
        if n % BEACON_EVERY == 0 {
            seq += 1;
            w.c.run(&w.beacon, (seq, Utc::now()))?;
            acks.record(ACK_DB, "beacon", seq)?;
            writes += 1;
        }
        n += 1;
        w.c.run(&w.event, (n, 0i64, Utc::now()))?;
        acks.record(ACK_DB, "event", n)?;
        writes += 1;
    }
    Ok(writes)
}

/// Run the PostgreSQL + Cassandra workload (see the module invariants); returns acknowledged
/// writes. `pg` is a libpq conninfo of an `orders` database set up by
/// [`workload::init_schema`].
pub fn run_mixed(
    pg: &str,
    addr: &str,
    log: &Path,
    until: Option<Duration>,
) -> Result<u64, WorkloadError> {
    let mut o = workload::connect(pg)?;
    let w = Writer::new(addr)?;
    let mut acks = AckLog::open(log)?;
    let pg_max = |o: &mut postgres::Client, sql: &str| -> Result<i64, WorkloadError> {
        o.query_one(sql, &[])
            .map(|r| r.get::<_, i64>(0))
            .map_err(workload::pg("read the highest order or beacon"))
    };
    let mut n = pg_max(&mut o, "SELECT coalesce(max(id), 0)::bigint FROM orders")?
        .max(w.max(&format!("SELECT max(order_id) FROM {EVENTS}"))?);
    let mut seq = pg_max(
        &mut o,
        "SELECT coalesce(max(seq), 0)::bigint FROM cgsnap_beacon",
    )?
    .max(w.max(&format!("SELECT max(seq) FROM {BEACONS}"))?);
    let mut event = w.max(&format!("SELECT max(id) FROM {EVENTS}"))?;
    let start = Instant::now();
    let mut writes = 0;
    while until.is_none_or(|d| start.elapsed() < d) {
        if n % BEACON_EVERY == 0 {
            // Beacon: PostgreSQL first, then Cassandra, each acknowledged before the next.
            seq += 1;
            let ts = Utc::now();
            o.execute("INSERT INTO cgsnap_beacon VALUES ($1, $2)", &[&seq, &ts])
                .map_err(workload::pg("insert a beacon"))?;
            w.c.run(&w.beacon, (seq, ts))?;
            acks.record(ACK_DB, "beacon", seq)?;
            writes += 2;
        }
        n += 1;
        o.execute(
            "INSERT INTO orders VALUES ($1, $2, now())",
            &[&n, &(n % 97 + 1)],
        )
        .map_err(workload::pg("insert an order"))?;
        acks.record("orders", "order", n)?;
        event += 1;
        w.c.run(&w.event, (event, n, Utc::now()))?;
        acks.record(ACK_DB, "event", event)?;
        writes += 2;
    }
    Ok(writes)
}

/// The facts of a Cassandra node the invariants are about.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Facts {
    /// Rows of the events table.
    pub events: i64,
    /// Highest event id.
    pub max_event: i64,
    /// Highest order an event references (mixed workload; 0 otherwise).
    pub max_order_ref: i64,
}

/// Read the facts of the events table.
pub fn facts(c: &Cql) -> Result<Facts, crate::cql::CqlError> {
    let v = c.single_row_i64(&format!(
        "SELECT count(*), max(id), max(order_id) FROM {EVENTS}"
    ))?;
    let at = |i: usize| v.get(i).copied().flatten().unwrap_or(0);
    Ok(Facts {
        events: at(0),
        max_event: at(1),
        max_order_ref: at(2),
    })
}

/// Gaps of a node under load: the highest id read first, then the ids up to it that a full
/// scan does not find (at most `show` of them listed); see the module invariants.
pub fn live_gaps(c: &Cql, show: usize) -> Result<(i64, Vec<String>), crate::cql::CqlError> {
    let max = c.scalar(&format!("SELECT max(id) FROM {EVENTS}"))?;
    let ids = c.ids(EVENTS, "id")?;
    Ok((max, gaps(max, &ids, show)))
}

/// Ids in `1..=max` missing from `ids`, described (at most `show` listed, with the count).
pub fn gaps(max: i64, ids: &std::collections::HashSet<i64>, show: usize) -> Vec<String> {
    let missing: Vec<i64> = (1..=max).filter(|i| !ids.contains(i)).collect();
    if missing.is_empty() {
        return Vec::new();
    }
    let listed: Vec<String> = missing.iter().take(show).map(i64::to_string).collect();
    vec![format!(
        "{} of the event ids up to {max} missing under load: {}{}",
        missing.len(),
        listed.join(", "),
        if missing.len() > show { ", ..." } else { "" }
    )]
}

/// Invariants of one node at rest (a restored copy); each violation described.
pub fn check(f: &Facts) -> Vec<String> {
    if f.events == f.max_event {
        Vec::new()
    } else {
        vec![format!(
            "{} events but max id {}: gap in ids",
            f.events, f.max_event
        )]
    }
}

/// Cross-store invariant of the mixed workload: no event references a missing order.
pub fn check_cross(orders: &workload::Facts, events: &Facts) -> Vec<String> {
    if events.max_order_ref > orders.max_row {
        vec![format!(
            "events reference order {} but orders ends at {}: not a consistent cut",
            events.max_order_ref, orders.max_row
        )]
    } else {
        Vec::new()
    }
}

/// The PostgreSQL side of the mixed testbed plays the `orders` role of the pair workload.
pub const PG_ROLE: Role = Role::Orders;

#[cfg(test)]
mod tests {
    use super::*;

    fn f(events: i64, max_event: i64, refd: i64) -> Facts {
        Facts {
            events,
            max_event,
            max_order_ref: refd,
        }
    }

    #[test]
    fn gaps_and_dangling_references_are_violations() {
        assert!(check(&f(10, 10, 0)).is_empty());
        assert!(check(&f(0, 0, 0)).is_empty());
        assert_eq!(check(&f(9, 10, 0)).len(), 1);
        let ids: std::collections::HashSet<i64> = [1, 2, 4, 5, 7, 9].into_iter().collect();
        // Rows past the max read first were written during the scan: not gaps.
        assert!(gaps(2, &ids, 3).is_empty());
        assert_eq!(
            gaps(8, &ids, 2),
            vec!["3 of the event ids up to 8 missing under load: 3, 6, ...".to_string()]
        );
        assert_eq!(gaps(0, &ids, 2), Vec::<String>::new());
        let orders = workload::Facts {
            balance_sum: 0,
            transfers: 0,
            max_transfer: 0,
            rows: 7,
            max_row: 7,
            max_order_ref: 0,
        };
        assert!(check_cross(&orders, &f(7, 7, 7)).is_empty());
        let v = check_cross(&orders, &f(8, 8, 8));
        assert!(
            v[0].contains("order 8") && v[0].contains("ends at 7"),
            "{v:?}"
        );
    }
}
