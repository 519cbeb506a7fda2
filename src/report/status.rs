//! The compliance status of a group: its policy against what the catalog shows.
//!
//! Rules, most severe first (each that holds adds a reason; the status is the worst):
//!
//! | status      | when                                                                        |
//! |-------------|-----------------------------------------------------------------------------|
//! | `violated`  | no verified restore point; the newest is older than the policy's maximum age; its verification measured a data loss above the RPO or a recovery above the RTO |
//! | `at_risk`   | the newest restore point is past [`AGE_WARN`] of its maximum age; its loss or recovery is past [`TARGET_WARN`] of the target; a verification newer than it failed; the newest snapshot attempt was not taken |
//! | `compliant` | none of the above                                                            |
//! | `no_policy` | no policy is set: nothing to be compliant with (the facts are still listed) |
//!
//! Invariants:
//! - A restore point is a consistent cut (never a negative control) whose verification
//!   passed; its age runs from its consistency point, the instant its data is from.
//! - Limits are inclusive: exactly at the maximum age or exactly at a target still complies.
//! - Pure: `now` is given, nothing is read here, so every edge is a unit test.

use crate::catalog::policy::Policy;
use crate::model::duration::human;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// Past this fraction of the maximum age, the newest restore point is about to expire.
pub const AGE_WARN: f64 = 0.75;
/// Past this fraction of the RPO or RTO, a measured loss or recovery leaves little margin.
pub const TARGET_WARN: f64 = 0.8;

/// A group's DR status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// No policy is set.
    NoPolicy,
    /// Every target is met with margin.
    Compliant,
    /// Every target is met, but one is about to be missed, or the newest runs failed.
    AtRisk,
    /// A target is missed.
    Violated,
}

impl Status {
    /// Every status, for metrics (a state set).
    pub const ALL: [Status; 4] = [
        Status::NoPolicy,
        Status::Compliant,
        Status::AtRisk,
        Status::Violated,
    ];

    /// Its name in JSON and metrics (`at_risk`).
    pub fn name(self) -> &'static str {
        match self {
            Status::NoPolicy => "no_policy",
            Status::Compliant => "compliant",
            Status::AtRisk => "at_risk",
            Status::Violated => "violated",
        }
    }
}

/// The newest verified restore point, as the rules need it.
#[derive(Debug, Clone)]
pub struct PointFacts {
    /// Its snapshot.
    pub id: String,
    /// Its consistency point.
    pub at: DateTime<Utc>,
    /// Largest data loss its verification measured, seconds.
    pub loss: Option<f64>,
    /// Largest recovery time its verification measured, seconds.
    pub recovery: Option<f64>,
}

/// What happened most recently in a group, as the rules need it.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The newest verified restore point.
    pub point: Option<PointFacts>,
    /// The newest failed verification of a consistent cut newer than `point`: its snapshot and
    /// first error line.
    pub failed_since: Option<(String, String)>,
    /// The newest snapshot attempt, when it was not taken: its ID, state and error.
    pub failed_attempt: Option<(String, String, String)>,
}

/// The status and its reasons, worst first; `reasons` is never empty.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// The worst status a rule gave.
    pub status: Status,
    /// One line per rule that held, worst first (a compliant group gets one saying why).
    pub reasons: Vec<String>,
}

fn secs(d: std::time::Duration) -> f64 {
    d.as_secs_f64()
}

/// The target rules of one measurement against its policy target.
fn against(out: &mut Vec<(Status, String)>, what: &str, value: Option<f64>, target: f64, id: &str) {
    let Some(v) = value else { return };
    if v > target {
        out.push((
            Status::Violated,
            format!(
                "{what} {} at {id} exceeds its target {}",
                human(v),
                human(target)
            ),
        ));
    } else if v > TARGET_WARN * target {
        out.push((
            Status::AtRisk,
            format!(
                "{what} {} at {id} is past {:.0}% of its target {}",
                human(v),
                TARGET_WARN * 100.0,
                human(target)
            ),
        ));
    }
}

/// The rules in the module docs.
pub fn assess(policy: Option<&Policy>, f: &Facts, now: DateTime<Utc>) -> Assessment {
    let mut out: Vec<(Status, String)> = Vec::new();
    if let Some(p) = policy {
        let max = secs(p.max_restore_point_age);
        match &f.point {
            None => out.push((Status::Violated, "no verified restore point".to_string())),
            Some(pt) => {
                // A clock that went back does not make a restore point younger than new.
                let age = ((now - pt.at).num_milliseconds() as f64 / 1000.0).max(0.0);
                if age > max {
                    out.push((
                        Status::Violated,
                        format!(
                            "newest verified restore point {} is {} old, policy allows {}",
                            pt.id,
                            human(age),
                            human(max)
                        ),
                    ));
                } else if age > AGE_WARN * max {
                    out.push((
                        Status::AtRisk,
                        format!(
                            "newest verified restore point {} is {} old and expires in {} (policy {})",
                            pt.id,
                            human(age),
                            human(max - age),
                            human(max)
                        ),
                    ));
                }
                against(&mut out, "data loss", pt.loss, secs(p.rpo), &pt.id);
                against(&mut out, "recovery time", pt.recovery, secs(p.rto), &pt.id);
            }
        }
    }
    if let Some((id, err)) = &f.failed_since {
        out.push((
            Status::AtRisk,
            format!("verification of {id} failed: {err}"),
        ));
    }
    if let Some((id, state, err)) = &f.failed_attempt {
        out.push((
            Status::AtRisk,
            format!("newest snapshot attempt {id} was {state}: {err}"),
        ));
    }
    out.sort_by_key(|x| std::cmp::Reverse(x.0));
    let worst = out.first().map(|(s, _)| *s);
    let mut reasons: Vec<String> = out.into_iter().map(|(_, r)| r).collect();
    let status = match (policy, worst) {
        (None, _) => {
            reasons.insert(
                0,
                "no DR policy: set one with `cgsnap group policy GROUP --max-age 26h --rpo 5m --rto 15m`"
                    .to_string(),
            );
            Status::NoPolicy
        }
        (Some(_), Some(s)) => s,
        (Some(p), None) => {
            let pt = f.point.as_ref().map(|p| p.id.as_str()).unwrap_or("-");
            reasons.push(format!(
                "verified restore point {pt} within {} (RPO {}, RTO {})",
                human(secs(p.max_restore_point_age)),
                human(secs(p.rpo)),
                human(secs(p.rto))
            ));
            Status::Compliant
        }
    };
    Assessment { status, reasons }
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
