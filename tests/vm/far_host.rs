//! A group member on another libvirt host (see `tests/common/far.rs`: a URI with a host part, and
//! files at paths that name nothing here). The group is still one cut, and everything for the
//! far member goes through libvirt: no overlay pre-created here, no space checked here, no
//! file removed here. With a storage pool for its directory on that host, its free space is
//! checked and its overlays removed through the pool; without one, release leaves the unused
//! overlay there and says so. A far member deleted while its snapshot is held has its overlays
//! merged on its host by that host's libvirt and QEMU (a paused helper domain).

use crate::common;

use cgsnap_testbeds::guest::{Guest, Spec};
use common::far::{self, far};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn strings(m: &serde_json::Value, member: &str, field: &str) -> Vec<String> {
    m["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|x| x["domain"] == member)
        .expect("member")["disks"]
        .as_array()
        .expect("disks")
        .iter()
        .map(|d| d[field].as_str().expect("field").to_string())
        .collect()
}

/// Snapshot `group`, whose member `dom` runs `guest` on the far host; let the guest write
/// through its overlays; stop it with `virsh destroy` (a transient domain is then gone, a
/// persistent one `shut off`, as `after` says); release. Every write the guest made is then in
/// its images, as one instant, and its overlays are removed through the pool. Returns
/// release's stderr, which says `says`.
fn stop_while_held_then_release(
    cg: &dyn Fn() -> assert_cmd::Command,
    far: &far::Far,
    guest: &Guest,
    group: &str,
    dom: &str,
    after: &str,
    says: &str,
) -> String {
    let out = cg().args(["snapshot", group, "--json"]).assert().success();
    let m: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).expect("json");
    let overlays = strings(&m, dom, "overlay");
    let images: Vec<String> = strings(&m, dom, "image")
        .iter()
        .map(|i| far.here(i).to_string_lossy().to_string())
        .collect();
    let cut = records(&images)[0].seq;
    let written = guest
        .wait_progress(guest.console_seq() + 10, Duration::from_secs(60))
        .expect("far guest writes through its overlays");
    assert!(written > cut, "written {written} after the cut {cut}");
    virsh_on(&far.uri, &["destroy", dom]);
    assert_eq!(domstate_on(&far.uri, dom), after);
    let id = m["id"].as_str().expect("id");
    let out = cg().args(["release", id]).assert().success();
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    print!("{err}");
    assert!(err.contains(says), "{err}");
    let merged = records(&images);
    assert!(
        merged.iter().all(|r| r.seq >= written),
        "images hold seq {:?}, the guest had written {written} (cut {cut})",
        merged.iter().map(|r| r.seq).collect::<Vec<_>>()
    );
    for o in &overlays {
        assert!(!far.here(o).exists(), "removed through the pool: {o}");
    }
    err
}

#[test]
fn a_member_on_another_host_is_snapshotted_and_released_through_libvirt_alone() {
    let lab = lab("cgt-far", 1, 2);
    let far = far();
    let name = "cgt-far-remote";
    let spec = Spec {
        owner: Some((far.uid, far.gid)),
        daemon_dir: Some(PathBuf::from(far::DIR)),
        ..Spec::writer(name, 2)
    };
    let remote = Guest::start(&far.uri, Path::new(far::STORE), spec, &lab.assets)
        .expect("guest on the far host");
    remote
        .wait_console("seq ", Duration::from_secs(120))
        .expect("far guest boots");
    let own = domblklist_on(&far.uri, name);
    assert!(
        own.iter()
            .all(|p| p.starts_with(far::DIR) && !Path::new(p).exists()),
        "its files are not where its domain says, seen from here: {own:?}"
    );

    let cg = || {
        let mut c = assert_cmd::Command::cargo_bin("cgsnap").expect("binary");
        c.args(["--connect", URI, "--connect", &far.uri, "--catalog"])
            .arg(lab.catalog.path())
            .timeout(Duration::from_secs(300));
        c
    };
    let local = lab.names()[0].clone();
    cg().args(["group", "add", "cgt-far", &local, name])
        .assert()
        .success();
    cg().args(["group", "add", "cgt-far-solo", name])
        .assert()
        .success();
    let pool_dir = format!("{}/{name}", far::DIR);
    virsh_on(
        &far.uri,
        &["pool-create-as", "cgt-far", "dir", "--target", &pool_dir],
    );

    // The pool's free space is checked, on that host.
    let out = cg()
        .args([
            "snapshot",
            "cgt-far-solo",
            "--min-free",
            "1000000000000000000",
        ])
        .assert()
        .code(4);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        err.contains(&format!("overlay directory {pool_dir} on {}", far.uri)),
        "{err}"
    );

    // One cut across both hosts, the far overlays made by its daemon, where it keeps files.
    let snap = |with_pool: bool| {
        let out = cg()
            .args(["snapshot", "cgt-far", "--json"])
            .assert()
            .success();
        let m: serde_json::Value =
            serde_json::from_slice(&out.get_output().stdout).expect("manifest");
        let overlays = strings(&m, name, "overlay");
        assert_eq!(
            domblklist_on(&far.uri, name),
            overlays,
            "far member on overlays"
        );
        for o in &overlays {
            assert!(!Path::new(o).exists(), "nothing made here: {o}");
            assert!(far.here(o).exists(), "made on the far host: {o}");
        }
        let mut recs = records(&strings(&m, &local, "image"));
        let far_images: Vec<String> = strings(&m, name, "image")
            .iter()
            .map(|i| far.here(i).to_string_lossy().to_string())
            .collect();
        recs.extend(records(&far_images));
        println!(
            "cut (pool {with_pool}): {:?}",
            recs.iter().map(|r| r.seq).collect::<Vec<_>>()
        );
        remote
            .wait_progress(remote.console_seq() + 10, Duration::from_secs(60))
            .expect("far guest writes through its overlays");
        let id = m["id"].as_str().expect("id").to_string();
        let out = cg().args(["release", &id]).assert().success();
        let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
        assert_eq!(
            domblklist_on(&far.uri, name),
            own,
            "far member on its images"
        );
        assert_own_images(&lab.guests[0]);
        for o in strings(&m, &local, "overlay") {
            assert!(!Path::new(&o).exists(), "local overlay removed: {o}");
        }
        (overlays, err)
    };
    let (overlays, err) = snap(true);
    for o in &overlays {
        assert!(!far.here(o).exists(), "removed through the pool: {o}");
    }
    assert!(!err.contains("stays on"), "{err}");

    // Without a pool: the overlay, unused, stays on its host, and release says so.
    virsh_on(&far.uri, &["pool-destroy", "cgt-far"]);
    let (overlays, err) = snap(false);
    print!("{err}");
    for o in &overlays {
        assert!(far.here(o).exists(), "left on the far host: {o}");
        assert!(
            err.contains(&format!("overlay {o} stays on {}", far.uri)),
            "{err}"
        );
        std::fs::remove_file(far.here(o)).expect("clean up");
    }
    remote
        .wait_progress(remote.console_seq() + 10, Duration::from_secs(60))
        .expect("far guest writes to its images");

    // The coordinator SIGKILLed while both members are frozen: the watchdog resumes the far
    // one too, over its own connection to that host.
    let members = [(URI, local.as_str()), (far.uri.as_str(), name)];
    let mut child = spawn_until(
        Command::new(assert_cmd::cargo::cargo_bin("cgsnap"))
            .args(["--connect", URI, "--connect", &far.uri, "--catalog"])
            .arg(lab.catalog.path())
            .args(["snapshot", "cgt-far", "--freeze-budget", "3s"])
            .env("CGSNAP_TEST_HOLD_FROZEN_MS", "60000"),
        "all members frozen",
    );
    for (u, d) in members {
        assert_eq!(domstate_on(u, d), "paused", "{d} frozen before the kill");
    }
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    let _ = child.wait();
    let took = wait_running_on(&members, Duration::from_secs(4)).expect("both resumed");
    println!(
        "both members running again {:.0} ms after SIGKILL",
        took.as_secs_f64() * 1000.0
    );
    let pending = list_json(&lab);
    let pending = pending
        .as_array()
        .and_then(|a| a.last())
        .expect("the killed snapshot");
    assert_eq!(pending["state"], "pending");
    let id = pending["id"].as_str().expect("id");
    cg().args(["release", id]).assert().success();
    assert_eq!(domblklist_on(&far.uri, name), own);
    assert_own_images(&lab.guests[0]);

    // A far member deleted while its snapshot is held: its overlays are merged on its host,
    // by its own libvirt and QEMU (a paused helper domain), and removed through its pool.
    virsh_on(
        &far.uri,
        &["pool-create-as", "cgt-far", "dir", "--target", &pool_dir],
    );
    stop_while_held_then_release(
        &cg,
        &far,
        &remote,
        "cgt-far",
        name,
        "",
        &format!(
            "{name} no longer exists on {}: merged 2 overlay(s) into their images there",
            far.uri
        ),
    );
    let listed = Command::new("virsh")
        .args(["-c", &far.uri, "list", "--all", "--name"])
        .output()
        .expect("virsh list");
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(!listed.contains("cgsnap-merge"), "no helper left: {listed}");
    assert_own_images(&lab.guests[0]);
    let shown = list_json(&lab);
    let last = shown.as_array().and_then(|a| a.last()).expect("snapshot");
    assert_eq!(last["state"], "released");

    // A far member shut off while its snapshot is held (a persistent domain stopped): merged
    // there the same way, its definition put back on its images; it stays shut off, and runs
    // on its images when started again.
    let off = "cgt-far-stopped";
    let spec = Spec {
        owner: Some((far.uid, far.gid)),
        daemon_dir: Some(PathBuf::from(far::DIR)),
        ..Spec::writer(off, 2)
    };
    let stopped = Guest::start_persistent(&far.uri, Path::new(far::STORE), spec, &lab.assets)
        .expect("persistent guest on the far host");
    stopped
        .wait_console("seq ", Duration::from_secs(120))
        .expect("far persistent guest boots");
    let own_off = domblklist_on(&far.uri, off);
    let off_dir = format!("{}/{off}", far::DIR);
    virsh_on(
        &far.uri,
        &["pool-create-as", "cgt-far-off", "dir", "--target", &off_dir],
    );
    cg().args(["group", "add", "cgt-far-off", off])
        .assert()
        .success();
    stop_while_held_then_release(
        &cg,
        &far,
        &stopped,
        "cgt-far-off",
        off,
        "shut off",
        &format!("{off} is shut off: merged 2 overlay(s)"),
    );
    assert_eq!(domstate_on(&far.uri, off), "shut off", "left shut off");
    assert_eq!(
        domblklist_on(&far.uri, off),
        own_off,
        "defined on its images"
    );
    virsh_on(&far.uri, &["start", off]);
    stopped
        .wait_console("seq ", Duration::from_secs(120))
        .expect("boots again on its images");
    assert_eq!(domblklist_on(&far.uri, off), own_off, "runs on its images");
}
