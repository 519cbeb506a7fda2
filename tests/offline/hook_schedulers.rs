//! The shipped schedules, without scheduling anything: the systemd units in `hooks/systemd/`
//! pass `systemd-analyze verify` (no warning at all; templates checked through a `g1`
//! instance, with the install paths pointed at the built binary and the repository's wrapper,
//! since verify checks that each ExecStart executable exists), are oneshot with a start timeout
//! and no restart; and every cgsnap command line in
//! the units and in `hooks/cron/cgsnap` is accepted by the real CLI (`cgsnap help SUB`, and the
//! command itself runs against `test:///default` with an empty catalog and fails only because
//! there is no such group or snapshot, never with a usage error). The cron file's job line has
//! five time fields, a user and a command that `sh -n` accepts; run with its paths moved into a
//! temporary directory and fakes for the wrapper, restore and cgsnap, it loads GROUP.env, runs
//! backup → restore → verify and removes its restore directory, while a second run that finds
//! the first one's lock held logs "skipped" and leaves that directory alone. The borgmatic
//! configuration passes `validate-borgmatic-config`, excludes overlays and cgsnap's scratch
//! directories, and, run by the real borgmatic (Debian 12's 1.7) with a fake `cgsnap` into a
//! local borg repository, calls pre and post with one token per run (`borgmatic-` and the
//! borgmatic process id), the same for on_error after a failed pre.

use crate::common::write_script;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const HOOKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../hooks");
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
                // The wrapper calls `cgsnap hook pre|post --group G --token T`.
                assert_cli_accepts(&["hook", "post", "--group", words[1], "--token", "t-1"]);
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 3, "the wrapper, cgsnap prune and cgsnap verify");
}

#[test]
fn cron_line_has_schedule_user_and_valid_commands() {
    let text = cron_file();
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
    assert_eq!(jobs[0], cron_job(&text));
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
            assert_cli_accepts(&["hook", "pre", "--group", args[0], "--token", "t-1"]);
            assert_cli_accepts(&["hook", "post", "--group", args[0], "--token", "t-1"]);
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

fn cron_file() -> String {
    std::fs::read_to_string(Path::new(HOOKS).join("cron/cgsnap")).expect("cron file")
}

/// The job line of the cron file (the one starting with a time field).
fn cron_job(text: &str) -> &str {
    text.lines()
        .find(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .expect("a job line")
}

#[test]
fn cron_job_loads_its_env_runs_once_at_a_time_and_cleans_only_its_own_restore() {
    let t = tempfile::tempdir().expect("temp dir");
    let root = t.path();
    // The command as cron runs it (`sh -c`), every absolute path moved under `root`.
    let cmd = cron_job(&cron_file())
        .split_whitespace()
        .skip(6)
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = cmd.replace("GROUP", "g1");
    for dir in [
        "/run/lock/",
        "/var/log/",
        "/etc/cgsnap/",
        "/usr/local/lib/cgsnap/",
        "/var/lib/libvirt/images/",
    ] {
        std::fs::create_dir_all(root.join(&dir[1..])).expect("dir");
        cmd = cmd.replace(dir, &format!("{}{dir}", root.display()));
    }
    std::fs::create_dir_all(root.join("bin")).expect("bin");
    let restore = root.join("var/lib/libvirt/images/cgsnap-restore/g1");
    let script =
        |rel: &str, body: &str| write_script(&root.join(rel), &format!("#!/bin/sh\n{body}\n"));
    // The wrapper logs the variable the env file sets; restore leaves a file in its DIR.
    script(
        "usr/local/lib/cgsnap/cgsnap-backup-wrapper.sh",
        "echo \"wrapper $* metrics=${CGSNAP_METRICS_DIR:-unset}\"",
    );
    script("etc/cgsnap/g1.restore", "echo restore; touch \"$1/image\"");
    script("bin/cgsnap", "echo \"cgsnap $*\"");
    std::fs::write(root.join("etc/cgsnap/g1.env"), "CGSNAP_METRICS_DIR=/m\n").expect("env");
    let path = format!("{}/bin:/usr/bin:/bin", root.display());
    let run = || {
        Command::new("sh")
            .args(["-c", &cmd])
            .env("PATH", &path)
            .status()
            .expect("sh")
    };
    let log_text =
        || std::fs::read_to_string(root.join("var/log/cgsnap-g1.log")).unwrap_or_default();

    let st = run();
    assert!(st.success(), "{}", log_text());
    let text = log_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "wrapper g1 -- {}/etc/cgsnap/g1.backup metrics=/m"
            .replace("{}", &root.display().to_string())
    );
    assert_eq!(lines[1], "restore");
    assert!(
        lines[2].starts_with("cgsnap verify --group g1"),
        "{lines:?}"
    );
    assert!(!restore.exists(), "its restore directory is removed");

    // A run still holds the lock: the next one logs so and touches nothing.
    std::fs::create_dir_all(&restore).expect("restore dir");
    std::fs::write(restore.join("image"), b"being verified").expect("image");
    let lock = root.join("run/lock/cgsnap-g1.lock");
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "30"])
        .spawn()
        .expect("flock (util-linux)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Command::new("flock")
        .args(["-n"])
        .arg(&lock)
        .arg("true")
        .status()
        .expect("flock")
        .success()
    {
        assert!(std::time::Instant::now() < deadline, "lock never taken");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let st = run();
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(st.code(), Some(1));
    let text = log_text();
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.contains("cgsnap-cron g1: skipped, the previous run still holds"),
        "{text}"
    );
    assert_eq!(
        text.lines().count(),
        lines.len() + 1,
        "nothing else ran: {text}"
    );
    assert_eq!(
        std::fs::read(restore.join("image")).expect("left alone"),
        b"being verified"
    );
}

const BORGMATIC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../hooks/borgmatic/config.yaml"
);

/// borgmatic's own check of a shipped configuration, which must pass.
fn validate_borgmatic(config: &str) {
    let out = Command::new("validate-borgmatic-config")
        .args(["-c", config])
        .output()
        .expect("validate-borgmatic-config (package borgmatic)");
    assert!(
        out.status.success(),
        "{config}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn borgmatic_config_validates_and_excludes_overlays_and_scratch_directories() {
    validate_borgmatic(BORGMATIC);
    let text = std::fs::read_to_string(BORGMATIC).expect("config");
    for exclude in [
        "- '*.cgsnap-overlay'",
        "- /var/lib/libvirt/images/cgsnap-verify",
        "- /var/lib/libvirt/images/cgsnap-restore",
    ] {
        assert!(
            text.lines().any(|l| l.trim() == exclude),
            "{exclude} missing"
        );
    }
}

#[test]
fn borgmatic_hooks_use_one_token_per_run_also_on_error() {
    let t = tempfile::tempdir().expect("temp dir");
    let root = t.path();
    let images = root.join("images");
    std::fs::create_dir_all(&images).expect("images");
    std::fs::write(images.join("vm.qcow2"), b"frozen").expect("image");
    let repo = root.join("repo");
    let log = root.join("log");
    let fake = root.join("cgsnap");
    write_script(
        &fake,
        "#!/bin/sh\necho \"$*\" >> \"$FAKE_LOG\"\n\
         [ \"$2\" = pre ] && exit \"${FAKE_PRE_RC:-0}\"\nexit 0\n",
    );
    let cfg = std::fs::read_to_string(BORGMATIC)
        .expect("config")
        .replace(
            "/var/lib/libvirt/images\n",
            &format!("{}\n", images.display()),
        )
        .replace("/var/lib/cgsnap/snapshots", &images.to_string_lossy())
        .replace("/var/backups/cgsnap-borg", &repo.to_string_lossy())
        .replace("cgsnap hook", &format!("{} hook", fake.display()))
        .replace("GROUP", "g1");
    let cfg_path = root.join("borgmatic.yaml");
    std::fs::write(&cfg_path, cfg).expect("config");
    let cmd = |program: &str| {
        let mut c = Command::new(program);
        c.env("BORG_BASE_DIR", root)
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .env("FAKE_LOG", &log);
        c
    };
    let init = cmd("borg")
        .args(["init", "--encryption=none"])
        .arg(&repo)
        .output()
        .expect("borg");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let borgmatic = |pre_rc: &str| {
        let child = cmd("borgmatic")
            .arg("-c")
            .arg(&cfg_path)
            .arg("create")
            .env("FAKE_PRE_RC", pre_rc)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("borgmatic");
        let pid = child.id();
        let out = child.wait_with_output().expect("borgmatic");
        let calls = std::fs::read_to_string(&log).unwrap_or_default();
        std::fs::remove_file(&log).ok();
        (pid, out, calls)
    };

    let (pid, out, calls) = borgmatic("0");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = format!("borgmatic-{pid}");
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        [
            format!("hook pre --group g1 --token {token}"),
            format!("hook post --group g1 --token {token}")
        ]
    );

    // pre fails (another job holds the group): no backup, on_error runs post of this run.
    let (pid2, out, calls) = borgmatic("6");
    assert!(!out.status.success());
    assert_ne!(pid2, pid);
    let token = format!("borgmatic-{pid2}");
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        [
            format!("hook pre --group g1 --token {token}"),
            format!("hook post --group g1 --token {token}")
        ]
    );
}

const BORGMATIC_CUT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../hooks/borgmatic/config-backup-cut.yaml"
);

#[test]
fn borgmatic_backup_cut_config_validates_and_its_hooks_parse() {
    validate_borgmatic(BORGMATIC_CUT);
    let staging = tempfile::tempdir().expect("staging");
    let text = std::fs::read_to_string(BORGMATIC_CUT).expect("config");
    let hooks: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- cgsnap "))
        .map(|l| {
            l.replace("\"borgmatic-$PPID\"", "borgmatic-1")
                .replace("/var/lib/cgsnap/staging", &staging.path().to_string_lossy())
        })
        .collect();
    assert_eq!(hooks.len(), 3, "before_backup, after_backup, on_error");
    assert!(
        hooks[0].starts_with("hook pre ") && hooks[0].contains(" --backup-to "),
        "{}",
        hooks[0]
    );
    for h in &hooks {
        let words: Vec<&str> = h.split_whitespace().collect();
        assert_cli_accepts(&words);
    }
}
