//! Release: merge every overlay of a snapshot back into its image and remove it.
//!
//! For each disk: active block-commit of the overlay into its backing image, wait until the
//! job is ready (mirror in sync), pivot the disk back to the image, then delete the overlay.
//!
//! Invariants:
//! - Idempotent and resumable: each disk's next step is derived from the live domain XML
//!   (disk on overlay → commit; our commit job running → wait/pivot; disk on image → only the
//!   file removal is left); the [`crate::catalog::ledger`] only tells whether a disk found on its image
//!   was switched by a release at all.
//! - An overlay file is deleted only when no disk of its domain has it as source or anywhere in
//!   its backing chain, no process holds it open (QEMU's image lock), and either a release
//!   switched its disk back or it holds no data (pre-created, never used). Each overlay goes
//!   right after its own disk's pivot. A member's file on another host is deleted only through
//!   libvirt on that host, never here.
//! - A commit is started only on an overlay whose backing file is the snapshot's image, and
//!   only our own kind of job (active commit) is waited for and pivoted.
//! - A member whose domain no longer exists is released offline by [`vanished`], one
//!   that is shut off by [`offline`].
//! - A commit that makes no progress towards ready for the timeout is cancelled (the disk stays
//!   on its overlay, nothing is lost) and reported; the manifest stays `releasing` so a later
//!   run retries. Progress, not total time: a large overlay copying steadily is never cut off
//!   (a retry would start its copy over), one the guest's writes outpace is.
//!
//! Files: [`member`] (one member, live), [`pivot`] (commit, wait, pivot), [`overlay`] (use,
//! lock probe, removal), [`manifest`] (a whole snapshot), [`offline`], [`vanished`] and
//! [`remote`] (members QEMU no longer runs), [`merge`] (`qemu-img commit`), [`room`] (free
//! space for what the overlays add), [`error`], [`options`].

pub mod error;
pub mod manifest;
pub mod member;
pub mod merge;
pub mod offline;
pub mod options;
pub mod overlay;
pub mod pivot;
pub mod remote;
pub mod room;
pub mod vanished;

pub use error::ReleaseError;
pub use manifest::{SnapshotReleaseError, release_leftovers, release_snapshot};
pub use member::release_member;
pub use options::Options;
pub use overlay::remove_unused;

#[cfg(test)]
pub(crate) use member::release_one;

#[cfg(test)]
mod tests;
