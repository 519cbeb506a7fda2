//! cgsnap: crash-consistent snapshots of groups of libvirt/QEMU virtual machines.
//!
//! This is the engine library: no async runtime, no database client, no testbeds. The `cgsnap`
//! command line (`cli/`), the verifier (`verify/`) and the lab (`lab/`: demo, benchmark,
//! testbeds) are packages of their own on top of it.
//!
//! Layers, lowest first; a module imports only from its own layer or from lower ones
//! (`tests/offline/layers.rs` checks it, `docs/architecture.md` draws it):
//! 1. [`model`]: manifest types and their state machine, exit codes, durations;
//!    [`events`]: the Reporter and Probe interfaces (the library prints nothing itself);
//! 2. [`hypervisor`]: the one boundary to libvirt (trait, adapter, connection pool, URI
//!    locality, what QEMU's messages say; the fake for tests) and to NBD exports (libnbd),
//!    with [`domxml`];
//! 3. [`group`]: consistency groups stored in domain metadata, resolved live;
//! 4. [`catalog`]: the store of manifests, its locks, retention and release ledger;
//! 5. [`release`]: committing overlays back (live, offline, vanished, remote members);
//! 6. [`snapshot`]: preflight, the group cut protocol, its watchdog, rollback, the negative
//!    controls and the tuning every snapshot-taking command shares (a failed cut rolls back
//!    through release, hence above it);
//! 7. [`backup`]: the backup cut, its end, and its disks copied out of their NBD exports into
//!    qcow2 files (full or incremental from a dirty bitmap) while a guard keeps its scratch
//!    filesystem from filling under the guests;
//! 8. [`report`]: the catalog and the groups' DR policies rendered for people (compliance
//!    status, trends, HTML and JSON);
//! 9. [`hook`]: the backup-scheduler contract; [`metrics`]: the catalog rendered for
//!    monitoring, compliance included.

#![deny(missing_docs)]
#![warn(clippy::too_many_lines)]

pub mod backup;
pub mod catalog;
pub mod domxml;
pub mod events;
pub mod group;
pub mod hook;
pub mod hypervisor;
pub mod metrics;
pub mod model;
pub mod release;
pub mod report;
pub mod snapshot;

pub use model::{duration, exit};
