//! Unit tests of preflight planning and its checks.

use super::*;
use crate::hypervisor::Host;
use crate::hypervisor::fake::FakeHost;
use std::sync::Arc;

fn xml(dir: &Path, fmt: &str, kind: &str) -> String {
    format!(
        "<domain><devices><disk type='{kind}' device='disk'><driver type='{fmt}'/><source file='{}/a.qcow2'/><target dev='vda'/></disk>\
         <disk type='file' device='cdrom'><source file='/x.iso'/><target dev='hdc'/><readonly/></disk></devices></domain>",
        dir.display()
    )
}

/// One qcow2 disk on `top`, backed by `below`.
fn chained(top: &str, below: &str) -> String {
    crate::hypervisor::fake::one_disk(
        top,
        &format!(
            "<backingStore type='file'><format type='qcow2'/><source file='{below}'/></backingStore>"
        ),
    )
}

fn member(h: &Arc<FakeHost>, name: &str) -> Member {
    Member {
        host: h.clone() as Arc<dyn Host>,
        domain: name.into(),
        state: DomState::Running,
    }
}

fn opts() -> Options<'static> {
    Options {
        id: "g-1",
        overlay_dir: None,
        min_free: 0,
    }
}

#[test]
fn images_of_one_file_name_never_share_an_overlay() {
    let t = tempfile::tempdir().expect("tmp");
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    std::fs::create_dir(&a).expect("mkdir");
    std::fs::create_dir(&b).expect("mkdir");
    let h = Arc::new(FakeHost::new("qemu:///system"));
    h.add("x", &xml(&a, "qcow2", "file"));
    h.add("y", &xml(&b, "qcow2", "file"));
    let both = [member(&h, "x"), member(&h, "y")];
    // Next to their images, and in one overlay directory for both (a.qcow2 twice).
    let dir = t.path().join("ovl");
    std::fs::create_dir(&dir).expect("mkdir");
    let o = Options {
        overlay_dir: Some(&dir),
        ..opts()
    };
    for opts in [&opts(), &o] {
        let plans = plan_group(&both, opts).expect("distinct overlays");
        assert_ne!(plans[0].disks[0].overlay, plans[1].disks[0].overlay);
    }
    // One domain name on two daemons of this host, one overlay directory: refused.
    let session = Arc::new(FakeHost::new("qemu:///session"));
    session.add("x", &xml(&b, "qcow2", "file"));
    let e = plan_group(&[member(&h, "x"), member(&session, "x")], &o)
        .err()
        .expect("clash");
    assert!(matches!(e, PreflightError::OverlayClash { .. }), "{e}");
    assert!(
        e.to_string().contains(
            "disks x/vda (qemu:///system) and x/vda (qemu:///session) would share the overlay"
        ),
        "{e}"
    );
    assert_eq!(e.exit_code(), ExitCode::Precondition);
    // The same path on another host names another file.
    let far = Arc::new(FakeHost::new("qemu+tcp://far/system"));
    far.add("x", &xml(&b, "qcow2", "file"));
    plan_group(&[member(&h, "x"), member(&far, "x")], &o).expect("different hosts");
}

#[test]
fn plans_overlay_next_to_image_and_skips_readonly() {
    let t = tempfile::tempdir().expect("tmp");
    let h = Arc::new(FakeHost::new("fake:///"));
    h.add("a", &xml(t.path(), "qcow2", "file"));
    let p = plan_member(&member(&h, "a"), &opts()).expect("plan");
    assert_eq!(p.disks.len(), 1);
    assert_eq!(
        p.disks[0].overlay,
        t.path()
            .join("a.qcow2.g-1.cgsnap-overlay")
            .to_string_lossy()
    );
    assert!(p.snapshot_xml.contains("name='hdc' snapshot='no'"));
}

#[test]
fn refuses_a_disk_already_on_a_snapshot_overlay() {
    let t = tempfile::tempdir().expect("tmp");
    let h = Arc::new(FakeHost::new("fake:///"));
    let d = t.path().display();
    let held = format!("{d}/a.qcow2.other-20261126T000000000Z.cgsnap-overlay");
    h.add("a", &chained(&held, &format!("{d}/a.qcow2")));
    let e = plan_member(&member(&h, "a"), &opts())
        .err()
        .expect("on an overlay");
    let msg = e.to_string();
    assert!(matches!(e, PreflightError::OnOverlay { .. }), "{msg}");
    assert!(
        msg.contains(&held) && msg.contains("virsh blockcommit a vda"),
        "{msg}"
    );
    assert_eq!(e.exit_code(), ExitCode::Precondition);
    // Deeper in the chain counts too (an overlay someone snapshotted by hand on top).
    h.add("b", &chained(&format!("{d}/b.manual"), &held));
    let e = plan_member(&member(&h, "b"), &opts())
        .err()
        .expect("overlay below");
    assert!(matches!(e, PreflightError::OnOverlay { .. }), "{e}");
}

#[test]
fn rejects_raw_network_stopped_and_full() {
    let t = tempfile::tempdir().expect("tmp");
    let h = Arc::new(FakeHost::new("fake:///"));
    h.add("raw", &xml(t.path(), "raw", "file"));
    h.add("net", &xml(t.path(), "raw", "network"));
    h.add("off", &xml(t.path(), "qcow2", "file"));
    h.add("ok", &xml(t.path(), "qcow2", "file"));
    h.suspend("off").expect("pause");
    let e = plan_member(&member(&h, "raw"), &opts()).err().expect("raw");
    assert!(
        e.to_string().contains("disk vda of raw") && e.to_string().contains("qemu-img convert")
    );
    assert_eq!(e.exit_code(), ExitCode::Precondition);
    assert!(e.to_string().contains("snapshot='no'"), "{e}");
    let e = plan_member(&member(&h, "net"), &opts()).err().expect("net");
    assert!(e.to_string().contains("network disks"));
    // A raw disk the domain itself excludes: planned without it.
    let d = t.path().display();
    h.add(
        "swap",
        &format!(
            "<domain><devices>\
             <disk type='file' device='disk' snapshot='no'><driver type='raw'/><source file='{d}/swap.raw'/><target dev='vda'/></disk>\
             <disk type='file' device='disk'><driver type='qcow2'/><source file='{d}/b.qcow2'/><target dev='vdb'/></disk>\
             </devices></domain>"
        ),
    );
    let p = plan_member(&member(&h, "swap"), &opts()).expect("swap disk left out");
    assert_eq!(p.disks.len(), 1);
    assert_eq!(p.disks[0].target, "vdb");
    assert!(
        p.snapshot_xml.contains("name='vda' snapshot='no'"),
        "{}",
        p.snapshot_xml
    );
    let e = plan_member(&member(&h, "off"), &opts()).err().expect("off");
    assert!(e.to_string().contains("member off (fake:///) is paused"));
    let o = Options {
        min_free: u64::MAX,
        ..opts()
    };
    let e = plan_member(&member(&h, "ok"), &o).err().expect("space");
    assert!(matches!(e, PreflightError::NoSpace { .. }));
}

#[test]
fn another_host_s_directories_are_checked_through_its_pools_never_here() {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path().display();
    let h = Arc::new(FakeHost::new("fake://far/"));
    h.add(
        "db",
        &crate::hypervisor::fake::one_disk(&format!("{d}/a.qcow2"), ""),
    );
    // Here the directory is full and an overlay of that name exists: neither is the far
    // host's business.
    let mut p = plan_member(&member(&h, "db"), &opts()).expect("planned");
    std::fs::write(&p.disks.remove(0).overlay, b"someone else's").expect("file here");
    let o = Options {
        min_free: u64::MAX,
        ..opts()
    };
    plan_member(&member(&h, "db"), &o).expect("not checked here, no pool there");
    h.pools
        .lock()
        .expect("pools")
        .insert(t.path().to_string_lossy().into(), 1 << 20);
    let e = plan_member(&member(&h, "db"), &o)
        .err()
        .expect("pool too small");
    assert!(matches!(e, PreflightError::NoSpace { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("{d} on fake://far/ has 1048576 bytes free")),
        "{e}"
    );
    plan_member(&member(&h, "db"), &opts()).expect("room in the pool");
}
