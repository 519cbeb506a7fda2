//! Workloads that make an inconsistent snapshot visible, and their invariant checks.
//!
//! Per database (`orders`, `payments`): a ledger of transfers between accounts, each transfer
//! one transaction that moves money (the sum of balances never changes) and numbers itself
//! with the next id (ids have no gaps). Across databases: order `n` is committed in `orders`
//! before payment `n` (referencing order `n`) is committed in `payments`, so in any consistent
//! cut `max(payments.order_id) <= max(orders.id)`.
//!
//! Every commit the client saw acknowledged is appended to an acknowledgement log (JSON lines,
//! flushed per commit), so data loss after a restore is counted, not guessed.

use chrono::{DateTime, Utc};
use postgres::{Client, NoTls};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// What a workload or its acknowledgement log failed on.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// No connection to a PostgreSQL server.
    #[error("connect {conninfo}: {source}")]
    Connect {
        /// The libpq connection string.
        conninfo: String,
        /// The client's reason.
        #[source]
        source: postgres::Error,
    },
    /// A PostgreSQL statement of the workload failed.
    #[error("cannot {what}: {source}")]
    Pg {
        /// What the statement was for.
        what: &'static str,
        /// The server's or the client's reason.
        #[source]
        source: postgres::Error,
    },
    /// A CQL statement of the workload failed.
    #[error(transparent)]
    Cql(#[from] crate::cql::CqlError),
    /// The acknowledgement log could not be opened, read or appended to.
    #[error("{}: {source}", path.display())]
    AckIo {
        /// The log.
        path: std::path::PathBuf,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// An acknowledgement could not be encoded as JSON.
    #[error("{0}")]
    AckEncode(#[source] serde_json::Error),
    /// A line of the log other than the last is not an acknowledgement.
    #[error(
        "line {line} is not an acknowledgement ({source}): only the last line may be torn; remove or repair it"
    )]
    AckLine {
        /// 1-based line number.
        line: usize,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The log at `path` holds a malformed line ([`WorkloadError::AckLine`]).
    #[error("ack log {}: {source}", path.display())]
    AckLog {
        /// The log.
        path: std::path::PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<WorkloadError>,
    },
}

/// A PostgreSQL error of the workload statement `what`.
pub(crate) fn pg(what: &'static str) -> impl FnOnce(postgres::Error) -> WorkloadError {
    move |source| WorkloadError::Pg { what, source }
}

/// Accounts of each ledger.
pub const ACCOUNTS: i32 = 100;
/// Starting balance of every account (so the ledger's sum is fixed).
pub const INITIAL_BALANCE: i64 = 1000;

/// Which database of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `orders` (written first).
    Orders,
    /// `payments` (each referencing a committed order).
    Payments,
}

/// One acknowledged commit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ack {
    /// Database it was committed to.
    pub db: String,
    /// `transfer`, `order` or `payment`.
    pub kind: String,
    /// Id of the committed row.
    pub id: i64,
    /// When the client saw the acknowledgement.
    pub at: DateTime<Utc>,
}

/// Connect to a workload database (libpq `conninfo`, no TLS: loopback only).
pub fn connect(conninfo: &str) -> Result<Client, WorkloadError> {
    Client::connect(conninfo, NoTls).map_err(|source| WorkloadError::Connect {
        conninfo: conninfo.to_string(),
        source,
    })
}

/// Create the schema of `role` (idempotent).
pub fn init_schema(c: &mut Client, role: Role) -> Result<(), WorkloadError> {
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS ledger_account(id int PRIMARY KEY, balance bigint NOT NULL);
         CREATE TABLE IF NOT EXISTS ledger_transfer(id bigint PRIMARY KEY, src int NOT NULL,
            dst int NOT NULL, amount bigint NOT NULL, at timestamptz NOT NULL);
         CREATE TABLE IF NOT EXISTS cgsnap_beacon(seq bigint PRIMARY KEY, ts timestamptz NOT NULL);",
    )
    .map_err(pg("create the ledger schema"))?;
    c.execute(
        "INSERT INTO ledger_account SELECT g, $1 FROM generate_series(1, $2) g ON CONFLICT DO NOTHING",
        &[&INITIAL_BALANCE, &ACCOUNTS],
    )
    .map_err(pg("fund the accounts"))?;
    let ddl = match role {
        Role::Orders => {
            "CREATE TABLE IF NOT EXISTS orders(id bigint PRIMARY KEY, amount bigint NOT NULL, at timestamptz NOT NULL)"
        }
        Role::Payments => {
            "CREATE TABLE IF NOT EXISTS payments(id bigint PRIMARY KEY, order_id bigint NOT NULL, at timestamptz NOT NULL)"
        }
    };
    c.batch_execute(ddl).map_err(pg("create the role's table"))
}

fn max_id(c: &mut Client, table: &str) -> Result<i64, WorkloadError> {
    let row = c
        .query_one(
            &format!("SELECT coalesce(max(id), 0)::bigint FROM {table}"),
            &[],
        )
        .map_err(pg("read the highest id"))?;
    Ok(row.get(0))
}

struct Ledger {
    next: i64,
    rng: u64,
}

impl Ledger {
    fn new(start: i64) -> Self {
        Self {
            next: start + 1,
            rng: 0x9e37_79b9_7f4a_7c15 ^ start as u64,
        }
    }
    fn rand(&mut self, n: u64) -> u64 {
        // xorshift: deterministic, no dependency; quality is irrelevant here.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % n
    }
    /// One transfer transaction; returns its id once committed.
    fn transfer(&mut self, c: &mut Client) -> Result<i64, WorkloadError> {
        let src = self.rand(ACCOUNTS as u64) as i32 + 1;
        let dst = (src % ACCOUNTS) + 1;
        let amount = self.rand(50) as i64 + 1;
        let id = self.next;
        let mut t = c.transaction().map_err(pg("begin a transfer"))?;
        t.execute(
            "UPDATE ledger_account SET balance = balance - $1 WHERE id = $2",
            &[&amount, &src],
        )
        .map_err(pg("debit an account"))?;
        t.execute(
            "UPDATE ledger_account SET balance = balance + $1 WHERE id = $2",
            &[&amount, &dst],
        )
        .map_err(pg("credit an account"))?;
        t.execute(
            "INSERT INTO ledger_transfer VALUES ($1, $2, $3, $4, now())",
            &[&id, &src, &dst, &amount],
        )
        .map_err(pg("record a transfer"))?;
        t.commit().map_err(pg("commit a transfer"))?;
        self.next += 1;
        Ok(id)
    }
}

/// Appends acknowledged commits to a JSON-lines file.
pub struct AckLog {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl AckLog {
    /// Open (create) the log at `path` for appending.
    pub fn open(path: &Path) -> Result<Self, WorkloadError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| WorkloadError::AckIo {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }
    /// Append one acknowledgement of `kind` `id` in database `db`, stamped now.
    pub fn record(&mut self, db: &str, kind: &str, id: i64) -> Result<(), WorkloadError> {
        let a = Ack {
            db: db.to_string(),
            kind: kind.to_string(),
            id,
            at: Utc::now(),
        };
        let line = serde_json::to_string(&a).map_err(WorkloadError::AckEncode)?;
        writeln!(self.file, "{line}").map_err(|source| WorkloadError::AckIo {
            path: self.path.clone(),
            source,
        })
    }
}

/// Every acknowledgement in the log at `path` (see [`parse_acks`]).
pub fn read_acks(path: &Path) -> Result<Vec<Ack>, WorkloadError> {
    let text = std::fs::read_to_string(path).map_err(|source| WorkloadError::AckIo {
        path: path.to_path_buf(),
        source,
    })?;
    parse_acks(&text).map_err(|e| WorkloadError::AckLog {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

/// Parse an ack log. Only the last line may be malformed: it is the one a writer killed
/// mid-write leaves torn, and it is not an acknowledgement. A malformed line anywhere else
/// means the file is not (only) an ack log, and dropping it would hide acknowledged writes.
pub fn parse_acks(text: &str) -> Result<Vec<Ack>, WorkloadError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut acks = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        match serde_json::from_str(l) {
            Ok(a) => acks.push(a),
            Err(_) if i + 1 == lines.len() => {}
            Err(source) => {
                return Err(WorkloadError::AckLine {
                    line: i + 1,
                    source,
                });
            }
        }
    }
    Ok(acks)
}

/// Run the pair workload until `until` (or forever): ledger transfers on both databases and
/// order → payment pairs across them, recording every acknowledgement.
pub fn run_pair(
    orders: &str,
    payments: &str,
    log: &Path,
    until: Option<Duration>,
) -> Result<u64, WorkloadError> {
    let mut o = connect(orders)?;
    let mut p = connect(payments)?;
    let mut acks = AckLog::open(log)?;
    let mut lo = Ledger::new(max_id(&mut o, "ledger_transfer")?);
    let mut lp = Ledger::new(max_id(&mut p, "ledger_transfer")?);
    let mut n = max_id(&mut o, "orders")?.max(max_id(&mut p, "payments")?);
    let mut beacon = {
        let r = o
            .query_one(
                "SELECT coalesce(max(seq), 0)::bigint FROM cgsnap_beacon",
                &[],
            )
            .map_err(pg("read the newest beacon"))?;
        r.get::<_, i64>(0)
    };
    let start = Instant::now();
    let mut commits = 0;
    while until.is_none_or(|d| start.elapsed() < d) {
        if n % 5 == 0 {
            // Beacon: orders first, then payments, each committed before the next.
            beacon += 1;
            let mut both = [o, p];
            let r = beacon_round(&mut both, beacon);
            [o, p] = both;
            r?;
            commits += 2;
        }
        let id = lo.transfer(&mut o)?;
        acks.record("orders", "transfer", id)?;
        n += 1;
        o.execute(
            "INSERT INTO orders VALUES ($1, $2, now())",
            &[&n, &(n % 97 + 1)],
        )
        .map_err(pg("insert an order"))?;
        acks.record("orders", "order", n)?;
        let id = lp.transfer(&mut p)?;
        acks.record("payments", "transfer", id)?;
        p.execute("INSERT INTO payments VALUES ($1, $1, now())", &[&n])
            .map_err(pg("insert a payment"))?;
        acks.record("payments", "payment", n)?;
        commits += 4;
    }
    Ok(commits)
}

/// Facts of one database that the invariants are about.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Facts {
    /// Sum of all balances (constant if consistent).
    pub balance_sum: i64,
    /// Transfers recorded.
    pub transfers: i64,
    /// Highest transfer id (equals `transfers` without gaps).
    pub max_transfer: i64,
    /// Rows and max id of `orders` or `payments`.
    pub rows: i64,
    /// Highest id of `orders` or `payments`.
    pub max_row: i64,
    /// `payments` only: highest referenced order.
    pub max_order_ref: i64,
}

/// Read the facts of a database of `role`.
pub fn facts(c: &mut Client, role: Role) -> Result<Facts, WorkloadError> {
    let r = c
        .query_one(
            "SELECT (SELECT sum(balance) FROM ledger_account)::bigint,
                    (SELECT count(*) FROM ledger_transfer)::bigint,
                    (SELECT coalesce(max(id), 0) FROM ledger_transfer)::bigint",
            &[],
        )
        .map_err(pg("read the ledger facts"))?;
    let (rows, max_row, max_order_ref) = match role {
        Role::Orders => {
            let x = c
                .query_one(
                    "SELECT count(*)::bigint, coalesce(max(id), 0)::bigint FROM orders",
                    &[],
                )
                .map_err(pg("read the orders facts"))?;
            (x.get(0), x.get(1), 0)
        }
        Role::Payments => {
            let x = c
                .query_one(
                    "SELECT count(*)::bigint, coalesce(max(id), 0)::bigint, coalesce(max(order_id), 0)::bigint FROM payments",
                    &[],
                )
                .map_err(pg("read the payments facts"))?;
            (x.get(0), x.get(1), x.get(2))
        }
    };
    Ok(Facts {
        balance_sum: r.get(0),
        transfers: r.get(1),
        max_transfer: r.get(2),
        rows,
        max_row,
        max_order_ref,
    })
}

/// Invariants of one database; each violation is described.
pub fn check(f: &Facts) -> Vec<String> {
    let mut v = Vec::new();
    let total = i64::from(ACCOUNTS) * INITIAL_BALANCE;
    if f.balance_sum != total {
        v.push(format!(
            "ledger sum is {} instead of {total}",
            f.balance_sum
        ));
    }
    if f.transfers != f.max_transfer {
        v.push(format!(
            "{} transfers but max id {}: gap in ids",
            f.transfers, f.max_transfer
        ));
    }
    if f.rows != f.max_row {
        v.push(format!(
            "{} rows but max id {}: gap in ids",
            f.rows, f.max_row
        ));
    }
    v
}

/// Cross-database invariant: no payment references an order the orders database lacks.
pub fn check_cross(orders: &Facts, payments: &Facts) -> Vec<String> {
    if payments.max_order_ref > orders.max_row {
        vec![format!(
            "payments reference order {} but orders ends at {}: not a consistent cut",
            payments.max_order_ref, orders.max_row
        )]
    } else {
        Vec::new()
    }
}

/// One beacon round: `(seq, now)` committed to every database in order, each before the next.
pub fn beacon_round(clients: &mut [Client], seq: i64) -> Result<DateTime<Utc>, WorkloadError> {
    let ts = Utc::now();
    for c in clients.iter_mut() {
        c.execute("INSERT INTO cgsnap_beacon VALUES ($1, $2)", &[&seq, &ts])
            .map_err(pg("insert a beacon"))?;
    }
    Ok(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(sum: i64, tr: i64, max_tr: i64, rows: i64, max_row: i64, refd: i64) -> Facts {
        Facts {
            balance_sum: sum,
            transfers: tr,
            max_transfer: max_tr,
            rows,
            max_row,
            max_order_ref: refd,
        }
    }

    #[test]
    fn invariants_detect_each_violation() {
        let ok = f(100_000, 5, 5, 3, 3, 0);
        assert!(check(&ok).is_empty());
        assert_eq!(check(&f(99_990, 5, 5, 3, 3, 0)).len(), 1);
        assert_eq!(check(&f(100_000, 4, 5, 3, 3, 0)).len(), 1);
        assert_eq!(check(&f(100_000, 5, 5, 2, 3, 0)).len(), 1);
        assert!(check_cross(&f(0, 0, 0, 10, 10, 0), &f(0, 0, 0, 10, 10, 10)).is_empty());
        assert_eq!(
            check_cross(&f(0, 0, 0, 9, 9, 0), &f(0, 0, 0, 10, 10, 10)).len(),
            1
        );
    }

    #[test]
    fn torn_ack_lines_are_ignored() {
        let d = std::env::temp_dir().join(format!("cgsnap-acks-{}", std::process::id()));
        let mut l = AckLog::open(&d).expect("open");
        l.record("orders", "order", 1).expect("record");
        drop(l);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&d)
            .expect("reopen");
        write!(f, "{{\"db\":\"orders\",\"ki").expect("torn");
        let acks = read_acks(&d).expect("read");
        std::fs::remove_file(&d).expect("rm");
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0].id, 1);
    }

    #[test]
    fn a_malformed_line_before_the_last_is_an_error() {
        let good = r#"{"db":"orders","kind":"order","id":1,"at":"2024-01-01T00:00:00Z"}"#;
        let text = format!("{good}\ngarbage\n{good}\n");
        let e = parse_acks(&text).unwrap_err().to_string();
        assert!(e.contains("line 2 is not an acknowledgement"), "{e}");
        let n = |t: &str| parse_acks(t).map(|a| a.len()).ok();
        assert_eq!(n(&format!("{good}\n{good}\n")), Some(2));
        assert_eq!(n(&format!("{good}\n{{\"db\"")), Some(1));
        assert_eq!(n(""), Some(0));
    }
}
