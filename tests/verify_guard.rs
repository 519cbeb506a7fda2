//! `cgsnap verify` refuses, before it creates anything, to start sandboxes whose guest memory
//! would not fit in what this host has available (read from the real /proc/meminfo): a restore
//! test must never push the running originals into the OOM killer. Exit 12 (could not run),
//! one line naming both figures.

use cgsnap::catalog::{Catalog, DiskRecord, Manifest, MemberRecord, SnapState};
use chrono::Utc;
use std::process::Command;

#[test]
fn sandboxes_that_do_not_fit_in_memory_are_refused_before_anything_starts() {
    let t = tempfile::tempdir().expect("tempdir");
    let cat = Catalog::open(&t.path().join("cat")).expect("catalog");
    let xml = "<domain type='qemu'><name>big-db</name><memory unit='TiB'>64</memory>\
               <devices><disk type='file' device='disk'><source file='/nowhere/vda.qcow2'/>\
               <target dev='vda'/></disk></devices></domain>";
    let disk = DiskRecord {
        target: "vda".into(),
        image: "/nowhere/vda.qcow2".into(),
        overlay: "/nowhere/vda.qcow2.x.cgsnap-overlay".into(),
        format: "qcow2".into(),
        virtual_size: 1 << 30,
    };
    let m = Manifest {
        consistency_point: Some(Utc::now()),
        members: vec![MemberRecord::new(
            "big-db",
            "qemu:///system",
            xml.into(),
            vec![disk],
        )],
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
    let out = Command::new(assert_cmd::cargo::cargo_bin("cgsnap"))
        .arg("--catalog")
        .arg(cat.dir())
        .args(["verify", "big-1", "--profile"])
        .arg(&profile)
        .arg("--sandbox-dir")
        .arg(&sandboxes)
        .output()
        .expect("cgsnap verify");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(12), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("the sandboxes need 67108864 MiB of guest memory")
            && err.contains("MiB available"),
        "{err}"
    );
    assert!(!sandboxes.exists(), "nothing was created");
}
