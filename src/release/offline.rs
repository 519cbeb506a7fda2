//! Release of a member that is shut off: a persistent domain stopped (or not started again
//! after a host reboot) while its snapshot was held. Its definition names the overlays, so
//! every boot keeps writing to them, and an online commit needs a running QEMU. Instead each
//! overlay is merged into its image offline (on this host with `qemu-img commit`,
//! [`crate::release::merge`]; on another host by its own libvirt and QEMU through a paused helper
//! domain, [`crate::release::remote`]), the disk's persistent definition is pointed back at the
//! image, and only then is the overlay deleted (on another host through its storage pool).
//! Without this, one stopped VM would block its group's next snapshot until someone started it.
//!
//! Invariants:
//! - File images only (the disk is defined back as a file): on this host the image must be a
//!   regular file, on another the definition's own backing store must be the recorded image,
//!   of type file. Otherwise the member keeps the "start it and run release again" error, with
//!   nothing touched.
//! - Per disk, in this order: merge, definition on the image, then overlay deleted once no
//!   disk of the (still shut off) domain names it. A crash between steps leaves a state the
//!   next release finishes: a merged overlay still named by the definition is merged again
//!   (same data), one no longer named is deleted.
//! - A domain started meanwhile never loses a write: started before a merge, QEMU's image locks
//!   make the merge fail (on another host, the helper's start); started after its definition
//!   changed, it runs on the image; started between the two, it runs on the overlay, so that
//!   disk's definition is put back on the overlay and the next (online) release commits it.
//!   Nothing is deleted while it runs on an overlay.
//! - Each disk is marked started in the [`crate::catalog::ledger`] before its merge (so a later run
//!   knows a release put it back on its image), and all are marked pivoted only once the
//!   domain was still shut off after the last definition change: a disk whose definition was
//!   put back on its overlay holds live data and must never count as stale.

use super::error::ReleaseError;
use super::options::Options;
use super::overlay;
use super::remote::Outcome;
use crate::catalog::ledger::{Ledger, Mark};
use crate::catalog::{DiskRecord, MemberId};
use crate::domxml;
use crate::events::{Note, Reporter};
use crate::hypervisor::{DomState, Host};
use std::path::Path;

/// The persistent definition of each listed disk: (record, original `<disk>`, on its image).
type Rewrite<'a> = (&'a DiskRecord, String, String);

/// Release `on_overlay` (the disks whose definition names their overlay) of the shut-off
/// `domain`, whose persistent definition is `xml`; `disks` are all of the member's disks.
/// `report` is told what was merged.
#[allow(clippy::too_many_arguments)]
pub fn release(
    host: &dyn Host,
    domain: &str,
    xml: &str,
    disks: &[DiskRecord],
    on_overlay: &[&DiskRecord],
    opts: &Options,
    ledger: &dyn Ledger,
    report: &dyn Reporter,
) -> Result<(), ReleaseError> {
    let not_running = || ReleaseError::NotRunning {
        domain: domain.to_string(),
        state: DomState::ShutOff,
    };
    let local = crate::hypervisor::is_local(host.uri());
    // Check every disk before touching any.
    let mut rewrites: Vec<Rewrite> = Vec::new();
    for d in on_overlay {
        let on_file = if local {
            Path::new(&d.image).is_file()
        } else {
            domxml::disks(domain, xml)?.iter().any(|x| {
                x.target == d.target
                    && x.backing.first() == Some(&d.image)
                    && x.backing_kind.as_deref() == Some("file")
            })
        };
        if !on_file {
            return Err(not_running());
        }
        let original = domxml::disk_element(domain, xml, &d.target)?;
        let back = domxml::disk_on_file(domain, xml, &d.target, &d.image)?;
        match (original, back) {
            (Some(o), Some(b)) => rewrites.push((d, o, b)),
            _ => return Err(not_running()),
        }
    }
    for (i, (d, _, back)) in rewrites.iter().enumerate() {
        if let Err(e) = merge_and_define(host, domain, d, back, opts, ledger, report) {
            // Started meanwhile, the domain may run on the overlay of a disk whose definition
            // already names its image (and that start is likely why this merge failed).
            if i > 0 && host.state(domain).is_ok_and(|s| s != DomState::ShutOff) {
                return Err(undo_for_running(host, domain, &rewrites[..i]));
            }
            return Err(e);
        }
    }
    let state = host.state(domain)?;
    if state != DomState::ShutOff {
        return Err(undo_for_running(host, domain, &rewrites));
    }
    let targets: Vec<&str> = rewrites.iter().map(|(d, _, _)| d.target.as_str()).collect();
    if !targets.is_empty() {
        ledger.mark(&MemberId::new(host.uri(), domain), &targets, Mark::Pivoted)?;
    }
    overlay::remove_unused(host, domain, disks, report)?;
    report.note(&Note::MergedShutOff {
        domain,
        merged: rewrites.len(),
    });
    Ok(())
}

/// Merge one disk's overlay into its image, then define the disk on the image (`back`).
fn merge_and_define(
    host: &dyn Host,
    domain: &str,
    d: &DiskRecord,
    back: &str,
    opts: &Options,
    ledger: &dyn Ledger,
    report: &dyn Reporter,
) -> Result<(), ReleaseError> {
    let who = MemberId::new(host.uri(), domain);
    ledger.mark(&who, &[d.target.as_str()], Mark::Started)?;
    let merged = if crate::hypervisor::is_local(host.uri()) {
        super::merge::merge(d).map_err(|e| e.to_string())
    } else {
        match super::remote::merge(host, domain, d, opts, report) {
            Ok(Outcome::Merged) => Ok(()),
            // Its definition still names it: not ours to paper over.
            Ok(Outcome::Gone) => Err(format!("it no longer exists on {}", host.uri())),
            Err(e) => Err(e.to_string()),
        }
    };
    merged.map_err(|detail| ReleaseError::OfflineMerge {
        domain: domain.to_string(),
        overlay: d.overlay.clone(),
        detail,
    })?;
    host.set_disk_config(domain, back)?;
    Ok(())
}

/// The domain was started during the merge: put back on its overlay the definition of every
/// disk it now runs on the overlay of, so no boot after this one skips the writes there.
fn undo_for_running(host: &dyn Host, domain: &str, rewrites: &[Rewrite]) -> ReleaseError {
    let undo = || -> Result<(), ReleaseError> {
        let live = host.xml(domain)?;
        for (d, original, _) in rewrites {
            let on_overlay = domxml::disks(domain, &live)?
                .iter()
                .any(|x| x.target == d.target && x.source.as_deref() == Some(d.overlay.as_str()));
            if on_overlay {
                host.set_disk_config(domain, original)?;
            }
        }
        Ok(())
    };
    match undo() {
        Ok(()) => ReleaseError::StartedDuringRelease {
            domain: domain.to_string(),
        },
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ledger::InMemory;
    use crate::hypervisor::fake::FakeHost;
    use crate::model::exit::{Classify, ExitCode};
    use crate::release;
    use std::process::Command;

    fn qemu_img(args: &[&str]) {
        let st = Command::new("qemu-img")
            .args(args)
            .status()
            .expect("qemu-img");
        assert!(st.success(), "qemu-img {args:?}");
    }

    fn qemu_io_write(file: &str, pattern: &str) {
        let st = Command::new("qemu-io")
            .args([
                "-f",
                "qcow2",
                "-c",
                &format!("write -P {pattern} 0 64k"),
                file,
            ])
            .output()
            .expect("qemu-io");
        assert!(st.status.success(), "qemu-io write {file}");
    }

    fn byte0(file: &str) -> String {
        let out = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "read -v 0 1", file])
            .output()
            .expect("qemu-io");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// A stopped member with one disk whose definition names the overlay, which holds writes
    /// (pattern 0x5a) newer than the image (0x11).
    fn member(dir: &Path) -> (FakeHost, DiskRecord) {
        let img = dir.join("vda.qcow2").to_string_lossy().to_string();
        let ovl = dir.join("vda.ovl").to_string_lossy().to_string();
        qemu_img(&["create", "-q", "-f", "qcow2", &img, "1M"]);
        qemu_io_write(&img, "0x11");
        qemu_img(&[
            "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &img, &ovl,
        ]);
        qemu_io_write(&ovl, "0x5a");
        let host = FakeHost::new("qemu:///system");
        host.add(
            "db",
            &format!(
                "<domain><name>db</name><devices><disk type='file' device='disk'>\
                 <driver name='qemu' type='qcow2'/><source file='{ovl}'/>\
                 <backingStore type='file'><format type='qcow2'/><source file='{img}'/></backingStore>\
                 <target dev='vda' bus='virtio'/><boot order='1'/></disk></devices></domain>"
            ),
        );
        host.set_state("db", DomState::ShutOff);
        let d = DiskRecord {
            target: "vda".into(),
            image: img,
            overlay: ovl,
            format: "qcow2".into(),
            virtual_size: 1 << 20,
        };
        (host, d)
    }

    #[test]
    fn a_member_started_between_two_disks_keeps_its_writes_on_the_overlay() {
        let dir = tempfile::tempdir().expect("tmp");
        let (host, vda) = member(dir.path());
        // A second disk whose overlay sits on another file: its merge fails.
        let p = |f: &str| dir.path().join(f).to_string_lossy().to_string();
        let (img, other, ovl) = (p("vdb.qcow2"), p("other.qcow2"), p("vdb.ovl"));
        for f in [&img, &other] {
            qemu_img(&["create", "-q", "-f", "qcow2", f, "1M"]);
        }
        qemu_img(&[
            "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &other, &ovl,
        ]);
        let xml = host.xml("db").expect("xml").replace(
            "</devices>",
            &format!(
                "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
                 <source file='{ovl}'/><target dev='vdb' bus='virtio'/></disk></devices>"
            ),
        );
        host.add("db", &xml);
        host.set_state("db", DomState::ShutOff);
        let vdb = DiskRecord {
            target: "vdb".into(),
            image: img,
            overlay: ovl,
            ..vda.clone()
        };
        // Someone starts it just as vda is defined back on its image: it runs on vda's overlay.
        *host.start_on.lock().expect("lock") = Some(("set_disk_config".into(), "db".into()));
        let disks = [vda.clone(), vdb];
        let e = release::release_member(
            &host,
            "db",
            &disks,
            &Default::default(),
            &InMemory::default(),
            crate::events::Events::NONE,
        )
        .expect_err("vdb cannot be merged");
        assert!(
            matches!(e, ReleaseError::StartedDuringRelease { .. }),
            "{e}"
        );
        // Its definition names vda's overlay again, so no later boot skips those writes.
        let def = host.domains.lock().expect("lock")["db"].xml.clone();
        let vda_def = domxml::disks("db", &def).expect("parse")[0].clone();
        assert_eq!(vda_def.source.as_deref(), Some(vda.overlay.as_str()));
        assert!(Path::new(&vda.overlay).exists());
    }

    fn disks_of(host: &FakeHost) -> Vec<domxml::DiskInfo> {
        domxml::disks("db", &host.xml("db").expect("xml")).expect("parse")
    }

    #[test]
    fn a_shut_off_member_is_merged_defined_on_its_image_and_its_overlay_removed() {
        let dir = tempfile::tempdir().expect("tmp");
        let (host, d) = member(dir.path());
        release::release_one(&host, "db", &d).expect("offline release");
        assert!(byte0(&d.image).contains("5a"), "overlay writes merged");
        assert!(!Path::new(&d.overlay).exists(), "overlay removed");
        let disks = disks_of(&host);
        assert_eq!(disks[0].source.as_deref(), Some(d.image.as_str()));
        assert!(disks[0].backing.is_empty());
        assert!(host.xml("db").expect("xml").contains("<boot order='1'/>"));
        // Again: nothing left to do.
        release::release_one(&host, "db", &d).expect("idempotent");
    }

    /// The member of [`member`] on another host (its files are still those here, which the
    /// code under test never opens for a remote host).
    fn far(local: &FakeHost) -> FakeHost {
        let host = FakeHost::new("qemu+ssh://far/system");
        host.add("db", &local.xml("db").expect("xml"));
        host.set_state("db", DomState::ShutOff);
        host
    }

    #[test]
    fn a_remote_shut_off_member_on_a_block_image_is_left_alone() {
        let dir = tempfile::tempdir().expect("tmp");
        let (local, d) = member(dir.path());
        let host = far(&local);
        let xml = host
            .xml("db")
            .expect("xml")
            .replace("<backingStore type='file'>", "<backingStore type='block'>");
        host.add("db", &xml);
        host.set_state("db", DomState::ShutOff);
        let e = release::release_one(&host, "db", &d).expect_err("block image");
        assert!(matches!(e, ReleaseError::NotRunning { .. }), "{e}");
        assert!(e.to_string().contains("virsh start db"), "{e}");
        assert_eq!(e.exit_code(), ExitCode::ReleaseIncomplete);
        assert!(host.calls().iter().all(|c| !c.starts_with("start_helper")));
        assert_eq!(
            disks_of(&host)[0].source.as_deref(),
            Some(d.overlay.as_str())
        );
    }

    #[test]
    fn a_remote_shut_off_member_is_merged_there_only_into_its_recorded_image() {
        let dir = tempfile::tempdir().expect("tmp");
        let (local, d) = member(dir.path());
        let host = far(&local);
        // The overlay's header names another file: the helper commits nothing.
        host.backing
            .lock()
            .expect("lock")
            .insert(d.overlay.clone(), "/elsewhere.qcow2".into());
        let e = release::release_one(&host, "db", &d).expect_err("wrong backing file");
        assert!(matches!(e, ReleaseError::OfflineMerge { .. }), "{e}");
        assert!(e.to_string().contains("/elsewhere.qcow2"), "{e}");
        assert_eq!(e.exit_code(), ExitCode::ReleaseIncomplete);
        let calls = host.calls();
        assert!(calls.contains(&"start_helper:cgsnap-merge-db-vda".to_string()));
        assert!(!calls.iter().any(|c| c.starts_with("commit")), "{calls:?}");
        assert_eq!(
            disks_of(&host)[0].source.as_deref(),
            Some(d.overlay.as_str()),
            "still defined on its overlay"
        );
        assert!(Path::new(&d.overlay).exists());
        assert!(byte0(&d.image).contains("11"), "image untouched");
    }

    #[test]
    fn an_overlay_that_is_not_the_images_child_is_kept_and_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let (host, mut d) = member(dir.path());
        let other = dir.path().join("other.qcow2").to_string_lossy().to_string();
        qemu_img(&["create", "-q", "-f", "qcow2", &other, "1M"]);
        d.image = other;
        let e = release::release_one(&host, "db", &d).expect_err("wrong backing file");
        // Refused before any merge is tried, from the chain libvirt reports.
        assert!(matches!(e, ReleaseError::BackingChanged { .. }), "{e}");
        assert!(e.to_string().contains(&d.overlay), "{e}");
        assert_eq!(e.exit_code(), ExitCode::ReleaseIncomplete);
        assert!(Path::new(&d.overlay).exists());
        assert_eq!(
            disks_of(&host)[0].source.as_deref(),
            Some(d.overlay.as_str())
        );
    }
}
