//! Sandbox directories left behind by a verify that was killed (SIGKILL, OOM killer, power
//! loss of the process): libvirt auto-destroys the transient domain, but its overlays stay in
//! the sandbox root, holding space on a filesystem production VMs usually share.
//!
//! A run names its sandboxes `<domain>-verify-<pid>` ([`sandbox_name`]) and each directory
//! holds an owner marker ([`MARKER`]: pid and the process start time from `/proc/PID/stat`).
//!
//! Invariants:
//! - Only directories directly in the sandbox root whose name has that pattern are
//!   considered, never this process's own.
//! - A directory is removed only when its owner is gone: no process with its pid, or one that
//!   started at another time than the marker records (the pid was reused). With a live pid
//!   and no marker (a run between creating the directory and marking it) it is kept.
//! - Without a marker (an older run, or killed before marking) a directory is removed only if
//!   it holds nothing but files a sandbox creates, so a look-alike directory that is not a
//!   sandbox is never deleted.

use std::path::{Path, PathBuf};

/// The owner marker in each sandbox directory: `<pid> <start time in clock ticks>`.
pub const MARKER: &str = "cgsnap-verify.owner";

/// The name of this run's sandbox of `domain` (also its directory name in the sandbox root).
pub fn sandbox_name(domain: &str, pid: u32) -> String {
    format!("{domain}-verify-{pid}")
}

/// The pid in a sandbox name, if it is one.
pub fn pid_of(name: &str) -> Option<u32> {
    let (domain, pid) = name.rsplit_once("-verify-")?;
    if domain.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok().filter(|p| *p > 0)
}

/// The start time (field 22, clock ticks since boot) in a `/proc/PID/stat` line. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted after the last `)`.
pub fn start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The start time of a running process, `None` if there is no such process.
fn process_start(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .as_deref()
        .and_then(start_time)
}

/// The marker's text: `PID START\n`.
pub fn marker_text(pid: u32, start: u64) -> String {
    format!("{pid} {start}\n")
}

/// A marker's pid and start time, if it is well formed.
pub fn parse_marker(text: &str) -> Option<(u32, u64)> {
    let mut it = text.split_whitespace();
    let pid = it.next()?.parse().ok()?;
    let start = it.next()?.parse().ok()?;
    it.next().is_none().then_some((pid, start))
}

/// Why a sandbox directory could not be marked as this process's.
#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    /// This process's start time, half of the marker, is unknown.
    #[error("cannot read /proc/self/stat")]
    NoStartTime,
    /// The marker could not be written.
    #[error("{}: {source}", path.display())]
    Write {
        /// The marker file.
        path: std::path::PathBuf,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
}

/// Write this process's owner marker into a freshly created sandbox directory.
pub fn mark(dir: &Path) -> Result<(), MarkError> {
    let pid = std::process::id();
    let start = process_start(pid).ok_or(MarkError::NoStartTime)?;
    let p = dir.join(MARKER);
    std::fs::write(&p, marker_text(pid, start))
        .map_err(|source| MarkError::Write { path: p, source })
}

/// Whether a file name is one a sandbox creates (overlays, blank stand-ins, the NVRAM copy,
/// the console log, the marker).
pub fn sandbox_file(name: &str) -> bool {
    name == "console.log"
        || name == "nvram.fd"
        || name == MARKER
        || name.ends_with(".sandbox.qcow2")
        || name.ends_with(".blank.qcow2")
}

/// What is known about one candidate directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen<'a> {
    /// The directory's name.
    pub name: &'a str,
    /// Contents of its marker, if it has one.
    pub marker: Option<&'a str>,
    /// Whether every entry in it is a plain file a sandbox creates.
    pub only_sandbox_files: bool,
}

/// Whether `dir` was left by a run that is gone (see the module invariants). `start_of`: the
/// start time of a running pid, `None` if no such process.
pub fn is_stale(dir: &Seen, own_pid: u32, start_of: impl Fn(u32) -> Option<u64>) -> bool {
    let Some(pid) = pid_of(dir.name) else {
        return false;
    };
    if pid == own_pid {
        return false;
    }
    match dir.marker.and_then(parse_marker).filter(|(p, _)| *p == pid) {
        Some((_, marked)) => start_of(pid) != Some(marked),
        None => start_of(pid).is_none() && dir.only_sandbox_files,
    }
}

fn seen_only_sandbox_files(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.into_iter().all(|e| {
        e.is_ok_and(|e| {
            e.file_type().is_ok_and(|t| t.is_file())
                && e.file_name().to_str().is_some_and(sandbox_file)
        })
    })
}

/// Remove the stale sandbox directories in `root`; returns one line per directory removed
/// (or that could not be removed), for the report. A root that does not exist has none.
pub fn sweep(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let own = std::process::id();
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        if !e.file_type().is_ok_and(|t| t.is_dir()) || pid_of(&name).is_none() {
            continue;
        }
        let path: PathBuf = e.path();
        let marker = std::fs::read_to_string(path.join(MARKER)).ok();
        let seen = Seen {
            name: &name,
            marker: marker.as_deref(),
            only_sandbox_files: seen_only_sandbox_files(&path),
        };
        if is_stale(&seen, own, process_start) {
            out.push(match std::fs::remove_dir_all(&path) {
                Ok(()) => format!(
                    "removed sandbox directory {} left by a verify that is gone",
                    path.display()
                ),
                Err(err) => format!(
                    "sandbox directory {} was left by a verify that is gone and could not be removed: {err}; remove it by hand",
                    path.display()
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_names_carry_the_pid() {
        assert_eq!(pid_of(&sandbox_name("cgsnap-orders", 4242)), Some(4242));
        assert_eq!(pid_of("db-verify-1-verify-77"), Some(77));
        for not in [
            "orders",
            "orders-verify-",
            "-verify-12",
            "orders-verify-12a",
            "orders-verify-0",
            "orders-verify-+12",
            "orders-verify-99999999999",
        ] {
            assert_eq!(pid_of(not), None, "{not}");
        }
    }

    #[test]
    fn the_start_time_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "1234 (cg (snap) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 50";
        assert_eq!(start_time(stat), Some(987654));
        assert_eq!(start_time("1234 (x) S 1"), None);
        assert_eq!(start_time("garbage"), None);
        let own = process_start(std::process::id());
        assert!(own.is_some());
        assert_eq!(parse_marker(&marker_text(7, 99)), Some((7, 99)));
        assert_eq!(parse_marker("7"), None);
        assert_eq!(parse_marker("7 99 1"), None);
    }

    #[test]
    fn only_directories_of_gone_runs_are_stale() {
        let running = |p: u32| match p {
            100 => Some(5000),
            _ => None,
        };
        let seen = |name, marker, only| Seen {
            name,
            marker,
            only_sandbox_files: only,
        };
        // Owner gone: stale, with a marker or with sandbox files only.
        assert!(is_stale(
            &seen("db-verify-200", Some("200 1"), false),
            1,
            running
        ));
        assert!(is_stale(&seen("db-verify-200", None, true), 1, running));
        // Not a sandbox's contents and no marker: kept.
        assert!(!is_stale(&seen("db-verify-200", None, false), 1, running));
        // Owner alive, same start: in use. Other start: the pid was reused.
        assert!(!is_stale(
            &seen("db-verify-100", Some("100 5000"), true),
            1,
            running
        ));
        assert!(is_stale(
            &seen("db-verify-100", Some("100 4000"), true),
            1,
            running
        ));
        // Alive and unmarked (just created): kept. Marker of another pid: ignored.
        assert!(!is_stale(&seen("db-verify-100", None, true), 1, running));
        assert!(!is_stale(
            &seen("db-verify-100", Some("101 4000"), true),
            1,
            running
        ));
        // Never this run's own, never a name without the pattern.
        assert!(!is_stale(
            &seen("db-verify-200", Some("200 1"), true),
            200,
            running
        ));
        assert!(!is_stale(&seen("images", None, true), 1, running));
    }

    #[test]
    fn sweep_removes_gone_runs_and_keeps_the_rest() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path();
        // A pid that cannot exist (above the kernel's pid_max limit of 2^22).
        let gone = 4_999_999;
        let own = std::process::id();
        let mk = |name: &str, files: &[&str]| {
            let d = root.join(name);
            std::fs::create_dir_all(&d).expect("mkdir");
            for f in files {
                std::fs::write(d.join(f), "x").expect("file");
            }
            d
        };
        let left = mk(
            &sandbox_name("db", gone),
            &["vda.sandbox.qcow2", "console.log"],
        );
        let foreign = mk(&sandbox_name("db2", gone), &["data.raw"]);
        let mine = mk(&sandbox_name("db", own), &["console.log"]);
        mark(&mine).expect("marker");
        let other = mk("images", &["vda.sandbox.qcow2"]);
        let lines = sweep(root);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains(&left.display().to_string()), "{lines:?}");
        assert!(!left.exists() && foreign.exists() && mine.exists() && other.exists());
        assert!(sweep(&root.join("missing")).is_empty());
    }
}
