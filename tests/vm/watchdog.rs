//! Real-VM tests of "never leave a VM paused": the coordinator SIGKILLed while every member is
//! frozen, and a coordinator that overruns its freeze budget.

use crate::common;

use common::*;
use std::time::{Duration, Instant};

/// Start a snapshot that holds its members frozen, and wait until they are.
fn start_frozen(lab: &Lab, group: &str, hold_ms: u64, budget: &str) -> std::process::Child {
    spawn_until(
        lab.std_cgsnap()
            .args(["snapshot", group, "--freeze-budget", budget])
            .env("CGSNAP_TEST_HOLD_FROZEN_MS", hold_ms.to_string()),
        "all members frozen",
    )
}

#[test]
fn sigkill_of_coordinator_resumes_every_member_within_budget() {
    let lab = lab("cgt-kill", 2, 2);
    lab.group_add("cgt-kill", &lab.names());
    let budget = Duration::from_secs(3);
    let mut child = start_frozen(&lab, "cgt-kill", 60_000, "3s");
    for n in lab.names() {
        assert_eq!(domstate(&n), "paused", "{n} frozen before the kill");
    }
    // SAFETY: plain kill(2) of our own child.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    assert_eq!(rc, 0);
    let _ = child.wait();
    let killed = Instant::now();
    let took =
        wait_running(&lab.names(), budget + Duration::from_secs(1)).expect("members resumed");
    println!(
        "members running again {:.0} ms after SIGKILL",
        took.as_secs_f64() * 1000.0
    );
    // A pause the dead coordinator sent that libvirtd carries out only now (played here by a
    // pause of our own): the watchdog, still sweeping, resumes it too.
    let late = &lab.names()[0];
    virsh_ok(&["suspend", late]);
    let again = wait_running(std::slice::from_ref(late), Duration::from_secs(2))
        .expect("late pause resumed by the sweeping watchdog");
    println!(
        "late pause {:.0} ms after SIGKILL resumed within {:.0} ms",
        (killed.elapsed() - again).as_secs_f64() * 1000.0,
        again.as_secs_f64() * 1000.0
    );

    // The pending manifest records the planned overlays; release cleans up whatever exists.
    let files = lab.manifest_files();
    assert_eq!(files.len(), 1);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&files[0]).expect("manifest")).expect("json");
    assert_eq!(m["state"], "pending");
    let id = m["id"].as_str().expect("id");
    lab.cgsnap().args(["release", id]).assert().success();
    // Released: the snapshot is no longer the watchdog's, a pause now is someone else's.
    if killed.elapsed() < Duration::from_secs(4) {
        virsh_ok(&["suspend", late]);
        std::thread::sleep(Duration::from_millis(1000));
        assert_eq!(domstate(late), "paused", "left alone after the release");
        virsh_ok(&["resume", late]);
    } else {
        println!("release took until the sweep ended: its stop after a release is not observed");
    }
    assert!(lab.overlays_on_disk().is_empty());
    for g in &lab.guests {
        assert_own_images(g);
        g.wait_progress(g.console_seq() + 20, Duration::from_secs(60))
            .expect("writing again");
    }
}

#[test]
fn overrunning_the_freeze_budget_resumes_and_rolls_back() {
    let lab = lab("cgt-budget", 2, 2);
    lab.group_add("cgt-budget", &lab.names());
    let start = Instant::now();
    let mut child = start_frozen(&lab, "cgt-budget", 4_000, "1s");
    // The watchdog resumes the members after the 1 s budget, while the coordinator still holds.
    let took =
        wait_running(&lab.names(), Duration::from_secs(3)).expect("watchdog resumed members");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "resumed before the coordinator woke: {took:?}"
    );
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(9), "freeze budget exit code");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&lab.manifest_files()[0]).expect("manifest"))
            .expect("json");
    assert_eq!(m["state"], "aborted", "{m}");
    assert!(
        m["error"]
            .as_str()
            .unwrap_or_default()
            .contains("freeze budget")
    );
    lab.assert_no_overlays(&lab.names());
    for g in &lab.guests {
        assert_eq!(domstate(g.name()), "running");
    }
    // A new snapshot is allowed: nothing is outstanding.
    lab.cgsnap()
        .args(["hook", "pre", "--group", "cgt-budget"])
        .assert()
        .success();
    lab.cgsnap()
        .args(["hook", "post", "--group", "cgt-budget"])
        .assert()
        .success();
}
