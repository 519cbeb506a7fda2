//! Unit tests of the release of deleted members (fake hypervisor, real qcow2 images).

use crate::catalog::DiskRecord;
use crate::catalog::ledger::InMemory;
use crate::hypervisor::fake::FakeHost;
use crate::model::exit::{Classify, ExitCode};
use crate::release::{self, ReleaseError};
use std::process::Command;

fn disk(dir: &std::path::Path, image: &str, overlay: &str) -> DiskRecord {
    DiskRecord {
        target: "vda".into(),
        image: dir.join(image).to_string_lossy().into(),
        overlay: dir.join(overlay).to_string_lossy().into(),
        format: "qcow2".into(),
        virtual_size: 1 << 20,
    }
}

fn qcow2(path: &str, backing: Option<&str>) {
    let mut c = Command::new("qemu-img");
    c.args(["create", "-q", "-f", "qcow2"]);
    if let Some(b) = backing {
        c.args(["-F", "qcow2", "-b", b]);
    }
    let st = c.arg(path).arg("1M").status().expect("qemu-img");
    assert!(st.success());
}

fn release_gone(uri: &str, d: &DiskRecord) -> Result<(), ReleaseError> {
    let host = FakeHost::new(uri);
    release::release_one(&host, "gone", d)
}

#[test]
fn a_stale_overlay_of_a_disk_already_switched_back_is_deleted_not_merged() {
    // The release switched vda back, the guest wrote to the image, then the member
    // vanished before the overlay was deleted: merging it would overwrite that write.
    let dir = tempfile::tempdir().expect("tmp");
    let d = disk(dir.path(), "a.qcow2", "a.ovl");
    qcow2(&d.image, None);
    qcow2(&d.overlay, Some(&d.image));
    let io = |path: &str, cmd: &str| {
        let out = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", cmd, path])
            .output()
            .expect("qemu-io");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    io(&d.overlay, "write -P 0x11 0 64k");
    io(&d.image, "write -P 0x22 0 64k");
    let ledger = InMemory::default();
    let host = FakeHost::new("qemu:///system");
    let gone = crate::catalog::MemberId::new("qemu:///system", "gone");
    crate::catalog::ledger::Ledger::mark(
        &ledger,
        &gone,
        &["vda"],
        crate::catalog::ledger::Mark::Pivoted,
    )
    .expect("mark");
    release::release_member(
        &host,
        "gone",
        std::slice::from_ref(&d),
        &Default::default(),
        &ledger,
        crate::events::Events::NONE,
    )
    .expect("released");
    assert!(!std::path::Path::new(&d.overlay).exists());
    let read = io(&d.image, "read -P 0x22 0 64k");
    assert!(!read.contains("Pattern verification failed"), "{read}");

    // Without the mark the same overlay is merged (its data is the newest).
    qcow2(&d.overlay, Some(&d.image));
    io(&d.overlay, "write -P 0x11 0 64k");
    release_gone("qemu:///system", &d).expect("merged");
    let read = io(&d.image, "read -P 0x11 0 64k");
    assert!(!read.contains("Pattern verification failed"), "{read}");
}

#[test]
fn deleted_member_without_overlays_is_released() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = disk(dir.path(), "a.qcow2", "a.ovl");
    release_gone("qemu:///system", &d).expect("nothing left to merge");
}

#[test]
fn a_deleted_member_on_another_host_is_merged_only_where_a_pool_removes_its_overlays() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = disk(dir.path(), "a.qcow2", "a.ovl");
    let host = FakeHost::new("qemu+tcp://far/system");
    let e = release::release_one(&host, "gone", &d).expect_err("no pool");
    assert!(matches!(e, ReleaseError::VanishedMerge { .. }), "{e}");
    assert!(e.to_string().contains("pool-create-as"), "{e}");
    assert_eq!(e.exit_code(), ExitCode::ReleaseIncomplete);
    assert!(
        !host.calls().iter().any(|c| c.starts_with("start_helper")),
        "{:?}",
        host.calls()
    );
    // With a pool that no longer holds it: merged and removed earlier, nothing to do.
    let pool = dir.path().to_string_lossy().to_string();
    host.pools.lock().expect("lock").insert(pool, 1 << 30);
    release::release_one(&host, "gone", &d).expect("done");
    assert!(!host.calls().iter().any(|c| c.starts_with("start_helper")));
}

#[test]
fn overlay_on_another_backing_file_or_without_image_is_kept() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = disk(dir.path(), "a.qcow2", "a.ovl");
    let other = dir.path().join("other.qcow2").to_string_lossy().to_string();
    qcow2(&d.image, None);
    qcow2(&other, None);
    qcow2(&d.overlay, Some(&other));
    let e = release_gone("qemu:///system", &d).expect_err("wrong backing");
    assert!(e.to_string().contains("not the snapshot's image"), "{e}");
    assert_eq!(e.exit_code(), ExitCode::ReleaseIncomplete);
    assert!(std::path::Path::new(&d.overlay).exists(), "kept");

    std::fs::remove_file(&d.image).expect("rm image");
    let e = release_gone("qemu:///system", &d).expect_err("no image");
    assert!(e.to_string().contains("is gone"), "{e}");
    assert!(std::path::Path::new(&d.overlay).exists(), "kept");
}

#[test]
fn overlay_named_by_another_domain_is_kept() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = disk(dir.path(), "a.qcow2", "a.ovl");
    qcow2(&d.image, None);
    qcow2(&d.overlay, Some(&d.image));
    let host = FakeHost::new("qemu:///system");
    host.add(
        "renamed",
        &format!(
            "<domain><name>renamed</name><devices><disk type='file' device='disk'><driver type='qcow2'/><source file='{}'/><target dev='vda'/></disk></devices></domain>",
            d.overlay
        ),
    );
    let e = release::release_one(&host, "gone", &d).expect_err("in use by a renamed domain");
    assert!(matches!(e, ReleaseError::VanishedButUsed { .. }), "{e}");
    assert!(
        e.to_string().contains("virsh domrename renamed gone"),
        "{e}"
    );
    assert_eq!(e.exit_code(), ExitCode::ReleaseIncomplete);
    assert!(std::path::Path::new(&d.overlay).exists(), "kept");
}

#[test]
fn overlay_of_a_deleted_member_is_merged_and_removed() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = disk(dir.path(), "a.qcow2", "a.ovl");
    qcow2(&d.image, None);
    qcow2(&d.overlay, Some(&d.image));
    // A write the guest made after the snapshot, in the overlay only.
    let st = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0xab 0 64k", &d.overlay])
        .output()
        .expect("qemu-io");
    assert!(st.status.success());
    release_gone("qemu:///system", &d).expect("merged");
    assert!(!std::path::Path::new(&d.overlay).exists());
    let st = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "read -P 0xab 0 64k", &d.image])
        .output()
        .expect("qemu-io");
    let out = String::from_utf8_lossy(&st.stdout);
    assert!(
        st.status.success() && !out.contains("Pattern verification failed"),
        "{out}"
    );
}
