//! cgsnap: crash-consistent snapshots of groups of libvirt/QEMU virtual machines.
//!
//! Module map (each file one concern):
//! - [`group`]: consistency groups stored in domain metadata, resolved live;
//! - [`hypervisor`]: the one boundary to libvirt (trait, adapter, fake, connection pool);
//! - [`preflight`], [`protocol`], [`watchdog`], [`snapshot`]: taking a group snapshot;
//!   [`check`]: its checks alone, as a command;
//! - [`disk_order`]: the per-disk negative control (never a consistent cut);
//! - [`release`]: committing overlays back, if [`room`] says they fit; offline ([`merge`]) for
//!   a deleted member ([`vanished`]) or a shut-off one ([`offline`]); [`qemu_text`]: what
//!   QEMU's failure messages say;
//! - [`catalog`]: manifests, [`lock`]: their locks; [`prune`]: their retention; [`hook`]: the
//!   backup-scheduler contract;
//! - [`history`], [`metrics`]: the catalog rendered for people (HTML) and for monitoring;
//! - [`exit`]: the documented exit codes; [`cli`] parses and dispatches to the `*_cmd` modules.

pub mod bench;
pub mod catalog;
pub mod catalog_cmd;
pub mod check;
pub mod cli;
pub mod demo;
pub mod disk_order;
pub mod domxml;
pub mod duration;
pub mod exit;
pub mod group;
pub mod group_cmd;
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
pub mod qemu_text;
pub mod release;
pub mod remote_merge;
pub mod room;
pub mod snapshot;
pub mod testbed_cmd;
pub mod vanished;
pub mod verify_cmd;
pub mod watchdog;
