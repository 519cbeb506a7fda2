//! Real-VM tests of bad input: each gets a one-line error naming the object and the fix, its
//! documented exit code, every VM keeps running and no overlay is left behind.

mod common;

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
    assert!(
        lab.overlays_on_disk().is_empty(),
        "{:?}",
        lab.overlays_on_disk()
    );
    for g in lab
        .guests
        .iter()
        .filter(|g| running.contains(&g.name().to_string()))
    {
        assert_own_images(g);
    }
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
    let o = lab
        .cgsnap()
        .args(["snapshot", "cgt-nosuch"])
        .assert()
        .code(3);
    assert!(
        err_line(&o).contains("unknown group \"cgt-nosuch\"")
            && err_line(&o).contains("cgsnap group add")
    );
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
    let o = lab.cgsnap().args(["snapshot", "cgt-stop"]).assert().code(4);
    let e = err_line(&o);
    assert!(
        e.contains("member cgt-bad-off") && e.contains("shut off") && e.contains("virsh start"),
        "{e}"
    );
    untouched(&lab, &all_running);

    // Raw disk: refused with the conversion command.
    lab.group_add("cgt-raw", &["cgt-bad-raw".into()]);
    let o = lab.cgsnap().args(["snapshot", "cgt-raw"]).assert().code(4);
    let e = err_line(&o);
    assert!(
        e.contains("disk vda of cgt-bad-raw") && e.contains("qemu-img convert"),
        "{e}"
    );
    untouched(&lab, &all_running);

    // Missing space in the overlay directory.
    lab.group_add("cgt-space", &[running[0].clone()]);
    let o = lab
        .cgsnap()
        .args(["snapshot", "cgt-space", "--min-free", &u64::MAX.to_string()])
        .assert()
        .code(4);
    assert!(err_line(&o).contains("bytes free"));
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
    assert!(first.wait().expect("wait").success(), "first run completes");
    lab.cgsnap()
        .args(["hook", "post", "--group", "cgt-space"])
        .assert()
        .success();
    untouched(&lab, &all_running);
}
