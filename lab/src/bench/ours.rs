//! Our side of a benchmark configuration: one snapshot + release per round and resume policy,
//! with its timings and the CPU work inside its freeze windows.
//!
//! Invariants: each policy keeps its own samples and its own CPU recorder; every snapshot is
//! released before the next one starts, so all rounds start from the same disk chains.

use super::{Phases, WindowCpu, cpu, fail, stats, summary};
use cgsnap::catalog::Catalog;
use cgsnap::events::{Events, Reporter};
use cgsnap::exit::Failure;
use cgsnap::hypervisor::Host;
use cgsnap::hypervisor::pool::Ctx;
use cgsnap::snapshot::protocol::{Resume, ms};
use cgsnap::{release, snapshot};
use std::sync::Arc;
use std::time::Instant;

pub struct Ours {
    pub resume: Resume,
    opts: snapshot::Options,
    recorder: Arc<cpu::Recorder>,
    win: Vec<f64>,
    freeze: Vec<f64>,
    pre: Vec<f64>,
    pause: Vec<f64>,
    snap: Vec<f64>,
    res: Vec<f64>,
    rel: Vec<f64>,
    /// Bytes the overlays held at release: what each cycle's commit merges back.
    pub merge: Vec<f64>,
}

/// Summaries of one policy's rounds.
pub struct Summaries {
    pub window_ms: stats::Summary,
    pub member_freeze_ms: stats::Summary,
    pub phases: Phases,
    pub window_cpu: Option<WindowCpu>,
}

impl Ours {
    /// `opts` as for a snapshot of the benchmark group; its resume policy is set here.
    pub fn new(mut opts: snapshot::Options, resume: Resume) -> Self {
        let recorder = Arc::new(cpu::Recorder::default());
        opts.resume = resume;
        Ours {
            resume,
            opts,
            recorder,
            win: vec![],
            freeze: vec![],
            pre: vec![],
            pause: vec![],
            snap: vec![],
            res: vec![],
            rel: vec![],
            merge: vec![],
        }
    }

    /// One snapshot of the group, then its release; the recorder probes the freeze window.
    pub fn round(
        &mut self,
        ctx: &Ctx,
        hosts: &[Arc<dyn Host>],
        cat: &Catalog,
        ropts: &release::Options,
        report: &dyn Reporter,
    ) -> Result<(), Failure> {
        let ev = Events {
            report,
            probe: self.recorder.as_ref(),
        };
        let m = snapshot::take(hosts, cat, &self.opts, chrono::Utc::now(), ev)?;
        self.win.push(m.freeze_window_ms.unwrap_or_default());
        self.freeze
            .extend(m.members.iter().filter_map(|x| x.freeze_ms));
        self.pre.push(m.phases.preflight_ms);
        self.pause.push(m.phases.pause_ms);
        self.snap.push(m.phases.snapshot_ms);
        self.res.push(m.phases.resume_ms);
        self.merge.push(
            m.members
                .iter()
                .flat_map(|x| &x.disks)
                .map(|d| super::backup::allocated(&d.overlay) as f64)
                .sum(),
        );
        let t = Instant::now();
        release::release_snapshot(&ctx.pool, cat, &m.id, ropts, ev.unprobed())?;
        self.rel.push(ms(t.elapsed()));
        Ok(())
    }

    pub fn summaries(&self, vms: usize) -> Result<Summaries, Failure> {
        Ok(Summaries {
            window_ms: summary(&self.win)?,
            member_freeze_ms: summary(&self.freeze)?,
            phases: Phases {
                preflight_ms: summary(&self.pre)?,
                pause_ms: summary(&self.pause)?,
                snapshot_ms: summary(&self.snap)?,
                resume_ms: summary(&self.res)?,
                release_ms: summary(&self.rel)?,
            },
            window_cpu: window_cpu(&self.recorder.windows(), vms),
        })
    }
}

fn window_cpu(windows: &[cpu::Delta], vms: usize) -> Option<WindowCpu> {
    let hv: Vec<f64> = windows.iter().map(|d| d.hypervisor_ms).collect();
    let per: Vec<f64> = hv.iter().map(|x| x / vms.max(1) as f64).collect();
    let busy: Vec<f64> = windows.iter().map(|d| d.busy_pct).collect();
    let guest: Vec<f64> = windows.iter().map(|d| d.guest_ms).collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let h = stats::summarize(&hv)?;
    Some(WindowCpu {
        bound_ms: h.median / cores,
        hypervisor_ms: h,
        per_member_ms: stats::summarize(&per)?,
        busy_pct: stats::summarize(&busy)?,
        guest_ms: stats::summarize(&guest)?,
    })
}

/// The policies to measure, in the order round `r` runs them: rotated by one each round so
/// that neither always runs first after the baseline.
pub fn order(n: usize, r: usize) -> Vec<usize> {
    (0..n).map(|i| (i + r) % n.max(1)).collect()
}

/// Reject an empty or repeated policy list (`--resume early,early` would mix two samples).
pub fn check_policies(p: &[Resume]) -> Result<(), Failure> {
    if p.is_empty() {
        return Err(fail("--resume: give at least one policy"));
    }
    if p.iter().enumerate().any(|(i, x)| p[..i].contains(x)) {
        return Err(fail("--resume: a policy is given twice"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_rotates_so_each_policy_runs_first_in_turn() {
        assert_eq!(order(1, 0), [0]);
        assert_eq!(order(1, 5), [0]);
        assert_eq!(order(2, 0), [0, 1]);
        assert_eq!(order(2, 1), [1, 0]);
        assert_eq!(order(2, 2), [0, 1]);
    }

    #[test]
    fn window_cpu_per_member_and_bound() {
        let d = |h: f64| cpu::Delta {
            hypervisor_ms: h,
            guest_ms: 1.0,
            busy_pct: 90.0,
        };
        let w = window_cpu(&[d(80.0), d(100.0), d(120.0)], 4).expect("cpu");
        assert_eq!(w.hypervisor_ms.median, 100.0);
        assert_eq!(w.per_member_ms.median, 25.0);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!((w.bound_ms - 100.0 / cores).abs() < 1e-9);
        assert!(window_cpu(&[], 4).is_none());
    }

    #[test]
    fn policies_must_be_given_and_distinct() {
        assert!(check_policies(&[]).is_err());
        assert!(check_policies(&[Resume::Early, Resume::Early]).is_err());
        assert!(check_policies(&[Resume::Together, Resume::Early]).is_ok());
    }
}
