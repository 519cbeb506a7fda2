//! Backup cuts: a consistent cut of a group through libvirt's backup API (pull mode), which
//! serves every disk of every member over NBD as it was at the consistency point while the
//! guests run on, and never changes a disk chain (nothing to merge back).
//!
//! Invariants:
//! - The consistency rule, watchdog, freeze budget, locks and catalog states are those of
//!   `snapshot` ([`begin`]); a cut is `taken` while its jobs serve and `released` once
//!   [`end`] ended them.
//! - Each cut makes a checkpoint (persistent dirty bitmaps) named like its manifest. An
//!   incremental cut is based only on the group's last cut whose export completed and whose
//!   checkpoint is whole ([`base`]); otherwise it is full and says why.
//! - Exports: a target file is never overwritten, and a copy that fails deletes its partial
//!   target. Only libnbd speaks NBD (`hypervisor::nbd`); qcow2 files are created by
//!   `qemu-img` and written through `qemu-nbd`, never by hand ([`copy`], [`export`]).
//!
//! - While a cut is exported, its scratch filesystem is guarded ([`guard`]): filling up, it
//!   would pause the guests; the jobs end first, and the export fails instead.
//!
//! Files: [`begin`], [`end`], [`export`] (every disk of a cut), [`copy`] (one disk),
//! [`guard`] (the scratch filesystem while an export reads),
//! [`base`] (the base of an incremental), [`prepare`] (image checks, member directories),
//! [`xml`] (the job and checkpoint documents), [`error`].

pub mod base;
pub mod begin;
pub mod copy;
pub mod end;
mod error;
pub mod export;
pub mod guard;
pub mod prepare;
pub mod xml;

pub use begin::{Options, begin};
pub use end::end;
pub use error::BackupError;
