//! Unit tests of the snapshot command (plan, rollback, pre-creation).

use super::precreate::precreate;
use super::rollback::{not_known_running, rollback};
use super::*;
use crate::catalog::{self, Manifest, MemberRecord};
use crate::events::Events;
use crate::group;
use crate::hypervisor::fake::FakeHost;
use crate::hypervisor::is_local;
use chrono::Utc;
use preflight::PlannedMember;

#[test]
fn a_member_in_another_groups_unreleased_snapshot_is_refused() {
    let t = tempfile::tempdir().expect("tmp");
    let cat = Catalog::open(&t.path().join("cat")).expect("catalog");
    let hosts = crate::group::db_in_groups(t.path(), &["a", "b"]);
    let popts = preflight::Options {
        id: "b-1",
        overlay_dir: None,
        min_free: 0,
    };
    plan(&hosts, &cat, "b", &popts).expect("nothing held yet");

    let mut m = Manifest::new("a-1", "a", SnapState::Pending, Utc::now());
    m.members.push(MemberRecord::new(
        "db",
        "qemu:///system",
        String::new(),
        vec![],
    ));
    cat.write(&m).expect("write");
    for state in [SnapState::Pending, SnapState::Taken, SnapState::Failed] {
        cat.write(&Manifest { state, ..m.clone() }).expect("write");
        let e = plan(&hosts, &cat, "b", &popts).err().expect("held");
        let msg = e.to_string();
        assert!(matches!(e, SnapshotError::MemberHeld { .. }), "{msg}");
        assert!(
            msg.contains("member db (qemu:///system) is in snapshot a-1 of group a")
                && msg.contains("cgsnap release a-1"),
            "{msg}"
        );
        assert_eq!(e.exit_code(), ExitCode::Outstanding);
    }
    // The same domain name on another host is another VM.
    let other = Arc::new(FakeHost::new("qemu+ssh://far/system"));
    other.add("db", &hosts[0].xml("db").expect("xml"));
    let far: Vec<Arc<dyn Host>> = vec![other.clone()];
    group::add(&far, "b", &["db".to_string()]).expect("group add");
    plan(&far, &cat, "b", &popts).expect("another host's db");

    let m = Manifest {
        state: SnapState::Released,
        ..m
    };
    cat.write(&m).expect("write");
    plan(&hosts, &cat, "b", &popts).expect("released: free again");
}

#[test]
fn rollback_of_a_vanished_member_deletes_pre_created_overlays_only_on_this_host() {
    let t = tempfile::tempdir().expect("tmp");
    let overlay = t.path().join("vda.qcow2.g-1.cgsnap-overlay");
    let planned = |uri: &str| PlannedMember {
        member: group::Member {
            host: Arc::new(FakeHost::new(uri)) as Arc<dyn Host>,
            domain: "gone".into(),
            state: crate::hypervisor::DomState::Running,
        },
        domain_xml: String::new(),
        disks: vec![catalog::DiskRecord {
            target: "vda".into(),
            image: t.path().join("vda.qcow2").to_string_lossy().into(),
            overlay: overlay.to_string_lossy().into(),
            format: "qcow2".into(),
            virtual_size: 1 << 20,
        }],
        snapshot_xml: String::new(),
    };
    let opts = release::Options::default();
    std::fs::write(&overlay, b"someone else's").expect("file here");
    rollback(
        &[planned("qemu+ssh://far/system")],
        &opts,
        &[false],
        Events::NONE,
    )
    .expect("rolled back");
    assert!(
        overlay.exists(),
        "a path of another host names nothing of ours here"
    );
    rollback(&[planned("qemu:///system")], &opts, &[false], Events::NONE).expect("rolled back");
    assert!(
        !overlay.exists(),
        "our own pre-created, unused overlay goes"
    );
}

#[test]
fn members_left_paused_or_unreadable_are_named() {
    let h = Arc::new(FakeHost::new("qemu:///system"));
    for d in ["run", "held", "odd"] {
        h.add(d, "<domain/>");
    }
    h.suspend("held").expect("pause");
    h.fail_on("state", "odd");
    let planned = |d: &str| PlannedMember {
        member: group::Member {
            host: h.clone() as Arc<dyn Host>,
            domain: d.into(),
            state: crate::hypervisor::DomState::Running,
        },
        domain_xml: String::new(),
        disks: vec![],
        snapshot_xml: String::new(),
    };
    let plan: Vec<PlannedMember> = ["run", "held", "odd", "gone"]
        .iter()
        .map(|d| planned(d))
        .collect();
    assert_eq!(
        not_known_running(&plan),
        [
            "held on qemu:///system",
            "odd on qemu:///system (state unknown)"
        ]
    );
}

#[test]
fn an_overlay_path_already_taken_is_never_overwritten() {
    let t = tempfile::tempdir().expect("tempdir");
    let image = t.path().join("vda.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg("1M")
        .status()
        .expect("qemu-img");
    assert!(st.success());
    let d = catalog::DiskRecord {
        target: "vda".into(),
        image: image.to_string_lossy().into(),
        overlay: t.path().join("vda.ovl").to_string_lossy().into(),
        format: "qcow2".into(),
        virtual_size: 1 << 20,
    };
    std::fs::write(&d.overlay, b"someone else's").expect("write");
    let e = precreate(&d).expect_err("taken");
    assert!(e.to_string().contains("already exists"), "{e}");
    assert_eq!(std::fs::read(&d.overlay).expect("kept"), b"someone else's");

    std::fs::remove_file(&d.overlay).expect("rm");
    precreate(&d).expect("created");
    assert!(std::fs::metadata(&d.overlay).expect("overlay").len() > 0);
    // A failed header write leaves nothing behind.
    let bad = catalog::DiskRecord {
        overlay: t.path().join("bad.ovl").to_string_lossy().into(),
        format: "no-such-format".into(),
        ..d.clone()
    };
    precreate(&bad).expect_err("qemu-img refuses");
    assert!(!std::path::Path::new(&bad.overlay).exists());
}

#[test]
fn local_uris() {
    assert!(is_local("qemu:///system"));
    assert!(is_local("qemu:///session"));
    assert!(!is_local("qemu+ssh://host/system"));
    assert!(!is_local("garbage"));
}

/// Options of a snapshot of group `g` over fakes, with no watchdog binary to start.
fn fake_options(dir: &std::path::Path) -> Options {
    Options {
        group: "g".into(),
        freeze_budget: std::time::Duration::from_secs(2),
        overlay_dir: None,
        min_free: 0,
        precreate: false,
        exe: dir.join("no-such-cgsnap"),
        release: release::Options::default(),
        connect_each: None,
        unsafe_stagger: None,
        unsafe_disk_order: None,
        resume: protocol::Resume::default(),
        hook_token: None,
    }
}

#[test]
fn a_disk_order_control_is_marked_and_has_no_freeze_window() {
    let t = tempfile::tempdir().expect("tmp");
    let cat = Catalog::open(&t.path().join("cat")).expect("catalog");
    let hosts = group::db_in_groups(t.path(), &["g"]);
    let gap = std::time::Duration::from_millis(20);
    let opts = Options {
        unsafe_disk_order: Some((vec!["vda".into()], gap)),
        ..fake_options(t.path())
    };
    let m = take(&hosts, &cat, &opts, Utc::now(), Events::NONE).expect("taken");
    assert_eq!(m.state, SnapState::Taken);
    assert_eq!(m.freeze_window_ms, None);
    assert_eq!(m.members[0].freeze_ms, None, "never paused");
    let c = m.negative_control.clone().expect("marked");
    assert_eq!(c.kind, catalog::ControlKind::UnsafeDiskOrder);
    assert_eq!(
        c.deliberate_gap_ms, 0,
        "one disk, one cut: no gap waited for"
    );
    // As written (JSON floats may differ in their last digit, so not compared whole).
    let stored = cat.load(&m.id).expect("load");
    assert_eq!(stored.freeze_window_ms, None);
    assert_eq!(
        stored
            .negative_control
            .map(|c| (c.kind, c.deliberate_gap_ms)),
        Some((c.kind, 0))
    );
    let line = m.negative_control_line().expect("line");
    assert!(
        line.starts_with("NOT CONSISTENT (negative control): disks cut one by one in order vda"),
        "{line}"
    );
}

#[test]
fn a_staggered_control_is_marked_from_its_first_write() {
    let t = tempfile::tempdir().expect("tmp");
    let cat = Catalog::open(&t.path().join("cat")).expect("catalog");
    let hosts = group::db_in_groups(t.path(), &["g"]);
    // No watchdog can start: the run is abandoned right after its pending manifest.
    let opts = Options {
        unsafe_stagger: Some(std::time::Duration::from_millis(1000)),
        ..fake_options(t.path())
    };
    take(&hosts, &cat, &opts, Utc::now(), Events::NONE).expect_err("no watchdog");
    let all = cat.list().expect("list");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, SnapState::Aborted);
    assert_eq!(all[0].unsafe_stagger_ms, Some(1000));
    assert!(all[0].is_negative_control());
}
