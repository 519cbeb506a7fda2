//! Merge of one overlay on another host, whose files this process cannot open (the overlays of
//! a member deleted there while its snapshot was held, [`crate::release::vanished`]): done by that
//! host's own libvirt and QEMU. A throwaway helper domain is started there with the overlay as
//! its only disk and its vCPUs stopped, the overlay is committed into its image (active commit,
//! pivot, as in an online release), and the helper is destroyed.
//!
//! Invariants:
//! - No guest code ever runs: the helper is started paused and never resumed; it has no
//!   kernel, network or display, only the one disk.
//! - The helper cannot outlive this process: it is started with libvirt's auto-destroy (killed
//!   when our connection closes) and destroyed on every path out of [`merge`]. A commit cut
//!   short leaves the overlay with all its data and the image holding only data the overlay
//!   also holds, so merging again later writes the same result.
//! - An overlay is committed only into the image the manifest recorded: the backing file that
//!   libvirt read from the overlay's header must be that image, else nothing is committed.
//! - QEMU's image locks apply as on this host: while any process on that host has the overlay
//!   or the image open (a VM migrated or started by hand on it), the helper does not start and
//!   nothing is written.
//! - Nothing is deleted here: the caller removes the overlay (through a storage pool) once the
//!   merge succeeded.

use super::merge::{BackingMismatch, check_backing};
use super::options::Options;
use super::pivot;
use crate::catalog::DiskRecord;
use crate::domxml;
use crate::events::Reporter;
use crate::hypervisor::libvirt::{LibvirtFailure, classify_text};
use crate::hypervisor::qemu_text::QemuFailure;
use crate::hypervisor::{Host, HvError, HvErrorKind};

/// The helper's disk target.
const TARGET: &str = "vda";

/// Why an overlay was not merged on its host; each message is a one-line detail for the
/// caller's.
#[derive(Debug, thiserror::Error)]
pub enum RemoteMergeError {
    /// libvirt did not start the helper: its message, and what QEMU's text in it says.
    #[error("{}", .error.message)]
    Start {
        /// libvirt's error.
        error: HvError,
        /// What QEMU's text in the message says (e.g. an image lock held).
        failure: QemuFailure,
    },
    /// The helper domain's XML has no disk vda, after it started or after the commit.
    #[error("the helper domain {name} has no disk {TARGET} {when}")]
    NoDisk {
        /// Name of the helper domain.
        name: String,
        /// When the disk was looked for, e.g. "after it started".
        when: &'static str,
    },
    /// The overlay is not backed by the image the manifest recorded.
    #[error(transparent)]
    Backing(#[from] BackingMismatch),
    /// The commit ended without switching the helper's disk to the image.
    #[error("the commit ended without switching to the image (the disk is on {on})")]
    NotSwitched {
        /// Path the helper's disk is on instead.
        on: String,
    },
    /// The overlay was merged, but destroying the helper domain failed.
    #[error("merged, but the helper domain {name} did not stop: {source}")]
    HelperStayed {
        /// Name of the helper domain.
        name: String,
        /// libvirt's error from destroying it.
        #[source]
        source: HvError,
    },
    /// A libvirt call on that host failed.
    #[error(transparent)]
    Hv(#[from] HvError),
    /// The helper's domain XML could not be read.
    #[error(transparent)]
    Xml(#[from] domxml::XmlError),
    /// The commit itself failed, as an online release's would.
    #[error(transparent)]
    Commit(Box<super::error::ReleaseError>),
}

impl RemoteMergeError {
    /// Refused because some process on that host has the overlay or its image open.
    pub fn held_open(&self) -> bool {
        matches!(
            self,
            RemoteMergeError::Start {
                failure: QemuFailure::HeldOpen,
                ..
            }
        )
    }
}

/// What became of one overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed into its image; the overlay file is still there, unused.
    Merged,
    /// The overlay file no longer exists on that host (removed after an earlier merge): the
    /// helper did not start for want of it.
    Gone,
}

/// Name of the helper that merges `d` of `domain`: unique per member disk, and one member is in
/// at most one unreleased snapshot, released under its group's lock.
pub fn helper_name(domain: &str, d: &DiskRecord) -> String {
    format!("cgsnap-merge-{domain}-{}", d.target)
}

/// The helper's definition: TCG (runs wherever the host has QEMU for its own architecture),
/// little memory (never touched: the vCPUs never start), no display or network, the overlay as
/// its one disk, with no `<backingStore>` so that libvirt reads the chain from its header.
pub fn helper_xml(name: &str, overlay: &str) -> String {
    format!(
        "<domain type='qemu'><name>{}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type>hvm</type></os><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>\
         <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{}'/><target dev='{TARGET}' bus='virtio'/></disk>\
         <memballoon model='none'/></devices></domain>",
        domxml::escape(name),
        domxml::escape(overlay)
    )
}

/// libvirt's refusal to start the helper says the overlay itself (not its image) is missing.
pub fn overlay_missing(e: &HvError, d: &DiskRecord) -> bool {
    e.kind == HvErrorKind::System
        && classify_text(&e.message)
            == LibvirtFailure::StorageMissing {
                path: d.overlay.as_str(),
            }
}

/// Merge the overlay of `d` into its image on `host`. `domain` is the (deleted) member, named
/// in the helper's name. `report` hears the commit's progress.
pub fn merge(
    host: &dyn Host,
    domain: &str,
    d: &DiskRecord,
    opts: &Options,
    report: &dyn Reporter,
) -> Result<Outcome, RemoteMergeError> {
    let name = helper_name(domain, d);
    if let Err(error) = host.start_helper(&name, &helper_xml(&name, &d.overlay)) {
        if overlay_missing(&error, d) {
            return Ok(Outcome::Gone);
        }
        let failure = crate::hypervisor::qemu_text::classify(&error.message);
        return Err(RemoteMergeError::Start { error, failure });
    }
    let merged = commit(host, &name, d, opts, report);
    let destroyed = host.destroy(&name);
    merged?;
    // Still running, the helper would keep the image open: report, the next run merges again.
    destroyed.map_err(|source| RemoteMergeError::HelperStayed { name, source })?;
    Ok(Outcome::Merged)
}

/// Check the helper's chain, commit its disk into the image, pivot, and check it landed there.
fn commit(
    host: &dyn Host,
    name: &str,
    d: &DiskRecord,
    opts: &Options,
    report: &dyn Reporter,
) -> Result<(), RemoteMergeError> {
    let on = |when: &'static str| -> Result<domxml::DiskInfo, RemoteMergeError> {
        let xml = host.xml(name)?;
        domxml::disks(name, &xml)?
            .into_iter()
            .find(|x| x.target == TARGET)
            .ok_or_else(|| RemoteMergeError::NoDisk {
                name: name.to_string(),
                when,
            })
    };
    let disk = on("after it started")?;
    check_backing(
        disk.backing.first().map(String::as_str),
        &d.image,
        |a, b| a == b,
    )?;
    let helper_disk = DiskRecord {
        target: TARGET.to_string(),
        ..d.clone()
    };
    host.commit_active(name, TARGET, opts.bandwidth)?;
    pivot::wait_and_pivot(host, name, &helper_disk, opts, report)
        .map_err(|e| RemoteMergeError::Commit(Box::new(e)))?;
    let disk = on("after the commit")?;
    if disk.source.as_deref() != Some(d.image.as_str()) {
        return Err(RemoteMergeError::NotSwitched {
            on: disk.source.unwrap_or_else(|| "nothing".into()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::NoReport;
    use crate::hypervisor::fake::FakeHost;

    fn disk() -> DiskRecord {
        DiskRecord {
            target: "vdb".into(),
            image: "/far/img.qcow2".into(),
            overlay: "/far/img.qcow2.s1.cgsnap-overlay".into(),
            format: "qcow2".into(),
            virtual_size: 1 << 20,
        }
    }

    #[test]
    fn the_helper_has_the_overlay_as_its_only_disk_and_nothing_else() {
        let d = disk();
        let name = helper_name("db", &d);
        assert_eq!(name, "cgsnap-merge-db-vdb");
        let xml = helper_xml(&name, "/far/it's.ovl");
        let disks = domxml::disks(&name, &xml).expect("well-formed");
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].source.as_deref(), Some("/far/it's.ovl"));
        assert!(disks[0].backing.is_empty(), "libvirt reads the chain");
        for absent in ["<interface", "<kernel", "<boot", "<serial", "<channel"] {
            assert!(!xml.contains(absent), "{absent} in {xml}");
        }
    }

    #[test]
    fn only_a_missing_overlay_counts_as_gone() {
        let d = disk();
        let refused = |kind, message: String| HvError {
            uri: "qemu+tcp://far/system".into(),
            op: "start helper domain",
            target: helper_name("db", &d),
            message,
            kind,
        };
        let top = format!(
            "Cannot access storage file '{}' (as uid:0, gid:0): No such file or directory",
            d.overlay
        );
        assert!(overlay_missing(
            &refused(HvErrorKind::System, top.clone()),
            &d
        ));
        assert!(!overlay_missing(&refused(HvErrorKind::Other, top), &d));
        let base = format!(
            "Cannot access backing file '{}' of storage file '{}' (as uid:0, gid:0): No such file or directory",
            d.image, d.overlay
        );
        let e = refused(HvErrorKind::System, base);
        assert!(!overlay_missing(&e, &d), "the image is missing");
        let perm = format!(
            "Cannot access storage file '{}': Permission denied",
            d.overlay
        );
        assert!(!overlay_missing(&refused(HvErrorKind::System, perm), &d));
        let other = "Cannot access storage file '/far/other.qcow2': No such file or directory";
        let e = refused(HvErrorKind::System, other.into());
        assert!(!overlay_missing(&e, &d), "another file");
    }

    /// A far host on which the overlay of `d` names `base` as its backing file.
    fn far_host(d: &DiskRecord, base: &str) -> FakeHost {
        let host = FakeHost::new("qemu+tcp://far/session");
        host.backing
            .lock()
            .expect("lock")
            .insert(d.overlay.clone(), base.to_string());
        host
    }

    #[test]
    fn an_overlay_on_another_backing_file_is_not_committed_and_the_helper_goes() {
        let d = disk();
        let host = far_host(&d, "/far/other.qcow2");
        let e = merge(&host, "db", &d, &Options::default(), &NoReport).expect_err("wrong backing");
        assert!(
            matches!(e, RemoteMergeError::Backing(BackingMismatch::Other { .. })),
            "{e}"
        );
        let e = e.to_string();
        assert!(e.contains("its backing file is /far/other.qcow2"), "{e}");
        let calls = host.calls();
        assert!(!calls.iter().any(|c| c.starts_with("commit")), "{calls:?}");
        assert!(calls.contains(&"destroy:cgsnap-merge-db-vdb".to_string()));
        assert!(host.list_domains().expect("list").is_empty(), "helper gone");

        // Without any backing file: the same.
        host.backing.lock().expect("lock").clear();
        let e = merge(&host, "db", &d, &Options::default(), &NoReport).expect_err("no backing");
        assert!(e.to_string().contains("no backing file"), "{e}");
        assert!(host.list_domains().expect("list").is_empty(), "helper gone");
    }

    #[test]
    fn a_failed_commit_still_destroys_the_helper() {
        let d = disk();
        let host = far_host(&d, &d.image);
        host.fail_on("commit", "cgsnap-merge-db-vdb");
        let e = merge(&host, "db", &d, &Options::default(), &NoReport).expect_err("commit fails");
        assert!(e.to_string().contains("injected failure"), "{e}");
        assert!(host.list_domains().expect("list").is_empty(), "helper gone");
    }
}
