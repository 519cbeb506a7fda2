//! Unit tests of the catalog store and the manifest format.

use super::*;

fn manifest(id: &str, group: &str, state: SnapState) -> Manifest {
    Manifest::new(id, group, state, Utc::now())
}

#[test]
fn write_load_roundtrip_and_outstanding() {
    let t = tempfile::tempdir().expect("tempdir");
    let c = Catalog::open(t.path()).expect("open");
    c.write(&manifest("g-1", "g", SnapState::Released))
        .expect("write");
    c.write(&manifest("g-2", "g", SnapState::Taken))
        .expect("write");
    assert_eq!(c.load("g-2").expect("load").state, SnapState::Taken);
    let out = c.outstanding("g").expect("outstanding");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].id, "g-2");
    assert_eq!(
        c.latest("g").expect("latest").map(|m| m.id),
        Some("g-2".into())
    );
    assert!(matches!(
        c.load("nope"),
        Err(CatalogError::UnknownSnapshot { .. })
    ));
}

#[test]
fn malformed_and_unknown_fields_are_rejected() {
    let t = tempfile::tempdir().expect("tempdir");
    let c = Catalog::open(t.path()).expect("open");
    let p = t.path().join("snapshots/bad.json");
    fs::write(&p, b"{\"format_version\": 1, \"id\": ").expect("write");
    let e = c.load("bad").unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::Malformed);
    assert!(e.to_string().contains("bad.json"));
    let mut v = serde_json::to_value(manifest("x", "g", SnapState::Taken)).expect("json");
    v["surprise"] = serde_json::json!(1);
    assert!(Catalog::parse(&p, v.to_string().as_bytes()).is_err());
    let mut v = serde_json::to_value(manifest("x", "g", SnapState::Taken)).expect("json");
    v["format_version"] = serde_json::json!(99);
    let e = Catalog::parse(&p, v.to_string().as_bytes()).unwrap_err();
    assert!(e.to_string().contains("format_version 99"));
}

/// One test per (from, to) pair: `allowed` or `refused`, as in the module docs' table.
macro_rules! transitions {
    ($($name:ident: $from:ident -> $to:ident $verdict:ident;)*) => {
        $(
            #[test]
            fn $name() {
                check(SnapState::$from, SnapState::$to, stringify!($verdict));
            }
        )*

        #[test]
        fn the_cases_are_every_pair_once_and_eight_are_allowed() {
            let cases = [$((SnapState::$from, SnapState::$to, stringify!($verdict))),*];
            for from in SnapState::ALL {
                for to in SnapState::ALL {
                    let n = cases.iter().filter(|c| (c.0, c.1) == (from, to)).count();
                    assert_eq!(n, 1, "{from} -> {to}");
                }
            }
            let allowed = cases.iter().filter(|c| c.2 == "allowed").count();
            assert_eq!((cases.len(), allowed), (36, 8));
        }
    };
}

fn check(from: SnapState, to: SnapState, verdict: &str) {
    let mut m = manifest("g-1", "g", from);
    match (verdict, m.transition(to)) {
        ("allowed", Ok(())) => assert_eq!(m.state, to),
        ("refused", Err(e)) => {
            assert_eq!(m.state, from, "a refused change changes nothing");
            assert_eq!(
                e,
                TransitionError {
                    id: "g-1".into(),
                    from,
                    to
                }
            );
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("snapshot g-1: state {from} cannot change to {to}")),
                "{msg}"
            );
            assert_eq!(e.exit_code(), ExitCode::Internal);
        }
        (v, r) => panic!("{from} -> {to}: expected {v}, got {r:?}"),
    }
}

transitions! {
    pending_to_pending: Pending -> Pending refused;
    pending_to_taken: Pending -> Taken allowed;
    pending_to_aborted: Pending -> Aborted allowed;
    pending_to_failed: Pending -> Failed allowed;
    pending_to_releasing: Pending -> Releasing allowed;
    pending_to_released: Pending -> Released refused;
    taken_to_pending: Taken -> Pending refused;
    taken_to_taken: Taken -> Taken refused;
    taken_to_aborted: Taken -> Aborted refused;
    taken_to_failed: Taken -> Failed refused;
    taken_to_releasing: Taken -> Releasing allowed;
    taken_to_released: Taken -> Released refused;
    aborted_to_pending: Aborted -> Pending refused;
    aborted_to_taken: Aborted -> Taken refused;
    aborted_to_aborted: Aborted -> Aborted refused;
    aborted_to_failed: Aborted -> Failed refused;
    aborted_to_releasing: Aborted -> Releasing refused;
    aborted_to_released: Aborted -> Released refused;
    failed_to_pending: Failed -> Pending refused;
    failed_to_taken: Failed -> Taken refused;
    failed_to_aborted: Failed -> Aborted refused;
    failed_to_failed: Failed -> Failed refused;
    failed_to_releasing: Failed -> Releasing allowed;
    failed_to_released: Failed -> Released refused;
    releasing_to_pending: Releasing -> Pending refused;
    releasing_to_taken: Releasing -> Taken refused;
    releasing_to_aborted: Releasing -> Aborted refused;
    releasing_to_failed: Releasing -> Failed refused;
    releasing_to_releasing: Releasing -> Releasing allowed;
    releasing_to_released: Releasing -> Released allowed;
    released_to_pending: Released -> Pending refused;
    released_to_taken: Released -> Taken refused;
    released_to_aborted: Released -> Aborted refused;
    released_to_failed: Released -> Failed refused;
    released_to_releasing: Released -> Releasing refused;
    released_to_released: Released -> Released refused;
}

#[test]
fn ids_sort_by_time() {
    let a = new_id("g", DateTime::from_timestamp(1_000, 0).expect("ts"));
    let b = new_id("g", DateTime::from_timestamp(1_001, 5_000_000).expect("ts"));
    assert!(a < b, "{a} {b}");
    assert_eq!(b, "g-19700101T001641005Z");
}
