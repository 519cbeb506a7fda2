//! A blocking CQL client (the `scylla` crate, CQL native protocol v4) for the Cassandra testbed
//! and its verifier.
//!
//! Invariants:
//! - Only CQL that Cassandra 2.2 to 5.0 all accept is sent: no `IF NOT EXISTS` on indexes, no
//!   `GROUP BY`, no `PER PARTITION LIMIT`, no duration literals; aggregates (`count`, `max`) are 2.2+.
//! - The server version is read (`system.local.release_version`), never assumed; the schema
//!   tables are found by probing (`system_schema.*` from 3.0, `system.schema_*` before), never
//!   by version alone.
//! - The driver's own schema fetching is off: it reads `system_schema`, which 2.x lacks, and the
//!   checks here need nothing of it.
//! - Every statement runs at `QUORUM`: with one replica that is the single node's ack, and it
//!   stays a majority should a keyspace ever be replicated.
//! - The host connects only to the loopback forward it was given: every address a node
//!   advertises is translated to it ([`crate::cql_route`]).
//! - Every call has a client-side deadline ([`DEADLINE`]) on top of the driver's request
//!   timeout, so a node that accepts and never answers fails the call, never hangs it.

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::serialize::row::SerializeRow;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::cql_error::CqlError;
use crate::cql_route::LoopbackForward;

/// Per-request timeout: a TCG guest answers slowly, and `count(*)` scans the whole table.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The client's own bound on any one call (a paged scan is several requests).
pub const DEADLINE: Duration = Duration::from_secs(300);

/// A Cassandra server version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// Major version.
    pub major: u32,
    /// Minor version (0 if not given).
    pub minor: u32,
    /// Patch version (0 if not given).
    pub patch: u32,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Parse a Cassandra `release_version` (`4.1.3`, `5.0-rc1`, `3.11.16-SNAPSHOT`, `2.2.19`).
pub fn parse_version(s: &str) -> Option<Version> {
    let core = s.trim().split(['-', '+', ' ']).next()?;
    let mut it = core.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next().map_or(Some(0), |m| m.parse().ok())?;
    let patch = it.next().map_or(Some(0), |p| p.parse().ok())?;
    Some(Version {
        major,
        minor,
        patch,
    })
}

/// Where the schema of user tables lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaSource {
    /// `system_schema.tables` (Cassandra 3.0 and later).
    SystemSchema,
    /// `system.schema_columnfamilies` (Cassandra 2.x).
    Legacy,
}

impl SchemaSource {
    /// Query that returns one row when `(keyspace, table)` exists; both bound as text.
    pub fn table_query(self) -> &'static str {
        match self {
            SchemaSource::SystemSchema => {
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?"
            }
            SchemaSource::Legacy => {
                "SELECT columnfamily_name FROM system.schema_columnfamilies WHERE keyspace_name = ? AND columnfamily_name = ?"
            }
        }
    }
    /// Query that succeeds only if this schema source exists on the server.
    pub fn probe_query(self) -> &'static str {
        match self {
            SchemaSource::SystemSchema => {
                "SELECT keyspace_name FROM system_schema.keyspaces LIMIT 1"
            }
            SchemaSource::Legacy => "SELECT keyspace_name FROM system.schema_keyspaces LIMIT 1",
        }
    }
}

/// A numeric CQL value as i64 (`count(*)` is bigint, `max(int)` is int), `None` for null.
pub fn as_i64(v: &Option<CqlValue>) -> Result<Option<i64>, CqlError> {
    match v {
        None => Ok(None),
        Some(CqlValue::BigInt(x)) => Ok(Some(*x)),
        Some(CqlValue::Int(x)) => Ok(Some(i64::from(*x))),
        Some(CqlValue::SmallInt(x)) => Ok(Some(i64::from(*x))),
        Some(CqlValue::TinyInt(x)) => Ok(Some(i64::from(*x))),
        Some(CqlValue::Counter(c)) => Ok(Some(c.0)),
        Some(CqlValue::Boolean(b)) => Ok(Some(i64::from(*b))),
        Some(other) => Err(CqlError::NotInteger(format!("{other:?}"))),
    }
}

/// A blocking CQL session to one node.
pub struct Cql {
    rt: tokio::runtime::Runtime,
    session: Session,
    /// The node (`127.0.0.1:PORT`).
    pub addr: String,
}

fn boxed(
    e: impl std::error::Error + Send + Sync + 'static,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

/// Run `fut` on `rt`, failing with [`CqlError::Deadline`] naming `what` after `limit`.
fn within<T>(
    rt: &tokio::runtime::Runtime,
    what: &str,
    limit: Duration,
    fut: impl Future<Output = T>,
) -> Result<T, CqlError> {
    rt.block_on(async { tokio::time::timeout(limit, fut).await })
        .map_err(|_| CqlError::Deadline {
            what: what.to_string(),
            secs: limit.as_secs(),
        })
}

fn query_error(cql: &str) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> CqlError {
    move |source| CqlError::Query {
        cql: cql.to_string(),
        source,
    }
}

impl Cql {
    /// Run `fut` with the client deadline.
    fn within<T>(&self, what: &str, fut: impl Future<Output = T>) -> Result<T, CqlError> {
        within(&self.rt, what, DEADLINE, fut)
    }

    /// One connection attempt to `addr` (`127.0.0.1:PORT`): the TCP connect within `timeout`,
    /// the whole session set-up (handshake, topology queries) within three times that.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Cql, CqlError> {
        let forward: std::net::SocketAddr = addr
            .parse()
            .map_err(|_| CqlError::NotLoopback(addr.to_string()))?;
        let route =
            LoopbackForward::new(forward).ok_or_else(|| CqlError::NotLoopback(addr.to_string()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CqlError::Runtime)?;
        let profile = ExecutionProfile::builder()
            .consistency(Consistency::Quorum)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .build()
            .into_handle();
        let builder = SessionBuilder::new()
            .known_node_addr(forward)
            .address_translator(Arc::new(route))
            .connection_timeout(timeout)
            .fetch_schema_metadata(false)
            .default_execution_profile_handle(profile);
        let what = format!("CQL connect {addr}");
        let session =
            within(&rt, &what, timeout * 3, builder.build())?.map_err(|e| CqlError::Connect {
                addr: addr.to_string(),
                source: Box::new(e),
            })?;
        Ok(Cql {
            rt,
            session,
            addr: addr.to_string(),
        })
    }

    /// Connect and read `release_version`, retrying until `total` has passed (the node may
    /// still be replaying its commit log, or the forward may not be listening yet).
    pub fn connect_ready(addr: &str, total: Duration) -> Result<(Cql, Version), CqlError> {
        let start = Instant::now();
        loop {
            let r = Cql::connect(addr, Duration::from_secs(10))
                .and_then(|c| c.release_version().map(|v| (c, v)));
            match r {
                Ok(x) => return Ok(x),
                Err(e) if start.elapsed() > total => {
                    return Err(CqlError::NotReady {
                        secs: total.as_secs(),
                        source: Box::new(e),
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// Run a statement without bound values (DDL, literal DML).
    pub fn execute(&self, cql: &str) -> Result<(), CqlError> {
        self.within(cql, self.session.query_unpaged(cql, ()))?
            .map(|_| ())
            .map_err(|e| query_error(cql)(boxed(e)))
    }

    /// Prepare a statement for [`Cql::run`].
    pub fn prepare(&self, cql: &str) -> Result<PreparedStatement, CqlError> {
        self.within(cql, self.session.prepare(cql))?
            .map_err(|e| CqlError::Prepare {
                cql: cql.to_string(),
                source: Box::new(e),
            })
    }

    /// Run a prepared statement with `values`.
    pub fn run(&self, p: &PreparedStatement, values: impl SerializeRow) -> Result<(), CqlError> {
        self.within(p.get_statement(), self.session.execute_unpaged(p, values))?
            .map(|_| ())
            .map_err(|e| query_error(p.get_statement())(boxed(e)))
    }

    /// Every row of a query, untyped, fetched page by page.
    pub fn rows(&self, cql: &str, values: impl SerializeRow) -> Result<Vec<Row>, CqlError> {
        self.within(cql, async {
            let pager = self.session.query_iter(cql, values).await.map_err(boxed)?;
            pager
                .rows_stream::<Row>()
                .map_err(boxed)?
                .try_collect::<Vec<_>>()
                .await
                .map_err(boxed)
        })?
        .map_err(query_error(cql))
    }

    /// The columns of a query's single row as integers (null as `None`).
    pub fn single_row_i64(&self, cql: &str) -> Result<Vec<Option<i64>>, CqlError> {
        let rows = self.rows(cql, ())?;
        let [row] = rows.as_slice() else {
            return Err(CqlError::RowCount {
                cql: cql.to_string(),
                rows: rows.len(),
            });
        };
        row.columns
            .iter()
            .map(as_i64)
            .collect::<Result<_, _>>()
            .map_err(|e| CqlError::Column {
                cql: cql.to_string(),
                source: Box::new(e),
            })
    }

    /// First column of a one-row query as an integer, null as 0 (`max` of an empty table).
    pub fn scalar(&self, cql: &str) -> Result<i64, CqlError> {
        let v = self.single_row_i64(cql)?;
        v.first()
            .copied()
            .ok_or_else(|| CqlError::NoColumn {
                cql: cql.to_string(),
            })
            .map(|x| x.unwrap_or(0))
    }

    /// The server's version, from `system.local`.
    pub fn release_version(&self) -> Result<Version, CqlError> {
        let rows = self.rows(
            "SELECT release_version FROM system.local WHERE key = 'local'",
            (),
        )?;
        let text = rows
            .first()
            .and_then(|r| r.columns.first())
            .and_then(|c| c.as_ref())
            .and_then(|c| c.as_text())
            .ok_or(CqlError::NoReleaseVersion)?;
        parse_version(text).ok_or_else(|| CqlError::BadReleaseVersion(text.to_string()))
    }

    /// Which schema tables this server has (probed, see the module invariants).
    pub fn schema_source(&self) -> Result<SchemaSource, CqlError> {
        let mut errs = Vec::new();
        for s in [SchemaSource::SystemSchema, SchemaSource::Legacy] {
            match self.rows(s.probe_query(), ()) {
                Ok(_) => return Ok(s),
                Err(e) => errs.push(e),
            }
        }
        Err(CqlError::NoSchemaTables(errs))
    }

    /// Does `keyspace.table` exist?
    pub fn table_exists(
        &self,
        src: SchemaSource,
        keyspace: &str,
        table: &str,
    ) -> Result<bool, CqlError> {
        Ok(!self.rows(src.table_query(), (keyspace, table))?.is_empty())
    }

    /// Every value of an integer column (a full, paged scan).
    pub fn ids(&self, table: &str, column: &str) -> Result<HashSet<i64>, CqlError> {
        let cql = format!("SELECT {column} FROM {table}");
        let mut out = HashSet::new();
        for r in self.rows(&cql, ())? {
            if let Some(id) = r.columns.first().map(as_i64).transpose()?.flatten() {
                out.insert(id);
            }
        }
        Ok(out)
    }

    /// Newest beacon `(seq, ts)` of a `(seq bigint PRIMARY KEY, ts timestamp)` table.
    pub fn newest_beacon(&self, table: &str) -> Result<Option<(i64, DateTime<Utc>)>, CqlError> {
        let Some(seq) = self
            .single_row_i64(&format!("SELECT max(seq) FROM {table}"))?
            .first()
            .copied()
            .flatten()
        else {
            return Ok(None);
        };
        let cql = format!("SELECT ts FROM {table} WHERE seq = ?");
        let rows = self.rows(&cql, (seq,))?;
        let ts = rows
            .first()
            .and_then(|r| r.columns.first())
            .and_then(|c| c.as_ref())
            .and_then(|c| c.as_cql_timestamp())
            .and_then(|t| DateTime::<Utc>::from_timestamp_millis(t.0))
            .ok_or_else(|| CqlError::NoTimestamp {
                table: table.to_string(),
                seq,
            })?;
        Ok(Some((seq, ts)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_every_supported_major_parse() {
        let v = |a, b, c| Version {
            major: a,
            minor: b,
            patch: c,
        };
        assert_eq!(parse_version("2.2.19"), Some(v(2, 2, 19)));
        assert_eq!(parse_version("3.11.16"), Some(v(3, 11, 16)));
        assert_eq!(parse_version("4.1.3-SNAPSHOT"), Some(v(4, 1, 3)));
        assert_eq!(parse_version("5.0-rc1"), Some(v(5, 0, 0)));
        assert_eq!(parse_version("5.0.2"), Some(v(5, 0, 2)));
        assert_eq!(parse_version("five"), None);
        assert!(v(3, 0, 0) > v(2, 2, 19));
    }

    #[test]
    fn schema_queries_name_the_right_tables() {
        assert!(
            SchemaSource::SystemSchema
                .table_query()
                .contains("system_schema.tables")
        );
        assert!(
            SchemaSource::Legacy
                .table_query()
                .contains("system.schema_columnfamilies")
        );
        assert!(
            SchemaSource::Legacy
                .probe_query()
                .contains("system.schema_keyspaces")
        );
    }

    #[test]
    fn a_node_that_accepts_and_never_answers_fails_within_the_deadline() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let addr = l.local_addr().expect("addr").to_string();
        // Accept and hold the connections, say nothing.
        let hold = std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming().take(4).flatten() {
                held.push(s);
            }
            std::thread::sleep(Duration::from_secs(30));
        });
        let t0 = Instant::now();
        let e = Cql::connect(&addr, Duration::from_secs(2))
            .err()
            .expect("no session");
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "{:?}: {e}",
            t0.elapsed()
        );
        assert!(matches!(e, CqlError::Deadline { .. }), "{e}");
        drop(hold);
    }

    #[test]
    fn only_loopback_forwards_are_dialled() {
        for a in ["10.0.2.15:9042", "localhost:9042", "192.0.2.1:9042"] {
            let e = Cql::connect(a, Duration::from_secs(1))
                .err()
                .expect("refused");
            assert!(matches!(e, CqlError::NotLoopback(_)), "{a}: {e}");
        }
    }

    #[test]
    fn integers_of_every_width_and_null() {
        let ok = |v: Option<CqlValue>| as_i64(&v).ok();
        assert_eq!(ok(None), Some(None));
        assert_eq!(ok(Some(CqlValue::BigInt(7))), Some(Some(7)));
        assert_eq!(ok(Some(CqlValue::Int(-3))), Some(Some(-3)));
        assert_eq!(ok(Some(CqlValue::Boolean(true))), Some(Some(1)));
        assert!(as_i64(&Some(CqlValue::Text("x".into()))).is_err());
    }
}
