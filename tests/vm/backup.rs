//! Real-VM tests of backup cuts (`cgsnap backup begin|export|end`): libvirt's pull-mode backup
//! API on running TCG guests that write, read over NBD by libnbd and QEMU's tools.

use crate::common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn json(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out).expect("valid JSON on stdout")
}

/// `cgsnap backup ARGS --json`, which must succeed.
pub fn backup_json(lab: &Lab, args: &[&str]) -> serde_json::Value {
    let out = lab
        .cgsnap()
        .arg("backup")
        .args(args)
        .arg("--json")
        .assert()
        .success();
    json(&out.get_output().stdout)
}

/// Each member's disk sources, and whether each runs: what a backup cut must leave alone.
/// A domain, its state and its disks (target, source).
pub type Chain = (String, String, Vec<(String, String)>);

pub fn chains(names: &[String]) -> Vec<Chain> {
    names
        .iter()
        .map(|n| (n.clone(), domstate(n), domblklist(n)))
        .collect()
}

/// Checkpoint names of a domain (`virsh checkpoint-list --name`).
pub fn checkpoints(dom: &str) -> Vec<String> {
    let out = run_ok(Command::new("virsh").args(["-c", URI, "checkpoint-list", dom, "--name"]));
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Every disk of a cut: (NBD URI, image path, dirty context).
fn served(m: &serde_json::Value) -> Vec<(String, String, Option<String>)> {
    m["backup"]["members"]
        .as_array()
        .expect("backup members")
        .iter()
        .flat_map(|mem| mem["disks"].as_array().cloned().unwrap_or_default())
        .map(|d| {
            (
                d["nbd_uri"].as_str().expect("uri").to_string(),
                d["image"].as_str().expect("image").to_string(),
                d["dirty_context"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// `qemu-img compare` of an exported file (through its backing chain) with a served disk.
fn same_as_served(file: &Path, uri: &str) -> Result<(), String> {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(file)
        .arg(uri)
        .output()
        .expect("qemu-img");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} vs {uri}: {}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn backing_of(file: &Path) -> Option<String> {
    let out = run_ok(
        Command::new("qemu-img")
            .args(["info", "-U", "--output=json"])
            .arg(file),
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("qemu-img info json");
    v["backing-filename"].as_str().map(str::to_string)
}

fn export_file(dir: &Path, image: &str) -> PathBuf {
    dir.join(image.trim_start_matches('/'))
}

/// Every disk of the served cut `m`, exported under `dir`, equals what the cut serves.
pub fn assert_export_matches(m: &serde_json::Value, dir: &Path) {
    for (uri, image, _) in served(m) {
        same_as_served(&export_file(dir, &image), &uri).expect("export = served disk");
    }
}

#[test]
fn full_then_incremental_cuts_export_exactly_what_was_served() {
    // 8 MiB of data on each disk before boot: a full export reads it all, an incremental only
    // what the writers changed since.
    let mut lab = lab("cgt-bk", 0, 0);
    for i in 1..=2 {
        let spec = cgsnap_testbeds::guest::Spec {
            prefill: 8 << 20,
            ..cgsnap_testbeds::guest::Spec::writer(&format!("cgt-bk-{i}"), 2)
        };
        lab.add_guest(spec)
            .wait_console("seq ", Duration::from_secs(120))
            .expect("guest writes");
    }
    let names = lab.names();
    lab.group_add("cgt-bk", &names);
    let before = chains(&names);
    let out_dir = tempfile::tempdir().expect("export dir");
    let full_dir = out_dir.path().join("full");
    let inc_dir = out_dir.path().join("inc");

    let m1 = backup_json(&lab, &["begin", "cgt-bk"]);
    let id1 = m1["id"].as_str().expect("id").to_string();
    assert_eq!(m1["state"], "taken");
    assert_eq!(m1["backup"]["mode"], "full");
    assert!(m1["freeze_window_ms"].as_f64().expect("window") < 2000.0);
    assert_eq!(
        chains(&names),
        before,
        "a backup cut changes no chain and pauses nothing"
    );
    let disks1 = served(&m1);
    assert_eq!(disks1.len(), 4);
    for (uri, _, ctx) in &disks1 {
        assert!(ctx.is_none(), "a full cut has no dirty context");
        let size = run_ok(Command::new("nbdinfo").arg("--size").arg(uri));
        assert!(size.trim().parse::<u64>().expect("size") > 0, "{uri}");
    }
    let e1 = backup_json(
        &lab,
        &["export", &id1, "--to", full_dir.to_str().expect("utf8")],
    );
    for (uri, image, _) in &disks1 {
        same_as_served(&export_file(&full_dir, image), uri).expect("full export = served disk");
    }
    let full_read = e1["backup"]["export"]["bytes_read"]
        .as_u64()
        .expect("bytes");
    let m1 = backup_json(&lab, &["end", &id1]);
    assert_eq!(m1["state"], "released");
    assert!(!Path::new(m1["backup"]["scratch_dir"].as_str().expect("dir")).exists());
    for n in &names {
        assert_eq!(checkpoints(n), vec![id1.clone()], "{n}");
    }

    // The guests write on; the next cut reads only what changed since the first.
    std::thread::sleep(Duration::from_secs(3));
    let m2 = backup_json(&lab, &["begin", "cgt-bk", "--incremental"]);
    let id2 = m2["id"].as_str().expect("id").to_string();
    assert_eq!(m2["backup"]["mode"], "incremental", "{m2}");
    assert_eq!(m2["backup"]["since"], id1.as_str());
    let e2 = backup_json(
        &lab,
        &["export", &id2, "--to", inc_dir.to_str().expect("utf8")],
    );
    let inc_read = e2["backup"]["export"]["bytes_read"]
        .as_u64()
        .expect("bytes");
    println!("full export read {full_read} bytes, incremental {inc_read}");
    assert!(
        full_read >= 4 * (8 << 20),
        "the full export read the prefilled data: {full_read}"
    );
    assert!(
        inc_read * 4 < full_read,
        "incremental {inc_read} vs full {full_read}"
    );
    for (uri, image, ctx) in served(&m2) {
        assert!(ctx.is_some_and(|c| c.starts_with("qemu:dirty-bitmap:backup-")));
        let f = export_file(&inc_dir, &image);
        let backing = backing_of(&f).expect("an incremental has a backing file");
        assert!(!backing.starts_with('/'), "relative backing: {backing}");
        same_as_served(&f, &uri).expect("base + increment = served disk");
    }
    // An overlay snapshot's release refuses a backup cut, naming the command that ends it.
    let out = lab.cgsnap().args(["release", &id2]).assert().code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains(&format!("cgsnap backup end {id2}")), "{err}");
    backup_json(&lab, &["end", &id2]);
    for n in &names {
        assert_eq!(
            checkpoints(n),
            vec![id2.clone()],
            "older checkpoints go: {n}"
        );
    }
    assert_eq!(chains(&names), before);
}
