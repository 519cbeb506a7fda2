//! What makes an incremental unsound, played on a running guest: a disk resized, a disk
//! added, the base's checkpoint forgotten by libvirt, and one of its bitmaps gone from QEMU.
//! Each time `backup begin --incremental` must take a full cut and say why, never an
//! incremental on that base; and the full cut, exported, must equal what its job serves.

use crate::backup::{assert_export_matches, backup_json, checkpoints};
use crate::common;

use common::*;
use std::path::Path;
use std::process::Command;

const G: &str = "cgt-bkb";

fn id(m: &serde_json::Value) -> String {
    m["id"].as_str().expect("id").to_string()
}

/// `backup begin --incremental`, which must be full for a reason containing `why`; exported
/// (and compared with what is served) into `dir`, then ended: the next cut's base.
fn full_because(lab: &Lab, why: &str, dir: &Path) -> String {
    let m = backup_json(lab, &["begin", G, "--incremental"]);
    let reason = m["backup"]["full_reason"].as_str().unwrap_or_default();
    println!("{why}: {} ({reason})", m["backup"]["mode"]);
    assert_eq!(m["backup"]["mode"], "full", "{m}");
    assert!(reason.contains(why), "reason {reason:?} lacks {why:?}");
    let cut = id(&m);
    let to = dir.to_str().expect("utf8");
    backup_json(lab, &["export", &cut, "--to", to]);
    assert_export_matches(&m, dir);
    backup_json(lab, &["end", &cut]);
    cut
}

/// QMP on the domain (`virsh qemu-monitor-command`), which must succeed.
fn qmp(dom: &str, cmd: &str) -> serde_json::Value {
    let out = run_ok(Command::new("virsh").args(["-c", URI, "qemu-monitor-command", dom, cmd]));
    serde_json::from_str(&out).expect("QMP reply")
}

#[test]
fn an_unsound_base_makes_a_full_cut_that_says_why() {
    let lab = lab(G, 1, 2);
    let names = lab.names();
    let dom = names[0].clone();
    lab.group_add(G, &names);
    let out = tempfile::tempdir().expect("exports");
    let dir = |n: &str| out.path().join(n);

    let a = id(&backup_json(&lab, &["begin", G]));
    backup_json(
        &lab,
        &["export", &a, "--to", dir("a").to_str().expect("utf8")],
    );
    backup_json(&lab, &["end", &a]);

    // A disk resized since the base: its bitmap cannot describe the new blocks.
    virsh_ok(&["blockresize", &dom, "vdb", "96M"]);
    full_because(&lab, "disk vdb of cgt-bkb-1 was resized since", &dir("b"));

    // A disk added since the base: it has no bitmap at all.
    let images = domblklist(&dom);
    let home = Path::new(&images[0].1).parent().expect("guest dir");
    let added = home.join("added.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&added)
            .arg("32M"),
    );
    virsh_ok(&[
        "attach-disk",
        &dom,
        added.to_str().expect("utf8"),
        "sda",
        "--driver",
        "qemu",
        "--subdriver",
        "qcow2",
        // The guests' machine has no PCI hotplug; a USB disk can be plugged in live.
        "--targetbus",
        "usb",
        "--live",
    ]);
    let c = full_because(&lab, "disk sda of cgt-bkb-1 was added since", &dir("c"));

    // The base's checkpoint forgotten by libvirt (e.g. the domain was redefined).
    virsh_ok(&["checkpoint-delete", &dom, &c, "--metadata"]);
    let d = full_because(
        &lab,
        &format!("checkpoint {c} of cgt-bkb-1 is missing"),
        &dir("d"),
    );

    // One of the base's bitmaps gone from QEMU (e.g. an image copied without it).
    let nodes = qmp(
        &dom,
        r#"{"execute":"query-named-block-nodes","arguments":{"flat":true}}"#,
    );
    let node = nodes["return"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| {
            n["dirty-bitmaps"]
                .as_array()
                .is_some_and(|b| b.iter().any(|x| x["name"] == d.as_str()))
        })
        .and_then(|n| n["node-name"].as_str())
        .expect("a node with the base's bitmap")
        .to_string();
    qmp(
        &dom,
        &format!(
            r#"{{"execute":"block-dirty-bitmap-remove","arguments":{{"node":"{node}","name":"{d}"}}}}"#
        ),
    );
    let e = full_because(
        &lab,
        &format!("checkpoint {d} of cgt-bkb-1 has a missing or inconsistent bitmap"),
        &dir("e"),
    );
    // Its end forgot the broken checkpoint (it could not be merged away), and the next
    // incremental, based on the sound one, exports exactly what is served.
    assert_eq!(checkpoints(&dom), vec![e.clone()]);
    let f = backup_json(&lab, &["begin", G, "--incremental"]);
    assert_eq!(f["backup"]["since"], e.as_str(), "{f}");
    let f_dir = dir("f");
    backup_json(
        &lab,
        &["export", &id(&f), "--to", f_dir.to_str().expect("utf8")],
    );
    assert_export_matches(&f, &f_dir);
    backup_json(&lab, &["end", &id(&f)]);

    assert_eq!(domstate(&dom), "running");
    lab.guest(&dom)
        .wait_progress(
            lab.guest(&dom).console_seq(),
            std::time::Duration::from_secs(60),
        )
        .expect("the guest still writes");
}
