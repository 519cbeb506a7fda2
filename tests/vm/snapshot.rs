//! Real-VM tests of the main path: group snapshot of running TCG guests while they write,
//! checked after resume and after release; and the backup-hook contract.

use crate::common;

use cgsnap_testbeds::record;
use common::*;
use std::path::Path;
use std::time::Duration;

fn json(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out).expect("valid JSON on stdout")
}

#[test]
fn snapshot_shows_overlays_and_release_restores_images() {
    let lab = lab("cgt-snap", 3, 2);
    lab.group_add("cgt-snap", &lab.names());

    let out = lab
        .cgsnap()
        .args(["snapshot", "cgt-snap", "--json"])
        .assert()
        .success();
    let m = json(&out.get_output().stdout);
    let id = m["id"].as_str().expect("id").to_string();
    assert_eq!(m["group"], "cgt-snap");
    assert!(m["consistency_point"].is_string());
    let window = m["freeze_window_ms"].as_f64().expect("freeze window");
    assert!(window > 0.0 && window < 2000.0, "freeze window {window}");
    let members = m["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);

    let mut before_release = Vec::new();
    for mem in members {
        let dom = mem["domain"].as_str().expect("domain");
        assert_eq!(mem["uri"], URI);
        assert!(mem["freeze_ms"].as_f64().expect("freeze_ms") <= window + 1e-6);
        assert_eq!(
            domstate(dom),
            "running",
            "{dom} must run after the snapshot"
        );
        let disks = mem["disks"].as_array().expect("disks");
        assert_eq!(disks.len(), 2);
        let live = domblklist(dom);
        let mut images = Vec::new();
        for d in disks {
            let (t, img, ovl) = (
                d["target"].as_str().expect("target"),
                d["image"].as_str().expect("image"),
                d["overlay"].as_str().expect("overlay"),
            );
            assert!(ovl.ends_with(".cgsnap-overlay"));
            assert!(
                live.contains(&(t.to_string(), ovl.to_string())),
                "{dom}: {live:?}"
            );
            images.push(img.to_string());
        }
        // The frozen images hold one instant of this guest (vda written before vdb).
        let frozen = records(&images);
        // The guest keeps writing after resume, through its overlays.
        let g = lab.guest(dom);
        let now = g
            .wait_progress(frozen[0].seq + 50, Duration::from_secs(60))
            .expect("guest writes after resume");
        assert!(now > frozen[0].seq);
        let live_rec = record::read(Path::new(disks[0]["overlay"].as_str().expect("overlay")))
            .expect("read overlay")
            .expect("record");
        assert!(live_rec.seq > frozen[0].seq, "overlay holds newer writes");
        before_release.push((dom.to_string(), images, live_rec.seq));
    }

    let listed = list_json(&lab);
    assert_eq!(listed[0]["state"], "taken");

    lab.cgsnap().args(["release", &id]).assert().success();
    assert!(
        lab.overlays_on_disk().is_empty(),
        "{:?}",
        lab.overlays_on_disk()
    );
    for (dom, images, seq) in &before_release {
        let live: Vec<String> = domblklist(dom).into_iter().map(|(_, s)| s).collect();
        assert_eq!(&live, images, "{dom} back on its images");
        assert_eq!(domstate(dom), "running");
        // Writes made on the overlay were committed into the image.
        let g = lab.guest(dom);
        g.wait_progress(g.console_seq() + 50, Duration::from_secs(60))
            .expect("still writing");
        g.destroy_domain();
        let after = records(images);
        assert!(
            after[0].seq > *seq,
            "{dom}: image has seq {} <= {seq}",
            after[0].seq
        );
    }
    let listed = list_json(&lab);
    assert_eq!(listed[0]["state"], "released");
    // Releasing again is a no-op.
    lab.cgsnap().args(["release", &id]).assert().success();
}

#[test]
fn hook_contract_pre_post_twice_and_out_of_order() {
    let lab = lab("cgt-hook", 2, 2);
    lab.group_add("cgt-hook", &lab.names());
    let post = || {
        lab.cgsnap()
            .args(["hook", "post", "--group", "cgt-hook"])
            .assert()
    };

    let o = post().success();
    assert_eq!(
        String::from_utf8_lossy(&o.get_output().stdout).trim(),
        "cgsnap: nothing to release for group cgt-hook"
    );

    let o = lab
        .cgsnap()
        .args(["hook", "pre", "--group", "cgt-hook"])
        .assert()
        .success();
    let line = String::from_utf8_lossy(&o.get_output().stdout).to_string();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains("taken: 2 members, 4 disks"), "{line}");
    assert_eq!(lab.overlays_on_disk().len(), 4);
    // Monitoring sees the held snapshot and the successful attempt.
    let held = |lab: &Lab| lab.metric(r#"cgsnap_snapshots{group="cgt-hook",state="taken"}"#);
    let since = r#"cgsnap_snapshot_outstanding_since_timestamp_seconds{group="cgt-hook"}"#;
    assert_eq!(held(&lab), Some(1.0));
    assert!(lab.metric(since).is_some());
    // `cgsnap list` shows how much space the held overlays take (they grow until release).
    let o = lab.cgsnap().args(["list"]).assert().success();
    let table = String::from_utf8_lossy(&o.get_output().stdout).to_string();
    let row = table
        .lines()
        .find(|l| l.starts_with("cgt-hook-"))
        .expect("the snapshot's row");
    assert!(row.contains(" taken ") && row.ends_with(" MiB"), "{table}");
    assert_eq!(
        lab.metric(r#"cgsnap_snapshot_last_attempt_success{group="cgt-hook"}"#),
        Some(1.0)
    );

    let o = lab
        .cgsnap()
        .args(["hook", "pre", "--group", "cgt-hook"])
        .assert()
        .code(6);
    let err = String::from_utf8_lossy(&o.get_output().stderr).to_string();
    assert!(err.contains("already has an unreleased snapshot"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        lab.overlays_on_disk().len(),
        4,
        "second pre created nothing"
    );
    wait_running(&lab.names(), Duration::from_secs(1)).expect("still running");

    assert_eq!(held(&lab), Some(1.0), "the refused pre changed nothing");

    let o = post().success();
    assert!(
        String::from_utf8_lossy(&o.get_output().stdout).starts_with("cgsnap: released cgt-hook-")
    );
    assert!(lab.overlays_on_disk().is_empty());
    assert_eq!(held(&lab), Some(0.0));
    assert_eq!(lab.metric(since), None, "nothing held any more");
    let o = lab.cgsnap().args(["list"]).assert().success();
    let table = String::from_utf8_lossy(&o.get_output().stdout).to_string();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("cgt-hook-") && l.contains(" released ") && l.ends_with(" -")),
        "{table}"
    );
    let released = lab
        .metric(r#"cgsnap_release_last_success_timestamp_seconds{group="cgt-hook"}"#)
        .expect("release time");
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - 120.0..=now + 1.0).contains(&released), "{released}");
    let o = post().success();
    assert!(String::from_utf8_lossy(&o.get_output().stdout).contains("nothing to release"));
    for g in &lab.guests {
        assert_own_images(g);
    }
}

#[test]
fn resume_together_holds_every_member_until_the_last_snapshot() {
    let lab = lab("cgt-together", 2, 2);
    lab.group_add("cgt-together", &lab.names());
    let out = lab
        .cgsnap()
        .args(["snapshot", "cgt-together", "--resume", "together", "--json"])
        .assert()
        .success();
    let m = json(&out.get_output().stdout);
    let id = m["id"].as_str().expect("id").to_string();
    let window = m["freeze_window_ms"].as_f64().expect("freeze window");
    let pause_phase = m["phases"]["pause_ms"].as_f64().expect("pause phase");
    let members = m["members"].as_array().expect("members");
    let slowest_resume = members
        .iter()
        .map(|x| x["resume_ms"].as_f64().expect("resume_ms"))
        .fold(0.0, f64::max);
    for mem in members {
        let dom = mem["domain"].as_str().expect("domain");
        assert_eq!(domstate(dom), "running", "{dom} resumed");
        // Paused within the pause phase, resumed in the final parallel resume: frozen for the
        // whole window but for those two spans (plus thread wake-up slack).
        let freeze = mem["freeze_ms"].as_f64().expect("freeze_ms");
        assert!(
            freeze >= window - pause_phase - slowest_resume - 5.0,
            "{dom}: frozen {freeze} ms of a {window} ms window"
        );
        let overlays: Vec<String> = mem["disks"]
            .as_array()
            .expect("disks")
            .iter()
            .map(|d| d["overlay"].as_str().expect("overlay").to_string())
            .collect();
        let live: Vec<String> = domblklist(dom).into_iter().map(|(_, s)| s).collect();
        assert_eq!(live, overlays, "{dom} writes to its overlays");
        lab.guest(dom)
            .wait_progress(lab.guest(dom).console_seq() + 20, Duration::from_secs(60))
            .expect("guest writes after resume");
    }
    lab.cgsnap().args(["release", &id]).assert().success();
    assert!(lab.overlays_on_disk().is_empty());
}

#[test]
fn a_disk_the_domain_excludes_is_left_out_and_kept_from_sandboxes() {
    let mut lab = lab("cgt-scratch", 0, 0);
    let mut spec = cgsnap_testbeds::guest::Spec::writer("cgt-scratch-1", 2);
    spec.scratch = true;
    // Things a sandbox must not share with the running original: a host directory, a serial
    // port listening on loopback (a second listener on it could not even start), a TPM.
    let share = Path::new(BASE).join("cgt-scratch-share");
    std::fs::create_dir_all(&share).expect("share dir");
    let serial_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    spec.extra_devices = format!(
        "<filesystem type='mount' accessmode='mapped'><source dir='{}'/><target dir='share'/></filesystem>\
         <serial type='tcp'><source mode='bind' host='127.0.0.1' service='{serial_port}'/><protocol type='raw'/><target port='1'/></serial>\
         <tpm model='tpm-tis'><backend type='emulator' version='2.0'/></tpm>",
        share.display()
    );
    let g = lab.add_guest(spec);
    g.wait_console("seq ", Duration::from_secs(120))
        .expect("guest writes");
    let scratch = g.disks[2].to_string_lossy().into_owned();
    let original = std::process::Command::new("virsh")
        .args(["-c", URI, "dumpxml", "cgt-scratch-1"])
        .output()
        .expect("virsh dumpxml");
    let original = String::from_utf8_lossy(&original.stdout).to_string();
    assert!(
        original.contains("<filesystem") && original.contains("<tpm"),
        "{original}"
    );
    lab.group_add("cgt-scratch", &lab.names());

    // A raw disk would be refused (exit 4); marked snapshot='no' it is left out.
    let (id, m) = lab.snapshot_json("cgt-scratch", &[]);
    assert_eq!(disk_fields(&m, 0, "target"), ["vda", "vdb"]);
    let live = domblklist("cgt-scratch-1");
    assert_eq!(live[2], ("vdc".to_string(), scratch.clone()), "{live:?}");
    assert!(live[0].1.ends_with(".cgsnap-overlay") && live[1].1.ends_with(".cgsnap-overlay"));

    // A sandbox of this member never gets the live scratch disk: a blank stand-in instead.
    let images: Vec<(String, std::path::PathBuf)> = disk_fields(&m, 0, "target")
        .into_iter()
        .zip(disk_fields(&m, 0, "image"))
        .map(|(t, i)| (t, i.into()))
        .collect();
    let dir = Path::new(BASE).join("cgt-scratch-sandbox");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let sb = cgsnap_verify::sandbox::Sandbox::start(
        URI,
        m["members"][0]["domain_xml"].as_str().expect("domain xml"),
        "cgt-scratch-sb",
        &images,
        &dir,
        (port, 9),
    )
    .expect("sandbox starts");
    assert_eq!(sb.stand_ins.len(), 1, "{:?}", sb.stand_ins);
    assert!(
        sb.stand_ins[0].starts_with("vdc (snapshot='no', source ")
            && sb.stand_ins[0].contains("blank 64 MiB"),
        "{:?}",
        sb.stand_ins
    );
    let in_sandbox = domblklist("cgt-scratch-sb");
    assert_eq!(in_sandbox.len(), 3, "{in_sandbox:?}");
    for (t, src) in &in_sandbox {
        assert!(
            src.starts_with(&*dir.to_string_lossy()),
            "{t}: {src} is outside the sandbox"
        );
    }
    assert!(in_sandbox[2].1.ends_with("vdc.blank.qcow2"));
    let xml = std::process::Command::new("virsh")
        .args(["-c", URI, "dumpxml", "cgt-scratch-sb"])
        .output()
        .expect("virsh dumpxml");
    let xml = String::from_utf8_lossy(&xml.stdout).to_string();
    assert!(xml.contains("<name>cgt-scratch-sb</name>"), "{xml}");
    assert!(
        !xml.contains("<filesystem") && !xml.contains(&share.to_string_lossy().to_string()),
        "{xml}"
    );
    assert!(!xml.contains(&format!("service='{serial_port}'")), "{xml}");
    assert!(
        !xml.contains("<tpm"),
        "the original's TPM state is not the sandbox's: {xml}"
    );
    drop(sb);
    let _ = std::fs::remove_dir_all(&share);
    assert_eq!(domstate("cgt-scratch-sb"), "", "sandbox removed");
    assert!(!dir.exists());

    lab.cgsnap().args(["release", &id]).assert().success();
    assert_own_images(lab.guest("cgt-scratch-1"));
}

/// Production VMs are persistent domains. While a snapshot is held their persistent
/// definition names the overlays too, so a member restarted meanwhile (a host reboot in the
/// backup window) keeps writing to the overlays, never to the frozen images; release then
/// commits those writes and leaves the definition naming the original images, so the next
/// boot does not look for a deleted overlay.
#[test]
fn persistent_member_definition_follows_snapshot_restart_and_release() {
    let mut lab = lab("cgt-persist", 0, 2);
    let name = "cgt-persist-1";
    lab.add_persistent_guest(cgsnap_testbeds::guest::Spec::writer(name, 2));
    lab.group_add("cgt-persist", &lab.names());
    let own: Vec<String> = lab
        .guest(name)
        .disks
        .iter()
        .map(|d| d.to_string_lossy().to_string())
        .collect();
    assert_eq!(inactive_sources(name), own);

    let out = lab
        .cgsnap()
        .args(["snapshot", "cgt-persist", "--json"])
        .assert()
        .success();
    let m = json(&out.get_output().stdout);
    let overlays = disk_fields(&m, 0, "overlay");
    assert_eq!(
        inactive_sources(name),
        overlays,
        "held: definition on the overlays"
    );
    let frozen = records(&own);

    // Power cut and boot from the persistent definition while the snapshot is held.
    virsh_ok(&["destroy", name]);
    virsh_ok(&["start", name]);
    let g = lab.guest(name);
    g.wait_progress(g.console_seq() + 20, Duration::from_secs(120))
        .expect("restarted guest writes");
    let live: Vec<String> = domblklist(name).into_iter().map(|(_, s)| s).collect();
    assert_eq!(live, overlays, "restarted on the overlays");
    assert_eq!(
        records(&own),
        frozen,
        "frozen images untouched by the restarted guest"
    );

    lab.cgsnap()
        .args(["release", "--group", "cgt-persist"])
        .assert()
        .success();
    assert_eq!(
        inactive_sources(name),
        own,
        "released: definition on the images"
    );
    lab.assert_no_overlays(&lab.names());
    // Power cut: the images hold what the restarted guest wrote on the overlays.
    let seq = g.console_seq();
    virsh_ok(&["destroy", name]);
    let after = records(&own);
    assert!(
        after[0].seq >= seq && after != frozen,
        "images hold the writes made on the overlays: {after:?}, frozen {frozen:?}"
    );
    // The next boot, from the definition, is on the images.
    virsh_ok(&["start", name]);
    g.wait_progress(g.console_seq() + 20, Duration::from_secs(120))
        .expect("guest writes after reboot");
    assert_own_images(g);
}

#[test]
fn a_shared_overlay_directory_holds_one_overlay_per_disk() {
    // Every guest's images are `vda.qcow2` and `vdb.qcow2` in a directory of its own, as in
    // many real layouts: in one overlay directory their overlays must still be distinct files.
    let lab = lab("cgt-ovldir", 2, 2);
    lab.group_add("cgt-ovldir", &lab.names());
    let dir = lab.guests[0]
        .dir
        .parent()
        .expect("guest store")
        .join("cgt-ovldir-overlays");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("overlay directory");
    let out = lab
        .cgsnap()
        .args(["snapshot", "cgt-ovldir", "--json", "--overlay-dir"])
        .arg(&dir)
        .assert()
        .success();
    let m = json(&out.get_output().stdout);
    let mut overlays = std::collections::BTreeSet::new();
    for mem in m["members"].as_array().expect("members") {
        let dom = mem["domain"].as_str().expect("domain");
        let live = domblklist(dom);
        for d in mem["disks"].as_array().expect("disks") {
            let (t, ovl) = (
                d["target"].as_str().expect("target"),
                d["overlay"].as_str().expect("overlay"),
            );
            assert!(Path::new(ovl).starts_with(&dir), "{ovl}");
            assert!(
                live.contains(&(t.to_string(), ovl.to_string())),
                "{dom}: {live:?}"
            );
            overlays.insert(ovl.to_string());
        }
        let g = lab.guest(dom);
        g.wait_progress(g.console_seq() + 10, Duration::from_secs(60))
            .expect("guest writes through its overlays");
    }
    assert_eq!(overlays.len(), 4, "one overlay per disk: {overlays:?}");
    let id = m["id"].as_str().expect("id");
    lab.cgsnap().args(["release", id]).assert().success();
    for g in &lab.guests {
        assert_own_images(g);
    }
    let left: Vec<_> = std::fs::read_dir(&dir).expect("read dir").collect();
    assert!(left.is_empty(), "{left:?}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}
