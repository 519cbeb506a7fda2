//! Testbeds: small, reproducible TCG guests built from Debian packages, for the demo, the
//! integration tests and the benchmark.
//!
//! - [`assets`]: kernel + initramfs, built by `guest/build.sh` (embedded) and cached;
//! - [`guest`]: a transient libvirt domain with several qcow2 disks whose `/init` writes a
//!   sequence record to every disk in order, removed with everything it created on drop;
//! - [`interrupt`]: removing registered guests and sandboxes when the process is interrupted;
//! - [`record`]: reading those records back from an image (frozen, overlay or released);
//! - [`teardown`]: stopping a testbed's workload and removing its VMs;
//! - [`postgres`], [`pair`], [`workload`], [`pg_profile`]: the PostgreSQL guests, pair testbed,
//!   workload and the verification profile member of a PostgreSQL guest;
//! - [`cassandra`], [`cql`], [`cass_workload`], [`cass_bed`], [`cass_state`], [`cass_profile`]:
//!   Cassandra guests built from a user-supplied distribution, the CQL client, workload,
//!   testbeds, their saved state and profile; [`cass_config`]: the versions and Javas supported
//!   and each version's `cassandra.yaml` keys; [`cass_yaml`], [`cass_watch`]: the guest's shell
//!   helpers editing that file and watching the server start;
//! - [`error`]: what bringing a testbed up or down failed on.

#![deny(missing_docs)]
#![warn(clippy::too_many_lines)]

pub mod assets;
pub mod cass_bed;
pub mod cass_config;
pub mod cass_profile;
pub mod cass_state;
pub mod cass_watch;
pub mod cass_workload;
pub mod cass_yaml;
pub mod cassandra;
pub mod cql;
pub mod cql_error;
pub mod cql_route;
pub mod error;
pub mod guest;
pub mod interrupt;
pub mod pair;
pub mod pg_profile;
pub mod postgres;
pub mod record;
pub mod state_file;
pub mod teardown;
pub mod workload;
