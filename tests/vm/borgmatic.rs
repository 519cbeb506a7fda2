//! End to end with a real backup tool: borgmatic (Debian package) using the shipped
//! `hooks/borgmatic/config.yaml` backs up the frozen images of the running PostgreSQL testbed,
//! the archive is extracted, and `cgsnap verify --images` proves the extracted images recover.
//! Then `hooks/borgmatic/config-backup-cut.yaml` backs the same running pair up twice through
//! backup cuts (a full one, then an incremental) without changing a disk chain, and the second
//! archive alone restores the chain and verifies, the report naming it; in that extract a
//! chain with a missing or a foreign link is refused (exit 12) with the link named, and the
//! cut itself, never frozen, cannot be verified without its export.

use crate::common;

use cgsnap_testbeds::pair;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const DIR: &str = "/var/lib/libvirt/images/cgsnap-tests/borg";
const RESTORE: &str = "/var/lib/libvirt/images/cgsnap-tests/borg-restore";
const STAGING: &str = "/var/lib/libvirt/images/cgsnap-tests/borg-staging";
const RESTORE_CUT: &str = "/var/lib/libvirt/images/cgsnap-tests/borg-restore-cut";

/// A command that may touch the test's unencrypted borg repository without asking.
fn borg_env(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes");
    c
}

/// A shipped configuration pointed at this lab: its catalog, the repository `repo`, the
/// `cgsnap` binary under test and the PostgreSQL pair's group.
fn shipped(config: &str, lab: &Lab, repo: &Path, cgsnap: &str) -> String {
    config
        .replace(
            "/var/lib/cgsnap/snapshots",
            &lab.catalog.path().join("snapshots").to_string_lossy(),
        )
        .replace("/var/backups/cgsnap-borg", &repo.to_string_lossy())
        .replace("cgsnap hook", &format!("{cgsnap} hook"))
        .replace("GROUP", pair::NAME)
}

/// `borg extract` of the repository's newest archive into `into`, made anew.
fn extract_last(repo: &Path, into: &str) {
    let archive = run_ok(borg_env("borg").args(["list", "--short"]).arg(repo));
    let archive = archive
        .lines()
        .last()
        .expect("an archive")
        .trim()
        .to_string();
    let _ = std::fs::remove_dir_all(into);
    std::fs::create_dir_all(into).expect("restore dir");
    run_ok(
        borg_env("borg")
            .arg("extract")
            .arg(format!("{}::{archive}", repo.display()))
            .current_dir(into),
    );
}

#[test]
fn borgmatic_backup_of_a_running_group_restores_and_verifies() {
    let lab = lab("cgt-borg", 0, 0);
    let _down = TestbedDown::new(&lab, &[DIR, RESTORE, STAGING, RESTORE_CUT]);
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
    let cfg = shipped(
        &include_str!("../../hooks/borgmatic/config.yaml")
            .replace("/var/lib/libvirt/images\n", &format!("{DIR}\n")),
        &lab,
        &repo,
        &cgsnap,
    );
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

    extract_last(&repo, RESTORE);
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
    backup_cut_mode(&lab, work.path(), &cgsnap, &profile);
}

/// The last backup cut of the catalog, as `list --json` shows it.
fn last_cut(lab: &Lab) -> serde_json::Value {
    list_json(lab)
        .as_array()
        .and_then(|a| a.iter().rev().find(|m| m["backup"].is_object()).cloned())
        .expect("a backup cut")
}

/// `config-backup-cut.yaml` on the running pair: a full cut, then an incremental, each staged
/// and ended by pre; the second archive, extracted, verifies from its chain of exports.
fn backup_cut_mode(lab: &Lab, work: &Path, cgsnap: &str, profile: &Path) {
    let names: Vec<String> = ["cgsnap-orders", "cgsnap-payments"]
        .map(String::from)
        .to_vec();
    let before = crate::backup::chains(&names);
    let repo = work.join("repo-cut");
    run_ok(
        borg_env("borg")
            .args(["init", "--encryption=none"])
            .arg(&repo),
    );
    let cfg = shipped(
        &include_str!("../../hooks/borgmatic/config-backup-cut.yaml")
            .replace("/var/lib/cgsnap/staging", STAGING),
        lab,
        &repo,
        cgsnap,
    );
    let cfg_path = work.join("borgmatic-cut.yaml");
    std::fs::write(&cfg_path, cfg).expect("config");
    let borgmatic = || {
        run_ok(
            borg_env("borgmatic")
                .arg("-c")
                .arg(&cfg_path)
                .args(["create", "--verbosity", "1"]),
        )
    };
    borgmatic();
    let a = last_cut(lab);
    let a_id = a["id"].as_str().expect("id").to_string();
    assert_eq!(a["backup"]["mode"], "full", "{a}");
    assert_eq!(a["state"], "released", "pre ended the jobs: {a}");
    std::thread::sleep(Duration::from_secs(5));
    borgmatic();
    let b = last_cut(lab);
    let b_id = b["id"].as_str().expect("id").to_string();
    assert_eq!(b["backup"]["since"], a_id.as_str(), "{b}");
    assert_eq!(b["state"], "released", "{b}");
    let (full, inc) = (
        a["backup"]["export"]["bytes_read"].as_u64().expect("bytes"),
        b["backup"]["export"]["bytes_read"].as_u64().expect("bytes"),
    );
    println!("backup cuts by borgmatic: full read {full} bytes, incremental {inc}");
    assert!(inc < full, "the incremental read less: {inc} vs {full}");
    assert_eq!(crate::backup::chains(&names), before, "chains unchanged");
    assert!(files_under(Path::new(DIR), ".cgsnap-overlay").is_empty());

    extract_last(&repo, RESTORE_CUT);
    run_ok(borg_env("chmod").args(["-R", "a+rX", RESTORE_CUT]));
    let top = Path::new(RESTORE_CUT)
        .join(STAGING.trim_start_matches('/'))
        .join(&b_id);
    let top = top.to_string_lossy().into_owned();
    let verify = |images: Option<&str>| {
        let mut c = lab.std_cgsnap();
        c.args([
            "verify",
            &b_id,
            "--json",
            "--base-port",
            "40430",
            "--profile",
        ])
        .arg(profile);
        if let Some(d) = images {
            c.args(["--images", d]);
        }
        let out = c.output().expect("verify");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Its images were never frozen: only its export can be verified.
    let (code, _, err) = verify(None);
    assert_eq!(code, 12, "{err}");
    assert!(err.contains("is a backup cut"), "{err}");

    let (code, out, err) = verify(Some(&top));
    assert_eq!(code, 0, "verify from the extracted chain: {err}\n{out}");
    let r: serde_json::Value = serde_json::from_str(&out).expect("report json");
    assert_eq!(r["verdict"], "pass", "{r}");
    let chain = format!("{b_id} (incremental) <- {a_id} (full)");
    assert!(
        r["notes"].to_string().contains(&chain),
        "the report names the chain: {}",
        r["notes"]
    );
    println!(
        "verified the second archive's extract from the chain {chain}: {} failed checks",
        failed_checks(&r).len()
    );

    // A missing link: the full cut's export moved away inside the extract.
    let full = Path::new(RESTORE_CUT)
        .join(STAGING.trim_start_matches('/'))
        .join(&a_id);
    let moved = full.with_extension("moved");
    std::fs::rename(&full, &moved).expect("move");
    let (code, _, err) = verify(Some(&top));
    assert_eq!(code, 12, "{err}");
    assert!(
        err.contains("misses") && err.contains(&*full.to_string_lossy()),
        "{err}"
    );
    println!("missing link refused: {}", err.trim());
    std::fs::rename(&moved, &full).expect("move back");

    // A foreign link: one increment rebased onto a file of the same size no export wrote.
    let disk = &b["members"][0]["disks"][0];
    let file = Path::new(&top).join(
        disk["image"]
            .as_str()
            .expect("image")
            .trim_start_matches('/'),
    );
    let foreign = format!("{RESTORE_CUT}/foreign.qcow2");
    let size = disk["virtual_size"].as_u64().expect("size").to_string();
    run_ok(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", &foreign, &size]));
    run_ok(
        Command::new("qemu-img")
            .args(["rebase", "-u", "-F", "qcow2", "-b", &foreign])
            .arg(&file),
    );
    let (code, _, err) = verify(Some(&top));
    assert_eq!(code, 12, "{err}");
    assert!(
        err.contains("foreign link") && err.contains(&foreign),
        "{err}"
    );
    println!("foreign link refused: {}", err.trim());
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
