//! The `cgsnap` binary: the command line over the engine (`cgsnap`), the verifier
//! (`cgsnap-verify`) and the lab (`cgsnap-lab`).
//!
//! Invariant: this crate is the one place that prints; the libraries return values and errors.

mod args;
mod backup_cmd;
mod catalog_cmd;
mod check;
mod events;
mod group_cmd;
mod report_cmd;
mod run;
mod snap_cmd;
mod verify_cmd;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(run::main())
}
