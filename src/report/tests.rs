//! The report of a catalog holding four weeks of generated history.

use super::*;
use crate::catalog::policy::Change;
use crate::catalog::{Manifest, MemberRecord, SnapState};
use std::time::Duration;

const DAY: i64 = 86_400;

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).expect("t0")
}

fn at(s: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(s)
}

fn snap(cat: &Catalog, group: &str, n: i64, state: SnapState) -> Manifest {
    let m = Manifest {
        consistency_point: Some(at(n + 1)),
        freeze_window_ms: (state != SnapState::Aborted).then_some(40.0 + (n / DAY) as f64),
        members: ["orders", "payments"]
            .map(|d| MemberRecord::new(d, "qemu:///system", String::new(), vec![]))
            .to_vec(),
        error: (state == SnapState::Aborted)
            .then(|| "member orders is not running\nsecond line".to_string()),
        ..Manifest::new(&format!("{group}-{n:08}"), group, state, at(n))
    };
    cat.write(&m).expect("write");
    m
}

fn verified(cat: &Catalog, m: &Manifest, pass: bool, loss: f64, rto: f64) {
    let dir = cat.report_dir(&m.id);
    std::fs::create_dir_all(&dir).expect("dir");
    let member = |d: &str| {
        serde_json::json!({
            "domain": d, "recovery_seconds": rto, "data_loss_seconds": loss,
            "checks": [
                {"name": "recovered", "ok": true, "evidence": "ready"},
                {"name": "invariants", "ok": pass || d != "payments", "evidence": "sum(balance) = 7\nmore"}
            ]
        })
    };
    let r = serde_json::json!({
        "format_version": 1, "snapshot_id": m.id, "group": m.group,
        "verdict": if pass { "pass" } else { "fail" },
        "started_at": m.created_at + chrono::Duration::seconds(60),
        "finished_at": m.created_at + chrono::Duration::seconds(600),
        "rpo_seconds": 5.0,
        "members": [member("orders"), member("payments")],
        "cross_checks": []
    });
    std::fs::write(dir.join("report.json"), r.to_string()).expect("report");
}

fn stagger(cat: &Catalog, group: &str, n: i64, pass: bool) {
    let mut m = snap(cat, group, n, SnapState::Released);
    m.unsafe_stagger_ms = Some(1000);
    m.freeze_window_ms = None;
    cat.write(&m).expect("write");
    verified(cat, &m, pass, 0.5, 20.0);
}

/// Group `pg`: 28 nightly snapshots all verified, night 10 failed verification, night 20
/// aborted, a caught negative control every week and, newest of all, a missed one.
/// Group `old`: one restore point three days old. Group `free`: no policy.
fn history() -> (tempfile::TempDir, Catalog) {
    let d = tempfile::tempdir().expect("tempdir");
    let cat = Catalog::open(d.path()).expect("catalog");
    let pol = |max_h: u64| Change {
        max_restore_point_age: Some(Duration::from_secs(max_h * 3600)),
        rpo: Some(Duration::from_secs(5)),
        rto: Some(Duration::from_secs(120)),
    };
    policy::set(&cat, "pg", &pol(26)).expect("policy");
    policy::set(&cat, "old", &pol(26)).expect("policy");
    for night in 0..28 {
        let n = night * DAY;
        if night == 20 {
            snap(&cat, "pg", n, SnapState::Aborted);
            continue;
        }
        let m = snap(&cat, "pg", n, SnapState::Released);
        verified(
            &cat,
            &m,
            night != 10,
            0.1 * night as f64,
            30.0 + night as f64,
        );
        if night % 7 == 3 {
            stagger(&cat, "pg", n + 3600, false);
        }
    }
    stagger(&cat, "pg", 27 * DAY + 7200, true);
    let m = snap(&cat, "old", 25 * DAY, SnapState::Released);
    verified(&cat, &m, true, 1.0, 10.0);
    let m = snap(&cat, "free", 27 * DAY, SnapState::Taken);
    verified(&cat, &m, true, 1.0, 10.0);
    (d, cat)
}

fn now() -> DateTime<Utc> {
    at(27 * DAY + 4 * 3600)
}

fn group<'a>(r: &'a Report, g: &str) -> &'a GroupReport {
    r.groups.iter().find(|x| x.group == g).expect(g)
}

#[test]
fn statuses_restore_points_and_counts_of_four_weeks() {
    let (_d, cat) = history();
    let r = build(&cat, None, now() - chrono::Duration::days(30), now()).expect("report");
    assert_eq!(r.schema, SCHEMA);
    let names: Vec<&str> = r.groups.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(names, ["free", "old", "pg"]);

    let pg = group(&r, "pg");
    assert_eq!(pg.status, Status::Compliant, "{:?}", pg.reasons);
    let p = pg.newest_restore_point.as_ref().expect("restore point");
    // The newest verified pass is the missed negative control: never a restore point.
    assert_eq!(p.snapshot_id, format!("pg-{:08}", 27 * DAY));
    assert!(
        (p.age_seconds - (4.0 * 3600.0 - 1.0)).abs() < 1e-6,
        "{}",
        p.age_seconds
    );
    let c = &pg.counts;
    assert_eq!(
        (c.snapshots, c.taken, c.snapshot_failures),
        (28 + 4 + 1, 27, 1)
    );
    assert_eq!((c.verifications_passed, c.verifications_failed), (26, 1));
    assert_eq!(
        (
            c.negative_controls,
            c.negative_controls_caught,
            c.negative_controls_missed
        ),
        (5, 4, 1)
    );
    assert_eq!(
        pg.trends.freeze_window_ms.len(),
        27,
        "no control, no aborted run"
    );
    assert_eq!(pg.trends.recovery_seconds.len(), 27 * 2);
    let kinds: Vec<&str> = pg.failures.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        ["verification", "snapshot", "negative_control_missed"]
    );
    assert_eq!(
        pg.failures[0].first_error,
        "payments: invariants: sum(balance) = 7"
    );
    assert_eq!(pg.failures[1].first_error, "member orders is not running");
    assert!(pg.failures[1].report.is_none(), "no verification, no link");
    assert_eq!(
        pg.snapshots
            .iter()
            .filter(|s| s.negative_control.is_some())
            .count(),
        5
    );

    let old = group(&r, "old");
    assert_eq!(old.status, Status::Violated);
    assert!(
        old.reason.contains("is 2d 4h old, policy allows 1d 2h"),
        "{}",
        old.reason
    );
    assert_eq!(group(&r, "free").status, Status::NoPolicy);
}

#[test]
fn the_period_limits_counts_and_trends_but_not_the_status() {
    let (_d, cat) = history();
    let r = build(&cat, Some("pg"), now() - chrono::Duration::days(7), now()).expect("report");
    assert_eq!(r.groups.len(), 1);
    let pg = &r.groups[0];
    assert!(pg.counts.snapshots < 10, "{:?}", pg.counts);
    assert_eq!(pg.status, Status::Compliant);
    // Past the restore point's 26 h a day later, with nothing new: violated.
    let later = now() + chrono::Duration::hours(23);
    let r = build(&cat, Some("pg"), later - chrono::Duration::days(7), later).expect("report");
    assert_eq!(
        r.groups[0].status,
        Status::Violated,
        "{:?}",
        r.groups[0].reasons
    );
    // At 20 h: past 75 % of 26 h, at risk.
    let soon = now() + chrono::Duration::hours(16);
    let r = build(&cat, Some("pg"), soon - chrono::Duration::days(7), soon).expect("report");
    assert_eq!(
        r.groups[0].status,
        Status::AtRisk,
        "{:?}",
        r.groups[0].reasons
    );
}

#[test]
fn an_unknown_group_is_refused() {
    let (_d, cat) = history();
    let e = build(&cat, Some("nope"), now(), now()).expect_err("unknown");
    assert_eq!(e.exit_code(), ExitCode::NotFound);
    assert!(e.to_string().contains("\"nope\""), "{e}");
}

#[test]
fn the_page_is_self_contained_and_marks_what_matters() {
    let (_d, cat) = history();
    let r = build(&cat, None, now() - chrono::Duration::days(30), now()).expect("report");
    let index = write_index(&cat, &r).expect("page");
    let page = std::fs::read_to_string(&index).expect("read");
    for banned in ["<script", "<link", "@import", "url(", " src="] {
        assert!(!page.contains(banned), "{banned} in the page");
    }
    assert_eq!(page.matches("<svg").count(), 9, "three charts per group");
    assert!(page.contains("class='badge violated'>VIOLATED"));
    assert!(page.contains("NOT CONSISTENT (negative control)"));
    let link = format!("href='pg-{:08}/report.html'", 27 * DAY);
    assert!(page.contains(&link), "relative link to the run's report");
    assert!(page.contains("target 120 s") && page.contains("target 5 s"));
}
