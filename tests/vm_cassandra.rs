//! Cassandra testbeds on real VMs: a single node under load snapshotted and verified with its
//! data loss within the bound of its sync mode; a mixed PostgreSQL + Cassandra group verified
//! together, with the staggered negative control reported as a violation.
//!
//! These need a Cassandra binary distribution (`CGSNAP_CASSANDRA_HOME`), which this project does
//! not ship: without it the VM tests print `SKIPPED: <why>` and return; with a path that is not
//! a distribution they fail. The command-line refusal without a distribution always runs.

mod common;

use cgsnap_testbeds::cass_bed;
use cgsnap_testbeds::cass_workload;
use cgsnap_testbeds::cassandra::{self, DistError};
use cgsnap_testbeds::cql::Cql;
use common::*;
use std::path::Path;
use std::time::Duration;

const DIR: &str = "/var/lib/libvirt/images/cgsnap-tests/cassandra";

/// The distribution to test with, or `None` after printing why the test is skipped.
fn distribution_or_skip() -> Option<cassandra::Distribution> {
    match cassandra::distribution() {
        Ok(d) => Some(d),
        Err(DistError::Unset) => {
            // Written to stderr directly: libtest captures print!/eprint! of passing tests, and
            // a skip must be visible in every CI log.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "SKIPPED: {}", cassandra::UNSET_HELP);
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn rounds(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Tears a Cassandra testbed down even when an assertion fails.
struct Down<'a> {
    lab: &'a Lab,
    bed: &'static str,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = self
            .lab
            .std_cgsnap()
            .args(["testbed", "down", self.bed])
            .output();
        for (n, _) in cass_bed::plan(self.bed) {
            cgsnap_testbeds::guest::destroy_by_name(URI, n);
        }
        if std::env::var_os("CGSNAP_TEST_KEEP_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(DIR);
        }
    }
}

fn up(lab: &Lab, bed: &str, ports: &str, sync: &[&str]) {
    let out = lab
        .cgsnap()
        .args(["testbed", "up", bed, "--ports", ports, "--dir", DIR])
        .args(sync)
        .timeout(Duration::from_secs(2400))
        .assert()
        .success();
    print!("{}", String::from_utf8_lossy(&out.get_output().stdout));
}

/// Snapshot (optionally staggered), verify, release: the report and verify's exit code.
fn round(lab: &Lab, bed: &str, profile: &Path, stagger: Option<&str>) -> (serde_json::Value, i32) {
    let mut snap = lab.cgsnap();
    snap.args(["snapshot", bed]);
    if let Some(ms) = stagger {
        snap.args(["--unsafe-stagger", ms]);
    }
    snap.assert().success();
    lab.verify_and_release(bed, profile, 40400)
}

fn member<'a>(r: &'a serde_json::Value, domain: &str) -> &'a serde_json::Value {
    r["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["domain"] == domain)
        .unwrap_or_else(|| panic!("{domain} in {r}"))
}

/// A restored Cassandra member passed, with its loss inside the bound of its sync mode.
fn assert_cassandra_member_passed(r: &serde_json::Value, domain: &str, bound_s: f64) {
    let m = member(r, domain);
    for c in m["checks"].as_array().expect("checks") {
        assert_eq!(c["ok"], true, "{domain}: {c}");
    }
    let names: Vec<&str> = m["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for expected in [
        "recovery (CQL-ready)",
        "commit log replay",
        "commit log sync mode as profiled",
        "beacon loss within the sync mode's bound",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {names:?}");
    }
    assert!(m["recovery_seconds"].as_f64().expect("rto") > 0.0);
    assert!(m["server_version"].is_string());
    assert_eq!(m["loss_bound_seconds"].as_f64(), Some(bound_s));
    let loss = m["data_loss_seconds"].as_f64().expect("loss");
    println!(
        "{domain}: Cassandra {} CQL-ready {:.1} s, {} mutations replayed, data loss {loss:.3} s (bound {bound_s} s), {} acknowledged writes lost",
        m["server_version"],
        m["recovery_seconds"],
        m["replayed_mutations"],
        m["lost_acked_commits"]
    );
}

#[test]
fn testbed_up_refuses_clearly_without_a_distribution() {
    let cat = tempfile::tempdir().expect("catalog");
    let bogus = tempfile::tempdir().expect("not a distribution");
    let old = fake_distribution("2.1.22");
    let stock41 = fake_distribution("4.1.5");
    for (home, why) in [
        (None, "CGSNAP_CASSANDRA_HOME is not set"),
        (Some(bogus.path()), "bin/cassandra missing"),
        (Some(old.path()), "Cassandra 2.1.22 is not supported"),
        (Some(stock41.path()), "Cassandra 4.1.5 needs Java 8 or 11"),
    ] {
        let mut c = assert_cmd::Command::cargo_bin("cgsnap").expect("binary");
        c.arg("--catalog").arg(cat.path());
        c.args(["testbed", "up", cass_bed::SINGLE]);
        c.env_remove("CGSNAP_CASSANDRA_JRE_PACKAGE");
        match home {
            None => c.env_remove(cassandra::HOME_VAR),
            Some(h) => c.env(cassandra::HOME_VAR, h),
        };
        let out = c.output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "precondition exit code: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            // The fix names the variable to change: the home, or the JRE package.
            err.contains(why) && err.contains("CGSNAP_CASSANDRA_"),
            "{err}"
        );
        assert!(
            !cat.path().join("testbeds").exists(),
            "nothing created before the check"
        );
    }
}

/// The layout of a binary tarball of `version`, with a stock 4.x-like conf (Java 11 options
/// only): enough for the checks made before anything is built.
fn fake_distribution(version: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("distribution");
    for sub in ["bin", "conf", "lib"] {
        std::fs::create_dir_all(d.path().join(sub)).expect("mkdir");
    }
    for (f, text) in [
        ("bin/cassandra", "#!/bin/sh\n"),
        ("bin/nodetool", "#!/bin/sh\n"),
        ("conf/cassandra.yaml", "cluster_name: 'Test Cluster'\n"),
        ("conf/cassandra-env.sh", "JVM_OPTS=\"$JVM_OPTS -Xss256k\"\n"),
        (
            "conf/jvm11-server.options",
            "--add-exports java.base/jdk.internal.misc=ALL-UNNAMED\n",
        ),
    ] {
        std::fs::write(d.path().join(f), text).expect("write");
    }
    let jar = format!("lib/apache-cassandra-{version}.jar");
    std::fs::write(d.path().join(jar), "").expect("jar");
    d
}

#[test]
fn single_node_under_load_verifies_with_loss_within_the_periodic_bound() {
    let Some(dist) = distribution_or_skip() else {
        return;
    };
    println!("Cassandra {} from {}", dist.version, dist.home.display());
    let lab = lab("cgt-cass", 0, 0);
    let _down = Down {
        lab: &lab,
        bed: cass_bed::SINGLE,
    };
    up(
        &lab,
        cass_bed::SINGLE,
        "25561",
        &[
            "--commitlog-sync",
            "periodic",
            "--commitlog-sync-period-ms",
            "2000",
        ],
    );
    let sdir = lab.catalog.path().join("testbeds").join(cass_bed::SINGLE);
    let profile = cass_bed::verify_profile(&sdir);
    let c = Cql::connect(&cassandra::addr(25561), Duration::from_secs(30)).expect("cql");
    let mut last = 0;
    let n = rounds("CGSNAP_TEST_CASS_ROUNDS", 3);
    for i in 1..=n {
        std::thread::sleep(Duration::from_secs(5));
        // Live invariants: the workload advances and numbers events without gaps.
        let f = cass_workload::facts(&c).expect("facts");
        assert_eq!(cass_workload::check(&f), Vec::<String>::new());
        assert!(f.max_event > last, "workload stalled at {last}");
        last = f.max_event;
        let (r, code) = round(&lab, cass_bed::SINGLE, &profile, None);
        println!("round {i}/{n}: {}", r["verdict"]);
        assert_eq!(code, 0, "round {i} must pass: {r}");
        assert_cassandra_member_passed(&r, cass_bed::CASS_VM, 2.0);
    }
}

#[test]
fn mixed_group_verifies_together_and_the_staggered_control_is_caught() {
    if distribution_or_skip().is_none() {
        return;
    }
    let lab = lab("cgt-mix", 0, 0);
    let _down = Down {
        lab: &lab,
        bed: cass_bed::MIXED,
    };
    up(
        &lab,
        cass_bed::MIXED,
        "25571,25572",
        &["--commitlog-sync", "batch"],
    );
    let sdir = lab.catalog.path().join("testbeds").join(cass_bed::MIXED);
    let profile = cass_bed::verify_profile(&sdir);
    let n = rounds("CGSNAP_TEST_CASS_ROUNDS", 3);
    for i in 1..=n {
        std::thread::sleep(Duration::from_secs(3));
        let (r, code) = round(&lab, cass_bed::MIXED, &profile, None);
        println!("consistent {i}/{n}: {}", r["verdict"]);
        assert_eq!(code, 0, "round {i} must pass: {r}");
        assert_cassandra_member_passed(&r, cass_bed::MIX_CASS_VM, 0.0);
        let pg = member(&r, cass_bed::MIX_PG_VM);
        assert_eq!(pg["lost_acked_commits"], 0, "{pg}");
        let cross = r["cross_checks"].as_array().expect("cross");
        assert!(
            cross.len() >= 2 && cross.iter().all(|c| c["ok"] == true),
            "beacon order and event→order reference checked: {cross:?}"
        );
    }
    let k = rounds("CGSNAP_TEST_CASS_STAGGER_ROUNDS", 3);
    let mut caught = 0;
    for i in 1..=k {
        let (r, code) = round(&lab, cass_bed::MIXED, &profile, Some("1000"));
        let violations: Vec<String> = r["members"]
            .as_array()
            .expect("members")
            .iter()
            .flat_map(|m| m["checks"].as_array().cloned().unwrap_or_default())
            .chain(r["cross_checks"].as_array().cloned().unwrap_or_default())
            .filter(|c| c["ok"] == false)
            .map(|c| c["name"].to_string())
            .collect();
        println!("staggered {i}/{k}: {} {violations:?}", r["verdict"]);
        if code == 11 && r["verdict"] == "fail" {
            caught += 1;
        }
    }
    println!("staggered negative control reported as a violation in {caught} of {k} runs");
    assert!(
        caught * 4 >= k * 3,
        "only {caught} of {k} staggered snapshots were caught"
    );
}
