//! The `[[member]]` block of a verification profile for a PostgreSQL testbed guest, shared by
//! every testbed that runs one (`postgres-pair`, `pg-cassandra`).
//!
//! Invariant: the invariants are exactly what the workload of the member's role keeps on the
//! live system (balances sum to the initial total, transfer and order/payment ids without
//! gaps), and the acknowledgement fields name the database, kind and table that workload logs.

use crate::postgres;
use crate::workload::{self, Role};

/// (database, acknowledgement kind, table) of the rows a role's workload numbers.
fn acked(role: Role) -> (&'static str, &'static str, &'static str) {
    match role {
        Role::Orders => ("orders", "order", "orders"),
        Role::Payments => ("payments", "payment", "payments"),
    }
}

/// The profile member for guest `domain` running the workload of `role`.
pub fn member(domain: &str, role: Role) -> String {
    let (db, kind, table) = acked(role);
    format!(
        r#"
[[member]]
domain = "{domain}"
kind = "postgres"
port = {port}
user = "postgres"
password = "{pw}"
ready_marker = "{ready}"
failure_marker = "{error}"
beacon_table = "cgsnap_beacon"
ack_db = "{db}"
ack_kind = "{kind}"
ack_table = "{table}"
invariants = [
  "SELECT sum(balance) = {total} FROM ledger_account",
  "SELECT count(*) = coalesce(max(id), 0) FROM ledger_transfer",
  "SELECT count(*) = coalesce(max(id), 0) FROM {table}",
]
"#,
        port = postgres::GUEST_PORT,
        pw = postgres::PASSWORD,
        ready = postgres::READY_MARKER,
        error = postgres::ERROR_MARKER,
        total = i64::from(workload::ACCOUNTS) * workload::INITIAL_BALANCE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_the_roles_table_in_acks_and_invariants() {
        let m = member("cgsnap-payments", Role::Payments);
        assert!(m.contains("domain = \"cgsnap-payments\""), "{m}");
        assert!(m.contains("ack_table = \"payments\""), "{m}");
        assert!(m.contains("FROM payments\""), "{m}");
        assert!(m.contains("= 100000 FROM ledger_account"), "{m}");
        assert!(!member("o", Role::Orders).contains("payments"));
    }
}
