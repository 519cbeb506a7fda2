//! The `postgres-pair` testbed end to end: one command brings up both PostgreSQL VMs with the
//! group defined and the workload running; the workload sustains writes for minutes with its
//! invariants holding on the live system (also across a group snapshot and release); tear-down
//! leaves no domain, image, overlay or process behind.

use crate::common;

use cgsnap_testbeds::workload::{self, Role};
use cgsnap_testbeds::{pair, postgres};
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

const PORTS: (u16, u16) = (25511, 25512);
const DIR: &str = "/var/lib/libvirt/images/cgsnap-tests/testbed";

/// Invariants on the live system. Payments are read before orders: every payment read was
/// committed after its order, so a consistent read never sees a missing order.
fn live_check(acks: &Path) -> (usize, i64) {
    // Acknowledgements are read first: each one was committed before the reads below.
    let a = workload::read_acks(acks).expect("acks");
    let mut p = workload::connect(&postgres::conninfo(PORTS.1)).expect("payments");
    let mut o = workload::connect(&postgres::conninfo(PORTS.0)).expect("orders");
    let fp = workload::facts(&mut p, Role::Payments).expect("payments facts");
    let fo = workload::facts(&mut o, Role::Orders).expect("orders facts");
    assert_eq!(
        workload::check(&fp),
        Vec::<String>::new(),
        "payments invariants"
    );
    assert_eq!(
        workload::check(&fo),
        Vec::<String>::new(),
        "orders invariants"
    );
    assert_eq!(workload::check_cross(&fo, &fp), Vec::<String>::new());
    let max_acked = a
        .iter()
        .filter(|x| x.kind == "order")
        .map(|x| x.id)
        .max()
        .unwrap_or(0);
    assert!(
        max_acked <= fo.max_row,
        "acked order {max_acked} missing (max {})",
        fo.max_row
    );
    (a.len(), fo.max_row)
}

#[test]
fn pair_testbed_sustains_workload_and_tears_down_cleanly() {
    let lab = lab("cgt-tb", 0, 0);
    let _down = TestbedDown::new(&lab, &[DIR]);
    let ports = format!("{},{}", PORTS.0, PORTS.1);
    // The VMs' root disks are overlays on one shared base; no release may ever write into it.
    let shared_root = cgsnap_testbeds::assets::cache_dir().join("pg-root.qcow2");
    let root_stamp = || {
        std::fs::metadata(&shared_root)
            .and_then(|m| m.modified())
            .ok()
    };
    let up = lab
        .cgsnap()
        .args(["testbed", "up", "--ports", &ports, "--dir", DIR])
        .timeout(Duration::from_secs(900))
        .assert()
        .success();
    let out = String::from_utf8_lossy(&up.get_output().stdout).to_string();
    print!("{out}");
    assert!(
        out.contains("s after boot") && out.contains("commits/s"),
        "{out}"
    );

    let before = root_stamp();
    assert!(before.is_some(), "up built the shared root image");
    let sdir = lab.catalog.path().join("testbeds").join(pair::NAME);
    let state = pair::load(&sdir).expect("state");
    let pid = state.workload_pid.expect("workload pid");
    for port in [PORTS.0, PORTS.1] {
        let mut c = workload::connect(&postgres::conninfo(port)).expect("connect");
        let dd: String = c
            .query_one("SHOW data_directory", &[])
            .expect("show")
            .get(0);
        assert_eq!(dd, "/pgdata/db");
    }
    let members = lab
        .cgsnap()
        .args(["group", "show", pair::NAME])
        .assert()
        .success();
    assert_eq!(
        String::from_utf8_lossy(&members.get_output().stdout)
            .lines()
            .count(),
        2
    );

    let secs: u64 = std::env::var("CGSNAP_TEST_WORKLOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let acks = pair::ack_log(&sdir);
    let start = Instant::now();
    let mut last = live_check(&acks);
    let mut snapshotted = false;
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(10));
        if !snapshotted && start.elapsed() > Duration::from_secs(secs / 2) {
            // A group snapshot and release under load: the workload must not notice.
            lab.cgsnap()
                .args(["hook", "pre", "--group", pair::NAME])
                .assert()
                .success();
            lab.cgsnap()
                .args(["hook", "post", "--group", pair::NAME])
                .assert()
                .success();
            snapshotted = true;
        }
        let now = live_check(&acks);
        assert!(
            now.0 > last.0 && now.1 > last.1,
            "workload stalled: {last:?} -> {now:?}"
        );
        last = now;
    }
    assert!(snapshotted);
    assert_eq!(
        root_stamp(),
        before,
        "shared base image untouched by snapshot and release"
    );
    println!("workload: {} acknowledged commits in {secs} s", last.0);

    // `testbed status`: each VM with its loopback port and boot-to-ready time, and throughput.
    let status = lab.cgsnap().args(["testbed", "status"]).assert().success();
    let status = String::from_utf8_lossy(&status.get_output().stdout).to_string();
    print!("{status}");
    for (vm, port) in state.vms.iter().zip([PORTS.0, PORTS.1]) {
        assert!(
            status.lines().any(|l| l.starts_with(&vm.name)
                && l.contains(&format!("127.0.0.1:{port}"))
                && l.contains("boot-to-ready")),
            "{status}"
        );
    }
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("workload: ") && l.contains(&format!("(pid {pid})"))),
        "{status}"
    );

    lab.cgsnap().args(["testbed", "down"]).assert().success();
    for vm in &state.vms {
        assert_eq!(domstate(&vm.name), "", "{} removed", vm.name);
        assert!(!vm.dir.exists(), "{} removed", vm.dir.display());
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "workload {pid} stopped"
    );
    assert!(!sdir.exists(), "state removed");
}
