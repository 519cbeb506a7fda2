//! cgsnap-verify: restore a group snapshot into a sandbox and prove the databases recovered.
//!
//! - [`run`](mod@run): one verification, step by step; [`manifest`]: what it reads of the
//!   snapshot; [`inputs`]: the checks of copies and the ack log made before any sandbox starts;
//!   [`cross`]: the cross-member checks;
//! - [`profile`]: what each member runs and what must hold (TOML, strict);
//! - [`sandbox`]: throwaway overlays + renamed transient domains, loopback-only networking;
//!   [`stand_in`]: blank disks in place of writable disks the snapshot left out; [`isolate`]:
//!   what a sandbox must not share with the running original or the host; [`space`]: the
//!   free-space floor of the sandbox directory's filesystem; [`stale`]: sandbox directories
//!   left by a killed run;
//! - [`pg`]: PostgreSQL checks; [`cassandra`]: Cassandra checks, with [`replay`] (commit log
//!   replay from the log) and [`bound`] (loss bound by sync mode); [`beacon`]: beacon checks
//!   of every kind; [`report`]: JSON, HTML and Prometheus output.
//!
//! Invariants: frozen images are never written (every sandbox writes to its own overlays), nor
//! is any live disk (writable disks outside the snapshot get blank stand-ins);
//! all sandboxes are removed when [`run()`] returns, whatever happened; the verdict is `pass`
//! only if every check of every member and every cross-member check passed.
//!
//! Sandboxes never fill the filesystem they share with production VMs: none starts below the
//! free-space floor (`min_free`), and if free space falls below it while they run they are all
//! stopped and verify could not run (no verdict). Sandbox directories of runs that were killed
//! are removed before the floor is measured.
//!
//! The report never implies a check that did not run: when the cross-member beacon order
//! could not be checked for some members (no beacon), a note says so ([`beacon::order`]).
//!
//! Nothing passes for want of evidence: a member whose profile asks for the lost-commit check
//! must have acknowledgements of its `ack_db`/`ack_kind` before the consistency point in the
//! ack log, else verify could not run (checked before any sandbox starts: the log does not
//! cover the snapshot, or the profile names the wrong database or kind). Copies given with
//! `--images` are found by their original absolute path under DIR, or by file name only when
//! that name is unique among the snapshot's disks, and must have the recorded virtual size.

#![deny(missing_docs)]
#![warn(clippy::too_many_lines)]

pub mod beacon;
pub mod bound;
pub mod cassandra;
pub mod chain;
pub mod cross;
pub mod inputs;
pub mod isolate;
pub mod manifest;
pub mod pg;
pub mod profile;
pub mod replay;
pub mod report;
pub mod run;
pub mod sandbox;
pub mod space;
pub mod stale;
pub mod stand_in;

pub use cross::Conn;
pub use inputs::{acked_before, acks_cover, check_size, image_in};
pub use manifest::{DiskView, ManifestView, MemberView};
pub use run::{CouldNotRun, MemberCtx, Request, run};
