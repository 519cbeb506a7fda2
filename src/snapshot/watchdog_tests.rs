//! Unit tests of the watchdog's sweep guard.

use super::*;
use crate::catalog::{Catalog, Manifest, SnapState};

#[test]
fn later_sweeps_only_while_the_dead_runs_snapshot_is_unreleased() {
    let t = tempfile::tempdir().expect("tmp");
    let cat = Catalog::open(t.path()).expect("catalog");
    let scope = Scope {
        catalog: t.path().to_path_buf(),
        group: "g".into(),
        id: "g-1".into(),
    };
    assert!(still_ours(&scope).is_err(), "no manifest: nothing to guard");
    let m = Manifest::new("g-1", "g", SnapState::Pending, chrono::Utc::now());
    cat.write(&m).expect("write");
    let held = still_ours(&scope).expect("pending").expect("lock");
    drop(held);
    for state in [SnapState::Failed, SnapState::Releasing] {
        cat.write(&Manifest { state, ..m.clone() }).expect("write");
        assert!(matches!(still_ours(&scope), Ok(Some(_))), "{state}");
    }
    for state in [SnapState::Released, SnapState::Aborted] {
        cat.write(&Manifest { state, ..m.clone() }).expect("write");
        assert!(
            still_ours(&scope).is_err(),
            "{state}: a later run may pause"
        );
    }
}
