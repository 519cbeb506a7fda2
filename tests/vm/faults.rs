//! The fault suite, on one real group (two TCG writer guests, two qcow2 disks each): the
//! coordinator SIGKILLed at each phase, its watchdog killed before the freeze, libvirtd restarted during a snapshot and a release,
//! the overlay directory full or read-only (before and inside the freeze), a persistent member
//! shut down and a transient member removed between resolution and freeze, a member on an
//! unreachable host, a commit that cannot
//! converge in time, and the hook contract misused (post without pre, pre twice, two runs).
//!
//! Every case is followed by the same checks: every surviving member running, no overlay in use
//! or on disk, the catalog truthful (nothing outstanding, no snapshot marked done that is not),
//! and no acknowledged guest write missing from the disks. The suite prints a table (case,
//! result, time until all members ran again, bytes lost) and fails if any case failed or lost
//! a byte.

use crate::common;

use cgsnap_testbeds::record;
use common::*;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const G: &str = "cgt-fault";
const SCRATCH: &str = "/run/cgsnap-fault-overlays";
const NOHOST: &str = "qemu+unix:///system?socket=/run/cgsnap-fault-nohost.sock";

fn libvirtd_answers() -> bool {
    Command::new("virsh")
        .args(["-c", URI, "version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Stop libvirtd and start it again (the QEMU processes survive, paused or not).
pub(crate) fn restart_libvirtd() {
    let _ = Command::new("pkill").args(["-x", "libvirtd"]).status();
    let start = Instant::now();
    while Command::new("pgrep")
        .args(["-x", "libvirtd"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "libvirtd did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        Command::new("libvirtd")
            .arg("-d")
            .status()
            .expect("libvirtd")
            .success()
    );
    while !libvirtd_answers() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "libvirtd did not come back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn sigkill(child: &mut std::process::Child) {
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    let _ = child.wait();
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("spawn");
    assert!(st.success(), "{args:?} failed");
}

/// A tiny tmpfs used as `--overlay-dir`, unmounted on drop.
struct Scratch;

impl Scratch {
    fn new(size: &str) -> Self {
        let _ = Command::new("umount").arg(SCRATCH).status();
        std::fs::create_dir_all(SCRATCH).expect("mkdir");
        sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "tmpfs",
            SCRATCH,
        ]);
        Scratch
    }
    fn read_only(&self, ro: bool) {
        sh(&[
            "mount",
            "-o",
            if ro { "remount,ro" } else { "remount,rw" },
            SCRATCH,
        ]);
    }
    fn files(&self) -> Vec<String> {
        std::fs::read_dir(SCRATCH)
            .map(|r| {
                r.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(SCRATCH).status();
    }
}

fn err_text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

/// Run cgsnap to completion; returns (exit code, stderr).
fn run(lab: &Lab, args: &[&str]) -> (i32, String) {
    let o = lab.std_cgsnap().args(args).output().expect("cgsnap");
    (o.status.code().unwrap_or(-1), err_text(&o))
}

fn expect_code(lab: &Lab, args: &[&str], code: i32, needle: &str) {
    let (c, e) = run(lab, args);
    assert_eq!(c, code, "cgsnap {args:?}: {e}");
    assert!(
        e.contains(needle),
        "cgsnap {args:?}: {e:?} lacks {needle:?}"
    );
    assert_eq!(e.lines().count(), 1, "one-line error: {e:?}");
}

fn states(lab: &Lab) -> Vec<String> {
    list_json(lab)
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|m| m["group"] == G)
                .map(|m| m["state"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn newest_id(lab: &Lab) -> String {
    list_json(lab)
        .as_array()
        .and_then(|a| a.iter().rev().find(|m| m["group"] == G).cloned())
        .and_then(|m| m["id"].as_str().map(str::to_string))
        .expect("a snapshot of the group")
}

fn newest_state(lab: &Lab) -> String {
    states(lab).last().cloned().unwrap_or_default()
}

/// Bytes of acknowledged guest writes missing from the disks: every record a guest reported
/// done on its console must be on each of its disks (read through the live chain), 512 bytes
/// per missing record.
fn lost_bytes(lab: &Lab, alive: &[String]) -> u64 {
    let mut lost = 0;
    for g in lab
        .guests
        .iter()
        .filter(|g| alive.iter().any(|a| a == g.name()))
    {
        let done = g.console_seq();
        for (_, src) in domblklist(g.name()) {
            let on_disk = record::read(Path::new(&src))
                .ok()
                .flatten()
                .map(|r| r.seq)
                .unwrap_or(0);
            lost += done.saturating_sub(on_disk) * 512;
        }
    }
    lost
}

/// The checks after every case (panics, caught by the suite, on violation).
fn settle(lab: &Lab, alive: &[String]) {
    wait_running(alive, Duration::from_secs(30)).expect("every member running");
    let st = states(lab);
    assert!(
        st.iter().all(|s| s == "aborted" || s == "released"),
        "catalog holds an outstanding or unfinished snapshot: {st:?}"
    );
    lab.assert_no_overlays(alive);
    for g in lab
        .guests
        .iter()
        .filter(|g| alive.iter().any(|a| a == g.name()))
    {
        g.wait_progress(g.console_seq() + 10, Duration::from_secs(60))
            .expect("guest writing");
    }
}

struct Row {
    case: &'static str,
    result: Result<String, String>,
    running_after: Option<f64>,
    lost: u64,
}

/// A case returns what it observed and, if it froze members, the seconds from the fault until
/// every member ran again.
type Case<'a> = Box<dyn Fn(&Lab) -> (String, Option<f64>) + 'a>;

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

fn snapshot(lab: &Lab) -> String {
    let (c, e) = run(lab, &["snapshot", G]);
    assert_eq!(c, 0, "snapshot: {e}");
    newest_id(lab)
}

fn cases(names: Vec<String>) -> Vec<(&'static str, Case<'static>)> {
    let n1 = names.clone();
    let n2 = names.clone();
    let n3 = names.clone();
    let n4 = names.clone();
    let n5 = names.clone();
    let n0 = names.clone();
    let n6 = names.clone();
    vec![
        (
            "coordinator SIGKILL after some members paused",
            Box::new(move |lab: &Lab| {
                // Member i pauses i x 20 s late: when the first says it is paused, the other
                // is still running, mid-way through the parallel pause.
                let mut c = spawn_until(
                    lab.std_cgsnap()
                        .args(["snapshot", G, "--freeze-budget", "60s"])
                        .env("CGSNAP_TEST_HOLD_PAUSING_MS", "20000"),
                    "member paused",
                );
                let mut before: Vec<String> = n0.iter().map(|d| domstate(d)).collect();
                before.sort();
                assert_eq!(
                    before,
                    ["paused", "running"],
                    "one member paused, one not yet"
                );
                sigkill(&mut c);
                let t = wait_running(&n0, Duration::from_secs(2)).expect("watchdog resumed");
                assert_eq!(newest_state(lab), "pending", "catalog: never taken");
                let (c, e) = run(lab, &["hook", "post", "--group", G]);
                assert_eq!(c, 0, "post cleans up: {e}");
                (
                    "watchdog resumed the paused member; post removed the unused overlays".into(),
                    Some(t.as_secs_f64()),
                )
            }),
        ),
        (
            "watchdog killed before the freeze",
            Box::new(move |lab: &Lab| {
                let mut c = spawn_until(
                    lab.std_cgsnap()
                        .args(["snapshot", G])
                        .env("CGSNAP_TEST_HOLD_WATCHED_MS", "1500"),
                    "watchdog ready",
                );
                let pid = c.id().to_string();
                sh(&["pkill", "-KILL", "-P", &pid, "-f", "__watchdog"]);
                let code = c.wait().expect("wait").code();
                assert_eq!(code, Some(8), "no freeze without a watchdog");
                for n in &n6 {
                    assert_eq!(domstate(n), "running", "{n} never paused");
                }
                assert_eq!(newest_state(lab), "aborted", "catalog: nothing held");
                ("exit 8 before any freeze, aborted".into(), None)
            }),
        ),
        (
            "coordinator SIGKILL while all members frozen",
            Box::new(move |lab: &Lab| {
                let mut c = spawn_until(
                    lab.std_cgsnap()
                        .args(["snapshot", G, "--freeze-budget", "30s"])
                        .env("CGSNAP_TEST_HOLD_FROZEN_MS", "20000"),
                    "all members frozen",
                );
                sigkill(&mut c);
                let t = wait_running(&n1, Duration::from_secs(2)).expect("watchdog resumed");
                assert_eq!(newest_state(lab), "pending", "catalog: never taken");
                let (c, e) = run(lab, &["hook", "post", "--group", G]);
                assert_eq!(c, 0, "post cleans up: {e}");
                (
                    "watchdog resumed all; post removed the unused overlays".into(),
                    Some(t.as_secs_f64()),
                )
            }),
        ),
        (
            "coordinator SIGKILL after snapshot, before resume",
            Box::new(move |lab: &Lab| {
                let mut c = spawn_until(
                    lab.std_cgsnap()
                        .args(["snapshot", G, "--freeze-budget", "30s"])
                        .env("CGSNAP_TEST_HOLD_SNAPPED_MS", "20000"),
                    "member snapshotted",
                );
                sigkill(&mut c);
                let t = wait_running(&n2, Duration::from_secs(2)).expect("watchdog resumed");
                let (c, e) = run(lab, &["hook", "post", "--group", G]);
                assert_eq!(c, 0, "post commits what was cut: {e}");
                (
                    "watchdog resumed all; post committed the overlays in use".into(),
                    Some(t.as_secs_f64()),
                )
            }),
        ),
        (
            "coordinator SIGKILL during release",
            Box::new(|lab: &Lab| {
                let id = snapshot(lab);
                let mut c = spawn_until(
                    lab.std_cgsnap()
                        .args(["release", &id])
                        .env("CGSNAP_TEST_HOLD_COMMIT_MS", "60000"),
                    "commits of",
                );
                sigkill(&mut c);
                assert_eq!(newest_state(lab), "releasing");
                let (c, e) = run(lab, &["release", &id]);
                assert_eq!(c, 0, "the next release finishes: {e}");
                ("state releasing, next release finished it".into(), None)
            }),
        ),
        (
            "libvirtd restarted while all members frozen",
            Box::new(move |lab: &Lab| {
                let mut c = spawn_until(
                    lab.std_cgsnap()
                        .args(["snapshot", G, "--freeze-budget", "30s"])
                        .env("CGSNAP_TEST_HOLD_FROZEN_MS", "2000"),
                    "all members frozen",
                );
                let t = Instant::now();
                restart_libvirtd();
                let code = c.wait().expect("wait").code();
                assert_eq!(code, Some(8), "hypervisor failure exit code");
                wait_running(&n3, Duration::from_secs(15)).expect("members resumed");
                let took = t.elapsed().as_secs_f64();
                if newest_state(lab) == "failed" {
                    let (c, e) = run(lab, &["release", &newest_id(lab)]);
                    assert_eq!(c, 0, "release after a failed rollback: {e}");
                }
                (
                    format!("exit 8, snapshot {}", newest_state(lab)),
                    Some(took),
                )
            }),
        ),
        (
            "libvirtd restarted during release",
            Box::new(|lab: &Lab| {
                let id = snapshot(lab);
                let mut c = spawn_until(
                    lab.std_cgsnap()
                        .args(["release", &id])
                        .env("CGSNAP_TEST_HOLD_COMMIT_MS", "3000"),
                    "commits of",
                );
                restart_libvirtd();
                let first = c.wait().expect("wait").code();
                let (c2, e) = run(lab, &["release", &id]);
                assert_eq!(c2, 0, "release resumes after the restart: {e}");
                (
                    format!("first release exit {first:?}, retry released"),
                    None,
                )
            }),
        ),
        (
            "overlay directory full (pre-created overlays)",
            Box::new(|lab: &Lab| {
                let s = Scratch::new("128k");
                expect_code(
                    lab,
                    &["snapshot", G, "--overlay-dir", SCRATCH, "--min-free", "0"],
                    4,
                    "nothing was frozen",
                );
                assert_eq!(newest_state(lab), "aborted");
                assert!(s.files().is_empty(), "{:?}", s.files());
                ("exit 4 before any freeze, aborted".into(), None)
            }),
        ),
        (
            "overlay directory full inside the freeze",
            Box::new(move |lab: &Lab| {
                let s = Scratch::new("128k");
                let t = Instant::now();
                let (c, e) = run(
                    lab,
                    &[
                        "snapshot",
                        G,
                        "--overlay-dir",
                        SCRATCH,
                        "--min-free",
                        "0",
                        "--no-precreate",
                    ],
                );
                assert_eq!(c, 8, "{e}");
                assert!(e.contains("rolled back"), "{e}");
                let took = t.elapsed().as_secs_f64();
                wait_running(&n4, Duration::from_secs(1)).expect("resumed by cgsnap");
                assert_eq!(newest_state(lab), "aborted");
                // Monitoring sees the failed attempt (rendered after the failed command too).
                let attempt = format!("cgsnap_snapshot_last_attempt_success{{group=\"{G}\"}}");
                assert_eq!(lab.metric(&attempt), Some(0.0));
                assert!(s.files().is_empty(), "{:?}", s.files());
                ("exit 8, rolled back, members resumed".into(), Some(took))
            }),
        ),
        (
            "overlay directory read-only at preflight",
            Box::new(|lab: &Lab| {
                let s = Scratch::new("64m");
                s.read_only(true);
                expect_code(
                    lab,
                    &["snapshot", G, "--overlay-dir", SCRATCH],
                    4,
                    "Read-only file system",
                );
                ("exit 4 before any freeze".into(), None)
            }),
        ),
        (
            "overlay directory turns read-only before the freeze",
            Box::new(move |lab: &Lab| {
                let s = Scratch::new("64m");
                let mut c = spawn_until(
                    lab.std_cgsnap()
                        .args(["snapshot", G, "--overlay-dir", SCRATCH, "--min-free", "0"])
                        .arg("--no-precreate")
                        .env("CGSNAP_TEST_HOLD_RESOLVED_MS", "2000"),
                    "members resolved",
                );
                s.read_only(true);
                let t = Instant::now();
                let code = c.wait().expect("wait").code();
                assert_eq!(code, Some(8));
                let took = t.elapsed().as_secs_f64();
                wait_running(&n5, Duration::from_secs(1)).expect("resumed by cgsnap");
                assert_eq!(newest_state(lab), "aborted");
                ("exit 8, rolled back, members resumed".into(), Some(took))
            }),
        ),
        (
            "member on an unreachable host",
            Box::new(|lab: &Lab| {
                let o = lab
                    .std_cgsnap()
                    .args(["--connect", NOHOST, "snapshot", G])
                    .output()
                    .expect("cgsnap");
                let e = err_text(&o);
                assert_eq!(o.status.code(), Some(8), "{e}");
                assert!(e.contains("cannot connect to libvirt at") && e.contains("--connect"));
                ("exit 8 before anything is touched".into(), None)
            }),
        ),
        (
            "commit does not converge within --timeout",
            Box::new(|lab: &Lab| {
                let id = snapshot(lab);
                let g = &lab.guests[0];
                g.wait_progress(g.console_seq() + 50, Duration::from_secs(60))
                    .expect("writes to the overlays");
                // Copying at 1 KiB/s while the guest keeps writing cannot reach the end of
                // the overlay within 3 s: the commit must be abandoned, not waited for.
                let (c, e) = run(
                    lab,
                    &["release", &id, "--timeout", "3s", "--bandwidth", "1024"],
                );
                assert_eq!(c, 10, "{e}");
                assert!(e.contains("did not converge"), "{e}");
                assert_eq!(domstate(g.name()), "running");
                let (c, e) = run(lab, &["release", &id]);
                assert_eq!(c, 0, "a later release succeeds: {e}");
                (
                    "exit 10 after the bounded wait; retry released".into(),
                    None,
                )
            }),
        ),
        (
            "post without pre, pre twice, two concurrent runs",
            Box::new(|lab: &Lab| {
                let (c, e) = run(lab, &["hook", "post", "--group", G]);
                assert_eq!(c, 0, "post without pre: {e}");
                let (c, e) = run(lab, &["hook", "pre", "--group", G]);
                assert_eq!(c, 0, "{e}");
                expect_code(
                    lab,
                    &["hook", "pre", "--group", G],
                    6,
                    "unreleased snapshot",
                );
                let (c, e) = run(lab, &["hook", "post", "--group", G]);
                assert_eq!(c, 0, "{e}");
                let mut first = spawn_until(
                    lab.std_cgsnap()
                        .args(["snapshot", G, "--freeze-budget", "30s"])
                        .env("CGSNAP_TEST_HOLD_WATCHED_MS", "8000"),
                    "watchdog ready",
                );
                expect_code(lab, &["snapshot", G], 5, "holds the lock");
                // A run with a catalog of its own meets no group or planning lock of the
                // first: the members' host-wide locks (its watchdog's) keep it off them.
                let other = tempfile::tempdir().expect("second catalog");
                let o = Command::new(assert_cmd::cargo::cargo_bin("cgsnap"))
                    .args(["--connect", URI, "--catalog"])
                    .arg(other.path())
                    .args(["snapshot", G])
                    .output()
                    .expect("cgsnap");
                let e = err_text(&o);
                assert_eq!(o.status.code(), Some(5), "{e}");
                assert!(e.contains("is held by another cgsnap run"), "{e}");
                assert_eq!(e.lines().count(), 1, "{e}");
                assert!(first.wait().expect("wait").success());
                let (c, e) = run(lab, &["hook", "post", "--group", G]);
                assert_eq!(c, 0, "{e}");
                (
                    "post no-op 0, second pre 6, concurrent 5, other catalog 5".into(),
                    None,
                )
            }),
        ),
    ]
}

/// Run one case, then the checks every case is followed by: `alive` running on their own
/// images, writing, nothing outstanding; no acknowledged write of `checked` (alive, plus a
/// member the case left shut off) missing from its disks.
fn run_case(lab: &Lab, case: &'static str, f: Case, alive: &[String], checked: &[String]) -> Row {
    let out = catch_unwind(AssertUnwindSafe(|| {
        let r = f(lab);
        settle(lab, alive);
        r
    }));
    let lost = lost_bytes(lab, checked);
    match out {
        Ok((what, t)) => Row {
            case,
            result: Ok(what),
            running_after: t,
            lost,
        },
        Err(p) => Row {
            case,
            result: Err(panic_text(p)),
            running_after: None,
            lost,
        },
    }
}

/// A snapshot held after group resolution while `fault` stops a member: it must exit 8 with
/// the other members resumed and the attempt aborted. Returns the seconds from the fault
/// until the coordinator gave up.
fn stop_between_resolution_and_freeze(lab: &Lab, survivors: &[String], fault: &[&str]) -> f64 {
    let mut c = spawn_until(
        lab.std_cgsnap()
            .args(["snapshot", G])
            .env("CGSNAP_TEST_HOLD_RESOLVED_MS", "2000"),
        "members resolved",
    );
    sh(fault);
    let t = Instant::now();
    let code = c.wait().expect("wait").code();
    assert_eq!(code, Some(8));
    let took = t.elapsed().as_secs_f64();
    wait_running(survivors, Duration::from_secs(1)).expect("survivors resumed");
    assert_eq!(newest_state(lab), "aborted");
    took
}

#[test]
fn fault_suite_keeps_every_member_running_and_every_byte() {
    let mut lab = lab("cgt-fault", 2, 2);
    lab.group_add(G, &lab.names());
    let names = lab.names();
    let mut rows = Vec::new();
    for (case, f) in cases(names.clone()) {
        rows.push(run_case(&lab, case, f, &names, &names));
    }

    // A persistent member (as production VMs are) shut down between resolution and freeze:
    // it stays defined and shut off with its data intact, and the next snapshot names it.
    let off = format!("{G}-persistent");
    lab.add_persistent_guest(cgsnap_testbeds::guest::Spec::writer(&off, 2));
    lab.group_add(G, std::slice::from_ref(&off));
    let all: Vec<String> = names.iter().chain([&off]).cloned().collect();
    let o = off.clone();
    let n = names.clone();
    rows.push(run_case(
        &lab,
        "persistent member shut down between resolution and freeze",
        Box::new(move |lab: &Lab| {
            let took =
                stop_between_resolution_and_freeze(lab, &n, &["virsh", "-c", URI, "destroy", &o]);
            assert_eq!(domstate(&o), "shut off", "still defined, not started");
            let own: Vec<String> = inactive_sources(&o);
            assert!(
                own.iter().all(|s| !s.ends_with(".cgsnap-overlay")),
                "definition on its own images: {own:?}"
            );
            expect_code(
                lab,
                &["snapshot", G],
                4,
                &format!("member {o} (qemu:///system) is shut off"),
            );
            let (c, e) = run(lab, &["group", "remove", G, &o]);
            assert_eq!(c, 0, "group remove of a shut-off member: {e}");
            (
                "exit 8, others resumed, aborted; next snapshot exit 4 names it".into(),
                Some(took),
            )
        }),
        &names,
        &all,
    ));

    // Last: removes the second member for good (transient: destroyed is gone).
    let victim = names[1].clone();
    let survivors = vec![names[0].clone()];
    let s2 = survivors.clone();
    rows.push(run_case(
        &lab,
        "member removed between resolution and freeze",
        Box::new(move |lab: &Lab| {
            let took = stop_between_resolution_and_freeze(
                lab,
                &s2,
                &["virsh", "-c", URI, "destroy", &victim],
            );
            ("exit 8, survivor resumed, aborted".into(), Some(took))
        }),
        &survivors,
        &survivors,
    ));

    // Printed uncaptured: the table is the suite's report.
    let mut t = String::from(
        "\nfault suite (2 TCG guests x 2 qcow2 disks, writing)\n\
         | case | result | all running after | bytes lost |\n|---|---|---|---|\n",
    );
    for r in &rows {
        t.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.case,
            match &r.result {
                Ok(w) => format!("PASS: {w}"),
                Err(e) => format!("FAIL: {}", e.replace('\n', " ")),
            },
            r.running_after
                .map(|s| format!("{s:.2} s"))
                .unwrap_or_else(|| "never paused".into()),
            r.lost
        ));
    }
    let _ = std::io::stderr().write_all(t.as_bytes());
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.result.is_err() || r.lost > 0)
        .map(|r| r.case)
        .collect();
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}
