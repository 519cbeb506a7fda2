//! Restore-and-verify on the PostgreSQL pair testbed under load: consecutive group snapshots
//! all verify clean (no violation, no lost acknowledged commit before the consistency point);
//! both negative controls (members staggered; WAL disk cut before the data disk) are reported
//! as violations; the HTML report renders in headless Chromium.

use crate::common;

use cgsnap_testbeds::pair;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const DIR: &str = "/var/lib/libvirt/images/cgsnap-tests/verify";

fn rounds(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Snapshot (with `extra` snapshot arguments: a negative control when any), verify, release.
/// Returns the report JSON, its HTML path and the verify exit code. A negative control is
/// marked NOT CONSISTENT, without a freeze window, in the snapshot's output and the report.
fn round(lab: &Lab, profile: &Path, extra: &[&str]) -> (serde_json::Value, PathBuf, i32) {
    let o = lab
        .cgsnap()
        .args(["snapshot", pair::NAME])
        .args(extra)
        .assert()
        .success();
    let out = String::from_utf8_lossy(&o.get_output().stdout).to_string();
    let first = out.lines().next().unwrap_or_default();
    let control = !extra.is_empty();
    if control {
        assert!(
            first.starts_with("NOT CONSISTENT (negative control): ")
                && !out.contains("freeze window"),
            "{out}"
        );
    } else {
        assert!(
            first.contains("freeze window") && !out.contains("NOT CONSISTENT"),
            "{out}"
        );
    }
    let (r, code) = lab.verify_and_release(pair::NAME, profile, 40300);
    let line = r["negative_control"].as_str().unwrap_or_default();
    assert_eq!(
        line.starts_with("NOT CONSISTENT (negative control): "),
        control,
        "{r}"
    );
    assert_eq!(r["freeze_window_ms"].is_null(), control, "{r}");
    let id = r["snapshot_id"].as_str().expect("id");
    let html = lab
        .catalog
        .path()
        .join("reports")
        .join(id)
        .join("report.html");
    (r, html, code)
}

fn summary(r: &serde_json::Value) -> String {
    r["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            format!(
                "{} recovery {:.1}s loss {:.3}s lost {}",
                m["domain"].as_str().unwrap_or_default(),
                m["recovery_seconds"].as_f64().unwrap_or(-1.0),
                m["data_loss_seconds"].as_f64().unwrap_or(-1.0),
                m["lost_acked_commits"]
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn snapshots_under_load_verify_clean_and_the_staggered_control_is_caught() {
    let lab = lab("cgt-verify", 0, 0);
    let _down = TestbedDown::new(&lab, &[DIR]);
    lab.cgsnap()
        .args(["testbed", "up", "--ports", "25521,25522", "--dir", DIR])
        .timeout(Duration::from_secs(900))
        .assert()
        .success();
    let profile = pair::verify_profile(&lab.catalog.path().join("testbeds").join(pair::NAME));

    let n = rounds("CGSNAP_TEST_VERIFY_ROUNDS", 10);
    let mut first_html = None;
    for i in 1..=n {
        std::thread::sleep(Duration::from_secs(2));
        let (r, html, code) = round(&lab, &profile, &[]);
        println!("consistent {i}/{n}: {} | {}", r["verdict"], summary(&r));
        assert_eq!(code, 0, "round {i} must pass: {r}");
        assert_eq!(r["verdict"], "pass");
        for m in r["members"].as_array().expect("members") {
            assert_eq!(
                m["lost_acked_commits"], 0,
                "no acknowledged commit before the cut lost"
            );
            assert!(m["recovery_seconds"].as_f64().expect("rto") > 0.0);
            assert!(m["data_loss_seconds"].as_f64().expect("loss") < 5.0);
        }
        first_html.get_or_insert(html);
    }

    let k = rounds("CGSNAP_TEST_STAGGER_ROUNDS", 5);
    let mut caught = 0;
    let mut last_fail = None;
    for i in 1..=k {
        let (r, html, code) = round(&lab, &profile, &["--unsafe-stagger", "1000"]);
        println!("staggered {i}/{k}: {} | {}", r["verdict"], summary(&r));
        if code == 11 && r["verdict"] == "fail" {
            caught += 1;
            last_fail = Some(html);
        }
    }
    println!("staggered negative control reported as a violation in {caught} of {k} runs");
    assert!(
        caught * 4 >= k * 3,
        "only {caught} of {k} staggered snapshots were caught"
    );

    // Per-disk control: the WAL disk (vdc) cut a second before the data disk (vdb), no pause.
    let d = rounds("CGSNAP_TEST_DISK_ORDER_ROUNDS", 3);
    let mut split_caught = 0;
    for i in 1..=d {
        std::thread::sleep(Duration::from_secs(2));
        let args = [
            "--unsafe-disk-order",
            "vdc,vdb",
            "--unsafe-disk-gap",
            "1000",
        ];
        let (r, _, code) = round(&lab, &profile, &args);
        let failed = failed_checks(&r);
        println!(
            "WAL-before-data {i}/{d}: {} | {} | failed: {}",
            r["verdict"],
            summary(&r),
            failed.join("; ")
        );
        if code == 11 && r["verdict"] == "fail" {
            split_caught += 1;
        }
    }
    println!(
        "WAL-before-data negative control reported as a violation in {split_caught} of {d} runs"
    );
    assert!(
        split_caught * 4 >= d * 3,
        "only {split_caught} of {d} WAL-before-data snapshots were caught"
    );
    let caught = caught + split_caught;

    // The manifests carry the marker: a span of the members' own freezes and the gaps, no
    // freeze window.
    let all = list_json(&lab);
    let all = all.as_array().expect("list");
    let staggered: Vec<&serde_json::Value> = all
        .iter()
        .filter(|m| m["unsafe_stagger_ms"] == 1000)
        .collect();
    assert_eq!(staggered.len(), k);
    for m in staggered {
        let c = &m["negative_control"];
        assert_eq!(c["kind"], "unsafe-stagger", "{m}");
        assert!(m["freeze_window_ms"].is_null(), "{m}");
        // Two members: one deliberate gap.
        assert_eq!(c["deliberate_gap_ms"], 1000, "{m}");
        let span = c["span_ms"].as_f64().expect("span");
        let max = c["max_member_freeze_ms"].as_f64().expect("max freeze");
        assert!(span >= 1000.0 + max && max < 1000.0, "{m}");
    }
    let split = all
        .iter()
        .filter(|m| m["unsafe_disk_order"] == serde_json::json!(["vdc", "vdb"]));
    for m in split {
        let c = &m["negative_control"];
        assert_eq!(c["kind"], "unsafe-disk-order", "{m}");
        assert!(
            m["freeze_window_ms"].is_null() && c["max_member_freeze_ms"].is_null(),
            "{m}"
        );
        assert!(c["span_ms"].as_f64().expect("span") >= 1000.0, "{m}");
    }

    // The DR report of these real runs: every snapshot listed, negative controls marked and
    // counted as caught, never a restore point; the group complies with a policy its
    // measured recovery and loss meet.
    lab.cgsnap()
        .args([
            "group",
            "policy",
            pair::NAME,
            "--max-age",
            "1h",
            "--rpo",
            "30s",
            "--rto",
            "10m",
        ])
        .assert()
        .success();
    let rep: serde_json::Value = serde_json::from_slice(
        &lab.cgsnap()
            .args(["report", "--json", "--group", pair::NAME])
            .assert()
            .success()
            .get_output()
            .stdout,
    )
    .expect("report json");
    assert_eq!(rep["schema"], "cgsnap.report/1");
    let grp = &rep["groups"][0];
    println!("report: {} - {}", grp["status"], grp["reason"]);
    let rows = grp["snapshots"].as_array().expect("rows");
    assert_eq!(rows.len(), n + k + d);
    assert_eq!(
        rows.iter().filter(|r| r["verdict"] == "pass").count(),
        n + k + d - caught
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r["unsafe_disk_order"] == serde_json::json!(["vdc", "vdb"]))
            .count(),
        d
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r["unsafe_stagger_ms"] == 1000)
            .count(),
        k
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r["negative_control"]
                .as_str()
                .is_some_and(|l| l.starts_with("NOT CONSISTENT (negative control)")))
            .count(),
        k + d
    );
    assert_eq!(grp["counts"]["negative_controls"], k + d);
    assert_eq!(grp["counts"]["negative_controls_caught"], caught);
    assert_eq!(grp["counts"]["verifications_passed"], n);
    assert_eq!(grp["status"], "compliant", "{}", grp["reasons"]);
    let point = grp["newest_restore_point"]["snapshot_id"]
        .as_str()
        .expect("restore point");
    let consistent: Vec<&str> = rows
        .iter()
        .filter(|r| r["negative_control"].is_null())
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(
        Some(&point),
        consistent.last(),
        "the newest consistent pass"
    );
    assert_eq!(
        grp["trends"]["freeze_window_ms"].as_array().map(Vec::len),
        Some(n),
        "negative controls are not freeze windows"
    );

    // Monitoring: the newest *real* verification passed, although the newest verification
    // overall is a negative control that failed; every snapshot released.
    let g = pair::NAME;
    assert_eq!(
        lab.metric(&format!("cgsnap_verify_last_pass{{group=\"{g}\"}}")),
        Some(1.0)
    );
    assert_eq!(
        lab.metric(&format!(
            "cgsnap_snapshots{{group=\"{g}\",state=\"released\"}}"
        )),
        Some((n + k + d) as f64)
    );
    assert_eq!(
        lab.metric(&format!(
            "cgsnap_group_compliance{{group=\"{g}\",status=\"compliant\"}}"
        )),
        Some(1.0)
    );
    assert_eq!(
        lab.metric(&format!(
            "cgsnap_negative_controls{{group=\"{g}\",outcome=\"caught\"}}"
        )),
        Some(caught as f64)
    );
    for dom in ["cgsnap-orders", "cgsnap-payments"] {
        let loss = lab
            .metric(&format!(
                "cgsnap_verify_last_data_loss_seconds{{group=\"{g}\",domain=\"{dom}\"}}"
            ))
            .expect("data loss metric");
        assert!((0.0..5.0).contains(&loss), "{dom}: {loss}");
    }

    // The HTML reports render in headless Chromium: a pass and a fail.
    for (html, verdict) in [
        (first_html.expect("a pass report"), "PASS"),
        (last_fail.expect("a fail report"), "FAIL"),
    ] {
        let shot = html.with_extension("png");
        let dom = chromium(&html, &shot);
        assert!(
            dom.contains(&format!("Verdict: {verdict}")),
            "{verdict} not rendered"
        );
        assert!(
            dom.contains("cgsnap-orders") && dom.contains("amcheck"),
            "members and checks rendered"
        );
        // The failed one is a staggered control: its banner says so before anything else.
        assert_eq!(
            dom.contains(
                "NOT CONSISTENT (negative control): a FAIL here means verification caught"
            ),
            verdict == "FAIL",
            "{verdict}: negative-control banner"
        );
        let png = std::fs::read(&shot).expect("screenshot");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "screenshot is a real image"
        );
        println!(
            "rendered {} ({} bytes screenshot)",
            html.display(),
            png.len()
        );
    }

    // Retention on this real catalog: keep the newest snapshot (a negative control) and the
    // newest that passed verification (DR evidence); the others go with their reports.
    lab.cgsnap()
        .args(["prune", "--keep", "1", "--min-age", "1ms"])
        .assert()
        .success();
    let left = list_json(&lab);
    let left = left.as_array().expect("list");
    assert_eq!(left.len(), 2, "{left:?}");
    let reports = std::fs::read_dir(lab.catalog.path().join("reports"))
        .expect("reports")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .count();
    assert_eq!(reports, 2, "one report per remaining snapshot");
    assert_eq!(
        lab.metric(&format!("cgsnap_verify_last_pass{{group=\"{g}\"}}")),
        Some(1.0),
        "the evidence survived"
    );
}

/// Render a local HTML file in headless Chromium: returns the DOM, writes a screenshot.
fn chromium(html: &Path, shot: &Path) -> String {
    let profile = tempfile::tempdir().expect("chromium profile");
    let common = |c: &mut Command| {
        c.args(common::CHROMIUM_FLAGS)
            .arg("--window-size=1200,1600")
            .arg(format!("--user-data-dir={}", profile.path().display()));
    };
    let url = format!("file://{}", html.display());
    let mut c = Command::new("chromium");
    common(&mut c);
    let st = c
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .expect("chromium");
    assert!(
        st.status.success(),
        "chromium screenshot: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let mut c = Command::new("chromium");
    common(&mut c);
    let out = c.arg("--dump-dom").arg(&url).output().expect("chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
