//! Faults around backup cuts, each on real guests: the coordinator SIGKILLed mid-cut,
//! libvirtd restarted while a job serves, an export killed, a member deleted and a member
//! shut off while their jobs run. Each must leave every VM running (or as the fault left it),
//! every chain unchanged, and the next incremental based on the last *completed* cut, or a
//! full cut that says why.

use crate::backup::{backup_json, checkpoints};
use crate::common;
use crate::faults::{restart_libvirtd, sigkill};

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const G: &str = "cgt-bkf";

fn jobs_gone(names: &[String]) {
    for n in names {
        let out = Command::new("virsh")
            .args(["-c", URI, "domjobinfo", n])
            .output()
            .expect("virsh");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() || text.contains("None"),
            "{n} still has a job: {text}"
        );
    }
}

fn id(m: &serde_json::Value) -> String {
    m["id"].as_str().expect("id").to_string()
}

fn dir(base: &Path, name: &str) -> String {
    base.join(name).to_str().expect("utf8").to_string()
}

#[test]
fn every_fault_leaves_vms_running_chains_intact_and_a_sound_base() {
    let mut lab = lab(G, 1, 2);
    lab.add_persistent_guest(cgsnap_testbeds::guest::Spec::writer(&format!("{G}-p"), 2));
    let names = lab.names();
    lab.group_add(G, &names);
    let blk: Vec<_> = names.iter().map(|n| domblklist(n)).collect();
    let exports = tempfile::tempdir().expect("export dir");
    let out = exports.path();

    // A completed base.
    let a = id(&backup_json(&lab, &["begin", G]));
    backup_json(&lab, &["export", &a, "--to", &dir(out, "a")]);
    backup_json(&lab, &["end", &a]);

    // 1. The coordinator dies after the members' jobs started, before resume.
    let mut c = spawn_until(
        lab.std_cgsnap()
            .args([
                "backup",
                "begin",
                G,
                "--incremental",
                "--freeze-budget",
                "30s",
            ])
            .env("CGSNAP_TEST_HOLD_SNAPPED_MS", "20000"),
        "member snapshotted",
    );
    sigkill(&mut c);
    let t = wait_running(&names, Duration::from_secs(3)).expect("watchdog resumed");
    println!(
        "SIGKILL mid-cut: watchdog resumed all in {:.2} s",
        t.as_secs_f64()
    );
    let killed = lab
        .std_cgsnap()
        .args(["list", "--json"])
        .output()
        .expect("list");
    let list: serde_json::Value = serde_json::from_slice(&killed.stdout).expect("list json");
    let pending = list
        .as_array()
        .expect("list")
        .iter()
        .find(|m| m["state"] == "pending")
        .map(id)
        .expect("the killed cut is recorded pending");
    backup_json(&lab, &["end", &pending]);
    jobs_gone(&names);
    for n in &names {
        assert_eq!(
            checkpoints(n),
            vec![a.clone()],
            "the killed cut's checkpoint went: {n}"
        );
    }

    // 2. libvirtd restarts while a job serves: the export reads on, the end still ends it.
    let b = id(&backup_json(&lab, &["begin", G, "--incremental"]));
    restart_libvirtd();
    let eb = backup_json(&lab, &["export", &b, "--to", &dir(out, "b")]);
    assert_eq!(eb["backup"]["since"], a.as_str());
    backup_json(&lab, &["end", &b]);
    jobs_gone(&names);

    // 3. An export killed mid-way: nothing of it passes as an export, and the next
    // incremental is based on the last completed cut (b), not on the interrupted one.
    let c_id = id(&backup_json(&lab, &["begin", G, "--incremental"]));
    let c_dir = out.join("c");
    let mut exp = lab
        .std_cgsnap()
        .args(["backup", "export", &c_id, "--to"])
        .arg(&c_dir)
        .spawn()
        .expect("export");
    let t0 = Instant::now();
    while files_under(&c_dir, ".cgsnap-partial").is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "export never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    sigkill(&mut exp);
    assert!(files_under(&c_dir, ".qcow2").is_empty(), "no finished file");
    backup_json(&lab, &["end", &c_id]);
    let d = backup_json(&lab, &["begin", G, "--incremental"]);
    assert_eq!(
        d["backup"]["since"],
        b.as_str(),
        "based on the last completed cut"
    );
    let d_id = id(&d);
    backup_json(&lab, &["export", &d_id, "--to", &dir(out, "d")]);

    // 4. A member shut off while its job runs: end ends the others' and its own is gone.
    let transient = names[0].clone();
    let persistent = names[1].clone();
    virsh_ok(&["destroy", &persistent]);
    let m = backup_json(&lab, &["end", &d_id]);
    assert_eq!(m["state"], "released");
    assert_eq!(domstate(&persistent), "shut off");
    assert_eq!(domblklist(&persistent), blk[1], "chain unchanged");
    jobs_gone(&names);
    virsh_ok(&["start", &persistent]);
    lab.guest(&persistent)
        .wait_console("seq ", Duration::from_secs(120))
        .expect("restarted guest writes");
    // Its bitmaps survive only if QEMU closed the images cleanly: the next incremental is
    // either sound (its export equals what is served) or a full cut that says why.
    let e = backup_json(&lab, &["begin", G, "--incremental"]);
    let e_id = id(&e);
    println!(
        "after a member was shut off mid-job: {} ({})",
        e["backup"]["mode"], e["backup"]["full_reason"]
    );
    if e["backup"]["mode"] == "full" {
        assert!(e["backup"]["full_reason"].is_string(), "{e}");
    } else {
        assert_eq!(e["backup"]["since"], d_id.as_str());
    }
    let e_dir = out.join("e");
    backup_json(
        &lab,
        &["export", &e_id, "--to", e_dir.to_str().expect("utf8")],
    );
    crate::backup::assert_export_matches(&e, &e_dir);

    // 5. A member deleted while its job runs: end ends the rest; the group changed, so the
    // next incremental is full and says so.
    virsh_ok(&["destroy", &transient]);
    backup_json(&lab, &["end", &e_id]);
    jobs_gone(std::slice::from_ref(&persistent));
    let f = backup_json(&lab, &["begin", G, "--incremental"]);
    assert_eq!(f["backup"]["mode"], "full", "{f}");
    let why = f["backup"]["full_reason"].as_str().expect("reason");
    assert!(why.contains("members"), "{why}");
    backup_json(&lab, &["end", &id(&f)]);
    assert_eq!(domstate(&persistent), "running");
    assert_eq!(domblklist(&persistent), blk[1]);
}
