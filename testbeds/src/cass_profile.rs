//! The verification profile `cgsnap testbed up` writes for a Cassandra testbed.
//!
//! Invariant: the profile states the commit log sync mode the guests were booted with, so the
//! verifier holds each restored node to the loss bound of that mode and no looser one; members
//! are listed in beacon write order (PostgreSQL first), which the cross-member order check uses.

use crate::cass_state::{Engine, State};
use crate::cass_workload::{self, ACK_DB, BEACONS, EVENTS};
use crate::cassandra::{self, SyncMode};
use crate::pg_profile;
use std::fmt::Write as _;
use std::path::Path;

/// Largest acceptable data loss: the beacon interval is well under a second, so a few seconds
/// plus whatever the sync mode itself may lose.
pub fn rpo_seconds(sync: SyncMode) -> u64 {
    match sync {
        SyncMode::Batch => 5,
        SyncMode::Periodic { period_ms } => 5 + period_ms.div_ceil(1000),
    }
}

fn cassandra_member(out: &mut String, domain: &str, sync: SyncMode) {
    let _ = write!(
        out,
        r#"
[[member]]
domain = "{domain}"
kind = "cassandra"
port = {port}
ready_marker = "{marker}"
failure_marker = "{error}"
commitlog_sync = "{mode}"
"#,
        port = cassandra::CQL_PORT,
        marker = cassandra::READY_MARKER,
        error = cassandra::ERROR_MARKER,
        mode = match sync {
            SyncMode::Batch => "batch",
            SyncMode::Periodic { .. } => "periodic",
        },
    );
    if let SyncMode::Periodic { period_ms } = sync {
        let _ = writeln!(out, "commitlog_sync_period_ms = {period_ms}");
    }
    let _ = write!(
        out,
        r#"beacon_table = "{BEACONS}"
ack_db = "{ACK_DB}"
ack_kind = "event"
ack_table = "{EVENTS}"
# One row whose columns must all be equal: events are numbered without gaps.
invariants = ["SELECT count(*), max(id) FROM {EVENTS}"]
"#
    );
}

/// Profile text for a testbed state.
pub fn text(s: &State, acks: &Path) -> String {
    let mut o = format!(
        "# Verification profile of the {} testbed (written by `cgsnap testbed up`).\n\
         format_version = 1\nrpo_seconds = {}\nack_log = \"{}\"\n\
         # JVM start-up and commit log replay on a TCG guest.\nready_timeout_seconds = 900\n",
        s.testbed,
        rpo_seconds(s.sync),
        acks.display()
    );
    for vm in &s.vms {
        match vm.engine {
            Engine::Postgres => o.push_str(&pg_profile::member(&vm.name, cass_workload::PG_ROLE)),
            Engine::Cassandra => cassandra_member(&mut o, &vm.name, s.sync),
        }
    }
    let pg = s.vms.iter().find(|v| v.engine == Engine::Postgres);
    let cass = s.vms.iter().find(|v| v.engine == Engine::Cassandra);
    if let (Some(pg), Some(cass)) = (pg, cass) {
        let _ = write!(
            o,
            r#"
[[cross]]
name = "every event references a committed order"
ahead_domain = "{}"
ahead_sql = "SELECT coalesce(max(id), 0)::bigint FROM orders"
behind_domain = "{}"
behind_sql = "SELECT max(order_id) FROM {EVENTS}"
"#,
            pg.name, cass.name
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpo_leaves_room_for_the_sync_period() {
        assert_eq!(rpo_seconds(SyncMode::Batch), 5);
        assert_eq!(rpo_seconds(SyncMode::Periodic { period_ms: 10_000 }), 15);
        assert_eq!(rpo_seconds(SyncMode::Periodic { period_ms: 1500 }), 7);
    }
}
