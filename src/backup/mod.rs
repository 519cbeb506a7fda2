//! Backup cuts: a disk's contents copied out of the NBD export libvirt's pull-mode backup
//! serves, into a qcow2 file of its own.
//!
//! Invariants:
//! - A target file is never overwritten, and a copy that fails deletes its partial target: a
//!   file that exists under a target's name is a complete export.
//! - Only libnbd speaks NBD (`hypervisor::nbd`); qcow2 files are created by `qemu-img` and
//!   written through `qemu-nbd`, never by hand.

pub mod copy;
