//! The `postgres-pair` testbed: VMs `cgsnap-orders` and `cgsnap-payments`, each a multi-disk
//! PostgreSQL guest on a loopback port, with the ledger/order/payment schema.
//!
//! Invariants: all state lives in one state directory (`state.json`, the acknowledgement log,
//! the workload log) and one image directory; `down` removes both, the domains and the
//! workload process, whatever `up` got to.

use crate::error::TestbedError;
use crate::state_file::StateError;
use crate::{assets, guest, pg_profile, postgres, state_file, teardown, workload};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Name of the PostgreSQL pair testbed.
pub const NAME: &str = "postgres-pair";

/// One VM of the pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vm {
    /// Domain name.
    pub name: String,
    /// Which database of the workload it holds.
    pub role: workload::Role,
    /// Loopback port forwarded to its PostgreSQL.
    pub port: u16,
    /// Its image directory.
    pub dir: PathBuf,
    /// Seconds from boot until PostgreSQL was ready.
    pub boot_to_ready_s: f64,
}

/// What `up` started (the testbed's `state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// libvirt daemon the VMs run on.
    pub uri: String,
    /// Directory of the VMs' image directories.
    pub images_dir: PathBuf,
    /// Both VMs, orders first.
    pub vms: Vec<Vm>,
    /// The detached workload process, once started.
    pub workload_pid: Option<u32>,
    /// When `up` began.
    pub started_at: DateTime<Utc>,
}

impl State {
    /// libpq connection string of the VM holding `role`.
    pub fn conninfo(&self, role: workload::Role) -> Option<String> {
        self.vms
            .iter()
            .find(|v| v.role == role)
            .map(|v| postgres::conninfo(v.port))
    }
}

pub use crate::state_file::{ack_log, verify_profile};

/// The verification profile of this testbed (see `cgsnap verify --profile`).
pub fn profile_text(state_dir: &Path) -> String {
    format!(
        r#"# Verification profile of the {NAME} testbed (written by `cgsnap testbed up`).
format_version = 1
rpo_seconds = 5
ack_log = "{acks}"
{orders}{payments}
[[cross]]
name = "every payment references a committed order"
ahead_domain = "cgsnap-orders"
ahead_sql = "SELECT coalesce(max(id), 0)::bigint FROM orders"
behind_domain = "cgsnap-payments"
behind_sql = "SELECT coalesce(max(order_id), 0)::bigint FROM payments"
"#,
        acks = ack_log(state_dir).display(),
        orders = pg_profile::member("cgsnap-orders", workload::Role::Orders),
        payments = pg_profile::member("cgsnap-payments", workload::Role::Payments),
    )
}

/// Read the testbed's saved state.
pub fn load(state_dir: &Path) -> Result<State, StateError> {
    state_file::load(state_dir)
}

/// Save the testbed's state (whole or not at all).
pub fn save(state_dir: &Path, s: &State) -> Result<(), StateError> {
    state_file::save(state_dir, s)
}

/// Boot both VMs, wait until PostgreSQL is ready in each, create the schema. The VMs keep
/// running after this returns; the state is saved before anything is started so `down` can
/// always clean up.
pub fn up(
    uri: &str,
    state_dir: &Path,
    images_dir: &Path,
    ports: (u16, u16),
) -> Result<State, TestbedError> {
    state_file::ensure_absent(state_dir, NAME)?;
    std::fs::create_dir_all(state_dir).map_err(TestbedError::io(state_dir))?;
    let cache = assets::cache_dir();
    let a = assets::ensure(&cache)?;
    let images = postgres::ensure(&cache)?;
    let plan = [
        ("cgsnap-orders", workload::Role::Orders, ports.0),
        ("cgsnap-payments", workload::Role::Payments, ports.1),
    ];
    let mut state = State {
        uri: uri.to_string(),
        images_dir: images_dir.to_path_buf(),
        vms: plan
            .iter()
            .map(|(n, r, p)| Vm {
                name: n.to_string(),
                role: *r,
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
    std::fs::write(&vp, profile_text(state_dir)).map_err(TestbedError::io(&vp))?;
    let mut guests = Vec::new();
    for (n, _, p) in plan {
        let g = guest::Guest::start(uri, images_dir, postgres::spec(n, p, &images), &a)?;
        guests.push(g);
    }
    for (g, vm) in guests.iter().zip(state.vms.iter_mut()) {
        vm.boot_to_ready_s = postgres::ready_with_schema(g, vm.port, vm.role)?;
    }
    for g in guests {
        g.keep();
    }
    save(state_dir, &state)?;
    Ok(state)
}

/// Stop the workload, destroy the VMs, remove images and state.
pub fn down(state_dir: &Path) -> Result<State, TestbedError> {
    let s = load(state_dir)?;
    let vms = s.vms.iter().map(|v| (v.name.as_str(), v.dir.as_path()));
    teardown::down(state_dir, &s.uri, s.workload_pid, vms)?;
    Ok(s)
}

/// Commits per second recorded in the acknowledgement log over its whole span.
pub fn throughput(state_dir: &Path) -> Option<(usize, f64)> {
    teardown::throughput(&ack_log(state_dir))
}
