//! What a release did to each disk, for the next run after a crash.
//!
//! The live domain XML tells a release what is left to do (see [`crate::release`]), but not
//! who did what is already done. Two cases need that: a disk found back on its image whose
//! overlay still exists (a release pivoted it and died before deleting the overlay, or
//! something else switched it: the VM recreated from its old definition, a snapshot call
//! still in flight), and a member that vanished with such an overlay (merging it would write
//! stale data over what the guest wrote to the image since the pivot).
//!
//! Invariants:
//! - A commit is marked started before it is started, and a disk marked pivoted before its
//!   overlay is deleted; with [`InManifest`] each mark is in the manifest on disk (fsync and
//!   rename) before the step it announces.
//! - Marks are only added, never removed: they describe one snapshot's release.
//! - A mark names its member's host, domain and disk ([`DiskMark`]): the same domain name on
//!   another host is another VM, and one's pivot must never make the other's overlay, which may
//!   hold the only copy of its data, count as stale (or one's started commit make the other's
//!   overlay count as merged).

use crate::catalog::{Catalog, CatalogError, DiskMark, Manifest, Marked, MemberId};
use std::collections::BTreeSet;
use std::sync::Mutex;

/// A step of one disk's release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mark {
    /// Its active commit is about to be started.
    Started,
    /// It was switched back to its image; its overlay is stale from now on.
    Pivoted,
}

/// Where marks are kept.
pub trait Ledger: Sync {
    /// Whether the disk `target` of `member` carries `mark`.
    fn has(&self, member: &MemberId, target: &str, mark: Mark) -> bool;
    /// Give `mark` to each of `member`'s disks `targets`, recorded before this returns
    /// ([`InManifest`]: written to the catalog).
    fn mark(&self, member: &MemberId, targets: &[&str], mark: Mark) -> Result<(), CatalogError>;
}

/// Marks in memory only: for a rollback (the snapshot failed in this very process, nothing
/// of it was ever released) and for the benchmark's own guests.
#[derive(Default)]
pub struct InMemory(Mutex<BTreeSet<(DiskMark, Mark)>>);

impl Ledger for InMemory {
    fn has(&self, member: &MemberId, target: &str, mark: Mark) -> bool {
        let set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        set.contains(&(DiskMark::new(member, target), mark))
    }

    fn mark(&self, member: &MemberId, targets: &[&str], mark: Mark) -> Result<(), CatalogError> {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for t in targets {
            set.insert((DiskMark::new(member, t), mark));
        }
        Ok(())
    }
}

/// Marks in the snapshot's manifest (`commits_started`, `commits_pivoted`), written through
/// at once. Members are released in parallel: one lock orders their writes.
pub struct InManifest<'a> {
    cat: &'a Catalog,
    man: Mutex<Manifest>,
}

impl<'a> InManifest<'a> {
    /// Marks kept in `man`, written to `cat`.
    pub(crate) fn new(cat: &'a Catalog, man: Manifest) -> Self {
        Self {
            cat,
            man: Mutex::new(man),
        }
    }

    /// The manifest with every mark made so far.
    pub fn into_manifest(self) -> Manifest {
        self.man.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

fn list(man: &mut Manifest, mark: Mark) -> &mut Vec<Marked> {
    match mark {
        Mark::Started => &mut man.commits_started,
        Mark::Pivoted => &mut man.commits_pivoted,
    }
}

impl Ledger for InManifest<'_> {
    fn has(&self, member: &MemberId, target: &str, mark: Mark) -> bool {
        let mut man = self.man.lock().unwrap_or_else(|p| p.into_inner());
        list(&mut man, mark).contains(&Marked::Disk(DiskMark::new(member, target)))
    }

    fn mark(&self, member: &MemberId, targets: &[&str], mark: Mark) -> Result<(), CatalogError> {
        let mut man = self.man.lock().unwrap_or_else(|p| p.into_inner());
        let l = list(&mut man, mark);
        let before = l.len();
        for t in targets {
            let k = Marked::Disk(DiskMark::new(member, t));
            if !l.contains(&k) {
                l.push(k);
            }
        }
        if l.len() == before {
            return Ok(());
        }
        self.cat.write(&man)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{MemberRecord, SnapState};

    fn disk(uri: &str, domain: &str, target: &str) -> Marked {
        Marked::Disk(DiskMark::new(&MemberId::new(uri, domain), target))
    }

    #[test]
    fn marks_reach_the_manifest_on_disk_before_the_call_returns() {
        let t = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(t.path()).expect("catalog");
        let man = Manifest::new("g-1", "g", SnapState::Releasing, chrono::Utc::now());
        cat.write(&man).expect("write");
        let l = InManifest::new(&cat, man);
        let db = MemberId::new("qemu:///system", "db");
        assert!(!l.has(&db, "vda", Mark::Started));
        l.mark(&db, &["vda", "vdb"], Mark::Started).expect("mark");
        l.mark(&db, &["vda"], Mark::Pivoted).expect("mark");
        let on_disk = cat.load("g-1").expect("load");
        let sys = |t| disk("qemu:///system", "db", t);
        assert_eq!(on_disk.commits_started, [sys("vda"), sys("vdb")]);
        assert_eq!(on_disk.commits_pivoted, [sys("vda")]);
        assert!(l.has(&db, "vda", Mark::Pivoted));
        assert!(!l.has(&db, "vdb", Mark::Pivoted));
        // Marking again adds nothing.
        l.mark(&db, &["vda"], Mark::Started).expect("mark");
        assert_eq!(l.into_manifest().commits_started.len(), 2);

        let m = InMemory::default();
        m.mark(&db, &["vda"], Mark::Started).expect("mark");
        assert!(m.has(&db, "vda", Mark::Started));
        assert!(!m.has(&db, "vda", Mark::Pivoted));
    }

    #[test]
    fn a_mark_of_db_on_one_host_is_no_mark_of_db_on_another() {
        let t = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(t.path()).expect("catalog");
        let man = Manifest::new("g-1", "g", SnapState::Releasing, chrono::Utc::now());
        cat.write(&man).expect("write");
        let here = MemberId::new("qemu:///system", "db");
        let far = MemberId::new("qemu+ssh://far/system", "db");
        let mem = InMemory::default();
        let on_disk = InManifest::new(&cat, man);
        for l in [&mem as &dyn Ledger, &on_disk] {
            l.mark(&far, &["vda"], Mark::Pivoted).expect("mark");
            assert!(l.has(&far, "vda", Mark::Pivoted));
            assert!(!l.has(&here, "vda", Mark::Pivoted));
        }
        let back = cat.load("g-1").expect("load");
        assert!(!InManifest::new(&cat, back).has(&here, "vda", Mark::Pivoted));
    }

    #[test]
    fn format_1_marks_go_to_the_only_member_of_their_name_and_never_to_a_guess() {
        let mut man = Manifest::new("g-1", "g", SnapState::Releasing, chrono::Utc::now());
        for (domain, uri) in [("web", "qemu:///system"), ("db", "qemu:///system")] {
            man.members
                .push(MemberRecord::new(domain, uri, String::new(), vec![]));
        }
        man.members.push(MemberRecord::new(
            "db",
            "qemu+ssh://far/system",
            String::new(),
            vec![],
        ));
        let mut v = serde_json::to_value(&man).expect("json");
        v["format_version"] = serde_json::json!(1);
        v["commits_started"] = serde_json::json!(["web/vda", "db/vda"]);
        v["commits_pivoted"] = serde_json::json!(["db/vda"]);
        let path = std::path::Path::new("g-1.json");
        let read = Catalog::parse(path, v.to_string().as_bytes()).expect("format 1 is read");
        assert_eq!(read.format_version, crate::catalog::FORMAT_VERSION);
        let legacy = |s: &str| Marked::Legacy(s.to_string());
        assert_eq!(
            read.commits_started,
            [disk("qemu:///system", "web", "vda"), legacy("db/vda")]
        );
        assert_eq!(read.unresolved_marks(), ["db/vda"]);
        let t = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(t.path()).expect("catalog");
        let l = InManifest::new(&cat, read.clone());
        let web = MemberId::new("qemu:///system", "web");
        assert!(l.has(&web, "vda", Mark::Started));
        for uri in ["qemu:///system", "qemu+ssh://far/system"] {
            let db = MemberId::new(uri, "db");
            assert!(!l.has(&db, "vda", Mark::Started), "{uri}");
            assert!(!l.has(&db, "vda", Mark::Pivoted), "{uri}");
        }
        // Written back (format 2) and read again: the same marks.
        let again = serde_json::to_vec(&read).expect("json");
        assert_eq!(Catalog::parse(path, &again).expect("format 2"), read);
    }
}
