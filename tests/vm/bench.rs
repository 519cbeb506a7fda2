//! Smoke test of the shipped benchmark on real guests: a one-round, one-VM run writes results
//! with both ours and the baseline measured, and a chart. (The claims come from the full
//! command documented in the README, not from this test.)

use crate::common;

use std::time::Duration;

#[test]
fn bench_smoke_writes_results_and_chart() {
    let lab = common::lab("cgt-bench-lock", 0, 0);
    let out = tempfile::tempdir().expect("out dir");
    lab.cgsnap()
        .args(["bench", "--rounds", "2", "--only-vms", "1", "--out"])
        .arg(out.path())
        .timeout(Duration::from_secs(600))
        .assert()
        .success();
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.path().join("results.json")).expect("results.json"),
    )
    .expect("json");
    let row = &r["rows"][0];
    assert_eq!(row["config"]["vms"], 1);
    let ours = row["ours_window_ms"]["median"].as_f64().expect("ours");
    let base = row["baseline_window_ms"]["median"]
        .as_f64()
        .expect("baseline");
    assert!(ours > 0.0 && base > 0.0);
    assert!((row["ratio"].as_f64().expect("ratio") - ours / base).abs() < 1e-9);
    // The CPU work inside our windows was sampled: libvirt and QEMU did some, the host was busy.
    let cpu = &row["ours_window_cpu"];
    assert!(
        cpu["hypervisor_ms"]["max"]
            .as_f64()
            .expect("hypervisor cpu")
            > 0.0,
        "{cpu}"
    );
    let busy = cpu["busy_pct"]["median"].as_f64().expect("busy");
    assert!(busy > 0.0 && busy <= 100.0, "{cpu}");
    let svg = std::fs::read_to_string(out.path().join("freeze-window.svg")).expect("svg");
    assert!(svg.contains("<polyline"));
    // The benchmark tears its guests down: no domain, no image directory left.
    assert!(!std::path::Path::new("/var/lib/libvirt/images/cgsnap-bench/cgsnap-bench-1").exists());
    assert_eq!(common::domstate("cgsnap-bench-1"), "", "domain removed");
}
