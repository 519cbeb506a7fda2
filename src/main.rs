//! The `cgsnap` binary: all logic lives in the library; see `cgsnap::cli`.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(cgsnap::cli::main())
}
