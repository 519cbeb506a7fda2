//! What verify checks before any sandbox starts: where the copies given with `--images` are
//! and that they are the snapshot's images, and that every lost-commit check has
//! acknowledgements to check.
//!
//! Invariants: a copy is found by its original absolute path under DIR, or by file name only
//! when that name is unique among the snapshot's disks, and must have the recorded virtual
//! size; nothing passes for want of evidence (a member with a lost-commit check and no
//! acknowledgement before the consistency point is refused, not passed).

use crate::manifest::DiskView;
use crate::profile::Profile;
use cgsnap_testbeds::workload::Ack;
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};

/// An input of verify that is the operator's to fix, found before any sandbox starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// A disk's image path has no file name to look for.
    #[error("image path {0} has no file name")]
    NoFileName(String),
    /// No copy of a disk under `--images`.
    #[error("{image} not found under --images {} (by full path or file name)", dir.display())]
    NotFound {
        /// The snapshot's image.
        image: String,
        /// The `--images` directory.
        dir: PathBuf,
    },
    /// A flat copy's file name is shared by two of the snapshot's disks.
    #[error(
        "--images {}: disks {image} and {other} share the file name {}, so {} could be either: \
         lay the copies out by their original paths ({})",
        dir.display(),
        file_name(image),
        dir.join(file_name(image)).display(),
        full_path(dir, image).display()
    )]
    Ambiguous {
        /// The `--images` directory.
        dir: PathBuf,
        /// The disk looked for.
        image: String,
        /// Another disk with the same file name.
        other: String,
    },
    /// A copy's virtual size is not the recorded one.
    #[error(
        "copy {} of {image} has virtual size {found} bytes, the snapshot recorded {recorded}: give the copy of this snapshot's image",
        copy.display()
    )]
    Size {
        /// The copy.
        copy: PathBuf,
        /// The snapshot's image.
        image: String,
        /// Size recorded at snapshot time.
        recorded: u64,
        /// Size of the copy.
        found: u64,
    },
    /// A link of a copy's chain of exports is not the one the chain needs.
    #[error(
        "copy {}: its chain of exports has a foreign link {}: {why}; restore the cut's own export and every export it is incremental to, as `cgsnap backup export` wrote them",
        copy.display(),
        link.display()
    )]
    ChainLink {
        /// The copy.
        copy: PathBuf,
        /// The link refused.
        link: PathBuf,
        /// Why.
        why: String,
    },
    /// A link of a copy's chain of exports is missing.
    #[error(
        "copy {}: its chain of exports misses {}, the base of {}: restore that export too (the export of the cut it is incremental to)",
        copy.display(),
        link.display(),
        of.display()
    )]
    ChainMissing {
        /// The copy.
        copy: PathBuf,
        /// The missing file.
        link: PathBuf,
        /// The link whose base it is.
        of: PathBuf,
    },
    /// A lost-commit check would have nothing to check.
    #[error(
        "member {domain}: {log} has no acknowledged {kind} of {db} before the consistency point {cp}: \
         run the workload while snapshotting, or fix ack_db/ack_kind (or remove them to skip the lost-commit check)"
    )]
    NoAcks {
        /// The member.
        domain: String,
        /// The ack log (or "the ack log").
        log: String,
        /// Its `ack_kind`.
        kind: String,
        /// Its `ack_db`.
        db: String,
        /// The consistency point.
        cp: DateTime<Utc>,
    },
}

/// Where a backup extracted with its paths has the copy of `image` under `dir`.
fn full_path(dir: &Path, image: &str) -> PathBuf {
    dir.join(image.trim_start_matches('/'))
}

/// The file name of an image path, as text (empty if it has none).
fn file_name(image: &str) -> String {
    Path::new(image)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Where the copy of `image` is under `dir`: a backup extracted with its paths (`borg
/// extract`, `restic restore`) has it at `DIR/<original absolute path>`; a flat copy at
/// `DIR/<file name>`, which is used only if no other image of the snapshot (`all`) has that file
/// name (disks of different domains are often all called `vda.qcow2`).
pub fn image_in(
    dir: &Path,
    image: &str,
    all: &[&str],
    exists: impl Fn(&Path) -> bool,
) -> Result<PathBuf, InputError> {
    let full = full_path(dir, image);
    if exists(&full) {
        return Ok(full);
    }
    let name = Path::new(image)
        .file_name()
        .ok_or_else(|| InputError::NoFileName(image.to_string()))?;
    let flat = dir.join(name);
    if !exists(&flat) {
        return Err(InputError::NotFound {
            image: image.to_string(),
            dir: dir.to_path_buf(),
        });
    }
    if let Some(other) = all
        .iter()
        .find(|o| **o != image && Path::new(o).file_name() == Some(name))
    {
        return Err(InputError::Ambiguous {
            dir: dir.to_path_buf(),
            image: image.to_string(),
            other: other.to_string(),
        });
    }
    Ok(flat)
}

/// A copy must be the image it stands for: its virtual size is the one recorded at snapshot
/// time (`None`: not recorded or not readable here; the overlay creation reports the latter).
pub fn check_size(
    copy: &Path,
    image: &str,
    recorded: Option<u64>,
    found: Option<u64>,
) -> Result<(), InputError> {
    match (recorded, found) {
        (Some(recorded), Some(found)) if recorded != found => Err(InputError::Size {
            copy: copy.to_path_buf(),
            image: image.to_string(),
            recorded,
            found,
        }),
        _ => Ok(()),
    }
}

/// The image a sandbox of `disk` reads: the frozen one, or its copy under `--images`.
pub fn image_for(
    images_dir: Option<&Path>,
    all: &[&str],
    disk: &DiskView,
) -> Result<PathBuf, InputError> {
    let Some(dir) = images_dir else {
        return Ok(PathBuf::from(&disk.image));
    };
    let copy = image_in(dir, &disk.image, all, Path::exists)?;
    let found = crate::stand_in::virtual_size(&copy.to_string_lossy());
    check_size(&copy, &disk.image, disk.virtual_size, found)?;
    Ok(copy)
}

/// Acknowledgements of `db`/`kind` before the consistency point.
pub fn acked_before<'a>(
    acks: &'a [Ack],
    db: &'a str,
    kind: &'a str,
    cp: DateTime<Utc>,
) -> impl Iterator<Item = &'a Ack> + 'a {
    acks.iter()
        .filter(move |a| a.db == db && a.kind == kind && a.at < cp)
}

/// Every member of the snapshot (`domains`) with a lost-commit check has something to check:
/// with no acknowledgement before the cut the check would pass on nothing.
pub fn acks_cover(
    profile: &Profile,
    domains: &[&str],
    acks: &[Ack],
    cp: DateTime<Utc>,
) -> Result<(), InputError> {
    for m in profile
        .members
        .iter()
        .filter(|m| domains.contains(&m.domain.as_str()))
    {
        let (Some(db), Some(kind)) = (&m.ack_db, &m.ack_kind) else {
            continue;
        };
        if acked_before(acks, db, kind, cp).next().is_none() {
            let log = profile
                .ack_log
                .as_deref()
                .map_or_else(|| "the ack log".into(), |p| p.display().to_string());
            return Err(InputError::NoAcks {
                domain: m.domain.clone(),
                log,
                kind: kind.clone(),
                db: db.clone(),
                cp,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile;
    use chrono::TimeZone;

    #[test]
    fn copies_are_found_by_full_path_or_by_a_unique_file_name() {
        let dir = Path::new("/restore");
        let all = ["/img/a/vda.qcow2", "/img/b/vda.qcow2", "/img/b/vdb.qcow2"];
        let have = |files: &'static [&'static str]| {
            move |p: &Path| files.iter().any(|f| p == Path::new(f))
        };
        // Full paths: used, whatever the names.
        let full = have(&["/restore/img/a/vda.qcow2", "/restore/vda.qcow2"]);
        assert_eq!(
            image_in(dir, all[0], &all, full),
            Ok(PathBuf::from("/restore/img/a/vda.qcow2"))
        );
        // Flat with a unique name: used.
        assert_eq!(
            image_in(dir, all[2], &all, have(&["/restore/vdb.qcow2"])),
            Ok(PathBuf::from("/restore/vdb.qcow2"))
        );
        // Flat with a name two disks share: refused, naming both and the layout.
        let e = image_in(dir, all[1], &all, have(&["/restore/vda.qcow2"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("disks /img/b/vda.qcow2 and /img/a/vda.qcow2 share the file name vda.qcow2")
                && e.contains("/restore/img/b/vda.qcow2"),
            "{e}"
        );
        let e = image_in(dir, all[2], &all, have(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/img/b/vdb.qcow2 not found under --images /restore"),
            "{e}"
        );
    }

    #[test]
    fn a_copy_of_another_size_is_refused() {
        let p = Path::new("/restore/vda.qcow2");
        assert!(check_size(p, "/img/vda.qcow2", Some(1 << 30), Some(1 << 30)).is_ok());
        assert!(check_size(p, "/img/vda.qcow2", None, Some(1 << 30)).is_ok());
        assert!(check_size(p, "/img/vda.qcow2", Some(1 << 30), None).is_ok());
        let e = check_size(p, "/img/vda.qcow2", Some(1 << 30), Some(2 << 30))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("copy /restore/vda.qcow2 of /img/vda.qcow2 has virtual size 2147483648"),
            "{e}"
        );
    }

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0)
            .single()
            .expect("time")
    }

    fn ack(db: &str, kind: &str, s: i64) -> Ack {
        Ack {
            db: db.into(),
            kind: kind.into(),
            id: s,
            at: at(s),
        }
    }

    #[test]
    fn a_lost_commit_check_with_nothing_to_check_cannot_run() {
        let text = cgsnap_testbeds::pair::profile_text(Path::new("/s"));
        let p = profile::parse(Path::new("p.toml"), &text).expect("profile");
        let cp = at(10);
        let acks = vec![ack("orders", "order", 1), ack("payments", "payment", 2)];
        let both = ["cgsnap-orders", "cgsnap-payments"];
        assert_eq!(acks_cover(&p, &both, &acks, cp), Ok(()));
        // Payments acknowledged only after the cut: nothing to check for that member.
        let late = vec![ack("orders", "order", 1), ack("payments", "payment", 11)];
        let e = acks_cover(&p, &both, &late, cp).unwrap_err().to_string();
        assert!(
            e.contains("member cgsnap-payments")
                && e.contains("no acknowledged payment of payments"),
            "{e}"
        );
        assert!(acks_cover(&p, &both, &[], cp).is_err());
        // Only members of the snapshot are held to it.
        assert_eq!(acks_cover(&p, &["cgsnap-orders"], &late, cp), Ok(()));
        assert_eq!(acked_before(&acks, "orders", "order", at(1)).count(), 0);
        assert_eq!(acked_before(&acks, "orders", "order", at(2)).count(), 1);
    }
}
