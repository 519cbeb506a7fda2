//! `cgsnap prune` against a catalog on disk, through the real binary: what it removes (old
//! finished snapshots with their reports), what it never removes (held snapshots, the newest
//! passing verification, the newest `--keep`, anything younger than `--min-age`), `--dry-run`,
//! a busy group (exit 5, nothing removed) and a bad group name (exit 2).

use cgsnap::catalog::{Catalog, Manifest, SnapState};
use chrono::{Duration, Utc};
use std::path::Path;
use std::process::Output;

fn manifest(id: &str, state: SnapState, days_ago: i64) -> Manifest {
    let group = id.split('-').next().expect("group");
    Manifest::new(id, group, state, Utc::now() - Duration::days(days_ago))
}

fn report(cat: &Catalog, id: &str, verdict: &str) {
    let d = cat.report_dir(id);
    std::fs::create_dir_all(&d).expect("report dir");
    let r = serde_json::json!({
        "verdict": verdict, "finished_at": Utc::now(), "rpo_seconds": 5.0, "members": [],
    });
    std::fs::write(d.join("report.json"), r.to_string()).expect("report");
    std::fs::write(d.join("report.html"), "<html></html>").expect("html");
}

/// pg: pg-1 … pg-4 (12 … 9 days old), pg-5 (3 days), pg-6 (2 days, held); pg-3 verified
/// (pass), pg-1 and pg-5 verified (fail); other: one released snapshot 20 days old.
fn catalog(dir: &Path) -> Catalog {
    let cat = Catalog::open(dir).expect("catalog");
    for (i, (state, days_ago)) in [
        (SnapState::Released, 12),
        (SnapState::Aborted, 11),
        (SnapState::Released, 10),
        (SnapState::Released, 9),
        (SnapState::Released, 3),
        (SnapState::Taken, 2),
    ]
    .into_iter()
    .enumerate()
    {
        cat.write(&manifest(&format!("pg-{}", i + 1), state, days_ago))
            .expect("write");
    }
    cat.write(&manifest("other-1", SnapState::Released, 20))
        .expect("write");
    report(&cat, "pg-3", "pass");
    report(&cat, "pg-5", "fail");
    report(&cat, "pg-1", "fail");
    cat
}

fn prune(cat: &Path, args: &[&str]) -> Output {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("cgsnap"))
        .arg("--catalog")
        .arg(cat)
        .arg("prune")
        .args(args)
        .output()
        .expect("cgsnap prune")
}

fn ids(cat: &Catalog) -> Vec<String> {
    cat.list()
        .expect("list")
        .into_iter()
        .map(|m| m.id)
        .collect()
}

#[test]
fn prune_keeps_held_young_newest_and_evidence() {
    let t = tempfile::tempdir().expect("tempdir");
    let cat = catalog(t.path());
    let before = ids(&cat);

    let out = prune(t.path(), &["--group", "pg", "--keep", "1", "--dry-run"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        "group pg: would prune 3 snapshot(s), kept 3: pg-4, pg-2, pg-1"
    );
    assert_eq!(ids(&cat), before, "dry run removes nothing");

    // Kept: pg-5 (newest finished, --keep 1), pg-3 (newest pass), pg-6 (held).
    let out = prune(t.path(), &["--group", "pg", "--keep", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ids(&cat),
        ["other-1", "pg-3", "pg-5", "pg-6"],
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!cat.report_dir("pg-1").exists(), "its report went with it");
    assert!(cat.report_dir("pg-3").join("report.html").exists());
    assert!(cat.report_dir("pg-5").join("report.json").exists());
    // The metrics were re-rendered from what is left.
    let prom = std::fs::read_to_string(t.path().join("metrics/cgsnap.prom")).expect("metrics");
    assert!(
        prom.contains("cgsnap_snapshots{group=\"pg\",state=\"released\"} 2"),
        "{prom}"
    );

    // Again: nothing left to prune in pg. All groups, default keep 30: nothing either.
    let out = prune(t.path(), &["--group", "pg", "--keep", "1"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "group pg: pruned 0 snapshot(s), kept 3"
    );
    let out = prune(t.path(), &[]);
    assert!(out.status.success());
    assert_eq!(ids(&cat).len(), 4);
    // keep 0, default --min-age 7d: other-1 (20 days) goes, pg-5 (3 days) is too young.
    let out = prune(t.path(), &["--keep", "0"]);
    assert!(out.status.success());
    assert_eq!(ids(&cat), ["pg-3", "pg-5", "pg-6"]);

    // keep 0, 1 day: pg-5 goes; pg-3 (evidence) and pg-6 (held) stay.
    let out = prune(t.path(), &["--keep", "0", "--min-age", "1d"]);
    assert!(out.status.success());
    assert_eq!(ids(&cat), ["pg-3", "pg-6"]);
}

#[test]
fn busy_group_and_bad_name_remove_nothing() {
    let t = tempfile::tempdir().expect("tempdir");
    let cat = catalog(t.path());
    let before = ids(&cat);
    let lock = cat.lock("pg").expect("lock");
    let out = prune(t.path(), &["--keep", "0", "--min-age", "1ms"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("holds the lock on group pg"), "{err}");
    assert_eq!(ids(&cat), before, "a busy group stops the whole run");
    drop(lock);

    let out = prune(t.path(), &["--group", "bad/name"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid group name"));
    assert_eq!(ids(&cat), before);
}
