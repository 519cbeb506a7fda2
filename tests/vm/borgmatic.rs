//! End to end with a real backup tool: borgmatic (Debian package) using the shipped
//! `hooks/borgmatic/config.yaml` backs up the frozen images of the running PostgreSQL testbed,
//! the archive is extracted, and `cgsnap verify --images` proves the extracted images recover.

use crate::common;

use cgsnap_testbeds::pair;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const DIR: &str = "/var/lib/libvirt/images/cgsnap-tests/borg";
const RESTORE: &str = "/var/lib/libvirt/images/cgsnap-tests/borg-restore";

/// A command that may touch the test's unencrypted borg repository without asking.
fn borg_env(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes");
    c
}

#[test]
fn borgmatic_backup_of_a_running_group_restores_and_verifies() {
    let lab = lab("cgt-borg", 0, 0);
    let _down = TestbedDown::new(&lab, &[DIR, RESTORE]);
    lab.cgsnap()
        .args(["testbed", "up", "--ports", "25531,25532", "--dir", DIR])
        .timeout(Duration::from_secs(900))
        .assert()
        .success();
    let work = tempfile::tempdir().expect("work dir");
    let repo = work.path().join("repo");
    run_ok(
        borg_env("borg")
            .args(["init", "--encryption=none"])
            .arg(&repo),
    );

    // The shipped adapter, pointed at this test's group, paths and cgsnap binary.
    let cgsnap = format!(
        "{} --catalog {}",
        assert_cmd::cargo::cargo_bin("cgsnap").display(),
        lab.catalog.path().display()
    );
    let cfg = include_str!("../../hooks/borgmatic/config.yaml")
        .replace("/var/lib/libvirt/images\n", &format!("{DIR}\n"))
        .replace(
            "/var/lib/cgsnap/snapshots",
            &lab.catalog.path().join("snapshots").to_string_lossy(),
        )
        .replace("/var/backups/cgsnap-borg", &repo.to_string_lossy())
        .replace("cgsnap hook", &format!("{cgsnap} hook"))
        .replace("GROUP", pair::NAME);
    let cfg_path = work.path().join("borgmatic.yaml");
    std::fs::write(&cfg_path, cfg).expect("config");
    std::thread::sleep(Duration::from_secs(3));
    run_ok(
        borg_env("borgmatic")
            .arg("-c")
            .arg(&cfg_path)
            .args(["create", "--verbosity", "1"]),
    );

    // post ran: the snapshot is released, no overlay is left next to the running VMs.
    let listed = list_json(&lab);
    let snap = listed
        .as_array()
        .and_then(|a| a.last())
        .expect("one snapshot")
        .clone();
    assert_eq!(snap["state"], "released");
    assert!(files_under(Path::new(DIR), ".cgsnap-overlay").is_empty());

    let archive = run_ok(borg_env("borg").args(["list", "--short"]).arg(&repo));
    let archive = archive
        .lines()
        .last()
        .expect("an archive")
        .trim()
        .to_string();
    let _ = std::fs::remove_dir_all(RESTORE);
    std::fs::create_dir_all(RESTORE).expect("restore dir");
    run_ok(
        borg_env("borg")
            .arg("extract")
            .arg(format!("{}::{archive}", repo.display()))
            .current_dir(RESTORE),
    );
    assert!(
        files_under(Path::new(RESTORE), ".cgsnap-overlay").is_empty(),
        "overlays excluded from the backup"
    );
    // borg creates the parents of extracted paths private (0700); QEMU, running as its own
    // user, must traverse them to read the images.
    run_ok(borg_env("chmod").args(["-R", "a+rX", RESTORE]));
    let extracted = Path::new(RESTORE)
        .join(DIR.trim_start_matches('/'))
        .join("cgsnap-orders/vdb.qcow2");
    assert!(extracted.exists(), "{} extracted", extracted.display());

    // Verified as a production guest would be: no ready marker on the console (readiness is
    // the first connection that succeeds).
    let profile = pair::verify_profile(&lab.catalog.path().join("testbeds").join(pair::NAME));
    let text = std::fs::read_to_string(&profile).expect("profile");
    let unmarked: String = text
        .lines()
        .filter(|l| !l.starts_with("ready_marker"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(unmarked.matches("[[member]]").count(), 2);
    assert!(
        unmarked.len() < text.len(),
        "the testbed profile had markers"
    );
    let profile = work.path().join("no-marker.toml");
    std::fs::write(&profile, unmarked).expect("write profile");
    let out = lab
        .cgsnap()
        .args([
            "verify",
            snap["id"].as_str().expect("id"),
            "--images",
            RESTORE,
            "--base-port",
            "40400",
            "--profile",
        ])
        .arg(&profile)
        .timeout(Duration::from_secs(600))
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    print!("{text}");
    assert!(text.contains(": PASS"), "{text}");
    assert!(text.contains("recovery "), "{text}");

    dr_drill(snap["id"].as_str().expect("id"), &lab, &profile);
}

/// The disaster-recovery drill on a spare host, from the extracted archive alone: it holds the
/// snapshot's manifest, so the extraction is a catalog of its own. The manifest is edited to
/// say the members ran on a host this one never contacts (`.invalid` does not resolve): verify
/// builds their sandboxes here, on the daemon `--connect` names, from the restored images, and
/// refuses, naming the fix, without them or without that daemon.
fn dr_drill(id: &str, lab: &Lab, profile: &Path) {
    const ORIGIN: &str = "qemu+ssh://prod.invalid/system";
    let catalog = lab.catalog.path().strip_prefix("/").expect("absolute");
    let dr = Path::new(RESTORE).join(catalog);
    let path = dr.join("snapshots").join(format!("{id}.json"));
    let body = std::fs::read(&path).expect("the manifest is in the backup");
    let mut manifest: serde_json::Value = serde_json::from_slice(&body).expect("manifest json");
    assert_eq!(manifest["state"], "taken", "backed up while held");
    for m in manifest["members"].as_array_mut().expect("members") {
        m["uri"] = ORIGIN.into();
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).expect("json")).expect("edit");
    let verify = |args: &[&str]| {
        let mut c = assert_cmd::Command::cargo_bin("cgsnap").expect("binary");
        c.arg("--catalog")
            .arg(&dr)
            .args(["verify", id, "--base-port", "40410", "--json", "--profile"])
            .arg(profile)
            .args(args)
            .timeout(Duration::from_secs(600));
        c
    };
    let refused = |args: &[&str], fix: &str| {
        let out = verify(args).assert().code(12).get_output().clone();
        let err = String::from_utf8_lossy(&out.stderr);
        println!("refused: {}", err.trim());
        assert!(
            err.contains(&format!("ran on {ORIGIN}, not on this host")),
            "{err}"
        );
        assert!(err.contains(fix), "{err}");
    };
    refused(&[], "--images DIR");
    refused(&["--images", RESTORE], "--connect qemu:///system");
    let out = verify(&["--images", RESTORE, "--connect", URI])
        .assert()
        .success();
    let r: serde_json::Value =
        serde_json::from_slice(&out.get_output().stdout).expect("report json");
    assert_eq!(r["verdict"], "pass", "{r}");
    for m in r["members"].as_array().expect("members") {
        assert_eq!(m["host"], ORIGIN);
        assert_eq!(m["sandbox_host"], URI);
        assert!(m["recovery_seconds"].as_f64().expect("rto") > 0.0);
    }
    let html = std::fs::read_to_string(dr.join("reports").join(id).join("report.html"))
        .expect("report html");
    assert!(
        html.contains(&format!("on {ORIGIN} (sandbox")),
        "host in the report"
    );
    println!(
        "DR drill on {URI} from the restored images: {}",
        r["verdict"]
    );
}
