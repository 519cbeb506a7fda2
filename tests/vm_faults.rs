//! Faults around the freeze: libvirtd restarted while every member is frozen. Each case asserts
//! every VM running again, the snapshot rolled back (no overlay in use or on disk), the catalog
//! truthful, and the disks' data intact.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn libvirtd_answers() -> bool {
    Command::new("virsh")
        .args(["-c", URI, "version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Stop libvirtd and start it again (the QEMU processes survive, paused or not).
fn restart_libvirtd() {
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

#[test]
fn libvirtd_restart_while_frozen_resumes_members_and_rolls_back() {
    let lab = lab("cgt-fault", 2, 2);
    lab.group_add("cgt-fault", &lab.names());
    let mut child = spawn_until(
        lab.std_cgsnap()
            .args(["snapshot", "cgt-fault", "--freeze-budget", "30s"])
            .env("CGSNAP_TEST_HOLD_FROZEN_MS", "2000"),
        "all members frozen",
    );
    for n in lab.names() {
        assert_eq!(domstate(&n), "paused");
    }
    let t = Instant::now();
    restart_libvirtd();
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(8), "hypervisor failure exit code");
    let took = wait_running(&lab.names(), Duration::from_secs(15)).expect("members resumed");
    println!(
        "restart took {:.1} s; all members running {:.2} s after cgsnap exited",
        t.elapsed().as_secs_f64() - took.as_secs_f64(),
        took.as_secs_f64()
    );

    let m = list_json(&lab);
    let state = m[0]["state"].as_str().expect("state").to_string();
    assert!(
        state == "aborted" || state == "failed",
        "catalog says {state}"
    );
    if state == "failed" {
        lab.cgsnap()
            .args(["release", m[0]["id"].as_str().expect("id")])
            .assert()
            .success();
    }
    assert!(
        lab.overlays_on_disk().is_empty(),
        "{:?}",
        lab.overlays_on_disk()
    );
    for g in &lab.guests {
        assert_own_images(g);
        g.wait_progress(g.console_seq() + 20, Duration::from_secs(60))
            .expect("writing again");
    }
    // The group can be snapshotted again right away.
    lab.cgsnap()
        .args(["hook", "pre", "--group", "cgt-fault"])
        .assert()
        .success();
    lab.cgsnap()
        .args(["hook", "post", "--group", "cgt-fault"])
        .assert()
        .success();
}
