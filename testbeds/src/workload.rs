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

pub const ACCOUNTS: i32 = 100;
pub const INITIAL_BALANCE: i64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Orders,
    Payments,
}

/// One acknowledged commit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ack {
    pub db: String,
    /// `transfer`, `order` or `payment`.
    pub kind: String,
    pub id: i64,
    pub at: DateTime<Utc>,
}

pub fn connect(conninfo: &str) -> Result<Client, String> {
    Client::connect(conninfo, NoTls).map_err(|e| format!("connect {conninfo}: {e}"))
}

fn q(e: postgres::Error) -> String {
    e.to_string()
}

/// Create the schema of `role` (idempotent).
pub fn init_schema(c: &mut Client, role: Role) -> Result<(), String> {
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS ledger_account(id int PRIMARY KEY, balance bigint NOT NULL);
         CREATE TABLE IF NOT EXISTS ledger_transfer(id bigint PRIMARY KEY, src int NOT NULL,
            dst int NOT NULL, amount bigint NOT NULL, at timestamptz NOT NULL);
         CREATE TABLE IF NOT EXISTS cgsnap_beacon(seq bigint PRIMARY KEY, ts timestamptz NOT NULL);",
    )
    .map_err(q)?;
    c.execute(
        "INSERT INTO ledger_account SELECT g, $1 FROM generate_series(1, $2) g ON CONFLICT DO NOTHING",
        &[&INITIAL_BALANCE, &ACCOUNTS],
    )
    .map_err(q)?;
    let ddl = match role {
        Role::Orders => {
            "CREATE TABLE IF NOT EXISTS orders(id bigint PRIMARY KEY, amount bigint NOT NULL, at timestamptz NOT NULL)"
        }
        Role::Payments => {
            "CREATE TABLE IF NOT EXISTS payments(id bigint PRIMARY KEY, order_id bigint NOT NULL, at timestamptz NOT NULL)"
        }
    };
    c.batch_execute(ddl).map_err(q)
}

fn max_id(c: &mut Client, table: &str) -> Result<i64, String> {
    let row = c
        .query_one(
            &format!("SELECT coalesce(max(id), 0)::bigint FROM {table}"),
            &[],
        )
        .map_err(q)?;
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
    fn transfer(&mut self, c: &mut Client) -> Result<i64, String> {
        let src = self.rand(ACCOUNTS as u64) as i32 + 1;
        let dst = (src % ACCOUNTS) + 1;
        let amount = self.rand(50) as i64 + 1;
        let id = self.next;
        let mut t = c.transaction().map_err(q)?;
        t.execute(
            "UPDATE ledger_account SET balance = balance - $1 WHERE id = $2",
            &[&amount, &src],
        )
        .map_err(q)?;
        t.execute(
            "UPDATE ledger_account SET balance = balance + $1 WHERE id = $2",
            &[&amount, &dst],
        )
        .map_err(q)?;
        t.execute(
            "INSERT INTO ledger_transfer VALUES ($1, $2, $3, $4, now())",
            &[&id, &src, &dst, &amount],
        )
        .map_err(q)?;
        t.commit().map_err(q)?;
        self.next += 1;
        Ok(id)
    }
}

/// Appends acknowledged commits to a JSON-lines file.
pub struct AckLog {
    file: std::fs::File,
}

impl AckLog {
    pub fn open(path: &Path) -> Result<Self, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self { file })
    }
    pub fn record(&mut self, db: &str, kind: &str, id: i64) -> Result<(), String> {
        let a = Ack {
            db: db.to_string(),
            kind: kind.to_string(),
            id,
            at: Utc::now(),
        };
        let line = serde_json::to_string(&a).map_err(|e| e.to_string())?;
        writeln!(self.file, "{line}").map_err(|e| e.to_string())
    }
}

pub fn read_acks(path: &Path) -> Result<Vec<Ack>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_acks(&text).map_err(|e| format!("ack log {}: {e}", path.display()))
}

/// Parse an ack log. Only the last line may be malformed: it is the one a writer killed
/// mid-write leaves torn, and it is not an acknowledgement. A malformed line anywhere else
/// means the file is not (only) an ack log, and dropping it would hide acknowledged writes.
pub fn parse_acks(text: &str) -> Result<Vec<Ack>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut acks = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        match serde_json::from_str(l) {
            Ok(a) => acks.push(a),
            Err(_) if i + 1 == lines.len() => {}
            Err(e) => {
                return Err(format!(
                    "line {} is not an acknowledgement ({e}): only the last line may be torn; remove or repair it",
                    i + 1
                ));
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
) -> Result<u64, String> {
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
            .map_err(q)?;
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
        .map_err(q)?;
        acks.record("orders", "order", n)?;
        let id = lp.transfer(&mut p)?;
        acks.record("payments", "transfer", id)?;
        p.execute("INSERT INTO payments VALUES ($1, $1, now())", &[&n])
            .map_err(q)?;
        acks.record("payments", "payment", n)?;
        commits += 4;
    }
    Ok(commits)
}

/// Facts of one database that the invariants are about.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Facts {
    pub balance_sum: i64,
    pub transfers: i64,
    pub max_transfer: i64,
    /// Rows and max id of `orders` or `payments`.
    pub rows: i64,
    pub max_row: i64,
    /// `payments` only: highest referenced order.
    pub max_order_ref: i64,
}

pub fn facts(c: &mut Client, role: Role) -> Result<Facts, String> {
    let r = c
        .query_one(
            "SELECT (SELECT sum(balance) FROM ledger_account)::bigint,
                    (SELECT count(*) FROM ledger_transfer)::bigint,
                    (SELECT coalesce(max(id), 0) FROM ledger_transfer)::bigint",
            &[],
        )
        .map_err(q)?;
    let (rows, max_row, max_order_ref) = match role {
        Role::Orders => {
            let x = c
                .query_one(
                    "SELECT count(*)::bigint, coalesce(max(id), 0)::bigint FROM orders",
                    &[],
                )
                .map_err(q)?;
            (x.get(0), x.get(1), 0)
        }
        Role::Payments => {
            let x = c
                .query_one(
                    "SELECT count(*)::bigint, coalesce(max(id), 0)::bigint, coalesce(max(order_id), 0)::bigint FROM payments",
                    &[],
                )
                .map_err(q)?;
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
pub fn beacon_round(clients: &mut [Client], seq: i64) -> Result<DateTime<Utc>, String> {
    let ts = Utc::now();
    for c in clients.iter_mut() {
        c.execute("INSERT INTO cgsnap_beacon VALUES ($1, $2)", &[&seq, &ts])
            .map_err(q)?;
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
        let e = parse_acks(&text).unwrap_err();
        assert!(e.contains("line 2 is not an acknowledgement"), "{e}");
        assert_eq!(
            parse_acks(&format!("{good}\n{good}\n")).map(|a| a.len()),
            Ok(2)
        );
        assert_eq!(
            parse_acks(&format!("{good}\n{{\"db\"")).map(|a| a.len()),
            Ok(1)
        );
        assert_eq!(parse_acks("").map(|a| a.len()), Ok(0));
    }
}
