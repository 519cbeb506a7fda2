//! The shipped schedules, without scheduling anything: the systemd units in `hooks/systemd/`
//! pass `systemd-analyze verify` (no warning at all; templates checked through a `g1`
//! instance, with the install paths pointed at the built binary and the repository's wrapper,
//! since verify checks that each ExecStart executable exists), are oneshot with a start timeout
//! and no restart; and every cgsnap command line in
//! the units and in `hooks/cron/cgsnap` is accepted by the real CLI (`cgsnap help SUB`, and the
//! command itself runs against `test:///default` with an empty catalog and fails only because
//! there is no such group or snapshot, never with a usage error). The cron file's job line has
//! five time fields, a user and a command that `sh -n` accepts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const HOOKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/hooks");
const UNITS: [&str; 4] = [
    "cgsnap-backup@.service",
    "cgsnap-backup@.timer",
    "cgsnap-verify@.service",
    "cgsnap-verify@.timer",
];
const BIN: &str = "/usr/local/bin/cgsnap";
const WRAPPER: &str = "/usr/local/lib/cgsnap/cgsnap-backup-wrapper.sh";

fn unit(name: &str) -> String {
    std::fs::read_to_string(Path::new(HOOKS).join("systemd").join(name)).expect("unit file")
}

/// Values of `key=` lines in a unit file.
fn values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
        .collect()
}

fn cgsnap() -> PathBuf {
    assert_cmd::cargo::cargo_bin("cgsnap")
}

/// Run a cgsnap command line (words after `cgsnap`, GROUP and %i as `g1`) against an empty
/// catalog on `test:///default`.
fn run_cli(args: &[&str]) -> Output {
    let catalog = tempfile::tempdir().expect("catalog");
    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace("GROUP", "g1").replace("%i", "g1"))
        .collect();
    Command::new(cgsnap())
        .args(&args)
        .env("CGSNAP_CATALOG", catalog.path())
        .env("LIBVIRT_DEFAULT_URI", "test:///default")
        .output()
        .expect("run cgsnap")
}

/// The subcommand exists, and the command line parses: it fails with "unknown group / no
/// snapshot" (3) or succeeds, never with a usage error (2).
fn assert_cli_accepts(args: &[&str]) {
    let help = Command::new(cgsnap())
        .args(["help", args[0]])
        .output()
        .expect("cgsnap help");
    assert!(help.status.success(), "cgsnap help {}", args[0]);
    let out = run_cli(args);
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(3),
        "cgsnap {args:?} exited {code:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Copy the units into `dir` with the install paths replaced, plus `g1` instance links.
fn install_units(dir: &Path, replace: &dyn Fn(String) -> String) -> Vec<PathBuf> {
    let mut instances = Vec::new();
    for name in UNITS {
        let text = unit(name)
            .replace(BIN, &cgsnap().to_string_lossy())
            .replace(WRAPPER, &format!("{HOOKS}/cgsnap-backup-wrapper.sh"));
        std::fs::write(dir.join(name), replace(text)).expect("write unit");
        let inst = dir.join(name.replace('@', "@g1"));
        std::os::unix::fs::symlink(name, &inst).expect("instance link");
        instances.push(inst);
    }
    instances
}

fn analyze(units: &[PathBuf]) -> Output {
    Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(units)
        .output()
        .expect("systemd-analyze (package systemd)")
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let units = tmp.path().join("units");
    std::fs::create_dir_all(&units).expect("units dir");
    let inst = install_units(&units, &|t| t);
    let out = analyze(&inst);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {err}");
    assert!(err.trim().is_empty(), "warnings: {err}");

    // Negative control: the same check reports a misspelled directive.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).expect("bad dir");
    let inst = install_units(&bad, &|t| {
        t.replace("TimeoutStartSec=", "TimeoutStartSecs=")
    });
    let out = analyze(&inst);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TimeoutStartSecs"),
        "systemd-analyze verify must see the unit files"
    );
}

#[test]
fn services_are_bounded_oneshots_without_restart() {
    for name in ["cgsnap-backup@.service", "cgsnap-verify@.service"] {
        let text = unit(name);
        assert_eq!(values(&text, "Type"), ["oneshot"], "{name}");
        assert_eq!(values(&text, "TimeoutStartSec").len(), 1, "{name}");
        assert!(
            values(&text, "Restart").iter().all(|v| v == "no"),
            "{name} must not restart"
        );
    }
    let backup = unit("cgsnap-backup@.service");
    // The wrapper gets SIGTERM alone, so it can stop the backup and still release.
    assert_eq!(values(&backup, "KillMode"), ["mixed"]);
    assert_eq!(
        values(&backup, "ExecStart"),
        [format!("{WRAPPER} %i -- /etc/cgsnap/%i.backup")]
    );
    // "Then verify": the unit it starts on success exists.
    for target in values(&backup, "OnSuccess") {
        assert_eq!(target, "cgsnap-verify@%i.service");
        assert!(UNITS.contains(&target.replace("%i", "").as_str()));
    }
    for t in ["cgsnap-backup@.timer", "cgsnap-verify@.timer"] {
        assert_eq!(values(&unit(t), "OnCalendar").len(), 1, "{t}");
    }
}

#[test]
fn unit_commands_exist_in_the_cli() {
    let mut seen = 0;
    for name in UNITS {
        for line in ["ExecStart", "ExecStartPre", "ExecStartPost", "ExecStopPost"]
            .iter()
            .flat_map(|k| values(&unit(name), k))
        {
            // A leading "-" tells systemd to ignore the command's failure.
            let words: Vec<&str> = line.trim_start_matches('-').split_whitespace().collect();
            if words[0] == BIN {
                assert_cli_accepts(&words[1..]);
                seen += 1;
            }
            if words[0] == WRAPPER {
                // The wrapper calls `cgsnap hook pre|post --group G`.
                assert_cli_accepts(&["hook", "post", "--group", words[1]]);
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 3, "the wrapper, cgsnap prune and cgsnap verify");
}

#[test]
fn cron_line_has_schedule_user_and_valid_commands() {
    let text = std::fs::read_to_string(Path::new(HOOKS).join("cron/cgsnap")).expect("cron file");
    let jobs: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| {
            // Environment lines: NAME=value.
            !l.split_whitespace()
                .next()
                .is_some_and(|w| w.contains('=') && !w.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect();
    assert_eq!(jobs.len(), 1, "one job line: {jobs:?}");
    let fields: Vec<&str> = jobs[0].split_whitespace().collect();
    assert!(fields.len() > 6, "5 time fields, user, command");
    for f in &fields[..5] {
        assert!(
            !f.is_empty() && f.chars().all(|c| c.is_ascii_digit() || "*,/-".contains(c)),
            "time field {f:?}"
        );
    }
    assert_eq!(fields[5], "root");
    assert!(!jobs[0].contains('%'), "% is a newline in cron commands");

    let syntax = Command::new("sh")
        .args(["-n", "-c", &fields[6..].join(" ")])
        .status()
        .expect("sh");
    assert!(syntax.success(), "the command is valid sh");
    // Words of the command, `;` split off the word it ends.
    let cmd_text = fields[6..].join(" ").replace(';', " ; ");
    let cmd: Vec<&str> = cmd_text.split_whitespace().collect();
    let mut calls = 0;
    for (i, w) in cmd.iter().enumerate() {
        let args: Vec<&str> = cmd[i + 1..]
            .iter()
            .take_while(|a| !["&&", ";", "||", "}"].contains(a) && !a.starts_with('>'))
            .copied()
            .collect();
        if Path::new(w).file_name().is_some_and(|n| n == "cgsnap") {
            assert_cli_accepts(&args);
            calls += 1;
        }
        if w.ends_with("cgsnap-backup-wrapper.sh") {
            assert_eq!(*w, WRAPPER);
            assert_eq!(args[1], "--", "{args:?}");
            assert_cli_accepts(&["hook", "pre", "--group", args[0]]);
            assert_cli_accepts(&["hook", "post", "--group", args[0]]);
            calls += 1;
        }
    }
    assert_eq!(calls, 2, "the wrapper, then cgsnap verify");
    // The wrapper finds `cgsnap` through PATH.
    assert!(
        text.lines()
            .any(|l| l.starts_with("PATH=") && l.split(['=', ':']).any(|d| d == "/usr/local/bin"))
    );
}
