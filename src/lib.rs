//! cgsnap: crash-consistent snapshots of groups of libvirt/QEMU virtual machines.
//!
//! This is the engine library: no async runtime, no database client, no testbeds. The `cgsnap`
//! command line (`cli/`), the verifier (`verify/`) and the lab (`lab/`: demo, benchmark,
//! testbeds) are packages of their own on top of it.
//!
//! Layers, lowest first; a module imports only from its own layer's lower modules or from lower
//! layers (`tests/offline/layers.rs` checks it):
//! 1. [`model`]: manifest types and their state machine, exit codes, durations;
//!    [`events`]: the Reporter and Probe interfaces (the library prints nothing itself);
//! 2. [`hypervisor`]: the one boundary to libvirt (trait, adapter, fake, connection pool, URI
//!    locality, what QEMU's messages say), with [`domxml`] for the domain XML;
//! 3. [`catalog`]: the store of manifests, its locks, retention and release ledger;
//!    [`group`]: consistency groups stored in domain metadata, resolved live;
//! 4. [`release`]: committing overlays back (live, offline, vanished, remote members);
//! 5. [`snapshot`]: preflight, the group cut protocol, its watchdog, rollback, the negative
//!    controls and the tuning every snapshot-taking command shares;
//! 6. [`hook`]: the backup-scheduler contract;
//! 7. [`history`], [`metrics`]: the catalog rendered for people (HTML) and for monitoring.

pub mod catalog;
pub mod domxml;
pub mod events;
pub mod group;
pub mod history;
pub mod hook;
pub mod hypervisor;
pub mod metrics;
pub mod model;
pub mod release;
pub mod snapshot;

pub use model::{duration, exit};
