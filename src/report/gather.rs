//! One group's report from its manifests, verifications and policy (see the parent module's
//! invariants): the facts for [`super::status`], and the counts, trends, failures and rows of
//! the period.

use super::status::{Facts, PointFacts, assess};
use super::{
    Counts, FailureRow, GroupReport, MemberSample, PolicyView, RestorePoint, Row, Sample, Trends,
};
use crate::catalog::policy::Policy;
use crate::catalog::{Manifest, SnapState, VerifyView};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What one group's report is made from.
pub(super) struct Input<'a> {
    pub group: &'a str,
    /// Its manifests, oldest first.
    pub manifests: &'a [&'a Manifest],
    /// Verification reports by snapshot ID (of every group).
    pub verifications: &'a BTreeMap<String, VerifyView>,
    pub policy: Option<&'a Policy>,
    /// `CATALOG/reports`.
    pub reports: &'a Path,
    pub since: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

fn taken(m: &Manifest) -> bool {
    matches!(
        m.state,
        SnapState::Taken | SnapState::Releasing | SnapState::Released
    )
}

impl Input<'_> {
    fn report_of(&self, id: &str) -> PathBuf {
        self.reports.join(id).join("report.html")
    }

    fn verification(&self, m: &Manifest) -> Option<&VerifyView> {
        self.verifications.get(&m.id)
    }

    /// Consistent cuts, oldest first.
    fn real(&self) -> impl Iterator<Item = &Manifest> + '_ {
        self.manifests
            .iter()
            .copied()
            .filter(|m| !m.is_negative_control())
    }

    fn in_period(&self) -> impl Iterator<Item = &Manifest> + '_ {
        self.manifests
            .iter()
            .copied()
            .filter(|m| m.created_at >= self.since)
    }

    /// The newest verified restore point and its verification.
    fn newest_point(&self) -> Option<(&Manifest, DateTime<Utc>, &VerifyView)> {
        self.real()
            .filter_map(|m| {
                let v = self.verification(m).filter(|v| v.verdict == "pass")?;
                Some((m, m.consistency_point?, v))
            })
            .max_by_key(|(_, cp, _)| *cp)
    }

    fn facts(&self) -> Facts {
        let point = self.newest_point();
        let after = point.map(|(m, _, _)| m.created_at);
        let failed_since = self
            .real()
            .filter(|m| after.is_none_or(|a| m.created_at > a))
            .filter_map(|m| {
                let v = self.verification(m).filter(|v| v.verdict != "pass")?;
                Some((m.id.clone(), first_error(v)))
            })
            .last();
        // A snapshot still pending may be one being taken right now: not a failure yet.
        let failed_attempt = self
            .real()
            .last()
            .filter(|m| matches!(m.state, SnapState::Aborted | SnapState::Failed))
            .map(|m| {
                let err = m.error.as_deref().unwrap_or("no error recorded");
                (m.id.clone(), m.state.to_string(), first_line(err))
            });
        Facts {
            point: point.map(|(m, cp, v)| PointFacts {
                id: m.id.clone(),
                at: cp,
                loss: v.max_of(|x| x.data_loss_seconds),
                recovery: v.max_of(|x| x.recovery_seconds),
            }),
            failed_since,
            failed_attempt,
        }
    }

    fn restore_point(&self) -> Option<RestorePoint> {
        let (m, cp, v) = self.newest_point()?;
        Some(RestorePoint {
            snapshot_id: m.id.clone(),
            consistency_point: cp,
            age_seconds: ((self.now - cp).num_milliseconds() as f64 / 1000.0).max(0.0),
            verified_at: v.finished_at,
            max_recovery_seconds: v.max_of(|x| x.recovery_seconds),
            max_data_loss_seconds: v.max_of(|x| x.data_loss_seconds),
            report: self.report_of(&m.id),
        })
    }

    fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for m in self.in_period() {
            c.snapshots += 1;
            let v = self.verification(m).map(|v| v.verdict == "pass");
            if m.is_negative_control() {
                c.negative_controls += 1;
                c.negative_controls_caught += usize::from(v == Some(false));
                c.negative_controls_missed += usize::from(v == Some(true));
                continue;
            }
            c.taken += usize::from(taken(m));
            c.snapshot_failures +=
                usize::from(matches!(m.state, SnapState::Aborted | SnapState::Failed));
            c.verifications_passed += usize::from(v == Some(true));
            c.verifications_failed += usize::from(v == Some(false));
        }
        c
    }

    fn trends(&self) -> Trends {
        let mut t = Trends::default();
        for m in self.in_period().filter(|m| !m.is_negative_control()) {
            if let (true, Some(w)) = (taken(m), m.freeze_window_ms) {
                t.freeze_window_ms.push(Sample {
                    at: m.created_at,
                    snapshot_id: m.id.clone(),
                    value: w,
                });
            }
            let Some(v) = self.verification(m) else {
                continue;
            };
            for mem in &v.members {
                let s = |value| MemberSample {
                    at: m.created_at,
                    snapshot_id: m.id.clone(),
                    domain: mem.domain.clone(),
                    value,
                };
                t.recovery_seconds.extend(mem.recovery_seconds.map(s));
                t.data_loss_seconds.extend(mem.data_loss_seconds.map(s));
            }
        }
        t
    }

    fn failures(&self) -> Vec<FailureRow> {
        let mut out = Vec::new();
        for m in self.in_period() {
            let v = self.verification(m);
            let row = |kind, first_error| FailureRow {
                at: m.created_at,
                snapshot_id: m.id.clone(),
                kind,
                first_error,
                report: v.map(|_| self.report_of(&m.id)),
            };
            if m.is_negative_control() {
                if v.is_some_and(|v| v.verdict == "pass") {
                    out.push(row(
                        "negative_control_missed",
                        "verification passed a deliberately inconsistent cut: the verifier missed a violation".into(),
                    ));
                }
            } else if matches!(m.state, SnapState::Aborted | SnapState::Failed) {
                let err = m.error.as_deref().unwrap_or("no error recorded");
                out.push(row("snapshot", first_line(err)));
            } else if let Some(v) = v.filter(|v| v.verdict != "pass") {
                out.push(row("verification", first_error(v)));
            }
        }
        out
    }

    fn rows(&self) -> Vec<Row> {
        self.in_period()
            .map(|m| {
                let v = self.verification(m);
                Row {
                    id: m.id.clone(),
                    group: m.group.clone(),
                    state: m.state.to_string(),
                    created_at: m.created_at.to_rfc3339(),
                    // Old control manifests recorded their span here: not a freeze window.
                    freeze_window_ms: m.freeze_window_ms.filter(|_| !m.is_negative_control()),
                    negative_control: m.negative_control_line(),
                    unsafe_stagger_ms: m.unsafe_stagger_ms,
                    unsafe_disk_order: m.unsafe_disk_order.clone(),
                    verdict: v.map(|v| v.verdict.clone()),
                    max_recovery_seconds: v.and_then(|v| v.max_of(|x| x.recovery_seconds)),
                    max_data_loss_seconds: v.and_then(|v| v.max_of(|x| x.data_loss_seconds)),
                    report: v.map(|_| self.report_of(&m.id)),
                }
            })
            .collect()
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

fn first_error(v: &VerifyView) -> String {
    v.first_error()
        .unwrap_or_else(|| format!("verdict {} with no failed check recorded", v.verdict))
}

/// The report of one group.
pub(super) fn group(i: &Input) -> GroupReport {
    let a = assess(i.policy, &i.facts(), i.now);
    GroupReport {
        group: i.group.to_string(),
        policy: i.policy.map(PolicyView::from),
        status: a.status,
        reason: a.reasons.first().cloned().unwrap_or_default(),
        reasons: a.reasons,
        newest_restore_point: i.restore_point(),
        counts: i.counts(),
        trends: i.trends(),
        failures: i.failures(),
        snapshots: i.rows(),
    }
}
