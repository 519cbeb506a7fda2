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

use crate::catalog::{Catalog, CatalogError, Manifest};
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
    fn has(&self, domain: &str, target: &str, mark: Mark) -> bool;
    fn mark(&self, domain: &str, targets: &[&str], mark: Mark) -> Result<(), CatalogError>;
}

fn key(domain: &str, target: &str) -> String {
    format!("{domain}/{target}")
}

/// Marks in memory only: for a rollback (the snapshot failed in this very process, nothing
/// of it was ever released) and for the benchmark's own guests.
#[derive(Default)]
pub struct InMemory(Mutex<BTreeSet<(String, Mark)>>);

impl Ledger for InMemory {
    fn has(&self, domain: &str, target: &str, mark: Mark) -> bool {
        let set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        set.contains(&(key(domain, target), mark))
    }

    fn mark(&self, domain: &str, targets: &[&str], mark: Mark) -> Result<(), CatalogError> {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for t in targets {
            set.insert((key(domain, t), mark));
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
    pub fn new(cat: &'a Catalog, man: Manifest) -> Self {
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

fn list(man: &mut Manifest, mark: Mark) -> &mut Vec<String> {
    match mark {
        Mark::Started => &mut man.commits_started,
        Mark::Pivoted => &mut man.commits_pivoted,
    }
}

impl Ledger for InManifest<'_> {
    fn has(&self, domain: &str, target: &str, mark: Mark) -> bool {
        let mut man = self.man.lock().unwrap_or_else(|p| p.into_inner());
        list(&mut man, mark).contains(&key(domain, target))
    }

    fn mark(&self, domain: &str, targets: &[&str], mark: Mark) -> Result<(), CatalogError> {
        let mut man = self.man.lock().unwrap_or_else(|p| p.into_inner());
        let l = list(&mut man, mark);
        let before = l.len();
        for t in targets {
            let k = key(domain, t);
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
    use crate::catalog::SnapState;

    #[test]
    fn marks_reach_the_manifest_on_disk_before_the_call_returns() {
        let t = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(t.path()).expect("catalog");
        let man = Manifest::new("g-1", "g", SnapState::Releasing, chrono::Utc::now());
        cat.write(&man).expect("write");
        let l = InManifest::new(&cat, man);
        assert!(!l.has("db", "vda", Mark::Started));
        l.mark("db", &["vda", "vdb"], Mark::Started).expect("mark");
        l.mark("db", &["vda"], Mark::Pivoted).expect("mark");
        let on_disk = cat.load("g-1").expect("load");
        assert_eq!(on_disk.commits_started, ["db/vda", "db/vdb"]);
        assert_eq!(on_disk.commits_pivoted, ["db/vda"]);
        assert!(l.has("db", "vda", Mark::Pivoted));
        assert!(!l.has("db", "vdb", Mark::Pivoted));
        // Marking again adds nothing.
        l.mark("db", &["vda"], Mark::Started).expect("mark");
        assert_eq!(l.into_manifest().commits_started.len(), 2);

        let m = InMemory::default();
        m.mark("db", &["vda"], Mark::Started).expect("mark");
        assert!(m.has("db", "vda", Mark::Started));
        assert!(!m.has("db", "vda", Mark::Pivoted));
    }
}
