//! Verify from a chain of backup exports: the PostgreSQL pair cut full, then incrementally,
//! while its workload commits; the incremental's export (backed by the full one) restores and
//! passes; a chain with a missing or foreign link is refused, the link named.

use crate::backup::backup_json;
use crate::common;

use cgsnap_testbeds::pair;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const DIR: &str = "/var/lib/libvirt/images/cgsnap-tests/bkv";
const EXPORTS: &str = "/var/lib/libvirt/images/cgsnap-tests/bkv-exports";

fn verify(lab: &Lab, id: &str, images: Option<&str>, profile: &Path) -> (i32, String, String) {
    let mut c = lab.std_cgsnap();
    c.args(["verify", id, "--json", "--base-port", "40420", "--profile"])
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
}

#[test]
fn an_incremental_export_backed_by_its_full_base_restores_and_passes() {
    let lab = lab("cgt-bkv", 0, 0);
    let _down = TestbedDown::new(&lab, &[DIR, EXPORTS]);
    lab.cgsnap()
        .args(["testbed", "up", "--ports", "25541,25542", "--dir", DIR])
        .timeout(Duration::from_secs(900))
        .assert()
        .success();
    let full = format!("{EXPORTS}/full");
    let inc = format!("{EXPORTS}/inc");
    std::thread::sleep(Duration::from_secs(3));
    let a = backup_json(&lab, &["begin", pair::NAME]);
    let a_id = a["id"].as_str().expect("id").to_string();
    backup_json(&lab, &["export", &a_id, "--to", &full]);
    backup_json(&lab, &["end", &a_id]);
    std::thread::sleep(Duration::from_secs(5));
    let b = backup_json(&lab, &["begin", pair::NAME, "--incremental"]);
    let b_id = b["id"].as_str().expect("id").to_string();
    assert_eq!(b["backup"]["since"], a_id.as_str());
    let e = backup_json(&lab, &["export", &b_id, "--to", &inc]);
    println!(
        "full export {} bytes read, incremental {} bytes read",
        lab_bytes(&lab, &a_id),
        e["backup"]["export"]["bytes_read"]
    );
    backup_json(&lab, &["end", &b_id]);
    run_ok(Command::new("chmod").args(["-R", "a+rX", EXPORTS]));

    let profile = pair::verify_profile(&lab.catalog.path().join("testbeds").join(pair::NAME));
    // Its images were never frozen: only its export can be verified.
    let (code, _, err) = verify(&lab, &b_id, None, &profile);
    assert_eq!(code, 12, "{err}");
    assert!(err.contains("is a backup cut"), "{err}");

    let (code, out, err) = verify(&lab, &b_id, Some(&inc), &profile);
    assert_eq!(code, 0, "verify from the chain: {err}\n{out}");
    let r: serde_json::Value = serde_json::from_str(&out).expect("report json");
    let chain = format!("{b_id} (incremental) <- {a_id} (full)");
    let notes = r["notes"].to_string();
    assert!(
        notes.contains(&chain),
        "the report names the chain: {notes}"
    );
    println!("chain {chain}: {}", failed_checks(&r).len());

    // A missing link: the full export moved away.
    let moved = format!("{EXPORTS}/full-moved");
    std::fs::rename(&full, &moved).expect("move");
    let (code, _, err) = verify(&lab, &b_id, Some(&inc), &profile);
    assert_eq!(code, 12, "{err}");
    assert!(err.contains("misses") && err.contains(&full), "{err}");
    println!("missing link refused: {}", err.trim());
    std::fs::rename(&moved, &full).expect("move back");

    // A foreign link: one increment rebased onto a file of the same size that no export wrote.
    let image = b["members"][0]["disks"][0]["image"]
        .as_str()
        .expect("image");
    let file = Path::new(&inc).join(image.trim_start_matches('/'));
    let foreign = format!("{EXPORTS}/foreign.qcow2");
    let size = b["members"][0]["disks"][0]["virtual_size"]
        .as_u64()
        .expect("size");
    run_ok(Command::new("qemu-img").args([
        "create",
        "-q",
        "-f",
        "qcow2",
        &foreign,
        &size.to_string(),
    ]));
    run_ok(
        Command::new("qemu-img")
            .args(["rebase", "-u", "-F", "qcow2", "-b", &foreign])
            .arg(&file),
    );
    let (code, _, err) = verify(&lab, &b_id, Some(&inc), &profile);
    assert_eq!(code, 12, "{err}");
    assert!(
        err.contains("foreign link") && err.contains(&foreign),
        "{err}"
    );
    println!("foreign link refused: {}", err.trim());
}

fn lab_bytes(lab: &Lab, id: &str) -> u64 {
    let out = lab.cgsnap().args(["show", id]).assert().success();
    let m: serde_json::Value =
        serde_json::from_slice(&out.get_output().stdout).expect("manifest json");
    m["backup"]["export"]["bytes_read"]
        .as_u64()
        .unwrap_or_default()
}
