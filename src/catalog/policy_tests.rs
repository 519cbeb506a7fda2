//! Unit tests of the policy store.

use super::*;

fn cat() -> (tempfile::TempDir, Catalog) {
    let d = tempfile::tempdir().expect("tempdir");
    let c = Catalog::open(d.path()).expect("catalog");
    (d, c)
}

fn h(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

#[test]
fn a_first_policy_needs_every_target_then_one_can_change() {
    let (_d, c) = cat();
    let only_rpo = Change {
        rpo: Some(Duration::from_secs(300)),
        ..Change::default()
    };
    let e = set(&c, "pg", &only_rpo).expect_err("incomplete");
    assert!(e.to_string().contains("--max-age, --rto"), "{e}");
    assert_eq!(e.exit_code(), ExitCode::Usage);
    assert_eq!(load(&c, "pg").expect("load"), None);

    let full = Change {
        max_restore_point_age: Some(h(26)),
        rpo: Some(Duration::from_secs(300)),
        rto: Some(Duration::from_secs(900)),
    };
    let p = set(&c, "pg", &full).expect("set");
    assert_eq!(load(&c, "pg").expect("load"), Some(p));
    let text = fs::read_to_string(c.dir().join("policies/pg.toml")).expect("file");
    assert!(text.contains("max_restore_point_age = \"26h\""), "{text}");

    let p2 = set(
        &c,
        "pg",
        &Change {
            rto: Some(Duration::from_secs(60)),
            ..Change::default()
        },
    )
    .expect("change");
    assert_eq!(p2.rto, Duration::from_secs(60));
    assert_eq!(p2.max_restore_point_age, h(26));
    assert_eq!(all(&c).expect("all").len(), 1);
    assert!(clear(&c, "pg").expect("clear"));
    assert!(!clear(&c, "pg").expect("clear again"));
    assert!(all(&c).expect("all").is_empty());
}

#[test]
fn unknown_keys_and_bad_durations_are_refused_naming_the_file() {
    let (_d, c) = cat();
    fs::create_dir_all(c.dir().join("policies")).expect("dir");
    let f = c.dir().join("policies/pg.toml");
    fs::write(
        &f,
        "max_restore_point_age = \"1d\"\nrpo = \"5m\"\nrto = \"5m\"\nrpo_target = \"1s\"\n",
    )
    .expect("write");
    let e = load(&c, "pg").expect_err("unknown key");
    assert_eq!(e.exit_code(), ExitCode::Malformed);
    assert!(
        e.to_string().contains("pg.toml") && e.to_string().contains("rpo_target"),
        "{e}"
    );
    fs::write(
        &f,
        "max_restore_point_age = \"1y\"\nrpo = \"5m\"\nrto = \"5m\"\n",
    )
    .expect("write");
    let e = load(&c, "pg").expect_err("bad unit");
    assert!(e.to_string().contains("max_restore_point_age"), "{e}");
    fs::write(&f, "rpo = \"5m\"\nrto = \"5m\"\n").expect("write");
    assert!(load(&c, "pg").is_err(), "missing key");
    assert!(all(&c).is_err(), "all() reports the bad file too");
}

#[test]
fn a_group_name_that_is_no_file_name_is_refused() {
    let (_d, c) = cat();
    let e = load(&c, "../etc").expect_err("bad name");
    assert_eq!(e.exit_code(), ExitCode::Usage);
}
