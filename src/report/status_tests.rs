//! The status rules at their edges.

use super::*;
use std::time::Duration;

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).expect("t0")
}

/// Max age 24 h, RPO 10 s, RTO 100 s.
fn policy() -> Policy {
    Policy {
        max_restore_point_age: Duration::from_secs(24 * 3600),
        rpo: Duration::from_secs(10),
        rto: Duration::from_secs(100),
    }
}

fn point(age_s: i64, loss: f64, recovery: f64) -> Facts {
    Facts {
        point: Some(PointFacts {
            id: "g-1".into(),
            at: t0() - chrono::Duration::seconds(age_s),
            loss: Some(loss),
            recovery: Some(recovery),
        }),
        ..Facts::default()
    }
}

fn status(f: &Facts) -> Status {
    assess(Some(&policy()), f, t0()).status
}

#[test]
fn no_restore_point_is_a_violation() {
    let a = assess(Some(&policy()), &Facts::default(), t0());
    assert_eq!(a.status, Status::Violated);
    assert_eq!(a.reasons, vec!["no verified restore point".to_string()]);
}

#[test]
fn age_edges() {
    let day = 24 * 3600;
    assert_eq!(status(&point(0, 1.0, 10.0)), Status::Compliant);
    let warn = (AGE_WARN * day as f64) as i64;
    assert_eq!(
        status(&point(warn, 1.0, 10.0)),
        Status::Compliant,
        "at 75 %"
    );
    assert_eq!(status(&point(warn + 1, 1.0, 10.0)), Status::AtRisk);
    assert_eq!(
        status(&point(day, 1.0, 10.0)),
        Status::AtRisk,
        "exactly the maximum"
    );
    let a = assess(Some(&policy()), &point(day + 1, 1.0, 10.0), t0());
    assert_eq!(a.status, Status::Violated);
    assert!(
        a.reasons[0].contains("is 1d old, policy allows 1d"),
        "{a:?}"
    );
    // A restore point "from the future" (clock skew) is as young as possible, not an error.
    assert_eq!(status(&point(-3600, 1.0, 10.0)), Status::Compliant);
}

#[test]
fn rpo_and_rto_edges() {
    assert_eq!(
        status(&point(60, 8.0, 10.0)),
        Status::Compliant,
        "loss at 80 %"
    );
    assert_eq!(status(&point(60, 8.01, 10.0)), Status::AtRisk);
    assert_eq!(
        status(&point(60, 10.0, 10.0)),
        Status::AtRisk,
        "loss at the RPO"
    );
    assert_eq!(status(&point(60, 10.01, 10.0)), Status::Violated);
    assert_eq!(
        status(&point(60, 1.0, 80.0)),
        Status::Compliant,
        "RTO at 80 %"
    );
    assert_eq!(status(&point(60, 1.0, 100.5)), Status::Violated);
    let a = assess(Some(&policy()), &point(60, 1.0, 100.5), t0());
    assert!(
        a.reasons[0].starts_with("recovery time 1m 41s at g-1 exceeds"),
        "{a:?}"
    );
    // Not measured is not a violation of the target (verify says why it could not measure).
    let mut f = point(60, 1.0, 10.0);
    if let Some(p) = f.point.as_mut() {
        p.loss = None;
        p.recovery = None;
    }
    assert_eq!(status(&f), Status::Compliant);
}

#[test]
fn newer_failures_put_a_compliant_group_at_risk_and_are_listed_worst_first() {
    let mut f = point(day_fraction(0.9), 1.0, 10.0);
    f.failed_since = Some(("g-2".into(), "orders: amcheck: corrupt".into()));
    f.failed_attempt = Some(("g-3".into(), "aborted".into(), "domain not running".into()));
    let a = assess(Some(&policy()), &f, t0());
    assert_eq!(a.status, Status::AtRisk);
    assert_eq!(a.reasons.len(), 3);
    f.point = None;
    let a = assess(Some(&policy()), &f, t0());
    assert_eq!(a.status, Status::Violated);
    assert_eq!(a.reasons[0], "no verified restore point");
    assert!(
        a.reasons[1].contains("g-2 failed: orders: amcheck"),
        "{a:?}"
    );
}

fn day_fraction(x: f64) -> i64 {
    (x * 86400.0) as i64
}

#[test]
fn without_a_policy_the_status_says_so_and_keeps_the_facts() {
    let mut f = point(10 * 86400, 100.0, 1000.0);
    let a = assess(None, &f, t0());
    assert_eq!(a.status, Status::NoPolicy);
    assert_eq!(
        a.reasons.len(),
        1,
        "no targets, nothing measured against one"
    );
    assert!(a.reasons[0].contains("cgsnap group policy"));
    f.failed_since = Some(("g-2".into(), "x".into()));
    assert_eq!(assess(None, &f, t0()).reasons.len(), 2);
}

#[test]
fn a_compliant_group_says_why() {
    let a = assess(Some(&policy()), &point(60, 1.0, 10.0), t0());
    assert_eq!(
        a.reasons,
        vec!["verified restore point g-1 within 1d (RPO 10s, RTO 1m 40s)".to_string()]
    );
}
