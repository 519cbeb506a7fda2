//! `cgsnap verify` refuses, before it creates anything (exit 12, could not run, one line):
//! sandboxes whose guest memory would not fit in what this host has available (read from the
//! real /proc/meminfo; a restore test must never push the running originals into the OOM
//! killer), a sandbox directory whose filesystem has less free space than `--min-free` (the
//! sandboxes' writes must never fill a filesystem production VMs share), and members on another host without copies of their images (sandboxes are built
//! from files on this one). It takes the group lock only to read the frozen images: from
//! copies (`--images`) it runs while another run holds the lock (the backup job releasing).

use cgsnap::catalog::{Catalog, DiskRecord, Manifest, MemberRecord, SnapState};
use chrono::Utc;
use std::process::Command;

/// Run `cgsnap verify` on a one-member snapshot (`uri`, `memory_mib` in the saved XML);
/// returns the exit code and stderr, and asserts that no sandbox directory was created.
fn verify(uri: &str, memory_mib: u64) -> (Option<i32>, String) {
    verify_with(uri, memory_mib, &[], false)
}

/// [`verify`] with extra arguments, and with this process holding the group lock if `locked`.
fn verify_with(uri: &str, memory_mib: u64, extra: &[&str], locked: bool) -> (Option<i32>, String) {
    let t = tempfile::tempdir().expect("tempdir");
    let cat = Catalog::open(&t.path().join("cat")).expect("catalog");
    let xml = format!(
        "<domain type='qemu'><name>big-db</name><memory unit='MiB'>{memory_mib}</memory>\
         <devices><disk type='file' device='disk'><source file='/nowhere/vda.qcow2'/>\
         <target dev='vda'/></disk></devices></domain>"
    );
    let disk = DiskRecord {
        target: "vda".into(),
        image: "/nowhere/vda.qcow2".into(),
        overlay: "/nowhere/vda.qcow2.x.cgsnap-overlay".into(),
        format: "qcow2".into(),
        virtual_size: 1 << 30,
    };
    let m = Manifest {
        consistency_point: Some(Utc::now()),
        members: vec![MemberRecord::new("big-db", uri, xml, vec![disk])],
        ..Manifest::new("big-1", "big", SnapState::Taken, Utc::now())
    };
    cat.write(&m).expect("manifest");
    let profile = t.path().join("p.toml");
    std::fs::write(
        &profile,
        "format_version = 1\nrpo_seconds = 5\n[[member]]\ndomain = \"big-db\"\nkind = \"postgres\"\n\
         port = 5432\nuser = \"postgres\"\npassword = \"x\"\n",
    )
    .expect("profile");
    let sandboxes = t.path().join("sandboxes");
    let _lock = locked.then(|| cat.lock("big").expect("group lock"));
    let out = Command::new(assert_cmd::cargo::cargo_bin("cgsnap"))
        .arg("--catalog")
        .arg(cat.dir())
        .args(["verify", "big-1", "--profile"])
        .arg(&profile)
        .arg("--sandbox-dir")
        .arg(&sandboxes)
        .args(extra)
        .output()
        .expect("cgsnap verify");
    assert!(!sandboxes.exists(), "nothing was created");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    (out.status.code(), err)
}

#[test]
fn sandboxes_that_do_not_fit_in_memory_are_refused_before_anything_starts() {
    let (code, err) = verify("qemu:///system", 64 << 20);
    assert_eq!(code, Some(12), "{err}");
    assert!(
        err.contains("the sandboxes need 67108864 MiB of guest memory")
            && err.contains("MiB available"),
        "{err}"
    );
}

#[test]
fn a_sandbox_filesystem_below_the_free_space_floor_is_refused_before_anything_starts() {
    // No filesystem has u64::MAX bytes free; the directory does not exist yet, so the one it
    // would be created in is measured.
    let (code, err) = verify_with(
        "qemu:///system",
        1,
        &["--min-free", &u64::MAX.to_string()],
        false,
    );
    assert_eq!(code, Some(12), "{err}");
    assert!(
        err.contains("cannot verify: sandbox directory ")
            && err.contains("/sandboxes has ")
            && err.contains(&format!(
                "below --min-free 17179869184.0 GiB ({} bytes)",
                u64::MAX
            ))
            && err.contains("--sandbox-dir on another filesystem"),
        "{err}"
    );
}

#[test]
fn members_on_another_host_are_refused_before_anything_starts() {
    // A URI with a host part (loopback, so that a regression could only reach this host).
    let (code, err) = verify("qemu+tcp://127.0.0.1:1/system", 512);
    assert_eq!(code, Some(12), "{err}");
    assert!(
        err.contains("member big-db ran on qemu+tcp://127.0.0.1:1/system, not on this host")
            && err.contains("--images DIR"),
        "{err}"
    );
}

#[test]
fn only_verifying_the_frozen_images_takes_the_group_lock() {
    let (code, err) = verify_with("qemu:///system", 512, &[], true);
    assert_eq!(code, Some(5), "busy: {err}");
    assert!(err.contains("holds the lock on group big"), "{err}");
    // From copies: past the lock, up to the memory guard.
    let (code, err) = verify_with("qemu:///system", 64 << 20, &["--images", "/nowhere"], true);
    assert_eq!(code, Some(12), "{err}");
    assert!(err.contains("the sandboxes need"), "{err}");
}
