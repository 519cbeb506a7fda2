//! The scratch guard on the fake hypervisor, against a real filesystem's free space: a
//! floor above it trips the guard at once, a floor of 0 never does.

use super::*;
use crate::hypervisor::DomState;
use crate::hypervisor::fake::{FakeHost, one_disk};
use std::time::Instant;

/// A host with members `a` (running), `b` (paused on an I/O error) and `c` (paused by a user),
/// each with a backup job.
fn host() -> Arc<FakeHost> {
    let h = Arc::new(FakeHost::new("qemu:///system"));
    for d in ["a", "b", "c"] {
        h.add(d, &one_disk(&format!("/img/{d}.qcow2"), ""));
        h.backup_jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(d.to_string());
    }
    h.set_state("b", DomState::PausedOther);
    h.set_state("c", DomState::PausedByUser);
    h
}

fn members(h: &Arc<FakeHost>, names: &[&str]) -> Vec<Member> {
    names
        .iter()
        .map(|d| Member {
            host: h.clone() as Arc<dyn Host>,
            domain: d.to_string(),
        })
        .collect()
}

fn jobs(h: &FakeHost) -> usize {
    h.backup_jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .len()
}

/// Wait (bounded) until the guard's thread has resumed `b`, its last act in these tests.
fn finish_after_trip(g: Guard, h: &FakeHost) -> Option<Trip> {
    let t0 = Instant::now();
    while h.state_of("b") != Some(DomState::Running) && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(POLL);
    }
    g.finish()
}

#[test]
fn below_the_floor_every_job_ends_and_only_an_io_error_pause_is_resumed() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = host();
    let g = Guard::start(
        members(&h, &["a", "b", "c"]),
        dir.path().to_path_buf(),
        u64::MAX,
    );
    let trip = finish_after_trip(g, &h).expect("tripped");
    assert!(matches!(trip.cause, Cause::Low { .. }), "{trip:?}");
    assert_eq!(jobs(&h), 0, "every job ended");
    assert_eq!(trip.resumed, ["b"]);
    assert_eq!(h.state_of("b"), Some(DomState::Running));
    assert_eq!(h.state_of("c"), Some(DomState::PausedByUser), "never ours");
    assert!(trip.left.is_empty(), "{trip:?}");
    let text = trip.to_string();
    assert!(
        text.contains("below --min-free") && text.contains("resumed b"),
        "{text}"
    );
}

#[test]
fn a_member_paused_on_an_io_error_trips_it_with_room_to_spare() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = host();
    let g = Guard::start(members(&h, &["a", "b"]), dir.path().to_path_buf(), 0);
    let trip = finish_after_trip(g, &h).expect("tripped");
    assert_eq!(trip.cause, Cause::Paused { domain: "b".into() });
    assert_eq!(trip.resumed, ["b"]);
}

#[test]
fn with_room_and_no_pause_nothing_is_touched() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = host();
    let g = Guard::start(members(&h, &["a", "c"]), dir.path().to_path_buf(), 0);
    std::thread::sleep(POLL * 5);
    assert_eq!(g.finish(), None);
    assert_eq!(jobs(&h), 3);
    assert!(
        !h.calls().iter().any(|c| c.starts_with("backup_abort")),
        "{:?}",
        h.calls()
    );
}

#[test]
fn a_job_that_will_not_end_is_named() {
    let h = host();
    h.fail_on("backup_abort", "a");
    let g = Guard::start(
        members(&h, &["a"]),
        PathBuf::from("/nonexistent/cgsnap-scratch"),
        0,
    );
    let t0 = Instant::now();
    while h.calls().iter().all(|c| c != "backup_abort:a") && t0.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(POLL);
    }
    let trip = g.finish().expect("tripped");
    assert!(matches!(trip.cause, Cause::Unmeasured { .. }), "{trip:?}");
    assert_eq!(trip.left.len(), 1, "{trip:?}");
    assert!(trip.to_string().contains("NOT DONE: a:"), "{trip}");
}
