//! cgsnap's lab: everything that builds its own VMs to show or measure the engine.
//!
//! - [`demo`]: `cgsnap demo`, a throwaway group snapshotted and released end to end;
//! - [`bench`]: `cgsnap bench`, the freeze-window benchmark against the virsh baseline;
//! - [`testbed`]: `cgsnap testbed` and `cgsnap beacon`, the database testbeds and workloads.
//!
//! Invariant: this is the only package the command line reaches the testbeds through; the
//! engine (`cgsnap`) never links them, nor their async runtime and database clients.

#![deny(missing_docs)]
#![warn(clippy::too_many_lines)]

pub mod bench;
pub mod demo;
pub mod testbed;

/// Installs the handler that removes throwaway VMs when a lab or verify command is
/// interrupted (exit 128 + signal).
pub fn install_interrupt_handler() -> std::io::Result<()> {
    cgsnap_testbeds::interrupt::install()
}
