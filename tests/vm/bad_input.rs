//! Real-VM tests of bad input: each gets a one-line error naming the object and the fix, its
//! documented exit code, every VM keeps running and no overlay is left behind.

use crate::common;

use cgsnap_testbeds::guest::Spec;
use common::*;
use std::time::Duration;

fn err_line(o: &assert_cmd::assert::Assert) -> String {
    let e = String::from_utf8_lossy(&o.get_output().stderr).to_string();
    assert_eq!(e.lines().count(), 1, "one-line error expected: {e:?}");
    assert!(e.starts_with("cgsnap: error: "), "{e}");
    e
}

fn untouched(lab: &Lab, running: &[String]) {
    wait_running(running, Duration::from_secs(1)).expect("members keep running");
    lab.assert_no_overlays(running);
}

/// `snapshot ARGS` and `check ARGS` fail alike: same exit code, same one-line error.
fn snapshot_and_check_fail(lab: &Lab, args: &[&str], code: i32) -> String {
    let o = lab.cgsnap().arg("snapshot").args(args).assert().code(code);
    let e = err_line(&o);
    let c = lab.cgsnap().arg("check").args(args).assert().code(code);
    // The planned overlay names carry the run's time: compare up to them.
    let cut = |s: &str| {
        s.split(".cgsnap-overlay")
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        cut(&err_line(&c)),
        cut(&e),
        "check reports what snapshot does"
    );
    e
}

#[test]
fn bad_inputs_fail_cleanly_with_documented_codes() {
    let mut lab = lab("cgt-bad", 1, 2);
    let running = lab.names();
    let mut raw = Spec::writer("cgt-bad-raw", 2);
    raw.format = "raw";
    lab.add_guest(raw);
    lab.define_stopped(Spec::writer("cgt-bad-off", 2));
    lab.guest("cgt-bad-raw")
        .wait_console("seq ", Duration::from_secs(120))
        .expect("raw guest boots");
    let all_running = vec![running[0].clone(), "cgt-bad-raw".to_string()];

    // Unknown group.
    let e = snapshot_and_check_fail(&lab, &["cgt-nosuch"], 3);
    assert!(e.contains("unknown group \"cgt-nosuch\"") && e.contains("cgsnap group add"));
    // Unknown domain: nothing is written, not even for the known one.
    let o = lab
        .cgsnap()
        .args(["group", "add", "cgt-g1", &running[0], "cgt-nope"])
        .assert()
        .code(3);
    assert!(err_line(&o).contains("unknown domain \"cgt-nope\""));
    lab.cgsnap().args(["snapshot", "cgt-g1"]).assert().code(3);
    // Invalid group name.
    let o = lab
        .cgsnap()
        .args(["group", "add", "a/b", &running[0]])
        .assert()
        .code(2);
    assert!(err_line(&o).contains("invalid group name"));

    // Stopped member: refused before anything is frozen.
    lab.group_add("cgt-stop", &[running[0].clone(), "cgt-bad-off".into()]);
    let e = snapshot_and_check_fail(&lab, &["cgt-stop"], 4);
    assert!(
        e.contains("member cgt-bad-off") && e.contains("shut off") && e.contains("virsh start"),
        "{e}"
    );
    untouched(&lab, &all_running);

    // Raw disk: refused with the conversion command.
    lab.group_add("cgt-raw", &["cgt-bad-raw".into()]);
    let e = snapshot_and_check_fail(&lab, &["cgt-raw"], 4);
    assert!(
        e.contains("disk vda of cgt-bad-raw") && e.contains("qemu-img convert"),
        "{e}"
    );
    untouched(&lab, &all_running);

    // Missing space in the overlay directory.
    lab.group_add("cgt-space", &[running[0].clone()]);
    let max = u64::MAX.to_string();
    let e = snapshot_and_check_fail(&lab, &["cgt-space", "--min-free", &max], 4);
    assert!(e.contains("bytes free"), "{e}");
    untouched(&lab, &all_running);

    // A group that can be snapshotted: check says so, lists the plan, and writes nothing.
    let o = lab.cgsnap().args(["check", "cgt-space"]).assert().success();
    let out = String::from_utf8_lossy(&o.get_output().stdout).to_string();
    assert!(
        out.starts_with("group cgt-space: ready to snapshot: 1 members, 2 disks"),
        "{out}"
    );
    let o = lab
        .cgsnap()
        .args(["check", "cgt-space", "--json"])
        .assert()
        .success();
    let plan: serde_json::Value =
        serde_json::from_slice(&o.get_output().stdout).expect("check --json");
    assert_eq!(plan["members"][0]["domain"], running[0].as_str());
    let overlays = disk_fields(&plan, 0, "overlay");
    assert_eq!(overlays.len(), 2);
    assert!(overlays.iter().all(|o| o.ends_with(".cgsnap-overlay")));
    assert!(lab.manifest_files().is_empty(), "check writes no manifest");
    untouched(&lab, &all_running);

    // Malformed manifest in the catalog.
    let bad = lab.catalog.path().join("snapshots/broken.json");
    std::fs::write(&bad, b"{\"format_version\": 1, \"id\": \"bro").expect("write");
    let o = lab.cgsnap().args(["release", "broken"]).assert().code(7);
    assert!(err_line(&o).contains("malformed manifest") && err_line(&o).contains("broken.json"));
    lab.cgsnap().args(["list"]).assert().code(7);
    std::fs::remove_file(&bad).expect("rm");
    // Release of an unknown snapshot.
    let o = lab
        .cgsnap()
        .args(["release", "cgt-nosuch-1"])
        .assert()
        .code(3);
    assert!(err_line(&o).contains("unknown snapshot"));

    // Concurrent runs on one group: the second is refused while the first holds the lock.
    let mut first = spawn_until(
        lab.std_cgsnap()
            .args(["snapshot", "cgt-space", "--freeze-budget", "10s"])
            .env("CGSNAP_TEST_HOLD_FROZEN_MS", "2000"),
        "all members frozen",
    );
    let o = lab
        .cgsnap()
        .args(["snapshot", "cgt-space"])
        .assert()
        .code(5);
    assert!(err_line(&o).contains("holds the lock on group cgt-space"));
    // A snapshot in progress shows to check through its pending manifest; check never takes
    // the lock, so it cannot make the running snapshot fail.
    let o = lab.cgsnap().args(["check", "cgt-space"]).assert().code(6);
    assert!(err_line(&o).contains("(pending)"));
    assert!(first.wait().expect("wait").success(), "first run completes");
    let o = lab.cgsnap().args(["check", "cgt-space"]).assert().code(6);
    assert!(err_line(&o).contains("(taken)"));

    // A VM in two groups: while one group's snapshot holds it, the other group's is refused
    // before anything is frozen, naming the snapshot to release.
    lab.group_add("cgt-other", &[running[0].clone()]);
    let e = snapshot_and_check_fail(&lab, &["cgt-other"], 6);
    assert!(
        e.contains(&format!(
            "member {} (qemu:///system) is in snapshot cgt-space-",
            running[0]
        )) && e.contains("of group cgt-space")
            && e.contains("cgsnap release cgt-space-"),
        "{e}"
    );
    // Another catalog does not know that snapshot, but the disks show it: still refused.
    let elsewhere = tempfile::tempdir().expect("second catalog");
    let o = assert_cmd::Command::cargo_bin("cgsnap")
        .expect("binary")
        .args(["--connect", URI, "--catalog"])
        .arg(elsewhere.path())
        .args(["snapshot", "cgt-other"])
        .assert()
        .code(4);
    let e = err_line(&o);
    assert!(
        e.contains(&format!("disk vda of {} is on ", running[0]))
            && e.contains(".cgsnap-overlay, an overlay of a snapshot not yet released")
            && e.contains("virsh blockcommit"),
        "{e}"
    );
    lab.cgsnap()
        .args(["hook", "post", "--group", "cgt-space"])
        .assert()
        .success();
    untouched(&lab, &all_running);
    // Released: the other group can be snapshotted (and released) now.
    lab.cgsnap()
        .args(["hook", "pre", "--group", "cgt-other"])
        .assert()
        .success();
    lab.cgsnap()
        .args(["hook", "post", "--group", "cgt-other"])
        .assert()
        .success();
    untouched(&lab, &all_running);
}
