//! A group holding `db` on two hosts of this machine (`qemu:///system` and `qemu:///session`,
//! both local, so every merge moves real bytes): one member vanishes while held, and one host
//! does not answer the first release. Marks of one `db` must never count for the other.

use crate::catalog::{Catalog, DiskRecord, Manifest, MemberRecord, SnapState};
use crate::hypervisor::fake::{FakeHost, one_disk};
use crate::hypervisor::pool::Pool;
use crate::hypervisor::{DomState, Host};
use crate::release;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog).args(args).output().expect(prog);
    assert!(out.status.success(), "{prog} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Whether `image` reads `pattern` (e.g. `0xaa`) over its first 64 KiB.
fn reads(image: &str, pattern: &str) -> bool {
    let out = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            &format!("read -P {pattern} 0 64k"),
            image,
        ])
        .output()
        .expect("qemu-io");
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && !text.contains("Pattern verification failed")
}

/// One member's files in `dir`: an image, and an overlay on it holding `pattern`, written
/// after the snapshot.
fn files(dir: &Path, pattern: &str) -> DiskRecord {
    std::fs::create_dir_all(dir).expect("mkdir");
    let image = dir.join("db.qcow2").to_string_lossy().to_string();
    let overlay = dir
        .join("db.qcow2.g-1.cgsnap-overlay")
        .to_string_lossy()
        .to_string();
    run("qemu-img", &["create", "-q", "-f", "qcow2", &image, "1M"]);
    run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x01 0 64k", &image],
    );
    run(
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &image, &overlay,
        ],
    );
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            &format!("write -P {pattern} 0 64k"),
            &overlay,
        ],
    );
    DiskRecord {
        target: "vda".into(),
        image,
        overlay,
        format: "qcow2".into(),
        virtual_size: 1 << 20,
    }
}

fn on_overlay(d: &DiskRecord) -> String {
    one_disk(
        &d.overlay,
        &format!(
            "<backingStore type='file'><format type='qcow2'/><source file='{}'/></backingStore>",
            d.image
        ),
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    cat: Catalog,
    a: Arc<FakeHost>,
    b: Arc<FakeHost>,
    da: DiskRecord,
    db: DiskRecord,
    pool: Pool,
}

/// `db` on host a and on host b, both in group `g`, both on their overlays, with the
/// snapshot `g-1` of them held (state taken).
fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tmp");
    let cat = Catalog::open(&dir.path().join("cat")).expect("catalog");
    let da = files(&dir.path().join("a"), "0xaa");
    let db = files(&dir.path().join("b"), "0xbb");
    let a = Arc::new(FakeHost::new("qemu:///system"));
    let b = Arc::new(FakeHost::new("qemu:///session"));
    a.add("db", &on_overlay(&da));
    b.add("db", &on_overlay(&db));
    // The name is on both hosts: each is added through its own host alone.
    for h in [&a, &b] {
        let one: Vec<Arc<dyn Host>> = vec![h.clone()];
        crate::group::add(&one, "g", &["db".to_string()]).expect("group add");
    }
    let both: Vec<Arc<dyn Host>> = vec![a.clone(), b.clone()];
    let members = crate::group::resolve(&both, "g").expect("resolve");
    assert_eq!(members.len(), 2, "{members:?}");
    let mut man = Manifest::new("g-1", "g", SnapState::Taken, chrono::Utc::now());
    for (h, d) in [(&a, &da), (&b, &db)] {
        man.members.push(MemberRecord::new(
            "db",
            h.uri(),
            h.xml("db").expect("xml"),
            vec![d.clone()],
        ));
    }
    cat.write(&man).expect("write");
    let (pa, pb) = (a.clone(), b.clone());
    let pool = Pool::new(Box::new(move |uri| {
        Ok(if uri == pa.uri() {
            pa.clone() as Arc<dyn Host>
        } else {
            assert_eq!(uri, pb.uri());
            pb.clone() as Arc<dyn Host>
        })
    }));
    Setup {
        _dir: dir,
        cat,
        a,
        b,
        da,
        db,
        pool,
    }
}

fn vanish(h: &FakeHost) {
    h.domains.lock().expect("lock").remove("db");
}

#[test]
fn db_on_two_hosts_one_vanished_while_held_keeps_every_byte_of_both() {
    let s = setup();
    // a's db is deleted while the snapshot is held; b's is shut off (merged offline).
    vanish(&s.a);
    s.b.set_state("db", DomState::ShutOff);
    // The first release does not reach a: only b is released (and its disk marked
    // pivoted).
    s.a.fail_on("state", "db");
    let opts = release::Options::default();
    release::release_snapshot(&s.pool, &s.cat, "g-1", &opts, crate::events::Events::NONE)
        .expect_err("a unreachable");
    assert!(
        reads(&s.db.image, "0xbb"),
        "b's writes merged into its image"
    );
    assert!(!Path::new(&s.db.overlay).exists(), "b's overlay removed");
    let def = s.b.domains.lock().expect("lock")["db"].xml.clone();
    let disks = crate::domxml::disks("db", &def).expect("parse");
    assert_eq!(disks[0].source.as_deref(), Some(s.db.image.as_str()));
    assert!(Path::new(&s.da.overlay).exists(), "a untouched");

    // Now a answers that its db no longer exists: its overlay holds the newest data and
    // must be merged, whatever b's marks say.
    s.a.fail.lock().expect("lock").clear();
    let man = release::release_snapshot(&s.pool, &s.cat, "g-1", &opts, crate::events::Events::NONE)
        .expect("released");
    assert_eq!(man.state, SnapState::Released);
    assert!(
        reads(&s.da.image, "0xaa"),
        "a's writes after the snapshot must be merged into its image, not deleted with its overlay"
    );
    assert!(!Path::new(&s.da.overlay).exists(), "a's overlay removed");
    assert!(reads(&s.db.image, "0xbb"), "b's image keeps its writes");
}

#[test]
fn a_vanished_db_s_merge_never_lets_the_other_db_s_kept_overlay_go() {
    let s = setup();
    // a's db is deleted while held; b's db is recreated from its old definition, on its
    // image: its overlay holds the only copy of what it wrote after the snapshot.
    vanish(&s.a);
    s.b.add("db", &one_disk(&s.db.image, ""));
    // The first release does not reach b: a is merged offline (and marked started).
    s.b.fail_on("state", "db");
    let opts = release::Options::default();
    release::release_snapshot(&s.pool, &s.cat, "g-1", &opts, crate::events::Events::NONE)
        .expect_err("b unreachable");
    assert!(
        reads(&s.da.image, "0xaa"),
        "a's writes merged into its image"
    );
    assert!(!Path::new(&s.da.overlay).exists(), "a's overlay removed");

    s.b.fail.lock().expect("lock").clear();
    let e = release::release_snapshot(&s.pool, &s.cat, "g-1", &opts, crate::events::Events::NONE)
        .expect_err("b's overlay is not the release's to delete");
    assert!(e.to_string().contains("no release switched it"), "{e}");
    assert!(
        Path::new(&s.db.overlay).exists() && reads(&s.db.overlay, "0xbb"),
        "b's overlay, with its data, is kept"
    );
}

#[test]
fn a_format_1_mark_two_dbs_could_own_stops_the_release_before_anything_is_touched() {
    let s = setup();
    vanish(&s.a);
    let path = s.cat.dir().join("snapshots/g-1.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    v["format_version"] = serde_json::json!(1);
    v["state"] = serde_json::json!("releasing");
    v["commits_started"] = serde_json::json!(["db/vda"]);
    v["commits_pivoted"] = serde_json::json!(["db/vda"]);
    std::fs::write(&path, v.to_string()).expect("write");
    assert_eq!(s.cat.list().expect("still listed").len(), 1);
    let calls = (s.a.calls().len(), s.b.calls().len());
    let e = release::release_snapshot(
        &s.pool,
        &s.cat,
        "g-1",
        &release::Options::default(),
        crate::events::Events::NONE,
    )
    .expect_err("whose mark is unknown");
    let msg = e.to_string();
    assert!(
        matches!(e, release::SnapshotReleaseError::UnresolvedMarks { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("(db/vda)") && msg.contains("\"uri\"") && msg.contains("nothing was released"),
        "{msg}"
    );
    use crate::model::exit::Classify;
    assert_eq!(e.exit_code(), crate::model::exit::ExitCode::Malformed);
    assert_eq!(
        (s.a.calls().len(), s.b.calls().len()),
        calls,
        "no host was asked"
    );
    assert!(reads(&s.da.overlay, "0xaa") && reads(&s.db.overlay, "0xbb"));
}
