//! A group spanning two libvirt daemons (the system daemon and an unprivileged user's session
//! daemon, each with its own QEMU guests) is snapshotted as one cut and released.

use crate::common;

use cgsnap_testbeds::guest::{Guest, Spec};
use common::*;
use std::path::Path;
use std::time::Duration;

#[test]
fn group_across_two_daemons_is_one_cut() {
    let lab = lab("cgt-multi", 1, 2);
    let peer = peer();
    let mut spec = Spec::writer("cgt-multi-peer", 2);
    spec.owner = Some((peer.uid, peer.gid));
    let remote = Guest::start(&peer.uri, &peer.base, spec, &lab.assets).expect("peer guest");
    remote
        .wait_console("seq ", Duration::from_secs(120))
        .expect("peer guest boots");

    let cg = || {
        let mut c = assert_cmd::Command::cargo_bin("cgsnap").expect("binary");
        c.args(["--connect", URI, "--connect", &peer.uri, "--catalog"])
            .arg(lab.catalog.path())
            .timeout(Duration::from_secs(300));
        c
    };
    let local = lab.names()[0].clone();
    cg().args(["group", "add", "cgt-multi", &local, "cgt-multi-peer"])
        .assert()
        .success();
    let shown = cg()
        .args(["group", "show", "cgt-multi", "--json"])
        .assert()
        .success();
    let shown: serde_json::Value =
        serde_json::from_slice(&shown.get_output().stdout).expect("json");
    assert_eq!(shown.as_array().map(Vec::len), Some(2));

    let out = cg()
        .args(["snapshot", "cgt-multi", "--json"])
        .assert()
        .success();
    let m: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).expect("json");
    let mut uris: Vec<String> = m["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|x| x["uri"].as_str().expect("uri").to_string())
        .collect();
    uris.sort();
    let mut want = vec![URI.to_string(), peer.uri.clone()];
    want.sort();
    assert_eq!(uris, want, "one member on each daemon");
    assert_eq!(domstate_on(URI, &local), "running");
    assert_eq!(domstate_on(&peer.uri, "cgt-multi-peer"), "running");
    for mem in m["members"].as_array().expect("members") {
        let uri = mem["uri"].as_str().expect("uri");
        let dom = mem["domain"].as_str().expect("domain");
        let disks = mem["disks"].as_array().expect("disks");
        let overlays: Vec<String> = disks
            .iter()
            .map(|d| d["overlay"].as_str().expect("o").to_string())
            .collect();
        assert_eq!(domblklist_on(uri, dom), overlays, "{dom} on its overlays");
        let images: Vec<String> = disks
            .iter()
            .map(|d| d["image"].as_str().expect("i").to_string())
            .collect();
        records(&images);
    }
    remote
        .wait_progress(remote.console_seq() + 20, Duration::from_secs(60))
        .expect("peer guest writes through its overlays");

    let id = m["id"].as_str().expect("id");
    cg().args(["release", id]).assert().success();
    let own: Vec<String> = remote
        .disks
        .iter()
        .map(|d| d.to_string_lossy().to_string())
        .collect();
    assert_eq!(domblklist_on(&peer.uri, "cgt-multi-peer"), own);
    assert_own_images(&lab.guests[0]);
    for o in m["members"]
        .as_array()
        .expect("members")
        .iter()
        .flat_map(|x| x["disks"].as_array().expect("d").iter())
    {
        assert!(!Path::new(o["overlay"].as_str().expect("o")).exists());
    }
}
