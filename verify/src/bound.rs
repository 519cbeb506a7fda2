//! The data loss a Cassandra node may show after a crash-consistent restore, by commit log sync
//! mode, and the checks of acknowledged writes against it. Pure functions, no server.
//!
//! The argument: the snapshot freezes the node at the consistency point `cp` with its disks as
//! they were, and Cassandra replays the commit log found there.
//! - `batch`: a write is acknowledged only after its commit log entry is synced, so every write
//!   acknowledged before `cp` is on the commit log disk: the bound is zero.
//! - `periodic` with period `P`: writes are acknowledged at once and the commit log is synced
//!   every `P`; a write acknowledged at `t` is synced by `t + P`. Only writes acknowledged within
//!   `P` before `cp` may be missing: the bound is `P`. (Cassandra lets the syncer fall behind up
//!   to 1.5 P before it blocks writers; a node that lags that much is reported, not excused.)
//!
//! Invariant: a lost write counts as a violation exactly when it was acknowledged more than the
//! bound before `cp`; writes acknowledged after `cp` are never expected.

use cgsnap_testbeds::cassandra::SyncMode;
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::time::Duration;

/// How long before the consistency point an acknowledged write may still be lost.
pub fn loss_bound(mode: SyncMode) -> Duration {
    match mode {
        SyncMode::Batch => Duration::ZERO,
        SyncMode::Periodic { period_ms } => Duration::from_millis(period_ms),
    }
}

fn age(cp: DateTime<Utc>, at: DateTime<Utc>) -> Duration {
    (cp - at).to_std().unwrap_or(Duration::ZERO)
}

/// Acknowledged writes before the cut that the restored node lacks.
#[derive(Debug, Clone, PartialEq)]
pub struct Loss {
    /// Writes acknowledged before the consistency point.
    pub expected: usize,
    /// Of those, missing after restore (any age).
    pub lost: usize,
    /// Missing ones acknowledged more than the bound before the cut: violations.
    pub beyond_bound: Vec<i64>,
    /// Age at the cut of the oldest missing write.
    pub oldest_lost_age: Option<Duration>,
}

impl Loss {
    /// Whether no missing write is beyond the bound.
    pub fn ok(&self) -> bool {
        self.beyond_bound.is_empty()
    }
}

/// Compare acknowledgements `(id, acknowledged at)` with the ids present after restore.
pub fn acked_loss(
    acks: &[(i64, DateTime<Utc>)],
    present: &HashSet<i64>,
    cp: DateTime<Utc>,
    bound: Duration,
) -> Loss {
    let before: Vec<&(i64, DateTime<Utc>)> = acks.iter().filter(|(_, at)| *at < cp).collect();
    let lost: Vec<&&(i64, DateTime<Utc>)> = before
        .iter()
        .filter(|(id, _)| !present.contains(id))
        .collect();
    let mut beyond: Vec<i64> = lost
        .iter()
        .filter(|(_, at)| age(cp, *at) > bound)
        .map(|(id, _)| *id)
        .collect();
    beyond.sort_unstable();
    Loss {
        expected: before.len(),
        lost: lost.len(),
        beyond_bound: beyond,
        oldest_lost_age: lost.iter().map(|(_, at)| age(cp, *at)).max(),
    }
}

/// The newest beacon the restored node must hold: the newest acknowledged more than the bound
/// before the cut. `None` if no beacon is that old.
pub fn required_beacon(
    acks: &[(i64, DateTime<Utc>)],
    cp: DateTime<Utc>,
    bound: Duration,
) -> Option<i64> {
    acks.iter()
        .filter(|(_, at)| *at < cp && age(cp, *at) > bound)
        .map(|(seq, _)| *seq)
        .max()
}

/// Whether the newest recovered beacon satisfies [`required_beacon`].
pub fn beacon_within_bound(required: Option<i64>, recovered: Option<i64>) -> bool {
    match required {
        None => true,
        Some(r) => recovered.is_some_and(|s| s >= r),
    }
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

    #[test]
    fn bound_is_zero_for_batch_and_the_period_for_periodic() {
        assert_eq!(loss_bound(SyncMode::Batch), Duration::ZERO);
        assert_eq!(
            loss_bound(SyncMode::Periodic { period_ms: 2500 }),
            Duration::from_millis(2500)
        );
    }

    #[test]
    fn batch_tolerates_no_lost_acknowledged_write() {
        let cp = t(10_000);
        let acks = [(1, t(1000)), (2, t(9990)), (3, t(10_010))];
        let all: HashSet<i64> = [1, 2].into();
        let l = acked_loss(&acks, &all, cp, Duration::ZERO);
        assert!(l.ok() && l.expected == 2 && l.lost == 0, "{l:?}");
        // Write 2 was acknowledged 10 ms before the cut: in batch mode it must be there.
        let l = acked_loss(&acks, &[1].into(), cp, Duration::ZERO);
        assert!(!l.ok());
        assert_eq!(l.beyond_bound, vec![2]);
        assert_eq!(l.oldest_lost_age, Some(Duration::from_millis(10)));
    }

    #[test]
    fn periodic_tolerates_loss_within_the_period_only() {
        let cp = t(10_000);
        let bound = Duration::from_millis(2000);
        let acks = [(1, t(5000)), (2, t(7500)), (3, t(8500)), (4, t(9900))];
        // 3 and 4 (1.5 s and 0.1 s before the cut) may be lost; 2 (2.5 s) may not.
        let l = acked_loss(&acks, &[1, 2].into(), cp, bound);
        assert!(l.ok() && l.lost == 2, "{l:?}");
        let l = acked_loss(&acks, &[1, 3, 4].into(), cp, bound);
        assert_eq!(l.beyond_bound, vec![2]);
        assert_eq!(l.oldest_lost_age, Some(Duration::from_millis(2500)));
        // A gap of writes after the cut is never expected.
        let l = acked_loss(&[(9, t(10_001))], &HashSet::new(), cp, bound);
        assert!(l.ok() && l.expected == 0);
    }

    #[test]
    fn required_beacon_follows_the_bound() {
        let cp = t(10_000);
        let acks = [(1, t(6000)), (2, t(8000)), (3, t(9800)), (4, t(10_100))];
        assert_eq!(required_beacon(&acks, cp, Duration::ZERO), Some(3));
        assert_eq!(
            required_beacon(&acks, cp, Duration::from_millis(1000)),
            Some(2)
        );
        assert_eq!(required_beacon(&acks, cp, Duration::from_secs(60)), None);
        assert!(beacon_within_bound(Some(3), Some(3)));
        assert!(beacon_within_bound(Some(3), Some(4)));
        assert!(!beacon_within_bound(Some(3), Some(2)));
        assert!(!beacon_within_bound(Some(3), None));
        assert!(beacon_within_bound(None, None));
    }
}
