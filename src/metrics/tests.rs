//! Unit tests of the metrics exposition.

use super::*;
use crate::catalog::{MemberRecord, VerifyMemberView};

fn at(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(s, 0).expect("timestamp")
}

fn manifest(id: &str, group: &str, state: SnapState, created: i64) -> Manifest {
    let member = MemberRecord {
        freeze_ms: Some(25.0),
        ..MemberRecord::new("db\"1", "qemu:///system", String::new(), vec![])
    };
    Manifest {
        consistency_point: Some(at(created + 1)),
        freeze_window_ms: Some(40.0),
        members: vec![member],
        released_at: (state == SnapState::Released).then(|| at(created + 60)),
        ..Manifest::new(id, group, state, at(created))
    }
}

fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .map(|l| l[prefix.len()..].trim())
}

#[test]
fn held_snapshot_failed_attempt_and_last_success() {
    let ms = vec![
        manifest("a-1", "a", SnapState::Released, 1000),
        manifest("a-2", "a", SnapState::Taken, 2000),
        manifest("b-1", "b", SnapState::Released, 1500),
        manifest("b-2", "b", SnapState::Aborted, 2500),
    ];
    let t = render(&ms, &BTreeMap::new(), &[]);
    assert_eq!(
        line(&t, "cgsnap_snapshots{group=\"a\",state=\"taken\"}"),
        Some("1")
    );
    assert_eq!(
        line(&t, "cgsnap_snapshots{group=\"a\",state=\"released\"}"),
        Some("1")
    );
    assert_eq!(
        line(
            &t,
            "cgsnap_snapshot_outstanding_since_timestamp_seconds{group=\"a\"}"
        ),
        Some("2000.000")
    );
    assert!(
        line(
            &t,
            "cgsnap_snapshot_outstanding_since_timestamp_seconds{group=\"b\"}"
        )
        .is_none(),
        "{t}"
    );
    assert_eq!(
        line(&t, "cgsnap_snapshot_last_attempt_success{group=\"a\"}"),
        Some("1")
    );
    assert_eq!(
        line(&t, "cgsnap_snapshot_last_attempt_success{group=\"b\"}"),
        Some("0")
    );
    // b's last success is b-1 (consistency point 1501), not the aborted b-2.
    assert_eq!(
        line(
            &t,
            "cgsnap_snapshot_last_success_timestamp_seconds{group=\"b\"}"
        ),
        Some("1501.000")
    );
    assert_eq!(
        line(
            &t,
            "cgsnap_release_last_success_timestamp_seconds{group=\"a\"}"
        ),
        Some("1060.000")
    );
    assert_eq!(
        line(
            &t,
            "cgsnap_snapshot_last_member_freeze_seconds{group=\"a\",domain=\"db\\\"1\"}"
        ),
        Some("0.025000")
    );
    assert_eq!(
        line(
            &t,
            "cgsnap_snapshot_last_freeze_window_seconds{group=\"a\"}"
        ),
        Some("0.040000")
    );
    // Each family is declared once, before its samples.
    assert_eq!(t.matches("# TYPE cgsnap_snapshots gauge").count(), 1);
}

#[test]
fn negative_controls_hold_overlays_but_are_no_backup() {
    let mut c = manifest("a-2", "a", SnapState::Taken, 2000);
    c.unsafe_stagger_ms = Some(500);
    let ms = vec![manifest("a-1", "a", SnapState::Aborted, 1000), c];
    let mut reports = BTreeMap::new();
    reports.insert(
        "a-2".to_string(),
        VerifyView {
            verdict: "fail".into(),
            finished_at: at(2100),
            rpo_seconds: 5.0,
            members: vec![],
            cross_checks: vec![],
        },
    );
    let t = render(&ms, &reports, &[]);
    assert_eq!(
        line(
            &t,
            "cgsnap_snapshot_outstanding_since_timestamp_seconds{group=\"a\"}"
        ),
        Some("2000.000")
    );
    assert_eq!(
        line(&t, "cgsnap_snapshot_last_attempt_success{group=\"a\"}"),
        Some("0")
    );
    assert!(!t.contains("cgsnap_snapshot_last_success_timestamp_seconds"));
    assert!(!t.contains("cgsnap_verify_last_pass"), "{t}");
}

#[test]
fn newest_verification_and_newest_pass() {
    let ms = vec![
        manifest("a-1", "a", SnapState::Released, 1000),
        manifest("a-2", "a", SnapState::Released, 2000),
    ];
    let view = |verdict: &str, end: i64| VerifyView {
        verdict: verdict.into(),
        finished_at: at(end),
        rpo_seconds: 5.0,
        members: vec![VerifyMemberView {
            domain: "orders".into(),
            recovery_seconds: Some(12.5),
            data_loss_seconds: Some(0.25),
            checks: vec![],
        }],
        cross_checks: vec![],
    };
    let mut reports = BTreeMap::new();
    reports.insert("a-1".to_string(), view("pass", 1100));
    reports.insert("a-2".to_string(), view("fail", 2100));
    let t = render(&ms, &reports, &[]);
    assert_eq!(line(&t, "cgsnap_verify_last_pass{group=\"a\"}"), Some("0"));
    assert_eq!(
        line(&t, "cgsnap_verify_last_pass_timestamp_seconds{group=\"a\"}"),
        Some("1100.000")
    );
    assert_eq!(
        line(
            &t,
            "cgsnap_verify_last_data_loss_seconds{group=\"a\",domain=\"orders\"}"
        ),
        Some("0.250")
    );
    assert_eq!(
        line(&t, "cgsnap_verify_rpo_seconds{group=\"a\"}"),
        Some("5")
    );
}

#[test]
fn refresh_writes_the_file_atomically_from_the_catalog() {
    let t = tempfile::tempdir().expect("tempdir");
    let cat = Catalog::open(&t.path().join("cat")).expect("catalog");
    cat.write(&manifest("g-1", "g", SnapState::Taken, 1000))
        .expect("write");
    let dir = t.path().join("metrics");
    let (path, text) = refresh(&cat, &dir).expect("refresh");
    assert_eq!(fs::read_to_string(&path).expect("read"), text);
    assert!(text.contains("cgsnap_snapshots{group=\"g\",state=\"taken\"} 1"));
    let names: Vec<String> = fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".prom"))
        .collect();
    assert_eq!(names, vec![FILE_NAME.to_string()]);
    // Empty catalog: an empty file, so stale series disappear.
    fs::remove_file(cat.dir().join("snapshots/g-1.json")).expect("rm");
    let (_, text) = refresh(&cat, &dir).expect("refresh");
    assert!(text.is_empty(), "{text}");
}

#[test]
fn compliance_families_from_a_report() {
    use crate::catalog::policy::{self, Change};
    let d = tempfile::tempdir().expect("tempdir");
    let cat = Catalog::open(d.path()).expect("catalog");
    let h = |n: u64| Some(std::time::Duration::from_secs(n * 3600));
    let p = Change {
        max_restore_point_age: h(2),
        rpo: h(1),
        rto: h(1),
    };
    policy::set(&cat, "a", &p).expect("policy");
    let m = manifest("a-1", "a", SnapState::Released, 1000);
    cat.write(&m).expect("write");
    let mut c = manifest("a-2", "a", SnapState::Released, 1500);
    c.unsafe_stagger_ms = Some(500);
    cat.write(&c).expect("write");
    for (id, verdict) in [("a-1", "pass"), ("a-2", "fail")] {
        let dir = cat.report_dir(id);
        std::fs::create_dir_all(&dir).expect("dir");
        let r = serde_json::json!({"verdict": verdict, "finished_at": at(1100), "rpo_seconds": 5.0,
            "members": [{"domain": "db", "recovery_seconds": 9.0, "data_loss_seconds": 0.5}]});
        std::fs::write(dir.join("report.json"), r.to_string()).expect("report");
    }
    let now = at(1001 + 3 * 3600);
    let r = crate::report::build(&cat, None, at(0), now).expect("report");
    let ms = cat.list().expect("list");
    let t = render(&ms, &cat.verifications(&ms), &r.groups);
    let g = "{group=\"a\"";
    assert_eq!(
        line(
            &t,
            &format!("cgsnap_group_compliance{g},status=\"violated\"}}")
        ),
        Some("1")
    );
    assert_eq!(
        line(
            &t,
            &format!("cgsnap_group_compliance{g},status=\"compliant\"}}")
        ),
        Some("0")
    );
    assert_eq!(
        line(
            &t,
            &format!("cgsnap_group_restore_point_timestamp_seconds{g}}}")
        ),
        Some("1001.000")
    );
    assert_eq!(
        line(&t, &format!("cgsnap_group_restore_point_age_seconds{g}}}")),
        Some("10800.000")
    );
    assert_eq!(
        line(
            &t,
            &format!("cgsnap_group_policy_max_restore_point_age_seconds{g}}}")
        ),
        Some("7200")
    );
    assert_eq!(
        line(
            &t,
            &format!("cgsnap_negative_controls{g},outcome=\"caught\"}}")
        ),
        Some("1")
    );
    assert_eq!(
        line(
            &t,
            &format!("cgsnap_negative_controls{g},outcome=\"missed\"}}")
        ),
        Some("0")
    );
}
