//! Parsing and the rules of profiles, on the testbeds' own profiles too.

use super::*;

const OK: &str = r#"
format_version = 1
rpo_seconds = 5
[[member]]
domain = "a"
kind = "postgres"
port = 5432
user = "postgres"
password = "x"
ready_marker = "READY"
invariants = ["SELECT true"]
beacon_table = "cgsnap_beacon"
"#;

#[test]
fn parses_and_rejects_unknown_fields_and_versions() {
    let p = parse(Path::new("p.toml"), OK).expect("parse");
    assert_eq!(p.members[0].dbname, "postgres");
    assert_eq!(p.ready_timeout_seconds, 300);
    let bad = OK.replace("port = 5432", "port = 5432\nprot = 1");
    let e = parse(Path::new("p.toml"), &bad).unwrap_err();
    assert!(
        e.to_string().contains("p.toml") && e.to_string().contains("prot"),
        "{e}"
    );
    let e = parse(
        Path::new("p.toml"),
        &OK.replace("format_version = 1", "format_version = 2"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("format_version 2"));
    assert!(parse(Path::new("p.toml"), "rpo_seconds = ").is_err());
    let e = parse(Path::new("p.toml"), &OK.replace("password = \"x\"\n", "")).unwrap_err();
    assert!(
        e.to_string()
            .contains("member a: a postgres member needs user and password")
    );
    let e = parse(
        Path::new("p.toml"),
        &OK.replace("port = 5432", "port = 5432\ncommitlog_sync = \"batch\""),
    )
    .unwrap_err();
    assert!(e.to_string().contains("only for cassandra"), "{e}");
}

const CASS: &str = r#"
format_version = 1
rpo_seconds = 7
[[member]]
domain = "c"
kind = "cassandra"
port = 9042
ready_marker = "CGSNAP-CASS: ready"
commitlog_sync = "periodic"
commitlog_sync_period_ms = 2000
beacon_table = "cgsnap.cgsnap_beacon"
invariants = ["SELECT count(*), max(id) FROM cgsnap.events"]
"#;

/// The profiles `cgsnap testbed up` writes for the Cassandra testbeds parse here.
#[test]
fn postgres_ready_marker_is_optional() {
    let p = parse(
        Path::new("p.toml"),
        &OK.replace("ready_marker = \"READY\"\n", ""),
    )
    .expect("parse");
    assert_eq!(p.members[0].ready_marker, None);
    assert_eq!(
        parse(Path::new("p.toml"), OK).expect("parse").members[0]
            .ready_marker
            .as_deref(),
        Some("READY")
    );
}

#[test]
fn testbed_profiles_parse() {
    use cgsnap_testbeds::cass_bed::{self, State, Vm};
    for (bed, sync) in [
        (cass_bed::SINGLE, SyncMode::Periodic { period_ms: 2000 }),
        (cass_bed::MIXED, SyncMode::Batch),
    ] {
        let vms = cass_bed::plan(bed)
            .into_iter()
            .map(|(n, e)| Vm {
                name: n.into(),
                engine: e,
                port: 1,
                dir: PathBuf::from("/x"),
                boot_to_ready_s: 0.0,
            })
            .collect();
        let st = State {
            testbed: bed.into(),
            uri: "qemu:///system".into(),
            images_dir: PathBuf::from("/x"),
            sync,
            cassandra_version: "5.0.2".into(),
            vms,
            workload_pid: None,
            started_at: chrono::Utc::now(),
        };
        let text = cgsnap_testbeds::cass_profile::text(&st, Path::new("/s/acks.jsonl"));
        let p = parse(Path::new("t.toml"), &text).expect(&text);
        let cass: Vec<&MemberProfile> = p
            .members
            .iter()
            .filter(|m| m.kind == Kind::Cassandra)
            .collect();
        assert_eq!(cass.len(), 1);
        assert_eq!(cass[0].sync_mode(), Ok(sync));
        assert_eq!(p.ready_timeout_seconds, 900);
        let mixed = bed == cass_bed::MIXED;
        assert_eq!(p.cross.len(), usize::from(mixed));
        if mixed {
            assert_eq!(
                p.members[0].kind,
                Kind::Postgres,
                "beacon order: PostgreSQL first"
            );
            assert_eq!(
                p.members
                    .iter()
                    .filter(|m| m.kind == Kind::Postgres)
                    .count(),
                1
            );
        }
    }
}

#[test]
fn the_postgres_pair_profile_parses() {
    let text = cgsnap_testbeds::pair::profile_text(Path::new("/s"));
    let p = parse(Path::new("t.toml"), &text).expect(&text);
    assert_eq!(p.members.len(), 2);
    assert!(
        p.members
            .iter()
            .all(|m| m.kind == Kind::Postgres && m.invariants.len() == 3),
        "{text}"
    );
    assert_eq!(p.cross.len(), 1);
}

#[test]
fn the_lost_commit_check_is_configured_whole_or_not_at_all() {
    let acks = "ack_db = \"orders\"\nack_kind = \"order\"\nack_table = \"orders\"\n";
    let with = |extra: &str, log: bool| {
        let top = if log {
            "rpo_seconds = 5\nack_log = \"/s/acks.jsonl\""
        } else {
            "rpo_seconds = 5"
        };
        parse(
            Path::new("p.toml"),
            &OK.replace("rpo_seconds = 5", top)
                .replace("port = 5432\n", &format!("port = 5432\n{extra}")),
        )
    };
    let p = with(acks, true).expect("all three with a log");
    assert!(p.members[0].checks_acks());
    assert!(!with("", false).expect("none").members[0].checks_acks());
    for partial in [
        "ack_db = \"orders\"\n",
        "ack_kind = \"order\"\nack_table = \"orders\"\n",
        "ack_table = \"orders\"\n",
    ] {
        let e = with(partial, true).expect_err(partial);
        assert!(
            e.to_string()
                .contains("member a: ack_db, ack_kind and ack_table go together"),
            "{e}"
        );
    }
    let e = with(acks, false).expect_err("no log");
    assert!(e.to_string().contains("need ack_log"), "{e}");
}

#[test]
fn statement_timeout_defaults_and_must_be_positive() {
    let p = parse(Path::new("p.toml"), OK).expect("parse");
    assert_eq!(p.statement_timeout_seconds, 600);
    let e = parse(
        Path::new("p.toml"),
        &OK.replace(
            "rpo_seconds = 5",
            "rpo_seconds = 5\nstatement_timeout_seconds = 0",
        ),
    )
    .unwrap_err();
    assert!(e.to_string().contains("statement_timeout_seconds"), "{e}");
}

#[test]
fn cassandra_members_state_a_valid_sync_mode() {
    let p = parse(Path::new("c.toml"), CASS).expect("parse");
    assert_eq!(p.members[0].kind, Kind::Cassandra);
    assert_eq!(
        p.members[0].sync_mode(),
        Ok(SyncMode::Periodic { period_ms: 2000 })
    );
    let batch = CASS
        .replace("\"periodic\"", "\"batch\"")
        .replace("commitlog_sync_period_ms = 2000\n", "");
    let p = parse(Path::new("c.toml"), &batch).expect("batch");
    assert_eq!(p.members[0].sync_mode(), Ok(SyncMode::Batch));
    for (bad, why) in [
        (
            CASS.replace("commitlog_sync_period_ms = 2000\n", ""),
            "needs commitlog_sync_period_ms",
        ),
        (
            CASS.replace("= 2000", "= 0"),
            "needs commitlog_sync_period_ms",
        ),
        (
            CASS.replace("\"periodic\"", "\"batch\""),
            "only for commitlog_sync = \"periodic\"",
        ),
        (
            CASS.replace("commitlog_sync = \"periodic\"\n", ""),
            "needs commitlog_sync =",
        ),
        (CASS.replace("\"periodic\"", "\"group\""), "group"),
        (
            CASS.replace("ready_marker = \"CGSNAP-CASS: ready\"\n", ""),
            "needs a ready_marker",
        ),
    ] {
        let e = parse(Path::new("c.toml"), &bad).expect_err(why);
        assert!(e.to_string().contains(why), "{why}: {e}");
    }
}
