//! cgsnap: crash-consistent snapshots of groups of libvirt/QEMU virtual machines.
//!
//! This is the engine library: no async runtime, no database client, no testbeds. The `cgsnap`
//! command line (`cli/`), the verifier (`verify/`) and the lab (`lab/`: demo, benchmark,
//! testbeds) are packages of their own on top of it.
//!
//! Module map (each file one concern):
//! - [`group`]: consistency groups stored in domain metadata, resolved live;
//! - [`hypervisor`]: the one boundary to libvirt (trait, adapter, fake, connection pool);
//! - [`preflight`], [`protocol`], [`watchdog`], [`snapshot`]: taking a group snapshot, with
//!   the flags every snapshot-taking command shares in [`tuning`];
//! - [`disk_order`]: the per-disk negative control (never a consistent cut);
//! - [`release`]: committing overlays back, if [`room`] says they fit; offline ([`merge`]) for
//!   a deleted member ([`vanished`]) or a shut-off one ([`offline`]);
//! - [`catalog`]: manifests, [`lock`]: their locks; [`prune`]: their retention; [`hook`]: the
//!   backup-scheduler contract;
//! - [`history`], [`metrics`]: the catalog rendered for people (HTML) and for monitoring;
//! - [`events`]: what the engine reports (progress, notes) and where tests and benchmarks hook
//!   in (probe points); the library itself writes nothing to stdout or stderr;
//! - [`exit`]: the documented exit codes and the one-line [`exit::Failure`] front ends print.

pub mod catalog;
pub mod disk_order;
pub mod domxml;
pub mod duration;
pub mod events;
pub mod exit;
pub mod group;
pub mod history;
pub mod hook;
pub mod hypervisor;
pub mod ledger;
pub mod lock;
pub mod merge;
pub mod metrics;
pub mod offline;
pub mod preflight;
pub mod protocol;
pub mod prune;
pub mod release;
pub mod remote_merge;
pub mod room;
pub mod snapshot;
pub mod tuning;
pub mod vanished;
pub mod watchdog;
