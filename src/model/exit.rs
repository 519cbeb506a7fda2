//! Process exit codes: a documented, stable contract for scripts and backup schedulers.
//!
//! Invariants: every library error maps to exactly one code through [`Classify`]; codes never
//! change meaning between releases (README "Exit codes" lists the same table).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
/// The exit code of a cgsnap process; the value is the code itself.
pub enum ExitCode {
    /// Success.
    Ok = 0,
    /// Unexpected internal error (a bug, or an I/O error outside the cases below).
    Internal = 1,
    /// Bad command line or invalid name (clap also uses 2).
    Usage = 2,
    /// Unknown group, domain or snapshot.
    NotFound = 3,
    /// A precondition failed: member not running, unsupported disk, block job, no space.
    Precondition = 4,
    /// Another cgsnap run holds the group lock.
    Busy = 5,
    /// The group already has an unreleased snapshot (e.g. a pre hook called twice).
    Outstanding = 6,
    /// A manifest or config file is malformed.
    Malformed = 7,
    /// libvirt failed (connection or operation); the snapshot was rolled back, VMs resumed.
    Hypervisor = 8,
    /// The freeze budget expired; the watchdog resumed the members and the snapshot was rolled back.
    FreezeBudget = 9,
    /// Release incomplete (a commit did not converge or a member is unavailable); safe to retry.
    ReleaseIncomplete = 10,
    /// Verification ran and found a violation (failed recovery, invariant, data loss, order).
    VerifyFailed = 11,
    /// Verification could not run (sandbox could not start, profile incomplete, snapshot not held).
    VerifyCouldNotRun = 12,
    /// A backup export failed (NBD read, image write, no space); none of its files was kept,
    /// the cut still serves its disks: safe to retry.
    ExportFailed = 13,
}

impl ExitCode {
    /// The number the process exits with.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Maps an error to its exit code.
pub trait Classify {
    /// The exit code a run that fails with this error ends with.
    fn exit_code(&self) -> ExitCode;
}

/// A failure ready to print: one line and the exit code it classifies as. Front ends (the
/// `cgsnap` command line, the lab commands) turn every library error into one of these.
#[derive(Debug)]
pub struct Failure {
    /// The process exit code.
    pub code: ExitCode,
    /// The whole error chain on one line.
    pub msg: String,
}

impl<E: Classify + std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        let mut msg = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            let t = s.to_string();
            if !msg.contains(&t) {
                msg.push_str(": ");
                msg.push_str(&t);
            }
            src = s.source();
        }
        Failure {
            code: e.exit_code(),
            msg: msg.replace('\n', " "),
        }
    }
}

impl Failure {
    /// A bad command line or combination of flags.
    pub fn usage(msg: impl Into<String>) -> Self {
        Failure {
            code: ExitCode::Usage,
            msg: msg.into(),
        }
    }

    /// An unexpected failure (a bug or an I/O error outside the classified cases).
    pub fn internal(msg: impl Into<String>) -> Self {
        Failure {
            code: ExitCode::Internal,
            msg: msg.into(),
        }
    }

    /// Pretty JSON of `v` for printing.
    pub fn json<T: serde::Serialize>(v: &T) -> Result<String, Failure> {
        serde_json::to_string_pretty(v).map_err(|e| Failure::internal(e.to_string()))
    }
}
