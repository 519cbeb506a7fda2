//! `cgsnap list` and `show` against a catalog on disk, through the real binary: a negative
//! control is marked `NOT CONSISTENT` with no freeze window, whether its manifest has the
//! marker or (older) only the `unsafe_*` fields, and the JSON carries the marker.

use cgsnap::catalog::{Catalog, ControlKind, Manifest, NegativeControl, SnapState};
use std::path::Path;

/// g-1 real, g-2 a staggered control with the marker, g-3 an old disk-order control that
/// still recorded a freeze window.
fn catalog(dir: &Path) {
    let cat = Catalog::open(dir).expect("catalog");
    let at = |s: i64| chrono::DateTime::from_timestamp(1_700_000_000 + s, 0).expect("ts");
    let mut real = Manifest::new("g-1", "g", SnapState::Released, at(0));
    real.freeze_window_ms = Some(41.0);
    cat.write(&real).expect("write");
    let mut stagger = Manifest::new("g-2", "g", SnapState::Released, at(60));
    stagger.unsafe_stagger_ms = Some(1000);
    stagger.negative_control = Some(NegativeControl {
        kind: ControlKind::UnsafeStagger,
        span_ms: Some(2210.0),
        deliberate_gap_ms: 2000,
        max_member_freeze_ms: Some(104.0),
    });
    cat.write(&stagger).expect("write");
    let mut old = Manifest::new("g-3", "g", SnapState::Released, at(120));
    old.unsafe_disk_order = Some(vec!["vdc".into(), "vdb".into()]);
    old.unsafe_disk_gap_ms = Some(1000);
    old.freeze_window_ms = Some(0.0);
    cat.write(&old).expect("write");
}

fn cgsnap(cat: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("cgsnap"))
        .arg("--catalog")
        .arg(cat)
        .args(args)
        .output()
        .expect("cgsnap");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn list_and_show_mark_negative_controls() {
    let t = tempfile::tempdir().expect("tmp");
    let dir = t.path().join("cat");
    catalog(&dir);
    let table = cgsnap(&dir, &["list"]);
    let row = |id: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("row {id}: {table}"))
            .to_string()
    };
    assert!(
        table.lines().next().expect("header").ends_with(" NOTE"),
        "{table}"
    );
    assert!(
        row("g-1").contains(" 41.0 ") && !row("g-1").contains("NOT CONSISTENT"),
        "{table}"
    );
    for id in ["g-2", "g-3"] {
        assert!(row(id).ends_with(" - NOT CONSISTENT"), "{table}");
    }

    let all: serde_json::Value =
        serde_json::from_str(&cgsnap(&dir, &["list", "--json"])).expect("json");
    let all = all.as_array().expect("array");
    assert!(all[0].get("negative_control").is_none());
    assert_eq!(all[1]["negative_control"]["kind"], "unsafe-stagger");
    assert_eq!(all[1]["negative_control"]["deliberate_gap_ms"], 2000);
    assert_eq!(all[1]["freeze_window_ms"], serde_json::Value::Null);

    let shown: serde_json::Value =
        serde_json::from_str(&cgsnap(&dir, &["show", "g-2"])).expect("json");
    assert_eq!(shown["negative_control"]["max_member_freeze_ms"], 104.0);
    assert_eq!(shown["unsafe_stagger_ms"], 1000);
}
