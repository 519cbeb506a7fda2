//! Release of a member whose domain no longer exists on its host (deleted, undefined, or a
//! transient domain destroyed while its snapshot was held): its overlays are merged into their
//! images offline, so no guest write is lost and the group is not blocked by a snapshot that an
//! online release can never finish. On this host with `qemu-img commit` ([`crate::merge`]); on
//! another host, whose files this process cannot open, by that host's libvirt and QEMU through
//! a paused helper domain ([`crate::remote_merge`]), the overlay then removed through the
//! storage pool of its directory (or named on stderr as left there).
//!
//! Invariants:
//! - Used only when the member's libvirt answered "no such domain", never when it was
//!   unreachable.
//! - An overlay is merged only into the image the manifest recorded (checked against the
//!   overlay's own backing file), and deleted only after the merge succeeded.
//! - An overlay that any domain of the host still names in its disks (e.g. the member renamed
//!   while stopped) is left alone, and so is one some process still writes (a VM migrated or
//!   started by hand on it): QEMU's image locks make the merge fail on it.
//! - Safe to repeat after a crash: merging the same overlay again writes the same data, and an
//!   overlay that is already gone means its disk is done.
//! - An overlay whose disk a release already switched back to its image (marked pivoted in the
//!   [`crate::catalog::ledger`]) is stale: the guest wrote to the image after it. It is deleted, never
//!   merged.

use crate::catalog::ledger::{Ledger, Mark};
use crate::catalog::{DiskRecord, MemberId};
use crate::events::{Note, Reporter};
use crate::hypervisor::Host;
use crate::release::{self, ReleaseError};
use crate::remote_merge::Outcome;
use std::path::Path;

/// Merge one disk's (existing) overlay into its image and delete it.
fn merge_disk(domain: &str, d: &DiskRecord) -> Result<(), ReleaseError> {
    crate::merge::merge(d).map_err(|e| {
        let fix = if e.held_open() {
            "a process still has it open (the VM renamed or migrated?): release through that VM, or stop the process and run release again".to_string()
        } else {
            format!(
                "merge it by hand (`qemu-img commit {}`) or, if the VM is gone for good, delete it; then run release again",
                d.overlay
            )
        };
        ReleaseError::VanishedMerge {
            domain: domain.to_string(),
            overlay: d.overlay.clone(),
            detail: e.to_string(),
            fix,
        }
    })?;
    std::fs::remove_file(&d.overlay).map_err(|source| ReleaseError::Remove {
        path: d.overlay.clone(),
        source,
    })
}

/// A domain on `host` (running or not) whose disks use one of `overlays`, e.g. the member
/// renamed while stopped: merging would pull the file from under its definition.
fn user_of(
    host: &dyn Host,
    overlays: &[&DiskRecord],
) -> Result<Option<(String, String)>, ReleaseError> {
    for dom in host.list_domains()? {
        // A domain that vanished between listing and reading uses nothing.
        let Ok(xml) = host.xml(&dom.name) else {
            continue;
        };
        for o in overlays {
            if release::in_use(&dom.name, &xml, &o.overlay)? {
                return Ok(Some((dom.name, o.overlay.clone())));
            }
        }
    }
    Ok(None)
}

/// Release the disks of `domain`, which no longer exists on `host`.
pub fn release(
    host: &dyn Host,
    domain: &str,
    disks: &[DiskRecord],
    opts: &release::Options,
    ledger: &dyn Ledger,
    report: &dyn Reporter,
) -> Result<(), ReleaseError> {
    let uri = host.uri();
    let who = MemberId::new(host.uri(), domain);
    let stale = |d: &DiskRecord| ledger.has(&who, &d.target, Mark::Pivoted);
    // A remote host's files are not ours to open: its own libvirt merges them.
    if !crate::hypervisor::is_local(uri) {
        return remote(host, domain, disks, opts, ledger, report);
    }
    for d in disks.iter().filter(|d| stale(d)) {
        release::remove_local(domain, &d.overlay)?;
    }
    let left: Vec<&DiskRecord> = disks
        .iter()
        .filter(|d| !stale(d) && Path::new(&d.overlay).exists())
        .collect();
    if left.is_empty() {
        return Ok(());
    }
    if let Some((user, overlay)) = user_of(host, &left)? {
        return Err(ReleaseError::VanishedButUsed {
            domain: domain.to_string(),
            overlay,
            user,
        });
    }
    for d in &left {
        // Marked first: should the domain come back on its images before the overlay is
        // deleted, the next run knows the data went into them.
        ledger.mark(&who, &[d.target.as_str()], Mark::Started)?;
        merge_disk(domain, d)?;
    }
    report.note(&Note::MergedVanished {
        domain,
        uri,
        merged: left.len(),
    });
    Ok(())
}

/// The same on another host, through its libvirt: each overlay merged there by a helper
/// domain ([`crate::remote_merge`]), then removed through the storage pool of its directory
/// (required: see below).
fn remote(
    host: &dyn Host,
    domain: &str,
    disks: &[DiskRecord],
    opts: &release::Options,
    ledger: &dyn Ledger,
    report: &dyn Reporter,
) -> Result<(), ReleaseError> {
    let who = MemberId::new(host.uri(), domain);
    let stale = |d: &DiskRecord| ledger.has(&who, &d.target, Mark::Pivoted);
    let all: Vec<&DiskRecord> = disks.iter().collect();
    if let Some((user, overlay)) = user_of(host, &all)? {
        return Err(ReleaseError::VanishedButUsed {
            domain: domain.to_string(),
            overlay,
            user,
        });
    }
    // Nothing records which overlays a failed run already merged, and a VM recreated on the
    // images meanwhile makes a second merge of one overwrite newer data: so each overlay must
    // be removed right after its merge, which on another host takes a storage pool.
    let mut left = Vec::new();
    for d in disks {
        match host.pool_has(&d.overlay)? {
            Some(true) => left.push(d),
            // Merged and removed by an earlier run.
            Some(false) => {}
            None => {
                let dir = Path::new(&d.overlay)
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                return Err(ReleaseError::VanishedMerge {
                    domain: domain.to_string(),
                    overlay: d.overlay.clone(),
                    detail: format!(
                        "no active libvirt storage pool on {} has {dir} as target, so it could not be removed once merged",
                        host.uri()
                    ),
                    fix: format!(
                        "define one (`virsh -c {} pool-create-as cgsnap dir --target {dir}`) and run release again, or merge it on that host by hand",
                        host.uri()
                    ),
                });
            }
        }
    }
    let mut merged = 0;
    for d in left {
        if stale(d) {
            release::remove_remote(host, domain, &d.overlay, report)?;
            continue;
        }
        ledger.mark(&who, &[d.target.as_str()], Mark::Started)?;
        match crate::remote_merge::merge(host, domain, d, opts, report) {
            Ok(Outcome::Gone) => {}
            Ok(Outcome::Merged) => {
                merged += 1;
                release::remove_remote(host, domain, &d.overlay, report)?;
            }
            Err(e) => {
                let fix = if e.held_open() {
                    format!(
                        "a process on {} still has it open (the VM renamed or migrated?): release through that VM, or stop the process and run release again",
                        host.uri()
                    )
                } else {
                    format!(
                        "merge it on {} (`qemu-img commit {}`) or, if the VM is gone for good, delete it there; then run release again",
                        host.uri(),
                        d.overlay
                    )
                };
                return Err(ReleaseError::VanishedMerge {
                    domain: domain.to_string(),
                    overlay: d.overlay.clone(),
                    detail: e.to_string(),
                    fix,
                });
            }
        }
    }
    if merged > 0 {
        report.note(&Note::MergedVanishedRemote {
            domain,
            uri: host.uri(),
            merged,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
}

/// A group holding `db` on two hosts of this machine (`qemu:///system` and `qemu:///session`,
/// both local, so every merge moves real bytes): one member vanishes while held, and one host
/// does not answer the first release. Marks of one `db` must never count for the other.
#[cfg(test)]
mod two_hosts {
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
        let man =
            release::release_snapshot(&s.pool, &s.cat, "g-1", &opts, crate::events::Events::NONE)
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
        let e =
            release::release_snapshot(&s.pool, &s.cat, "g-1", &opts, crate::events::Events::NONE)
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
            msg.contains("(db/vda)")
                && msg.contains("\"uri\"")
                && msg.contains("nothing was released"),
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
}
