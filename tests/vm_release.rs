//! Release is resumable: a release SIGKILLed after its block commits started leaves the VM
//! running on its overlays with the commit jobs in flight; the next release pivots and cleans
//! up, and no write made after the snapshot is lost.

mod common;

use cgsnap_testbeds::record;
use common::*;
use std::path::Path;
use std::time::Duration;

#[test]
fn release_killed_mid_commit_is_finished_by_the_next_release() {
    let lab = lab("cgt-rel", 1, 2);
    lab.group_add("cgt-rel", &lab.names());
    let dom = lab.names()[0].clone();
    let out = lab
        .cgsnap()
        .args(["snapshot", "cgt-rel", "--json"])
        .assert()
        .success();
    let m: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).expect("json");
    let id = m["id"].as_str().expect("id").to_string();
    let disks = m["members"][0]["disks"].as_array().expect("disks").clone();
    let overlays: Vec<String> = disks
        .iter()
        .map(|d| d["overlay"].as_str().expect("o").to_string())
        .collect();
    let images: Vec<String> = disks
        .iter()
        .map(|d| d["image"].as_str().expect("i").to_string())
        .collect();
    let g = lab.guest(&dom);
    g.wait_progress(g.console_seq() + 50, Duration::from_secs(60))
        .expect("writes to overlays");

    let mut child = spawn_until(
        lab.std_cgsnap()
            .args(["release", &id])
            .env("CGSNAP_TEST_HOLD_COMMIT_MS", "60000"),
        "commits of",
    );
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    let _ = child.wait();

    assert_eq!(domstate(&dom), "running");
    let live: Vec<String> = domblklist(&dom).into_iter().map(|(_, s)| s).collect();
    assert_eq!(
        live, overlays,
        "still on the overlays, commit jobs in flight"
    );
    let man: serde_json::Value = serde_json::from_slice(
        &std::fs::read(lab.catalog.path().join(format!("snapshots/{id}.json"))).expect("manifest"),
    )
    .expect("json");
    assert_eq!(man["state"], "releasing");
    let before = record::read(Path::new(&overlays[0]))
        .expect("read")
        .expect("record")
        .seq;

    lab.cgsnap().args(["release", &id]).assert().success();
    assert_own_images(g);
    assert!(overlays.iter().all(|o| !Path::new(o).exists()));
    g.wait_progress(g.console_seq() + 20, Duration::from_secs(60))
        .expect("still writing");
    g.destroy_domain();
    let after = records(&images);
    assert!(
        after[0].seq > before,
        "image has {} <= {before}: lost writes",
        after[0].seq
    );
}
