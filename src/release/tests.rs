//! Unit tests of the release of live members (fake hypervisor).

use super::error::*;
use super::member::*;
use super::options::*;
use super::overlay::*;
use super::pivot::*;
use crate::catalog::ledger::{Ledger, Mark};
use crate::catalog::{DiskRecord, MemberId};
use crate::events::Events;
use crate::hypervisor::fake::FakeHost;
use crate::hypervisor::{DomState, Host};
use crate::model::exit::{Classify, ExitCode};
use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn a_steady_copy_is_never_cut_off_a_stalled_one_is() {
    let t0 = Instant::now();
    let s = |n: u64| t0 + Duration::from_secs(n);
    let timeout = Duration::from_secs(10);
    // 40 GiB copied at 100 MiB/s: far longer than the timeout, gaining all the time.
    let mut p = Progress::new(t0);
    let end = 40u64 << 30;
    for sec in 0..400 {
        p.observe(sec * (100 << 20), end, s(sec));
        assert!(!p.stalled(s(sec), timeout), "copying at {sec} s");
    }
    // Then the guest's writes keep it about 64 KiB short of ready: no new low.
    let base = 400;
    for k in 0..10 {
        let wobble = if k % 2 == 0 { 64 << 10 } else { 300 << 10 };
        p.observe(end - wobble, end + (k << 10), s(base + k));
    }
    assert!(!p.stalled(s(base + 9), timeout));
    assert!(p.stalled(s(base + 10), timeout), "10 s without a gain");

    // A small overlay (below the least gain) that never gets ready: the clock runs from
    // the start.
    let mut p = Progress::new(t0);
    for sec in 0..=10 {
        p.observe(sec * 100, 64 << 10, s(sec));
    }
    assert!(p.stalled(s(10), timeout));
}

#[test]
fn a_commit_that_ends_without_a_pivot_is_reported_and_the_overlay_kept() {
    let host = FakeHost::new("qemu:///system");
    host.add(
        "db",
        &disk_xml(
            "/i/vda.ovl",
            "<backingStore type='file'><format type='qcow2'/><source file='/i/vda.qcow2'/></backingStore>",
        ),
    );
    // The job is gone at once, as one that failed (e.g. out of room) or was cancelled.
    host.fail_on("job_lost", "db");
    let d = record(Path::new("/i/vda.qcow2"), Path::new("/i/vda.ovl"));
    let e = release_one(&host, "db", &d).expect_err("still on its overlay");
    assert!(matches!(e, ReleaseError::CommitEnded { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("commit of db/vda ended without switching")
            && e.to_string().contains("nothing is lost"),
        "{e}"
    );
    assert_eq!(e.exit_code(), ExitCode::ReleaseIncomplete);
    let calls = host.calls();
    assert!(calls.contains(&"commit:db".to_string()), "{calls:?}");
    assert!(!calls.iter().any(|c| c.starts_with("pivot")), "{calls:?}");
}

use crate::hypervisor::fake::one_disk as disk_xml;

fn qcow2(path: &Path, backing: Option<&Path>) {
    let mut c = std::process::Command::new("qemu-img");
    c.args(["create", "-q", "-f", "qcow2"]);
    if let Some(b) = backing {
        c.args(["-F", "qcow2", "-b"]).arg(b);
    }
    assert!(c.arg(path).arg("1M").status().expect("qemu-img").success());
}

fn record(image: &Path, overlay: &Path) -> DiskRecord {
    DiskRecord {
        target: "vda".into(),
        image: image.to_string_lossy().into(),
        overlay: overlay.to_string_lossy().into(),
        format: "qcow2".into(),
        virtual_size: 1 << 20,
    }
}

#[test]
fn an_overlay_found_switched_back_goes_only_if_a_release_switched_it_or_it_is_empty() {
    let t = tempfile::tempdir().expect("tempdir");
    let (image, overlay) = (t.path().join("vda.qcow2"), t.path().join("vda.ovl"));
    qcow2(&image, None);
    let d = record(&image, &overlay);
    let host = FakeHost::new("qemu:///system");
    host.add("db", &disk_xml(&d.image, ""));
    let release = |ledger: &crate::catalog::ledger::InMemory| {
        release_member(
            &host,
            "db",
            std::slice::from_ref(&d),
            &Options::default(),
            ledger,
            Events::NONE,
        )
    };
    // Pre-created and never used: no data, it goes.
    qcow2(&overlay, Some(&image));
    release(&Default::default()).expect("empty overlay removed");
    assert!(!overlay.exists());

    // Written to, but nothing says a release switched the disk back (the VM recreated
    // from its old definition): the overlay may hold the only copy of that data.
    qcow2(&overlay, Some(&image));
    let st = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write 0 64k"])
        .arg(&overlay)
        .output()
        .expect("qemu-io");
    assert!(st.status.success(), "{st:?}");
    let e = release(&Default::default()).expect_err("kept");
    assert!(
        matches!(e, ReleaseError::NotSwitchedByRelease { .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("no release switched it") && e.to_string().contains("is kept"),
        "{e}"
    );
    assert_eq!(e.exit_code(), ExitCode::ReleaseIncomplete);
    assert!(overlay.exists());

    // A release started its commit (and died after the pivot): it goes.
    let ledger = crate::catalog::ledger::InMemory::default();
    let db = MemberId::new(host.uri(), "db");
    ledger.mark(&db, &["vda"], Mark::Started).expect("mark");
    release(&ledger).expect("ours");
    assert!(!overlay.exists());
}

#[test]
fn an_overlay_some_process_holds_open_is_kept() {
    let t = tempfile::tempdir().expect("tempdir");
    let (image, overlay) = (t.path().join("vda.qcow2"), t.path().join("vda.ovl"));
    qcow2(&image, None);
    qcow2(&overlay, Some(&image));
    // A QEMU with its vCPUs stopped holds the overlay's write lock, as a VM whose
    // snapshot call libvirt has not yet recorded does.
    let mut qemu = std::process::Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "pc",
            "-accel",
            "tcg",
            "-display",
            "none",
            "-nodefaults",
            "-S",
        ])
        .arg("-drive")
        .arg(format!("file={},format=qcow2,if=virtio", overlay.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64");
    let d = record(&image, &overlay);
    let host = FakeHost::new("qemu:///system");
    host.add("db", &disk_xml(&d.image, ""));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !held_open(&d.overlay) {
        if let Ok(Some(st)) = qemu.try_wait() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(qemu.stderr.as_mut().expect("stderr"), &mut err);
            panic!("qemu exited ({st}): {err}");
        }
        assert!(Instant::now() < deadline, "qemu never locked the overlay");
        std::thread::sleep(Duration::from_millis(50));
    }
    let e = remove_unused(
        &host,
        "db",
        std::slice::from_ref(&d),
        &crate::events::NoReport,
    );
    let _ = qemu.kill();
    let _ = qemu.wait();
    let e = e.expect_err("held open");
    assert!(matches!(e, ReleaseError::HeldOpen { .. }), "{e}");
    assert!(overlay.exists());
    remove_unused(
        &host,
        "db",
        std::slice::from_ref(&d),
        &crate::events::NoReport,
    )
    .expect("free now");
    assert!(!overlay.exists());
}

#[test]
fn no_commit_is_started_on_a_foreign_job_a_changed_chain_or_a_saved_vm() {
    let d = record(Path::new("/i/vda.qcow2"), Path::new("/i/vda.ovl"));
    let run = |xml: &str, state: DomState, saved: bool| {
        let host = FakeHost::new("qemu:///system");
        host.add("db", xml);
        host.set_state("db", state);
        if saved {
            host.fail_on("managed_save", "db");
        }
        let e = release_one(&host, "db", &d).expect_err("refused");
        let calls = host.calls();
        assert!(!calls.iter().any(|c| c.starts_with("commit")), "{calls:?}");
        assert!(!calls.iter().any(|c| c.starts_with("pivot")), "{calls:?}");
        assert_eq!(e.exit_code(), ExitCode::ReleaseIncomplete, "{e}");
        e
    };
    let copy = disk_xml(&d.overlay, "<mirror type='file' job='copy'/>");
    let e = run(&copy, DomState::Running, false);
    assert!(matches!(e, ReleaseError::ForeignJob { .. }), "{e}");
    assert!(e.to_string().contains("(copy)"), "{e}");

    let other_base = disk_xml(
        &d.overlay,
        "<backingStore type='file'><format type='qcow2'/><source file='/i/other.qcow2'/></backingStore>",
    );
    let e = run(&other_base, DomState::Running, false);
    assert!(matches!(e, ReleaseError::BackingChanged { .. }), "{e}");
    assert!(e.to_string().contains("/i/other.qcow2"), "{e}");

    let e = run(&disk_xml(&d.overlay, ""), DomState::ShutOff, true);
    assert!(matches!(e, ReleaseError::ManagedSave { .. }), "{e}");

    let e = run(&disk_xml(&d.overlay, ""), DomState::PausedOther, false);
    assert!(e.to_string().contains("virsh resume db"), "{e}");
}

#[test]
fn a_remote_member_s_overlay_path_never_touches_a_file_here() {
    // A same-named file on this host (same image layout on every host of a cluster) is
    // someone else's: released on another host, it must survive.
    let t = tempfile::tempdir().expect("tempdir");
    let here = t.path().join("vda.qcow2.x.cgsnap-overlay");
    std::fs::write(&here, b"local data").expect("local file");
    let image = t.path().join("vda.qcow2");
    let host = FakeHost::new("qemu+ssh://far/system");
    host.add("db", &disk_xml(&image.to_string_lossy(), ""));
    let d = record(&image, &here);
    let notes = crate::events::Collected::default();
    remove_unused(&host, "db", std::slice::from_ref(&d), &notes).expect("released");
    assert_eq!(std::fs::read(&here).expect("still here"), b"local data");
    // No pool there to remove it through: the operator is told it stays.
    let stays = notes.lines();
    assert_eq!(stays.len(), 1, "{stays:?}");
    assert!(
        stays[0].starts_with(&format!(
            "db: overlay {} stays on qemu+ssh://far/system: no active libvirt storage pool",
            d.overlay
        )),
        "{}",
        stays[0]
    );

    // The same on this host: the unused overlay goes.
    let local = FakeHost::new("qemu:///system");
    local.add("db", &host.xml("db").expect("xml"));
    remove_unused(
        &local,
        "db",
        std::slice::from_ref(&d),
        &crate::events::NoReport,
    )
    .expect("released");
    assert!(!here.exists());
}
