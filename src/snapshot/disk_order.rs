//! NEGATIVE CONTROL, for testing verifiers only: disks of a running member snapshotted one
//! after the other, in a given order, `gap` apart, without pausing anything.
//!
//! This is what a per-disk script does (`snapshot-create-as --diskspec vdc` then `vdb`): each
//! disk is cut at a different instant, so a database whose WAL and data sit on two disks gets
//! a WAL older than its data when the WAL disk is cut first. The result is never a consistent
//! cut, not even within one VM.
//!
//! Invariants:
//! - nothing is ever paused, so nothing needs resuming and no watchdog is involved;
//! - every stage lists every disk of the domain (`snapshot='no'` for those not cut in that
//!   stage), because libvirt would otherwise give unlisted disks a default external snapshot;
//! - after a failed stage no further stage runs; the caller rolls back what was cut;
//! - the consistency point reported is the instant the last disk was cut: the moment the
//!   image set became complete, which is what a backup taken from it would be assumed to show;
//! - there is no freeze window (`freeze_window_ms` is `None`) and no member freeze: nothing
//!   was paused. The [`NegativeControl`] marker records the span and the gaps instead.

use crate::catalog::{Catalog, Manifest, Phases, SnapState};
use crate::domxml;
use crate::events::Events;
use crate::hypervisor::HvError;
use crate::model::negative::{ControlKind, NegativeControl};
use crate::snapshot::preflight::PlannedMember;
use crate::snapshot::protocol::{Env, MemberOutcome, Outcome, ms};
use crate::snapshot::{Options, SnapshotError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One member's stages: a snapshot XML per stage, `None` where the member has no disk to cut.
pub struct Staged {
    /// The member's connection.
    pub host: Arc<dyn crate::hypervisor::Host>,
    /// The member's domain.
    pub domain: String,
    /// Snapshot XML per stage, in stage order.
    pub stages: Vec<Option<String>>,
    /// Let libvirt reuse pre-created overlays.
    pub reuse: bool,
}

/// The targets cut in each stage: one stage per listed target (empty when this member has no
/// such disk, so stages line up across members), then one stage with all the others.
pub fn stages(order: &[String], targets: &[String]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = order
        .iter()
        .map(|t| targets.iter().filter(|x| *x == t).cloned().collect())
        .collect();
    out.push(
        targets
            .iter()
            .filter(|t| !order.contains(t))
            .cloned()
            .collect(),
    );
    out
}

/// Per-stage snapshot XML for one planned member (`None` where it has nothing to cut).
pub fn plan(
    p: &PlannedMember,
    id: &str,
    order: &[String],
) -> Result<Vec<Option<String>>, domxml::XmlError> {
    let all = domxml::disks(&p.member.domain, &p.domain_xml)?;
    let cut: Vec<String> = p.disks.iter().map(|d| d.target.clone()).collect();
    let mut by_stage = Vec::new();
    for (i, targets) in stages(order, &cut).into_iter().enumerate() {
        if targets.is_empty() {
            by_stage.push(None);
            continue;
        }
        let spec: Vec<(String, Option<String>)> = all
            .iter()
            .map(|d| {
                let overlay = p
                    .disks
                    .iter()
                    .find(|r| r.target == d.target && targets.contains(&r.target))
                    .map(|r| r.overlay.clone());
                (d.target.clone(), overlay)
            })
            .collect();
        by_stage.push(Some(domxml::snapshot_xml(&format!("{id}-stage{i}"), &spec)));
    }
    Ok(by_stage)
}

/// Run the stages that cut something, `gap` apart. See the module docs for what is (not)
/// guaranteed.
pub fn run(members: &[Staged], env: &Env, gap: Duration) -> Outcome {
    let mut outs: Vec<MemberOutcome> = members.iter().map(|_| MemberOutcome::default()).collect();
    let mut errors: Vec<Option<HvError>> = members.iter().map(|_| None).collect();
    let n = members.iter().map(|m| m.stages.len()).max().unwrap_or(0);
    // A stage no member has a disk in (the rest, when the order lists every disk) is no cut:
    // no gap is spent waiting for it.
    let cuts = (0..n).filter(|&s| {
        members
            .iter()
            .any(|m| matches!(m.stages.get(s), Some(Some(_))))
    });
    let t0 = Instant::now();
    let mut failed = false;
    let mut gaps = 0u64;
    for (k, stage) in cuts.enumerate() {
        if k > 0 {
            std::thread::sleep(gap);
            gaps += 1;
        }
        for (i, m) in members.iter().enumerate() {
            let Some(Some(xml)) = m.stages.get(stage) else {
                continue;
            };
            let s = Instant::now();
            if let Err(e) = m.host.snapshot(&m.domain, xml, m.reuse) {
                errors[i] = Some(e);
                failed = true;
            }
            *outs[i].snapshot_ms.get_or_insert(0.0) += ms(s.elapsed());
        }
        if failed {
            break;
        }
    }
    let total = ms(t0.elapsed());
    for (o, e) in outs.iter_mut().zip(errors) {
        o.snapshotted = e.is_none() && !failed;
        o.error = e;
    }
    let control = NegativeControl {
        kind: ControlKind::UnsafeDiskOrder,
        span_ms: Some(total),
        deliberate_gap_ms: gap.as_millis() as u64 * gaps,
        max_member_freeze_ms: None,
    };
    Outcome {
        consistency_point: (!failed).then(|| (env.wall_clock)()),
        freeze_window_ms: None,
        negative_control: Some(control),
        pause_ms: 0.0,
        snapshot_ms: total,
        resume_ms: 0.0,
        members: outs,
    }
}

/// Check `order` against the group's disks and build every member's stages. Runs before the
/// manifest is written, so a failure here leaves nothing behind.
pub(crate) fn prepare(
    plan: &[PlannedMember],
    id: &str,
    group: &str,
    order: &[String],
    reuse: bool,
) -> Result<Vec<Staged>, SnapshotError> {
    let has = |t: &String| plan.iter().flat_map(|p| &p.disks).any(|d| &d.target == t);
    if let Some(t) = order.iter().find(|t| !has(t)) {
        return Err(SnapshotError::UnknownTarget {
            group: group.to_string(),
            target: t.clone(),
        });
    }
    plan.iter()
        .map(|p| {
            let stages = self::plan(p, id, order)
                .map_err(crate::snapshot::preflight::PreflightError::from)?;
            Ok(Staged {
                host: p.member.host.clone(),
                domain: p.member.domain.clone(),
                stages,
                reuse,
            })
        })
        .collect()
}

/// The per-disk negative control (see [`crate::snapshot::disk_order`]): nothing is paused, so there is
/// no watchdog; a failure rolls back whatever was cut.
#[allow(clippy::too_many_arguments)]
pub(crate) fn take(
    cat: &Catalog,
    mut man: Manifest,
    plan: &[PlannedMember],
    staged: &[Staged],
    order: &[String],
    gap: Duration,
    opts: &Options,
    t0: Instant,
    ev: Events,
) -> Result<Manifest, SnapshotError> {
    // The old fields were written with the pending manifest (see `snapshot::take`).
    man.unsafe_disk_order = Some(order.to_vec());
    man.unsafe_disk_gap_ms = Some(gap.as_millis() as u64);
    let preflight_ms = ms(t0.elapsed());
    // Nothing is paused, so nothing is resumed: one attempt, no holds.
    let env = Env::plain(1);
    let out = run(staged, &env, gap);
    man.consistency_point = out.consistency_point;
    man.freeze_window_ms = out.freeze_window_ms;
    man.negative_control = out.negative_control.clone();
    man.phases = Phases {
        preflight_ms,
        pause_ms: 0.0,
        snapshot_ms: out.snapshot_ms,
        resume_ms: 0.0,
    };
    for (rec, m) in man.members.iter_mut().zip(&out.members) {
        // Never paused: no freeze to record.
        rec.freeze_ms = None;
        rec.snapshot_ms = m.snapshot_ms;
    }
    let Some(cause) = out.first_error().map(|e| e.to_string()) else {
        man.transition(SnapState::Taken)?;
        cat.write(&man)?;
        return Ok(man);
    };
    let cut: Vec<bool> = out
        .members
        .iter()
        .map(|m| m.snapshot_ms.is_some())
        .collect();
    let outcome = crate::snapshot::roll_back_into(&mut man, plan, &opts.release, &cut, &cause, ev)?;
    cat.write(&man)?;
    Err(SnapshotError::Protocol {
        id: man.id.clone(),
        outcome,
        cause,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::fake::FakeHost;
    use crate::hypervisor::{DomState, Host};

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn listed_targets_first_one_by_one_then_the_rest() {
        assert_eq!(
            stages(&s(&["vdc", "vdb"]), &s(&["vda", "vdb", "vdc"])),
            vec![s(&["vdc"]), s(&["vdb"]), s(&["vda"])]
        );
        assert_eq!(
            stages(&s(&["vdx"]), &s(&["vda"])),
            vec![s(&[]), s(&["vda"])],
            "a target this member lacks leaves its stage empty"
        );
    }

    fn env() -> Env<'static> {
        Env::plain(1)
    }

    #[test]
    fn a_failed_stage_stops_the_run_and_reports_no_consistency_point() {
        let h = Arc::new(FakeHost::new("fake://"));
        h.add("a", "<domain/>");
        h.fail_on("snapshot", "a");
        let m = Staged {
            host: h.clone(),
            domain: "a".into(),
            stages: vec![Some("<x/>".into()), Some("<x/>".into())],
            reuse: false,
        };
        let out = run(&[m], &env(), Duration::from_millis(1));
        assert!(out.consistency_point.is_none());
        assert!(out.first_error().is_some() && !out.members[0].snapshotted);
        assert_eq!(h.calls().len(), 1, "no stage after the failed one");
    }

    #[test]
    fn never_pauses_and_cuts_every_stage_in_order() {
        let h = Arc::new(FakeHost::new("fake://"));
        h.add("a", "<domain/>");
        let m = Staged {
            host: h.clone(),
            domain: "a".into(),
            stages: vec![
                Some("<domainsnapshot><disks><disk name='vdc' snapshot='external'><source file='/c'/></disk></disks></domainsnapshot>".into()),
                Some("<domainsnapshot><disks><disk name='vdb' snapshot='external'><source file='/b'/></disk></disks></domainsnapshot>".into()),
            ],
            reuse: false,
        };
        let t = Instant::now();
        let out = run(&[m], &env(), Duration::from_millis(30));
        assert!(
            t.elapsed() >= Duration::from_millis(30),
            "stages are a gap apart"
        );
        assert!(out.consistency_point.is_some());
        assert_eq!(out.freeze_window_ms, None, "nothing was frozen");
        let c = out.negative_control.clone().expect("marked");
        assert_eq!(c.kind, ControlKind::UnsafeDiskOrder);
        assert_eq!(c.deliberate_gap_ms, 30, "one gap between two stages");
        assert_eq!(c.max_member_freeze_ms, None);
        assert!(c.span_ms.expect("span") >= 30.0);
        let o = &out.members[0];
        assert!(o.snapshotted && !o.paused && o.error.is_none());
        assert_eq!(
            h.calls(),
            vec!["snapshot:a".to_string(), "snapshot:a".to_string()],
            "one snapshot call per stage, no pause or resume"
        );
        assert_eq!(h.state("a").expect("state"), DomState::Running);
    }
}
