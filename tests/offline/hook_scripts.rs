//! The control flow of the shipped shell adapters (`hooks/restic/cgsnap-restic.sh` and
//! `hooks/cgsnap-backup-wrapper.sh`), without VMs: `cgsnap` and `restic` are replaced by fakes
//! (through the `CGSNAP` and `RESTIC` variables the scripts document) that log their calls and
//! exit as told. Invariants checked: pre and post of one run carry the same `--token`, new for
//! every run; post runs exactly once after every pre (backup failed, partial, pre failed, or
//! the script got SIGTERM during the backup or during pre); the backup runs only after a
//! successful pre; SIGTERM reaches every process of the backup command, and post runs only
//! once all of them have ended (also processes a backup script left behind); the exit code
//! follows the documented precedence; stdout is one summary line.
//! `tests/vm/restic.rs` runs the restic script for real against running VMs.

use crate::common::write_script;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RESTIC_SH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../hooks/restic/cgsnap-restic.sh"
);
const WRAPPER_SH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../hooks/cgsnap-backup-wrapper.sh"
);

/// Logs `cgsnap ARGS`, prints what the real hook prints, sleeps FAKE_<PHASE>_SLEEP seconds and
/// exits FAKE_<PHASE>_RC.
const FAKE_CGSNAP: &str = r#"#!/bin/sh
echo "cgsnap $*" >> "$FAKE_LOG"
case "$1 $2" in
  "hook pre")
    sleep "${FAKE_PRE_SLEEP:-0}"
    case "$*" in
      *--backup-to*) line="cgsnap: backup cut $4-20250102T030405Z of group $4 exported to /s/$4-20250102T030405Z: 2 members, 4 disks, incremental since $4-20250101T030405Z, 65536 bytes read, freeze window 9.0 ms, consistency point 2025-01-02T03:04:05+00:00" ;;
      *) line="cgsnap: snapshot $4-20250102T030405Z of group $4 taken: 2 members, 4 disks" ;;
    esac
    [ "${FAKE_PRE_RC:-0}" = 0 ] && echo "$line"
    exit "${FAKE_PRE_RC:-0}" ;;
  "hook post")
    echo "${FAKE_POST_OUT:-cgsnap: released $4-20250102T030405Z of group $4}"
    exit "${FAKE_POST_RC:-0}" ;;
esac
exit 2
"#;

/// A backup script as people write them: no trap, the real work (here a loop that appends to
/// FAKE_TICKS) in the foreground. That worker stops only a second after SIGTERM, logging when
/// it is gone, like a backup tool finishing its current chunk. It writes its pid to
/// FAKE_WORKER and keeps away from the test's pipes, so a failing test neither hangs on it
/// nor leaves it running.
const SCRIPT_BACKUP: &str = r#"#!/bin/sh
echo "script started" >> "$FAKE_LOG"
sh -c 'echo $$ > "$FAKE_WORKER"
  trap "echo worker got TERM >> \"\$FAKE_LOG\"; sleep 1; echo worker gone >> \"\$FAKE_LOG\"; exit 1" TERM
  while :; do echo tick >> "$FAKE_TICKS"; sleep 0.1; done' >/dev/null 2>&1
"#;

/// A backup script that exits 0 at once but leaves a process behind that ends a second later.
const LEAVING_BACKUP: &str = r#"#!/bin/sh
( sleep 1; echo "straggler gone" >> "$FAKE_LOG" ) &
echo "script done" >> "$FAKE_LOG"
exit 0
"#;

/// Logs `restic ARGS`; with FAKE_BACKUP_SLEEP it announces `started` and waits for SIGTERM.
const FAKE_BACKUP: &str = r#"#!/bin/sh
echo "backup $*" >> "$FAKE_LOG"
if [ -n "${FAKE_BACKUP_SLEEP:-}" ]; then
  trap 'echo "backup got TERM" >> "$FAKE_LOG"; kill $pid; exit 130' TERM
  sleep "$FAKE_BACKUP_SLEEP" & pid=$!
  echo "backup started" >> "$FAKE_LOG"
  wait $pid
fi
echo "snapshot 0123abcd saved"
exit "${FAKE_BACKUP_RC:-0}"
"#;

struct Fakes {
    dir: tempfile::TempDir,
}

impl Fakes {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, body) in [
            ("cgsnap", FAKE_CGSNAP),
            ("backup", FAKE_BACKUP),
            ("script-backup", SCRIPT_BACKUP),
            ("leaving-backup", LEAVING_BACKUP),
        ] {
            write_script(&dir.path().join(name), body);
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cmd(&self, script: &str, env: &[(&str, &str)]) -> Command {
        let mut c = Command::new("bash");
        c.arg(script)
            .env("CGSNAP", self.path("cgsnap"))
            .env("RESTIC", self.path("backup"))
            .env("FAKE_LOG", self.path("log"))
            .env("FAKE_TICKS", self.path("ticks"))
            .env("FAKE_WORKER", self.path("worker.pid"));
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    /// The lines logged so far, as written.
    fn raw_calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The calls logged so far, one per line, each `--token VALUE` written `--token T`.
    fn calls(&self) -> Vec<String> {
        self.raw_calls()
            .iter()
            .map(|l| match l.split_once(" --token ") {
                Some((head, _)) => format!("{head} --token T"),
                None => l.clone(),
            })
            .collect()
    }

    /// The token of every cgsnap call, in call order.
    fn tokens(&self) -> Vec<String> {
        self.raw_calls()
            .iter()
            .filter(|l| l.starts_with("cgsnap "))
            .map(|l| {
                l.split_once(" --token ")
                    .map(|(_, t)| t.to_string())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// pre and post of this run carried one token with `prefix`; returns it.
    fn one_token(&self, prefix: &str) -> String {
        let tokens = self.tokens();
        assert_eq!(tokens.len(), 2, "pre and post: {tokens:?}");
        assert_eq!(tokens[0], tokens[1], "one token for the run");
        assert!(
            tokens[0].starts_with(prefix) && tokens[0].len() > prefix.len() + 8,
            "{tokens:?}"
        );
        tokens[0].clone()
    }

    fn ticks(&self) -> usize {
        std::fs::read_to_string(self.path("ticks"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn wait_call(&self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.calls().iter().any(|c| c == line) {
            assert!(
                Instant::now() < deadline,
                "never saw {line:?}: {:?}",
                self.calls()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Fakes {
    /// A worker the script under test failed to stop must not outlive the test.
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.path("worker.pid")).unwrap_or_default();
        if let Ok(pid) = pid.trim().parse::<i32>() {
            // SAFETY: plain kill(2); the pid is the worker's (an error means it is gone).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(c: &mut Command) -> Run {
    let out = c.output().expect("run script");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Start the script, wait for `marker` in the call log, send SIGTERM to the script only.
fn run_terminated(f: &Fakes, mut c: Command, marker: &str) -> Run {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn script");
    f.wait_call(marker);
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: plain kill(2) of our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let status = child.wait().expect("wait script");
    Run {
        code: status.code(),
        stdout,
        stderr,
    }
}

const PRE: &str = "cgsnap hook pre --group g1 --token T";
const POST: &str = "cgsnap hook post --group g1 --token T";
const EXCLUDES: &str = "--exclude *.cgsnap-overlay --exclude /var/lib/libvirt/images/cgsnap-verify --exclude /var/lib/libvirt/images/cgsnap-restore";
const NOTHING: (&str, &str) = (
    "FAKE_POST_OUT",
    "cgsnap: nothing to release for group g1 (token T)",
);

fn one_line(r: &Run) -> &str {
    assert_eq!(r.stdout.lines().count(), 1, "stdout: {}", r.stdout);
    r.stdout.trim_end()
}

#[test]
fn scripts_parse() {
    for s in [RESTIC_SH, WRAPPER_SH] {
        let ok = Command::new("bash").args(["-n", s]).status().expect("bash");
        assert!(ok.success(), "bash -n {s}");
    }
}

#[test]
fn restic_success_backs_up_images_without_overlays_then_releases() {
    let f = Fakes::new();
    let r = run(f
        .cmd(RESTIC_SH, &[])
        .args(["g1", "/img/a", "/img/b", "--", "--tag", "x"]));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        f.calls(),
        [
            PRE.to_string(),
            format!("backup backup {EXCLUDES} --tag x /img/a /img/b"),
            POST.to_string()
        ]
    );
    let first = f.one_token("restic-");
    assert_eq!(
        one_line(&r),
        "cgsnap-restic: group g1: snapshot g1-20250102T030405Z backed up as restic snapshot 0123abcd, released; exit 0"
    );
    assert!(r.stderr.contains("snapshot 0123abcd saved"), "{}", r.stderr);

    // Without paths: the default libvirt image directory.
    let f = Fakes::new();
    let r = run(f.cmd(RESTIC_SH, &[]).arg("g1"));
    assert_eq!(r.code, Some(0));
    assert_eq!(
        f.calls()[1],
        format!("backup backup {EXCLUDES} /var/lib/libvirt/images")
    );
    assert_ne!(f.one_token("restic-"), first, "a new token for every run");
}

#[test]
fn restic_failure_and_partial_backup_still_release() {
    for (rc, words) in [
        ("1", "restic backup FAILED (restic exit 1)"),
        ("3", "PARTIAL"),
    ] {
        let f = Fakes::new();
        let r = run(f.cmd(RESTIC_SH, &[("FAKE_BACKUP_RC", rc)]).arg("g1"));
        assert_eq!(r.code, Some(rc.parse().expect("rc")));
        let calls = f.calls();
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert_eq!(calls[2], POST, "post after a failed backup");
        let line = one_line(&r);
        assert!(line.contains(words), "{line}");
        assert!(line.ends_with(&format!("released; exit {rc}")), "{line}");
    }
}

#[test]
fn restic_pre_failure_skips_the_backup_but_runs_post_and_keeps_pres_code() {
    // Another job holds the group: post of this run's token finds nothing of its own.
    let f = Fakes::new();
    let r = run(f.cmd(RESTIC_SH, &[("FAKE_PRE_RC", "6"), NOTHING]).arg("g1"));
    assert_eq!(r.code, Some(6));
    assert_eq!(f.calls(), [PRE, POST], "no backup, post of this run only");
    f.one_token("restic-");
    assert_eq!(
        one_line(&r),
        "cgsnap-restic: group g1: snapshot FAILED (cgsnap exit 6), nothing backed up, nothing to release; exit 6"
    );

    // pre failed half-way (rollback incomplete): post releases what it left; pre's code wins.
    let f = Fakes::new();
    let r = run(f.cmd(RESTIC_SH, &[("FAKE_PRE_RC", "8")]).arg("g1"));
    assert_eq!(r.code, Some(8));
    assert_eq!(f.calls(), [PRE, POST]);
    assert!(one_line(&r).ends_with("nothing backed up, released; exit 8"));

    // ... also when that release fails: pre's code, the retry names this run's token.
    let f = Fakes::new();
    let r = run(f
        .cmd(RESTIC_SH, &[("FAKE_PRE_RC", "9"), ("FAKE_POST_RC", "10")])
        .arg("g1"));
    assert_eq!(r.code, Some(9));
    let token = f.one_token("restic-");
    let line = one_line(&r);
    assert!(
        line.contains(&format!(
            "release FAILED (cgsnap exit 10; retry: cgsnap hook post --group g1 --token {token})"
        )),
        "{line}"
    );
}

#[test]
fn restic_post_failure_is_reported() {
    let f = Fakes::new();
    let r = run(f.cmd(RESTIC_SH, &[("FAKE_POST_RC", "10")]).arg("g1"));
    assert_eq!(r.code, Some(10), "post's code when only post failed");
    assert!(one_line(&r).contains("release FAILED (cgsnap exit 10"));

    // Both failed: restic's code first, the release failure still in the summary.
    let f = Fakes::new();
    let r = run(f
        .cmd(
            RESTIC_SH,
            &[("FAKE_POST_RC", "10"), ("FAKE_BACKUP_RC", "1")],
        )
        .arg("g1"));
    assert_eq!(r.code, Some(1));
    assert!(one_line(&r).contains("release FAILED"));
}

#[test]
fn restic_sigterm_during_backup_stops_it_and_releases() {
    let f = Fakes::new();
    let mut c = f.cmd(RESTIC_SH, &[("FAKE_BACKUP_SLEEP", "30")]);
    c.arg("g1");
    let start = Instant::now();
    let r = run_terminated(&f, c, "backup started");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "did not wait out the backup"
    );
    assert_eq!(r.code, Some(143), "{}", r.stderr);
    let calls = f.calls();
    assert!(calls.contains(&"backup got TERM".to_string()), "{calls:?}");
    assert_eq!(calls.last().map(String::as_str), Some(POST), "{calls:?}");
    assert!(
        one_line(&r).contains("interrupted by SIGTERM, released; exit 143"),
        "{}",
        r.stdout
    );
}

#[test]
fn restic_sigterm_during_pre_waits_for_it_skips_backup_and_releases() {
    let f = Fakes::new();
    let mut c = f.cmd(RESTIC_SH, &[("FAKE_PRE_SLEEP", "1")]);
    c.arg("g1");
    let r = run_terminated(&f, c, PRE);
    assert_eq!(r.code, Some(143));
    assert_eq!(f.calls(), [PRE, POST], "no backup after the signal");
}

#[test]
fn wrapper_releases_after_failure_and_after_sigterm() {
    let f = Fakes::new();
    let backup = f.path("backup");
    let backup = backup.to_str().expect("utf-8 path");
    let r = run(f.cmd(WRAPPER_SH, &[]).args(["g1", "--", backup, "a"]));
    assert_eq!(r.code, Some(0));
    assert_eq!(f.calls(), [PRE, "backup a", POST]);
    let first = f.one_token("wrapper-");

    let f = Fakes::new();
    let r = run(f
        .cmd(WRAPPER_SH, &[("FAKE_BACKUP_RC", "4")])
        .args(["g1", "--", backup]));
    assert_eq!(r.code, Some(4), "the backup's code");
    assert_eq!(f.calls().last().map(String::as_str), Some(POST));
    assert_ne!(f.one_token("wrapper-"), first, "a new token for every run");

    // pre failed: no backup, post of this run's token all the same; pre's code wins.
    for (pre, post) in [("5", "0"), ("9", "10")] {
        let f = Fakes::new();
        let r = run(f
            .cmd(WRAPPER_SH, &[("FAKE_PRE_RC", pre), ("FAKE_POST_RC", post)])
            .args(["g1", "--", backup]));
        assert_eq!(r.code, Some(pre.parse().expect("code")));
        assert_eq!(f.calls(), [PRE, POST]);
        f.one_token("wrapper-");
    }

    let f = Fakes::new();
    let mut c = f.cmd(WRAPPER_SH, &[("FAKE_BACKUP_SLEEP", "30")]);
    c.args(["g1", "--", backup]);
    let r = run_terminated(&f, c, "backup started");
    assert_eq!(r.code, Some(143), "{}", r.stderr);
    let calls = f.calls();
    assert!(calls.contains(&"backup got TERM".to_string()), "{calls:?}");
    assert_eq!(calls.last().map(String::as_str), Some(POST), "{calls:?}");
}

#[test]
fn sigterm_stops_a_backup_scripts_worker_before_post() {
    let f = Fakes::new();
    let script = f.path("script-backup");
    let mut c = f.cmd(WRAPPER_SH, &[]);
    c.args(["g1", "--"]).arg(&script);
    let worker_started = {
        let f = &f;
        move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while f.ticks() < 3 {
                assert!(Instant::now() < deadline, "worker never ticked");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wrapper");
    worker_started();
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: plain kill(2) of our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let status = child.wait().expect("wait wrapper");
    assert_eq!(status.code(), Some(143), "{stderr}");

    // The script itself has no trap and died at once; its worker got SIGTERM as well, and
    // post ran only once the worker was gone.
    let calls = f.calls();
    let at = |line: &str| {
        calls
            .iter()
            .position(|c| c == line)
            .unwrap_or_else(|| panic!("no {line:?} in {calls:?}"))
    };
    assert!(at("worker got TERM") < at("worker gone"), "{calls:?}");
    assert!(
        at("worker gone") < at(POST),
        "post while the worker ran: {calls:?}"
    );
    assert_eq!(calls.last().map(String::as_str), Some(POST), "{calls:?}");
    // Nothing of the backup runs on after the wrapper.
    let ticks = f.ticks();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(f.ticks(), ticks, "the worker still runs");
}

#[test]
fn post_waits_for_what_a_finished_backup_left_running() {
    let f = Fakes::new();
    let script = f.path("leaving-backup");
    let r = run(f.cmd(WRAPPER_SH, &[]).args(["g1", "--"]).arg(&script));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        f.calls(),
        [PRE, "script done", "straggler gone", POST],
        "post only after the straggler"
    );
    assert!(
        r.stderr.contains("waiting for the processes it started"),
        "{}",
        r.stderr
    );
}

#[test]
fn restic_backup_cut_mode_stages_then_backs_up_the_staging_directory() {
    let f = Fakes::new();
    let r = run(f
        .cmd(RESTIC_SH, &[("CGSNAP_BACKUP_TO", "/stage")])
        .arg("g1"));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let raw = f.raw_calls();
    assert!(
        raw[0].starts_with("cgsnap hook pre --group g1 --token restic-")
            && raw[0].ends_with(" --backup-to /stage --full-every 7"),
        "{raw:?}"
    );
    let calls = f.calls();
    assert_eq!(
        calls[1],
        format!("backup backup {EXCLUDES} /stage"),
        "the staging directory is the default path"
    );
    assert_eq!(calls[2], POST);
    assert_eq!(
        one_line(&r),
        "cgsnap-restic: group g1: backup cut g1-20250102T030405Z (incremental since g1-20250101T030405Z) backed up as restic snapshot 0123abcd, jobs ended; exit 0"
    );

    // A failed pre (here an export that failed, exit 13): no backup, post still runs, the
    // summary names the mode; CGSNAP_FULL_EVERY is passed on.
    let f = Fakes::new();
    let env = [
        ("CGSNAP_BACKUP_TO", "/stage"),
        ("CGSNAP_FULL_EVERY", "1"),
        ("FAKE_PRE_RC", "13"),
    ];
    let r = run(f.cmd(RESTIC_SH, &env).arg("g1"));
    assert_eq!(r.code, Some(13), "{}", r.stderr);
    assert!(
        f.raw_calls()[0].ends_with(" --full-every 1"),
        "{:?}",
        f.raw_calls()
    );
    assert_eq!(f.calls(), [PRE.to_string(), POST.to_string()]);
    assert_eq!(
        one_line(&r),
        "cgsnap-restic: group g1: backup cut FAILED (cgsnap exit 13), nothing backed up, jobs ended; exit 13"
    );
}
