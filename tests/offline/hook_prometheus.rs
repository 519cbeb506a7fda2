//! Monitoring, with Prometheus' own tools (extracted by `testbeds/host-setup.sh` into
//! /var/cache/cgsnap/prometheus, no service started):
//! - the shipped alert rules (`hooks/prometheus/cgsnap-alerts.yml`) load (`promtool check
//!   rules`) and fire as their unit tests expect (`promtool test rules`);
//! - `cgsnap metrics` on a catalog holding a released, a held, an aborted and a negative-control
//!   snapshot plus a verification report writes a file that `promtool check metrics` accepts,
//!   and that holds every metric the rules use;
//! - a real node_exporter's textfile collector serves that file on 127.0.0.1 without a scrape
//!   error, with the values the catalog implies;
//! - the DR policy alert fires, in promtool, on the series `cgsnap metrics` rendered from a
//!   catalog with policies: for a group whose restore point aged past its policy and for one
//!   that never had one, never for a group without a policy.

use crate::common::run_ok;
use cgsnap::catalog::{Catalog, Manifest, MemberRecord, SnapState};
use chrono::{DateTime, Utc};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PROM: &str = "/var/cache/cgsnap/prometheus/usr/bin";
const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../hooks/prometheus");

fn tool(name: &str) -> Command {
    let p = Path::new(PROM).join(name);
    assert!(
        p.exists(),
        "{} missing: run testbeds/host-setup.sh",
        p.display()
    );
    Command::new(p)
}

#[test]
fn alert_rules_load_and_pass_their_unit_tests() {
    let out =
        run_ok(
            tool("promtool")
                .current_dir(RULES)
                .args(["check", "rules", "cgsnap-alerts.yml"]),
        );
    assert!(out.contains("SUCCESS: 10 rules found"), "{out}");
    let out = run_ok(tool("promtool").current_dir(RULES).args([
        "test",
        "rules",
        "cgsnap-alerts.test.yml",
    ]));
    assert!(out.contains("SUCCESS"), "{out}");
}

fn at(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(s, 0).expect("timestamp")
}

fn manifest(id: &str, state: SnapState, created: i64) -> Manifest {
    let member = |d: &str| MemberRecord {
        freeze_ms: Some(30.0),
        ..MemberRecord::new(d, "qemu:///system", String::new(), vec![])
    };
    Manifest {
        consistency_point: Some(at(created + 1)),
        freeze_window_ms: Some(42.0),
        members: vec![member("orders"), member("payments")],
        released_at: (state == SnapState::Released).then(|| at(created + 600)),
        ..Manifest::new(id, "pg", state, at(created))
    }
}

/// A catalog as a few nights leave it: released + verified (pass), aborted, a failed negative
/// control (released), and the newest one held.
fn catalog(dir: &Path) -> Catalog {
    let cat = Catalog::open(dir).expect("catalog");
    cat.write(&manifest("pg-1", SnapState::Released, 1_700_000_000))
        .expect("write");
    cat.write(&manifest("pg-2", SnapState::Aborted, 1_700_086_400))
        .expect("write");
    let mut control = manifest("pg-3", SnapState::Released, 1_700_090_000);
    control.unsafe_stagger_ms = Some(1000);
    cat.write(&control).expect("write");
    cat.write(&manifest("pg-4", SnapState::Taken, 1_700_172_800))
        .expect("write");
    let report = |verdict: &str, end: i64| {
        serde_json::json!({
            "format_version": 1, "snapshot_id": "x", "group": "pg",
            "consistency_point": null, "freeze_window_ms": 42.0, "rpo_seconds": 5.0,
            "verdict": verdict, "started_at": at(end - 60), "finished_at": at(end),
            "cross_checks": [],
            "members": [{"domain": "orders", "sandbox": "s", "recovery_seconds": 12.5,
                         "data_loss_seconds": 0.4, "checks": []}],
        })
    };
    let h = |n: u64| Some(Duration::from_secs(n * 3600));
    let policy = cgsnap::catalog::policy::Change {
        max_restore_point_age: h(26),
        rpo: h(1),
        rto: h(1),
    };
    cgsnap::catalog::policy::set(&cat, "pg", &policy).expect("policy");
    for (id, r) in [
        ("pg-1", report("pass", 1_700_001_000)),
        ("pg-3", report("fail", 1_700_091_000)),
    ] {
        let d = cat.report_dir(id);
        std::fs::create_dir_all(&d).expect("report dir");
        std::fs::write(d.join("report.json"), r.to_string()).expect("report");
    }
    cat
}

fn cgsnap_metrics(cat: &Path, dir: &Path) -> String {
    let out = Command::new(assert_cmd::cargo::cargo_bin("cgsnap"))
        .arg("--catalog")
        .arg(cat)
        .arg("--metrics-dir")
        .arg(dir)
        .arg("metrics")
        .output()
        .expect("cgsnap metrics");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(
        std::fs::read_to_string(dir.join("cgsnap.prom")).expect("file"),
        text
    );
    text
}

/// Names of the cgsnap metrics an expression text uses.
fn metric_names(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("cgsnap_"))
        .map(str::to_string)
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn metrics_file_is_valid_and_covers_every_rule() {
    let t = tempfile::tempdir().expect("tempdir");
    catalog(&t.path().join("cat"));
    let dir = t.path().join("metrics");
    let text = cgsnap_metrics(&t.path().join("cat"), &dir);

    let mut check = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = check.wait_with_output().expect("promtool");
    let lint = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && lint.trim().is_empty(), "{lint}");

    let rules = std::fs::read_to_string(Path::new(RULES).join("cgsnap-alerts.yml")).expect("rules");
    let exprs: String = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .collect::<Vec<_>>()
        .join("\n");
    let used = metric_names(&exprs);
    assert!(used.len() >= 6, "{used:?}");
    let rendered = metric_names(&text);
    for m in &used {
        assert!(rendered.contains(m), "rules use {m}, not rendered:\n{text}");
    }
}

struct Exporter(Child);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scrape(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.starts_with("HTTP/1.0 200").then_some(body)
}

#[test]
fn node_exporter_serves_the_metrics_file() {
    let t = tempfile::tempdir().expect("tempdir");
    catalog(&t.path().join("cat"));
    let dir: PathBuf = t.path().join("metrics");
    cgsnap_metrics(&t.path().join("cat"), &dir);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let _exp = Exporter(
        tool("prometheus-node-exporter")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(["--collector.disable-defaults", "--collector.textfile"])
            .arg(format!("--collector.textfile.directory={}", dir.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node exporter"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        if let Some(b) = scrape(port) {
            break b;
        }
        assert!(Instant::now() < deadline, "node_exporter did not answer");
        std::thread::sleep(Duration::from_millis(100));
    };
    let value = |series: &str| {
        body.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    assert_eq!(value("node_textfile_scrape_error"), Some(0.0), "{body}");
    assert_eq!(
        value(r#"cgsnap_snapshots{group="pg",state="taken"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(r#"cgsnap_snapshots{group="pg",state="released"}"#),
        Some(2.0)
    );
    // The held snapshot is the newest attempt and it was taken.
    assert_eq!(
        value(r#"cgsnap_snapshot_outstanding_since_timestamp_seconds{group="pg"}"#),
        Some(1_700_172_800.0)
    );
    assert_eq!(
        value(r#"cgsnap_snapshot_last_attempt_success{group="pg"}"#),
        Some(1.0)
    );
    // The negative control's failed verification does not count: the newest real one passed.
    assert_eq!(value(r#"cgsnap_verify_last_pass{group="pg"}"#), Some(1.0));
    // node_exporter sorts labels by name.
    assert_eq!(
        value(r#"cgsnap_verify_last_recovery_seconds{domain="orders",group="pg"}"#),
        Some(12.5)
    );
}

#[test]
fn unwritable_metrics_dir_warns_but_never_fails_a_hook() {
    let t = tempfile::tempdir().expect("tempdir");
    let hook = |phase: &str| {
        Command::new(assert_cmd::cargo::cargo_bin("cgsnap"))
            .args(["--connect", "test:///default", "--catalog"])
            .arg(t.path())
            .args(["--metrics-dir", "/proc/cgsnap-metrics"])
            .args(["hook", phase, "--group", "nightly"])
            .output()
            .expect("cgsnap hook")
    };
    let out = hook("post");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "cgsnap: nothing to release for group nightly"
    );
    assert!(
        err.starts_with("cgsnap: warning: metrics not updated: metrics file /proc/cgsnap-metrics"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // A failing hook still prints exactly its one error line.
    let out = hook("pre");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("nightly"), "{err}");
}

/// `name{labels} value` lines of an exposition, without comments.
fn samples(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.to_string()))
        })
        .collect()
}

#[test]
fn the_policy_alert_fires_on_rendered_metrics() {
    use cgsnap::catalog::policy::{self, Change};
    let t = tempfile::tempdir().expect("tempdir");
    let cat = Catalog::open(&t.path().join("cat")).expect("catalog");
    let hour = Change {
        max_restore_point_age: Some(Duration::from_secs(3600)),
        rpo: Some(Duration::from_secs(60)),
        rto: Some(Duration::from_secs(600)),
    };
    // Times near 0: promtool's clock starts at 0 s.
    for (group, verdict, policy_set) in [
        ("ok", "pass", true),
        ("never", "fail", true),
        ("free", "pass", false),
    ] {
        let mut m = manifest(&format!("{group}-1"), SnapState::Released, 0);
        m.group = group.to_string();
        m.consistency_point = Some(at(60));
        cat.write(&m).expect("write");
        let d = cat.report_dir(&m.id);
        std::fs::create_dir_all(&d).expect("dir");
        let r = serde_json::json!({"verdict": verdict, "finished_at": at(120), "rpo_seconds": 5.0,
            "members": [{"domain": "orders", "recovery_seconds": 9.0, "data_loss_seconds": 0.4}]});
        std::fs::write(d.join("report.json"), r.to_string()).expect("report");
        if policy_set {
            policy::set(&cat, group, &hour).expect("policy");
        }
    }
    let text = cgsnap_metrics(&t.path().join("cat"), &t.path().join("metrics"));
    let mut yaml = format!(
        "rule_files:\n  - {RULES}/cgsnap-alerts.yml\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n"
    );
    for (series, value) in samples(&text) {
        yaml.push_str(&format!(
            "      - series: '{series}'\n        values: '{value}x300'\n"
        ));
    }
    let alert = |g: &str| {
        format!(
            "          - exp_labels: {{severity: critical, group: {g}}}\n            exp_annotations:\n              \
             summary: \"group {g} has no verified restore point within its DR policy\"\n              \
             description: \"Snapshot, back up and verify the group (`cgsnap verify`); `cgsnap report --group {g}` says what its newest restore point is and why it is out of policy.\"\n"
        )
    };
    yaml.push_str("    alert_rule_test:\n");
    yaml.push_str("      - eval_time: 30m\n        alertname: CgsnapNoVerifiedRestorePointWithinPolicy\n        exp_alerts:\n");
    yaml.push_str(&alert("never"));
    yaml.push_str("      - eval_time: 2h\n        alertname: CgsnapNoVerifiedRestorePointWithinPolicy\n        exp_alerts:\n");
    yaml.push_str(&alert("never"));
    yaml.push_str(&alert("ok"));
    let file = t.path().join("rendered.test.yml");
    std::fs::write(&file, &yaml).expect("test file");
    let out = tool("promtool")
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "{}{}\n{yaml}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And it is not vacuous: expecting no alert at 2 h fails.
    let wrong = yaml.replace(&alert("ok"), "");
    std::fs::write(&file, wrong).expect("test file");
    let out = tool("promtool")
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    assert!(!out.status.success(), "promtool must see the missing alert");
}
