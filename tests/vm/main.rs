//! The real-VM integration tests, one test binary (`cargo test --test vm`): real libvirtd on
//! qemu:///system, real TCG guests, the shipped hooks with real backup tools. One module per
//! area, so `cargo test --test vm snapshot::` runs one area.
//!
//! Every test holds `common::serial()` (taken by `common::lab`) for its whole run: tests of one
//! module may run together (as each area's tests were written to: own names, ports and
//! directories), tests of two modules never do. A test that makes no lab takes it itself.
//! Cassandra has a binary of its own (`tests/vm_cassandra.rs`).

#[path = "../common/mod.rs"]
mod common;

mod backup;
mod backup_base;
mod backup_faults;
mod backup_scratch;
mod bacula;
mod bad_input;
mod bench;
mod borgmatic;
mod demo;
mod far_host;
mod faults;
mod interrupt;
mod multihost;
mod postgres;
mod release;
mod release_room;
mod restic;
mod snapshot;
mod testbed;
mod verify;
mod watchdog;
