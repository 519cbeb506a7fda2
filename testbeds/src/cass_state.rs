//! What a Cassandra testbed's `up` started, as saved in its `state.json`: shared by the
//! testbed ([`crate::cass_bed`]) and the verification profile written from it
//! ([`crate::cass_profile`]), so neither depends on the other.
//!
//! Invariant: these types are the saved format of `state.json`; `down`, `status` and the
//! workload read back what `up` wrote.

use crate::cassandra::SyncMode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which database a testbed VM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// PostgreSQL (the `orders` role).
    Postgres,
    /// Cassandra.
    Cassandra,
}

/// One VM of a Cassandra testbed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vm {
    /// Domain name.
    pub name: String,
    /// Database it runs.
    pub engine: Engine,
    /// Loopback port forwarded to its database.
    pub port: u16,
    /// Its image directory.
    pub dir: PathBuf,
    /// Seconds from boot until its database answered.
    pub boot_to_ready_s: f64,
}

/// What `up` started (the testbed's `state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// [`SINGLE`] or [`MIXED`].
    pub testbed: String,
    /// libvirt daemon the VMs run on.
    pub uri: String,
    /// Directory of the VMs' image directories.
    pub images_dir: PathBuf,
    /// Commit log sync mode the Cassandra guest was booted with.
    pub sync: SyncMode,
    /// Version of the Cassandra distribution used.
    pub cassandra_version: String,
    /// VMs, in beacon write order.
    pub vms: Vec<Vm>,
    /// The detached workload process, once started.
    pub workload_pid: Option<u32>,
    /// When `up` began.
    pub started_at: DateTime<Utc>,
}

impl State {
    /// Loopback port of the VM running `engine`, if the testbed has one.
    pub fn port(&self, engine: Engine) -> Option<u16> {
        self.vms.iter().find(|v| v.engine == engine).map(|v| v.port)
    }
}
