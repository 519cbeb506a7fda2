//! Beacon checks shared by every database kind: the newest recovered beacon gives the data loss
//! (consistency point minus its timestamp), which must be within the RPO, and no beacon may be
//! stamped after the consistency point.
//!
//! Invariant: beacon timestamps are taken on this host's clock before their write; the
//! consistency point on the same clock after every member paused. A frozen member cannot hold
//! a beacon stamped after the point, so one that does proves the cut was not consistent.
//! "After" is decided on the timestamps themselves, not on a rounded difference: a beacon
//! stamped even a microsecond after the point fails.
//!
//! Across members ([`order`]): members without a beacon are left out of the order and named in
//! a note, never counted as checked.

use crate::report::{Check, MemberReport};
use chrono::{DateTime, Utc};

/// `to - from` in seconds, to the microsecond (to the millisecond beyond ±292 000 years).
fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    let d = to - from;
    d.num_microseconds()
        .map_or(d.num_milliseconds() as f64 / 1e3, |us| us as f64 / 1e6)
}

/// Record the newest beacon (or why there is none) and its checks in `r`.
pub fn checks(
    r: &mut MemberReport,
    newest: Result<Option<(i64, DateTime<Utc>)>, impl std::fmt::Display>,
    table: &str,
    cp: DateTime<Utc>,
    rpo_seconds: f64,
) {
    match newest {
        Ok(Some((seq, ts))) => {
            let loss = seconds_between(ts, cp);
            let after = ts > cp;
            r.newest_beacon_seq = Some(seq);
            r.newest_beacon_ts = Some(ts);
            r.data_loss_seconds = Some(loss);
            r.checks.push(Check {
                name: "no write after the consistency point".into(),
                ok: !after,
                evidence: format!(
                    "newest beacon stamped {:.6} s {} the consistency point",
                    loss.abs(),
                    if after { "after" } else { "before" }
                ),
            });
            r.checks.push(Check {
                name: "data loss within RPO".into(),
                ok: loss <= rpo_seconds,
                evidence: format!(
                    "newest beacon {seq} at {ts}: {loss:.3} s before the consistency point (RPO {rpo_seconds} s)"
                ),
            });
        }
        Ok(None) => r.checks.push(Check {
            name: "data loss within RPO".into(),
            ok: false,
            evidence: format!("no beacon in {table}"),
        }),
        Err(e) => r.checks.push(Check {
            name: "data loss within RPO".into(),
            ok: false,
            evidence: e.to_string(),
        }),
    }
}

/// The cross-member beacon order checks over members' newest beacons in profile order (`None`:
/// no beacon), and a note naming the members it could not cover.
///
/// Beacons are written to members in profile order, each committed before the next: in a
/// consistent cut a later member never holds a newer beacon than an earlier one.
pub fn order(members: &[(&str, Option<i64>)]) -> (Vec<Check>, Option<String>) {
    let order: Vec<(&str, i64)> = members
        .iter()
        .filter_map(|(d, s)| s.map(|s| (*d, s)))
        .collect();
    let checks = order
        .windows(2)
        .map(|w| Check {
            name: format!("beacon order {} ≥ {}", w[0].0, w[1].0),
            ok: w[0].1 >= w[1].1,
            evidence: format!(
                "{} has beacon {}, {} has beacon {}",
                w[0].0, w[0].1, w[1].0, w[1].1
            ),
        })
        .collect();
    let without: Vec<&str> = members
        .iter()
        .filter(|(_, s)| s.is_none())
        .map(|(d, _)| *d)
        .collect();
    let note = match (members.len(), order.len()) {
        (0 | 1, _) => None,
        _ if without.is_empty() => None,
        (n, 0 | 1) => Some(format!(
            "cross-member beacon order not checked: only {} of {n} members have a beacon (none from {})",
            order.len(),
            without.join(", ")
        )),
        (n, k) => Some(format!(
            "cross-member beacon order checked across {k} of {n} members only (none from {})",
            without.join(", ")
        )),
    };
    (checks, note)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_700_000_000_000 + ms)
            .single()
            .expect("time")
    }

    fn run(newest: Result<Option<(i64, DateTime<Utc>)>, &'static str>) -> MemberReport {
        let mut r = MemberReport::new("d", "s");
        checks(&mut r, newest, "b", t(10_000), 5.0);
        r
    }

    #[test]
    fn loss_write_after_cut_and_absence_are_judged() {
        let r = run(Ok(Some((7, t(9_000)))));
        assert!(r.checks.iter().all(|c| c.ok));
        assert_eq!(r.data_loss_seconds, Some(1.0));
        let r = run(Ok(Some((7, t(10_500)))));
        assert!(!r.checks[0].ok && r.checks[0].evidence.contains("after"));
        let r = run(Ok(Some((7, t(3_000)))));
        assert!(r.checks[0].ok && !r.checks[1].ok);
        let r = run(Ok(None));
        assert!(!r.checks[0].ok && r.checks[0].evidence.contains("no beacon in b"));
        assert!(!run(Err("boom")).checks[0].ok);
    }

    #[test]
    fn a_beacon_a_fraction_of_a_millisecond_after_the_cut_fails() {
        let after = t(10_000) + chrono::Duration::microseconds(400);
        let r = run(Ok(Some((7, after))));
        assert!(
            !r.checks[0].ok && r.checks[0].evidence.contains("0.000400 s after"),
            "{r:?}"
        );
        assert_eq!(r.data_loss_seconds, Some(-0.0004));
        let before = t(10_000) - chrono::Duration::microseconds(1);
        assert!(run(Ok(Some((7, before)))).checks[0].ok);
        assert!(
            run(Ok(Some((7, t(10_000))))).checks[0].ok,
            "at the cut: before it"
        );
    }

    #[test]
    fn beacon_order_says_what_it_did_not_check() {
        let (c, n) = order(&[("a", Some(5)), ("b", Some(4)), ("c", Some(6))]);
        assert_eq!(c.iter().map(|c| c.ok).collect::<Vec<_>>(), [true, false]);
        assert_eq!(c[1].evidence, "b has beacon 4, c has beacon 6");
        assert_eq!(n, None);
        // One member with a beacon: nothing checked, and the note says so.
        let (c, n) = order(&[("a", Some(5)), ("b", None)]);
        assert!(c.is_empty());
        let n = n.expect("note");
        assert!(
            n.contains("not checked") && n.contains("only 1 of 2") && n.contains("none from b"),
            "{n}"
        );
        let (c, n) = order(&[("a", None), ("b", None)]);
        assert!(c.is_empty() && n.is_some_and(|n| n.contains("only 0 of 2")));
        // Some covered: checked across them only.
        let (c, n) = order(&[("a", Some(5)), ("b", None), ("c", Some(5))]);
        assert_eq!(c.len(), 1);
        assert!(n.is_some_and(|n| n.contains("across 2 of 3") && n.contains("none from b")));
        // A single member has no order to check.
        assert_eq!(order(&[("a", None)]), (Vec::new(), None));
    }
}
