//! The README's first command, `cgsnap demo`, run for real: three writer VMs with two disks
//! each snapshotted as a group (freeze window printed, frozen images one instant per VM),
//! released, torn down — leaving no domain, image or overlay behind, and its snapshot recorded
//! as released in the catalog it was given.

use crate::common;

use common::URI;
use std::path::Path;
use std::process::Command;

const DIR: &str = "/var/lib/libvirt/images/cgsnap-demo";

#[test]
fn demo_snapshots_checks_releases_and_tears_down() {
    // No lab (the demo makes its own guests), but the same one-at-a-time rule.
    let _serial = common::serial();
    let catalog = tempfile::tempdir().expect("catalog");
    let out = assert_cmd::Command::cargo_bin("cgsnap")
        .expect("binary")
        .args(["--connect", URI, "--catalog"])
        .arg(catalog.path())
        .arg("demo")
        .timeout(std::time::Duration::from_secs(600))
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    print!("{text}");

    assert!(
        text.contains("demo: group demo = cgsnap-demo-1 cgsnap-demo-2 cgsnap-demo-3"),
        "{text}"
    );
    let window: f64 = text
        .lines()
        .find_map(|l| l.split("freeze window ").nth(1))
        .and_then(|r| r.split(" ms").next())
        .and_then(|v| v.parse().ok())
        .expect("the freeze window is printed");
    assert!(
        window > 0.0 && window < 2000.0,
        "within the freeze budget: {window}"
    );
    let instants = text.lines().filter(|l| l.contains("(one instant)")).count();
    assert_eq!(instants, 3, "every member's frozen images checked: {text}");
    assert!(
        text.contains("every disk is back on its original image, overlays removed")
            && text.trim_end().ends_with("demo: torn down"),
        "{text}"
    );

    // Nothing left behind.
    let listed = Command::new("virsh")
        .args(["-c", URI, "list", "--all", "--name"])
        .output()
        .expect("virsh");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        !listed.lines().any(|l| l.starts_with("cgsnap-demo-")),
        "{listed}"
    );
    for i in 1..=3 {
        let d = Path::new(DIR).join(format!("cgsnap-demo-{i}"));
        assert!(!d.exists(), "{} removed", d.display());
    }
    let list = assert_cmd::Command::cargo_bin("cgsnap")
        .expect("binary")
        .args(["--connect", URI, "--catalog"])
        .arg(catalog.path())
        .args(["list", "--json"])
        .assert()
        .success();
    let snaps: serde_json::Value =
        serde_json::from_slice(&list.get_output().stdout).expect("list --json");
    let snaps = snaps.as_array().expect("array");
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["group"], "demo");
    assert_eq!(snaps[0]["state"], "released");
}
