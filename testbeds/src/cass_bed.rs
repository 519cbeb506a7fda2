//! The Cassandra testbeds: `cassandra` (VM `cgsnap-cass`, one node) and `pg-cassandra` (VMs
//! `cgsnap-mix-pg`, PostgreSQL `orders`, and `cgsnap-mix-cass`, Cassandra events referencing
//! them), each with its workload, acknowledgement log and verification profile.
//!
//! Invariants: as for the PostgreSQL pair, all state lives in one state directory and one image
//! directory, the state is saved before any VM starts, and `down` removes everything `up` got
//! to. Without a Cassandra distribution, or with one whose version or Java is not supported
//! ([`crate::cass_config`]), `up` refuses before touching anything; a guest whose server cannot
//! start fails `up` at once with the server's own line, and the VMs are removed.

use crate::cassandra::{self, SyncMode};
use crate::cql::Cql;
use crate::error::TestbedError;
use crate::state_file::StateError;
use crate::{assets, cass_config, cass_workload, guest, postgres, state_file, teardown};
use chrono::Utc;
use std::path::Path;
use std::time::Duration;

/// Name of the single-node Cassandra testbed.
pub const SINGLE: &str = "cassandra";
/// Name of the PostgreSQL + Cassandra testbed.
pub const MIXED: &str = "pg-cassandra";
/// VM of the single-node testbed.
pub const CASS_VM: &str = "cgsnap-cass";
/// PostgreSQL VM of the mixed testbed.
pub const MIX_PG_VM: &str = "cgsnap-mix-pg";
/// Cassandra VM of the mixed testbed.
pub const MIX_CASS_VM: &str = "cgsnap-mix-cass";
/// Boot to CQL-ready on a TCG guest: JVM start-up and commit log replay are slow there.
const CASS_READY: Duration = Duration::from_secs(900);

pub use crate::cass_state::{Engine, State, Vm};

/// Whether `name` is one of the Cassandra testbeds.
pub fn is_cassandra_testbed(name: &str) -> bool {
    name == SINGLE || name == MIXED
}

/// VMs of a testbed (name, engine), in beacon write order.
pub fn plan(testbed: &str) -> Vec<(&'static str, Engine)> {
    if testbed == MIXED {
        vec![
            (MIX_PG_VM, Engine::Postgres),
            (MIX_CASS_VM, Engine::Cassandra),
        ]
    } else {
        vec![(CASS_VM, Engine::Cassandra)]
    }
}

pub use crate::state_file::{ack_log, verify_profile};

/// Read the testbed's saved state.
pub fn load(state_dir: &Path) -> Result<State, StateError> {
    state_file::load(state_dir)
}

/// Save the testbed's state (whole or not at all).
pub fn save(state_dir: &Path, s: &State) -> Result<(), StateError> {
    state_file::save(state_dir, s)
}

/// Boot the testbed's VMs, wait until each database answers, create the schemas. The VMs keep
/// running after this returns.
pub fn up(
    testbed: &str,
    uri: &str,
    state_dir: &Path,
    images_dir: &Path,
    ports: &[u16],
    sync: SyncMode,
) -> Result<State, TestbedError> {
    let dist = cassandra::distribution()?;
    // Version and Java are refused here, before any image is built or VM created.
    let version = cass_config::check(&dist.version, &dist.home)?;
    let plan = plan(testbed);
    if ports.len() != plan.len() {
        return Err(TestbedError::Ports {
            testbed: testbed.to_string(),
            need: plan.len(),
            got: ports.len(),
        });
    }
    state_file::ensure_absent(state_dir, testbed)?;
    std::fs::create_dir_all(state_dir).map_err(TestbedError::io(state_dir))?;
    let cache = assets::cache_dir();
    let a = assets::ensure(&cache)?;
    let cimg = cassandra::ensure(&cache, &dist, version)?;
    let pimg = if testbed == MIXED {
        Some(postgres::ensure(&cache)?)
    } else {
        None
    };
    let mut state = State {
        testbed: testbed.to_string(),
        uri: uri.to_string(),
        images_dir: images_dir.to_path_buf(),
        sync,
        cassandra_version: dist.version.clone(),
        vms: plan
            .iter()
            .zip(ports)
            .map(|((n, e), p)| Vm {
                name: n.to_string(),
                engine: *e,
                port: *p,
                dir: images_dir.join(n),
                boot_to_ready_s: 0.0,
            })
            .collect(),
        workload_pid: None,
        started_at: Utc::now(),
    };
    save(state_dir, &state)?;
    let vp = verify_profile(state_dir);
    std::fs::write(&vp, crate::cass_profile::text(&state, &ack_log(state_dir)))
        .map_err(TestbedError::io(&vp))?;
    let mut guests = Vec::new();
    for vm in &state.vms {
        let spec = match (vm.engine, &pimg) {
            (Engine::Postgres, Some(p)) => postgres::spec(&vm.name, vm.port, p),
            (Engine::Postgres, None) => return Err(TestbedError::NoPostgresImages),
            (Engine::Cassandra, _) => cassandra::spec(&vm.name, vm.port, &cimg, sync),
        };
        guests.push(guest::Guest::start(uri, images_dir, spec, &a)?);
    }
    for (g, vm) in guests.iter().zip(state.vms.iter_mut()) {
        match vm.engine {
            Engine::Postgres => {
                vm.boot_to_ready_s =
                    postgres::ready_with_schema(g, vm.port, cass_workload::PG_ROLE)?;
            }
            Engine::Cassandra => {
                // The guest reports a server that cannot start at once, in the server's words;
                // returning drops `guests`, which removes every VM started here.
                g.wait_console_or(
                    cassandra::READY_MARKER,
                    Some(cassandra::ERROR_MARKER),
                    CASS_READY,
                )?;
                let (c, _) = Cql::connect_ready(&cassandra::addr(vm.port), CASS_READY)?;
                vm.boot_to_ready_s = g.started.elapsed().as_secs_f64();
                cass_workload::init_schema(&c)?;
            }
        }
    }
    for g in guests {
        g.keep();
    }
    save(state_dir, &state)?;
    Ok(state)
}

/// Run the testbed's workload forever (the detached `__workload` process).
pub fn run_workload(state_dir: &Path) -> Result<u64, TestbedError> {
    let s = load(state_dir)?;
    let cass = s
        .port(Engine::Cassandra)
        .ok_or(TestbedError::MissingVm("Cassandra"))?;
    let log = ack_log(state_dir);
    let writes = match s.port(Engine::Postgres) {
        None => cass_workload::run_single(&cassandra::addr(cass), &log, None),
        Some(pg) => {
            cass_workload::run_mixed(&postgres::conninfo(pg), &cassandra::addr(cass), &log, None)
        }
    }?;
    Ok(writes)
}

/// Stop the workload, destroy the VMs, remove images and state.
pub fn down(state_dir: &Path) -> Result<State, TestbedError> {
    let s = load(state_dir)?;
    let vms = s.vms.iter().map(|v| (v.name.as_str(), v.dir.as_path()));
    teardown::down(state_dir, &s.uri, s.workload_pid, vms)?;
    Ok(s)
}

/// Acknowledged writes per second over the whole acknowledgement log.
pub fn throughput(state_dir: &Path) -> Option<(usize, f64)> {
    teardown::throughput(&ack_log(state_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_put_postgres_first_in_beacon_order() {
        assert_eq!(plan(SINGLE), vec![(CASS_VM, Engine::Cassandra)]);
        assert_eq!(plan(MIXED)[0], (MIX_PG_VM, Engine::Postgres));
        assert!(is_cassandra_testbed(MIXED) && !is_cassandra_testbed("postgres-pair"));
    }

    #[test]
    fn up_without_a_distribution_touches_nothing() {
        if std::env::var_os(cassandra::HOME_VAR).is_some() {
            return; // the negative case needs the variable unset
        }
        let d = std::env::temp_dir().join(format!("cgsnap-cassbed-{}", std::process::id()));
        let e = up(SINGLE, "test:///default", &d, &d, &[1], SyncMode::Batch)
            .expect_err("no distribution");
        assert!(e.to_string().contains(cassandra::HOME_VAR), "{e}");
        assert!(!d.exists(), "nothing created");
    }
}
