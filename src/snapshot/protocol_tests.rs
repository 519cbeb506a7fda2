//! Unit tests of the freeze → snapshot → thaw protocol, over the fake host.

use super::*;
use crate::hypervisor::DomState;
use crate::hypervisor::fake::FakeHost;

fn setup(n: usize) -> (Arc<FakeHost>, Vec<Step>) {
    let h = Arc::new(FakeHost::new("fake://"));
    let steps = (0..n)
        .map(|i| {
            let name = format!("vm{i}");
            h.add(&name, "<domain/>");
            Step {
                host: h.clone(),
                domain: name,
                cut: Cut::Snapshot {
                    xml: "<domainsnapshot><disks><disk name='vda' snapshot='external'><source file='/o'/></disk></disks></domainsnapshot>".into(),
                    reuse: false,
                },
            }
        })
        .collect();
    (h, steps)
}

/// The tests written for per-member resume keep it explicitly; `together()` covers the
/// default.
fn env() -> Env<'static> {
    Env {
        resume: Resume::Early,
        ..Env::plain(3)
    }
}

#[test]
fn no_snapshot_or_resume_before_all_paused() {
    let (h, steps) = setup(6);
    let out = run(&steps, &env());
    assert!(out.first_error().is_none());
    assert!(out.consistency_point.is_some());
    let calls = h.calls();
    let last_pause = calls
        .iter()
        .rposition(|c| c.starts_with("suspend"))
        .expect("pauses");
    let first_other = calls
        .iter()
        .position(|c| c.starts_with("snapshot") || c.starts_with("resume"))
        .expect("snapshots");
    assert!(last_pause < first_other, "{calls:?}");
    for i in 0..6 {
        assert_eq!(h.state_of(&format!("vm{i}")), Some(DomState::Running));
    }
    assert!(out.freeze_window_ms.expect("window") >= out.members[0].freeze_ms.expect("f") - 1e-9);
}

#[test]
fn failed_pause_snapshots_nothing_and_resumes_the_rest() {
    let (h, steps) = setup(4);
    h.fail_on("suspend", "vm2");
    let out = run(&steps, &env());
    assert!(out.first_error().is_some());
    assert!(out.consistency_point.is_none());
    assert!(!h.calls().iter().any(|c| c.starts_with("snapshot")));
    assert!(out.all_resumed());
    for i in 0..4 {
        assert_eq!(h.state_of(&format!("vm{i}")), Some(DomState::Running));
    }
}

#[test]
fn a_pause_whose_reply_was_lost_is_resumed_all_the_same() {
    let (h, steps) = setup(3);
    h.fail_on("suspend_lost", "vm1");
    let out = run(&steps, &env());
    assert_eq!(out.first_error().map(|e| e.target.as_str()), Some("vm1"));
    assert!(out.consistency_point.is_none());
    assert!(!h.calls().iter().any(|c| c.starts_with("snapshot")));
    assert!(out.members[1].paused && out.members[1].resumed);
    for i in 0..3 {
        assert_eq!(h.state_of(&format!("vm{i}")), Some(DomState::Running));
    }
}

#[test]
fn failed_snapshot_still_resumes_every_member() {
    let (h, steps) = setup(3);
    h.fail_on("snapshot", "vm1");
    let out = run(&steps, &env());
    assert!(!out.members[1].snapshotted);
    assert!(out.members[0].snapshotted && out.members[2].snapshotted);
    assert_eq!(out.first_error().map(|e| e.target.as_str()), Some("vm1"));
    assert!(out.all_resumed());
    assert_eq!(h.state_of("vm1"), Some(DomState::Running));
}

#[test]
fn staggered_control_resumes_each_before_pausing_the_next() {
    let (h, steps) = setup(3);
    let out = run_staggered(&steps, &env(), Duration::from_millis(1));
    assert!(out.first_error().is_none() && out.all_resumed());
    let calls: Vec<String> = h
        .calls()
        .into_iter()
        .filter(|c| !c.starts_with("state"))
        .collect();
    assert_eq!(
        calls,
        [
            "suspend:vm0",
            "snapshot:vm0",
            "resume:vm0",
            "suspend:vm1",
            "snapshot:vm1",
            "resume:vm1",
            "suspend:vm2",
            "snapshot:vm2",
            "resume:vm2"
        ]
    );
}

#[test]
fn staggered_control_has_no_freeze_window_but_a_span_of_freezes_and_gaps() {
    let (h, steps) = setup(3);
    h.slow_on("snapshot", "vm1", Duration::from_millis(40));
    let gap = Duration::from_millis(30);
    let out = run_staggered(&steps, &env(), gap);
    assert!(out.first_error().is_none() && out.all_resumed());
    assert_eq!(out.freeze_window_ms, None, "never frozen together");
    let c = out.negative_control.expect("marked");
    assert_eq!(c.kind, ControlKind::UnsafeStagger);
    assert_eq!(c.deliberate_gap_ms, 60, "two gaps between three members");
    let freezes: Vec<f64> = out
        .members
        .iter()
        .map(|m| m.freeze_ms.expect("f"))
        .collect();
    let max = c.max_member_freeze_ms.expect("max freeze");
    assert!(
        max >= 40.0 && freezes.iter().all(|f| *f <= max),
        "{freezes:?} {max}"
    );
    assert_eq!(max, freezes[1], "the slow member's freeze");
    let span = c.span_ms.expect("span");
    let parts: f64 = freezes.iter().sum::<f64>() + c.deliberate_gap_ms as f64;
    assert!(
        span >= parts - 1e-6,
        "span {span} covers freezes and gaps {parts}"
    );
    assert!(
        span < parts + 100.0,
        "span {span} is little more than {parts}"
    );
}

fn together() -> Env<'static> {
    Env {
        resume: Resume::Together,
        ..Env::plain(3)
    }
}

#[test]
fn together_resumes_nothing_before_every_snapshot_is_done() {
    let (h, steps) = setup(6);
    let out = run(&steps, &together());
    assert!(out.first_error().is_none() && out.all_resumed());
    let calls = h.calls();
    let last_snapshot = calls
        .iter()
        .rposition(|c| c.starts_with("snapshot"))
        .expect("snapshots");
    let first_resume = calls
        .iter()
        .position(|c| c.starts_with("resume"))
        .expect("resumes");
    assert!(last_snapshot < first_resume, "{calls:?}");
    // Everyone was frozen for the whole window, give or take the parallel resume calls.
    let w = out.freeze_window_ms.expect("window");
    for m in &out.members {
        assert!(m.freeze_ms.expect("freeze") <= w + 1e-9);
    }
}

#[test]
fn early_resumes_a_fast_member_before_a_slow_snapshot_ends_together_does_not() {
    for (resume, fast_is_short) in [(Resume::Early, true), (Resume::Together, false)] {
        let (h, steps) = setup(2);
        h.slow_on("snapshot", "vm1", Duration::from_millis(200));
        let env = Env {
            resume,
            ..Env::plain(3)
        };
        let out = run(&steps, &env);
        assert!(out.first_error().is_none() && out.all_resumed());
        let fast = out.members[0].freeze_ms.expect("freeze");
        assert_eq!(
            fast < 150.0,
            fast_is_short,
            "{resume:?}: vm0 frozen {fast} ms"
        );
        assert!(out.freeze_window_ms.expect("window") >= 200.0);
    }
}

#[test]
fn together_with_failures_still_resumes_everyone() {
    for op in ["suspend", "snapshot"] {
        let (h, steps) = setup(4);
        h.fail_on(op, "vm1");
        let out = run(&steps, &together());
        assert!(out.first_error().is_some(), "{op}");
        assert!(out.all_resumed(), "{op}");
        for i in 0..4 {
            assert_eq!(h.state_of(&format!("vm{i}")), Some(DomState::Running));
        }
    }
}

/// A probe that records the window with the number of host calls made so far, and, like
/// the command line's fault injection, holds member `i` `i` times 30 ms before its pause.
struct Recording<'a> {
    host: &'a FakeHost,
    window: Mutex<Vec<(bool, usize)>>,
    paused: std::sync::atomic::AtomicUsize,
}

impl Probe for Recording<'_> {
    fn at(&self, point: Point<'_>) {
        match point {
            Point::Pausing { order } => {
                std::thread::sleep(Duration::from_millis(30) * order as u32)
            }
            Point::Paused { .. } => {
                self.paused
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            _ => {}
        }
    }
    fn window(&self, open: bool) {
        let n = self.host.calls().len();
        self.window.lock().expect("lock").push((open, n));
    }
}

fn recording(host: &FakeHost) -> Recording<'_> {
    Recording {
        host,
        window: Mutex::new(Vec::new()),
        paused: Default::default(),
    }
}

#[test]
fn window_observer_brackets_the_protocol() {
    let (h, steps) = setup(2);
    let probe = recording(&h);
    let env = Env {
        probe: &probe,
        ..Env::plain(3)
    };
    run(&steps, &env);
    let total = h.calls().len();
    assert_eq!(
        *probe.window.lock().expect("lock"),
        [(true, 0), (false, total)]
    );
}

#[test]
fn a_probe_holding_before_each_pause_pauses_members_one_by_one() {
    let (h, steps) = setup(3);
    let probe = recording(&h);
    let env = Env {
        probe: &probe,
        ..Env::plain(3)
    };
    let out = run(&steps, &env);
    assert!(out.first_error().is_none() && out.all_resumed());
    assert_eq!(probe.paused.load(std::sync::atomic::Ordering::SeqCst), 3);
    let suspends: Vec<String> = h
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("suspend"))
        .collect();
    assert_eq!(suspends, ["suspend:vm0", "suspend:vm1", "suspend:vm2"]);
    assert!(
        out.pause_ms >= 60.0,
        "last pause 2 x 30 ms late: {}",
        out.pause_ms
    );
}

#[test]
fn failing_resume_is_retried_and_reported() {
    let (h, steps) = setup(2);
    h.fail_on("resume", "vm0");
    let out = run(&steps, &env());
    assert!(!out.members[0].resumed);
    let resumes = h.calls().iter().filter(|c| *c == "resume:vm0").count();
    assert_eq!(resumes, 3);
    assert!(!out.all_resumed());
}
