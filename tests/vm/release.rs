//! Release is resumable: a release SIGKILLed after its block commits started leaves the VM
//! running on its overlays with the commit jobs in flight; the next release pivots and cleans
//! up, and no write made after the snapshot is lost. Overlays whose data no release put back
//! into the images (their VM recreated on the images) are kept.

use crate::common;

use cgsnap_testbeds::record;
use common::*;
use std::path::Path;
use std::time::Duration;

/// The newest record on the first overlay of a member stopped after writing on its overlays;
/// it must be well past the frozen one.
fn newest_on_overlay(overlays: &[String], frozen: &[record::Record]) -> u64 {
    let newest = record::read(Path::new(&overlays[0]))
        .expect("read")
        .expect("record")
        .seq;
    assert!(
        newest >= frozen[0].seq + 30,
        "overlay holds the later writes"
    );
    newest
}

/// Release `id` while a process holds `overlay` open for writing, with QEMU's image locks, as
/// a running VM would: it must fail (exit 10) and keep the overlay. Returns stderr.
fn release_while_held(lab: &Lab, id: &str, overlay: &str) -> String {
    let mut nbd = hold_open(overlay, &lab.catalog.path().join("nbd.sock"));
    let out = lab.cgsnap().args(["release", id]).assert().code(10);
    let _ = nbd.kill();
    let _ = nbd.wait();
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    eprintln!("{err}");
    assert!(Path::new(overlay).exists(), "overlay in use is kept");
    err
}

#[test]
fn release_killed_mid_commit_is_finished_by_the_next_release() {
    let lab = lab("cgt-rel", 1, 2);
    lab.group_add("cgt-rel", &lab.names());
    let dom = lab.names()[0].clone();
    let (id, m) = lab.snapshot_json("cgt-rel", &[]);
    let (overlays, images) = (disk_fields(&m, 0, "overlay"), disk_fields(&m, 0, "image"));
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

/// A member deleted while its snapshot is held (here: its transient domain destroyed) cannot
/// be committed online; release merges its overlays offline instead, so the group is not
/// blocked and the writes the guest made after the snapshot end up in its images. An overlay
/// another process still has open (as a renamed or migrated VM would) is left alone.
#[test]
fn release_of_a_deleted_member_merges_its_overlays_offline_unless_in_use() {
    let lab = lab("cgt-gone", 1, 2);
    lab.group_add("cgt-gone", &lab.names());
    let dom = lab.names()[0].clone();
    let (id, m) = lab.snapshot_json("cgt-gone", &[]);
    let (overlays, images) = (disk_fields(&m, 0, "overlay"), disk_fields(&m, 0, "image"));
    let frozen = records(&images);
    let g = lab.guest(&dom);
    g.wait_progress(frozen[0].seq + 30, Duration::from_secs(60))
        .expect("writes to overlays");
    g.destroy_domain();
    assert_eq!(domstate(&dom), "", "domain is gone");
    let newest = newest_on_overlay(&overlays, &frozen);

    let err = release_while_held(&lab, &id, &overlays[1]);
    assert!(
        err.contains(&format!("member {dom} no longer exists"))
            && err.contains(&overlays[1])
            && err.contains("it is kept: a process still has it open"),
        "{err}"
    );

    let out = lab.cgsnap().args(["release", &id]).assert().success();
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("merged"), "{err}");
    assert!(overlays.iter().all(|o| !Path::new(o).exists()));
    let after = records(&images);
    assert!(
        after[0].seq >= newest,
        "image has {} < {newest}: writes made after the snapshot were lost",
        after[0].seq
    );
    assert!(after[1].seq > frozen[1].seq, "second disk merged too");
    let list = list_json(&lab);
    assert_eq!(list[0]["state"], "released");
}

/// A member renamed while stopped (`virsh domrename`, the only way to rename) keeps running on
/// its overlays under the new name: release must not merge them from under it, and succeeds
/// once the name is back.
#[test]
fn release_keeps_the_overlays_of_a_renamed_member() {
    let mut lab = lab("cgt-ren", 0, 2);
    // A failed earlier run may have left the renamed domain defined.
    cgsnap_testbeds::guest::destroy_by_name(URI, "cgt-ren-x");
    lab.define_stopped(cgsnap_testbeds::guest::Spec::writer("cgt-ren-1", 2));
    virsh_ok(&["start", "cgt-ren-1"]);
    let g = lab.guest("cgt-ren-1");
    g.wait_console("seq ", Duration::from_secs(120))
        .expect("boots");
    lab.group_add("cgt-ren", &lab.names());
    let (id, m) = lab.snapshot_json("cgt-ren", &[]);
    let overlays = disk_fields(&m, 0, "overlay");
    virsh_ok(&["destroy", "cgt-ren-1"]);
    virsh_ok(&["domrename", "cgt-ren-1", "cgt-ren-x"]);

    let out = lab.cgsnap().args(["release", &id]).assert().code(10);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    eprintln!("{err}");
    assert!(
        err.contains("domain cgt-ren-x uses its overlay")
            && err.contains("virsh domrename cgt-ren-x cgt-ren-1"),
        "{err}"
    );
    assert!(overlays.iter().all(|o| Path::new(o).exists()), "kept");

    virsh_ok(&["domrename", "cgt-ren-x", "cgt-ren-1"]);
    virsh_ok(&["start", "cgt-ren-1"]);
    lab.cgsnap().args(["release", &id]).assert().success();
    assert_own_images(g);
    assert!(overlays.iter().all(|o| !Path::new(o).exists()));
}

/// A member shut off while its snapshot is held (a persistent domain stopped in the backup
/// window, as production VMs are) is released offline: overlays merged into the images, the
/// definition back on the images, overlays deleted, so one stopped VM does not block its
/// group. An overlay some process holds open is kept and named; the next release finishes.
/// Nothing the guest wrote on the overlays is lost.
#[test]
fn release_merges_a_shut_off_member_offline() {
    let mut lab = lab("cgt-off", 0, 2);
    let dom = "cgt-off-1";
    lab.add_persistent_guest(cgsnap_testbeds::guest::Spec::writer(dom, 2));
    lab.group_add("cgt-off", &lab.names());
    let (id, m) = lab.snapshot_json("cgt-off", &[]);
    let (overlays, images) = (disk_fields(&m, 0, "overlay"), disk_fields(&m, 0, "image"));
    let frozen = records(&images);
    let g = lab.guest(dom);
    g.wait_progress(g.console_seq() + 50, Duration::from_secs(60))
        .expect("writes on the overlays");
    virsh_ok(&["destroy", dom]);
    let newest = newest_on_overlay(&overlays, &frozen);

    let err = release_while_held(&lab, &id, &overlays[1]);
    assert!(
        err.contains(&format!(
            "member {dom} is shut off and its overlay {} cannot be merged offline",
            overlays[1]
        )) && err.contains(&format!("virsh start {dom}")),
        "{err}"
    );
    assert_eq!(list_json(&lab)[0]["state"], "releasing");

    let out = lab.cgsnap().args(["release", &id]).assert().success();
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("merged") && err.contains("shut off"), "{err}");
    assert!(
        overlays.iter().all(|o| !Path::new(o).exists()),
        "overlays deleted"
    );
    assert_eq!(inactive_sources(dom), images, "defined on its images again");
    let after = records(&images);
    assert!(
        after[0].seq >= newest && after[1].seq > frozen[1].seq,
        "writes made on the overlays merged: {after:?}, frozen {frozen:?}, newest {newest}"
    );
    assert_eq!(list_json(&lab)[0]["state"], "released");
    assert_eq!(
        domstate(dom),
        "shut off",
        "release does not start a stopped VM"
    );

    virsh_ok(&["start", dom]);
    g.wait_progress(g.console_seq() + 20, Duration::from_secs(120))
        .expect("boots on its images and writes");
    assert_own_images(g);
}

/// A transient member destroyed while its snapshot is held and created again from its old
/// definition (as an orchestrator restarting it from its `vm.xml` would) runs on its images:
/// what it wrote on its overlays is not in them, and no release switched it back. Release must
/// neither delete nor merge those overlays (exit 10, named); once they are deleted by hand, it
/// finishes.
#[test]
fn release_keeps_the_overlays_of_a_member_recreated_on_its_images() {
    let lab = lab("cgt-recr", 1, 2);
    lab.group_add("cgt-recr", &lab.names());
    let dom = lab.names()[0].clone();
    let (id, m) = lab.snapshot_json("cgt-recr", &[]);
    let overlays = disk_fields(&m, 0, "overlay");
    let g = lab.guest(&dom);
    g.wait_progress(g.console_seq() + 30, Duration::from_secs(60))
        .expect("writes to overlays");
    g.destroy_domain();
    // The definition from before the snapshot, kept in the manifest: it names the images.
    let xml = lab.catalog.path().join("old-definition.xml");
    let old = m["members"][0]["domain_xml"].as_str().expect("domain_xml");
    std::fs::write(&xml, old).expect("write xml");
    virsh_ok(&["create", xml.to_str().expect("utf-8 path")]);
    assert_own_images(g);
    let before: Vec<Vec<u8>> = overlays
        .iter()
        .map(|o| std::fs::read(o).expect("overlay"))
        .collect();

    let out = lab.cgsnap().args(["release", &id]).assert().code(10);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    eprintln!("{err}");
    assert!(
        err.contains("no release switched it")
            && err.contains(&overlays[0])
            && err.contains("is kept"),
        "{err}"
    );
    let after: Vec<Vec<u8>> = overlays
        .iter()
        .map(|o| std::fs::read(o).expect("overlay kept"))
        .collect();
    assert!(before == after, "overlays untouched");
    assert_eq!(list_json(&lab)[0]["state"], "releasing");
    assert_own_images(g);

    for o in &overlays {
        std::fs::remove_file(o).expect("delete by hand");
    }
    lab.cgsnap().args(["release", &id]).assert().success();
    assert_eq!(list_json(&lab)[0]["state"], "released");
    assert_own_images(g);
}
