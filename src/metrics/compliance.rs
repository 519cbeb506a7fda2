//! The DR compliance families of the metrics file, from the report's groups
//! ([`crate::report`]): status, newest verified restore point, policy targets, and the
//! negative controls of each group.
//!
//! Invariant: the status and the age are as of the render; an alert must not rely on them
//! alone (a file nobody re-renders stays "compliant" for ever), so the restore point's
//! timestamp and the policy's maximum age are exported too, and the shipped rule
//! `CgsnapNoVerifiedRestorePointWithinPolicy` compares them with Prometheus' own `time()`.

use super::{Family, ts};
use crate::report::{GroupReport, Status};

/// The compliance families, in output order.
pub(super) struct Compliance {
    status: Family,
    point_ts: Family,
    point_age: Family,
    max_age: Family,
    rpo: Family,
    rto: Family,
    controls: Family,
}

impl Compliance {
    pub(super) fn new() -> Self {
        Self {
            status: Family::new(
                "cgsnap_group_compliance",
                "1 for the group's DR status at the last render (no_policy, compliant, at_risk, violated), 0 for the others.",
            ),
            point_ts: Family::new(
                "cgsnap_group_restore_point_timestamp_seconds",
                "Consistency point of the newest verified restore point (a consistent cut whose restore passed verification).",
            ),
            point_age: Family::new(
                "cgsnap_group_restore_point_age_seconds",
                "Age of the newest verified restore point at the last render; alert on time() - cgsnap_group_restore_point_timestamp_seconds.",
            ),
            max_age: Family::new(
                "cgsnap_group_policy_max_restore_point_age_seconds",
                "Policy: maximum age of the newest verified restore point.",
            ),
            rpo: Family::new(
                "cgsnap_group_policy_rpo_seconds",
                "Policy: RPO target (data loss a verified restore may show).",
            ),
            rto: Family::new(
                "cgsnap_group_policy_rto_seconds",
                "Policy: RTO target (restored boot to database ready).",
            ),
            controls: Family::new(
                "cgsnap_negative_controls",
                "Negative-control snapshots (--unsafe-*, NOT consistent) in the report period by verification outcome: caught (verify failed, as it must), missed (verify passed), unverified.",
            ),
        }
    }

    pub(super) fn add(&mut self, g: &GroupReport) {
        let l = [("group", g.group.as_str())];
        for s in Status::ALL {
            self.status.add(
                &[("group", &g.group), ("status", s.name())],
                u8::from(s == g.status).to_string(),
            );
        }
        if let Some(p) = &g.newest_restore_point {
            self.point_ts.add(&l, ts(p.consistency_point));
            self.point_age.add(&l, format!("{:.3}", p.age_seconds));
        }
        if let Some(p) = &g.policy {
            self.max_age
                .add(&l, format!("{}", p.max_restore_point_age_seconds));
            self.rpo.add(&l, format!("{}", p.rpo_seconds));
            self.rto.add(&l, format!("{}", p.rto_seconds));
        }
        let c = &g.counts;
        let unverified =
            c.negative_controls - c.negative_controls_caught - c.negative_controls_missed;
        for (outcome, n) in [
            ("caught", c.negative_controls_caught),
            ("missed", c.negative_controls_missed),
            ("unverified", unverified),
        ] {
            self.controls
                .add(&[("group", &g.group), ("outcome", outcome)], n.to_string());
        }
    }

    pub(super) fn families(self) -> [Family; 7] {
        [
            self.status,
            self.point_ts,
            self.point_age,
            self.max_age,
            self.rpo,
            self.rto,
            self.controls,
        ]
    }
}
