//! Preflight: everything that can be checked or prepared before any member is frozen.
//!
//! Invariants: preflight only reads (libvirt state, XML, file system); it never pauses, writes
//! metadata or creates files. Any failure names the domain, the disk and the fix. The plan it
//! returns is complete: the frozen window only executes it.

use crate::catalog::DiskRecord;
use crate::domxml::{self, DiskInfo};
use crate::group::Member;
use crate::hypervisor::{DomState, HvError};
use crate::model::exit::{Classify, ExitCode};
use std::path::{Path, PathBuf};

/// File-name suffix of every overlay, so backup tools can exclude `*.cgsnap-overlay`.
pub const OVERLAY_SUFFIX: &str = "cgsnap-overlay";

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "member {domain} ({uri}) is {state}: start or resume it (`virsh start {domain}`), or remove it from the group (`cgsnap group remove GROUP {domain}`)"
    )]
    NotRunning {
        domain: String,
        uri: String,
        state: DomState,
    },
    #[error("disk {target} of {domain} is unsupported: {reason}")]
    UnsupportedDisk {
        domain: String,
        target: String,
        reason: String,
    },
    #[error(
        "disk {target} of {domain} has a block job in flight: wait for it or cancel it (`virsh blockjob {domain} {target} --abort`)"
    )]
    BlockJob { domain: String, target: String },
    #[error("member {domain} has no disk to snapshot: remove it from the group")]
    NoDisks { domain: String },
    #[error(
        "disk {target} of {domain} is on {path}, an overlay of a snapshot not yet released (another group's, or one whose manifest is gone): release that snapshot first (`cgsnap list --json` names its overlays), or commit the overlay back with `virsh blockcommit {domain} {target} --active --pivot`"
    )]
    OnOverlay {
        domain: String,
        target: String,
        path: String,
    },
    #[error(
        "overlay {path} already exists: remove it if no domain uses it, or release the snapshot that owns it"
    )]
    OverlayExists { path: PathBuf },
    #[error(
        "disks {first} and {second} would share the overlay {path}: two daemons of this host define domains of one name; rename one of them (`virsh domrename`)"
    )]
    OverlayClash {
        path: String,
        first: String,
        second: String,
    },
    #[error(
        "overlay directory {dir} is not writable ({detail}): fix its permissions or pass --overlay-dir"
    )]
    NotWritable { dir: PathBuf, detail: String },
    #[error(
        "overlay directory {dir} has {free} bytes free, below the {need} required: free space or lower --min-free"
    )]
    NoSpace { dir: PathBuf, free: u64, need: u64 },
    #[error(transparent)]
    Xml(#[from] domxml::XmlError),
    #[error(transparent)]
    Hv(#[from] HvError),
}

impl Classify for PreflightError {
    fn exit_code(&self) -> ExitCode {
        match self {
            PreflightError::Xml(_) => ExitCode::Malformed,
            PreflightError::Hv(e) => e.exit_code(),
            _ => ExitCode::Precondition,
        }
    }
}

/// Free bytes required in each overlay directory unless `--min-free` says otherwise: room for
/// the overlays to grow while the backup reads the frozen images.
pub const DEFAULT_MIN_FREE: u64 = 256 << 20;

pub struct Options<'a> {
    pub id: &'a str,
    /// Put overlays here instead of next to each image (required for block-device disks).
    pub overlay_dir: Option<&'a Path>,
    /// Free bytes required in each overlay directory.
    pub min_free: u64,
}

/// One member, ready to freeze.
pub struct PlannedMember {
    pub member: Member,
    pub domain_xml: String,
    pub disks: Vec<DiskRecord>,
    pub snapshot_xml: String,
}

/// `IMAGE.ID.cgsnap-overlay` next to the image; in a shared `--overlay-dir`, prefixed with the
/// domain and disk target, since images of many VMs often share a file name (per-VM
/// directories each holding `disk0.qcow2`, LVs of one name in several volume groups).
pub fn overlay_path(
    image: &Path,
    id: &str,
    overlay_dir: Option<&Path>,
    domain: &str,
    target: &str,
) -> Option<PathBuf> {
    let name = image.file_name()?.to_string_lossy().to_string();
    Some(match overlay_dir {
        Some(d) => d.join(format!("{domain}.{target}.{name}.{id}.{OVERLAY_SUFFIX}")),
        None => image
            .parent()?
            .join(format!("{name}.{id}.{OVERLAY_SUFFIX}")),
    })
}

fn unsupported(domain: &str, d: &DiskInfo, reason: impl Into<String>) -> PreflightError {
    PreflightError::UnsupportedDisk {
        domain: domain.to_string(),
        target: d.target.clone(),
        reason: reason.into(),
    }
}

fn plan_disk(
    domain: &str,
    d: &DiskInfo,
    opts: &Options,
    local: bool,
) -> Result<(String, String, String), PreflightError> {
    if d.mirror {
        return Err(PreflightError::BlockJob {
            domain: domain.to_string(),
            target: d.target.clone(),
        });
    }
    if d.kind != "file" && d.kind != "block" {
        return Err(unsupported(
            domain,
            d,
            format!(
                "{} disks cannot get a local qcow2 overlay; leave it out of snapshots with snapshot='no' on its <disk> (`virsh edit {domain}`), if it holds nothing to restore",
                d.kind
            ),
        ));
    }
    let Some(src) = d.source.as_deref() else {
        return Err(unsupported(domain, d, "it has no source (empty drive)"));
    };
    // Stacking a second overlay would make this snapshot's "frozen image" a thin overlay of the
    // other one, and that one's release would find its chain changed.
    let suffix = format!(".{OVERLAY_SUFFIX}");
    if let Some(o) = std::iter::once(src)
        .chain(d.backing.iter().map(String::as_str))
        .find(|p| p.ends_with(&suffix))
    {
        return Err(PreflightError::OnOverlay {
            domain: domain.to_string(),
            target: d.target.clone(),
            path: o.to_string(),
        });
    }
    let format = d.format.clone().unwrap_or_default();
    if format != "qcow2" {
        return Err(unsupported(
            domain,
            d,
            format!(
                "format {:?} (only qcow2 images are supported): convert it with `qemu-img convert -O qcow2 {src} NEW.qcow2` and point the domain at NEW.qcow2, or, if it holds nothing to restore (swap, scratch), set snapshot='no' on its <disk> (`virsh edit {domain}`)",
                if format.is_empty() {
                    "unknown"
                } else {
                    &format
                }
            ),
        ));
    }
    if d.kind == "block" && opts.overlay_dir.is_none() {
        return Err(unsupported(
            domain,
            d,
            format!("block device {src} has no directory for its overlay: pass --overlay-dir DIR"),
        ));
    }
    let overlay = overlay_path(Path::new(src), opts.id, opts.overlay_dir, domain, &d.target)
        .ok_or_else(|| {
            unsupported(
                domain,
                d,
                format!("cannot derive an overlay path from {src}"),
            )
        })?;
    // On another host the path means a file there: libvirt refuses the snapshot (atomically)
    // if it exists, since the overlay is not pre-created for remote members.
    if local && overlay.exists() {
        return Err(PreflightError::OverlayExists { path: overlay });
    }
    Ok((
        src.to_string(),
        overlay.to_string_lossy().to_string(),
        format,
    ))
}

/// Check the directory can take a new overlay: writable and with enough free space.
pub fn check_dir(dir: &Path, min_free: u64) -> Result<(), PreflightError> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| {
        PreflightError::NotWritable {
            dir: dir.to_path_buf(),
            detail: "path contains NUL".into(),
        }
    })?;
    // SAFETY: valid NUL-terminated path.
    let writable = unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0;
    if !writable {
        return Err(PreflightError::NotWritable {
            dir: dir.to_path_buf(),
            detail: std::io::Error::last_os_error().to_string(),
        });
    }
    let st = crate::release::room::statvfs(dir).map_err(|e| PreflightError::NotWritable {
        dir: dir.to_path_buf(),
        detail: e.to_string(),
    })?;
    if st.f_flag & libc::ST_RDONLY != 0 {
        return Err(PreflightError::NotWritable {
            dir: dir.to_path_buf(),
            detail: "read-only file system".into(),
        });
    }
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if free < min_free {
        return Err(PreflightError::NoSpace {
            dir: dir.to_path_buf(),
            free,
            need: min_free,
        });
    }
    Ok(())
}

/// The overlay directory of a member on another host: its files are not ours to look at, so
/// its free space comes from the libvirt storage pool whose target it is. Without such a pool
/// it is not checked here; libvirt still refuses, atomically, an overlay it cannot create.
fn check_remote_dir(
    host: &dyn crate::hypervisor::Host,
    dir: &Path,
    min_free: u64,
) -> Result<(), PreflightError> {
    match host.pool_free(&dir.to_string_lossy())? {
        Some(free) if free < min_free => Err(PreflightError::NoSpace {
            dir: PathBuf::from(format!("{} on {}", dir.display(), host.uri())),
            free,
            need: min_free,
        }),
        _ => Ok(()),
    }
}

/// Plan one member: state, disks, overlay paths, sizes and its snapshot XML.
pub fn plan_member(member: &Member, opts: &Options) -> Result<PlannedMember, PreflightError> {
    let host = member.host.as_ref();
    let domain = member.domain.as_str();
    let state = host.state(domain)?;
    if state != DomState::Running {
        return Err(PreflightError::NotRunning {
            domain: domain.to_string(),
            uri: host.uri().to_string(),
            state,
        });
    }
    let xml = host.xml(domain)?;
    let disks = domxml::disks(domain, &xml)?;
    let local = crate::hypervisor::is_local(host.uri());
    let mut checked = std::collections::BTreeSet::new();
    let mut records = Vec::new();
    let mut spec = Vec::new();
    for d in &disks {
        if !d.is_snapshotted() {
            spec.push((d.target.clone(), None));
            continue;
        }
        let (image, overlay, format) = plan_disk(domain, d, opts, local)?;
        if host.block_job(domain, &d.target)?.is_some() {
            return Err(PreflightError::BlockJob {
                domain: domain.to_string(),
                target: d.target.clone(),
            });
        }
        // Once per directory: a member's disks usually share one, and on another host each
        // check refreshes a storage pool.
        if let Some(dir) = Path::new(&overlay).parent()
            && checked.insert(dir.to_path_buf())
        {
            if local {
                check_dir(dir, opts.min_free)?;
            } else {
                check_remote_dir(host, dir, opts.min_free)?;
            }
        }
        let virtual_size = host.capacity(domain, &d.target)?;
        spec.push((d.target.clone(), Some(overlay.clone())));
        records.push(DiskRecord {
            target: d.target.clone(),
            image,
            overlay,
            format,
            virtual_size,
        });
    }
    if records.is_empty() {
        return Err(PreflightError::NoDisks {
            domain: domain.to_string(),
        });
    }
    Ok(PlannedMember {
        member: member.clone(),
        snapshot_xml: domxml::snapshot_xml(opts.id, &spec),
        domain_xml: xml,
        disks: records,
    })
}

/// Plan every member, then check that no two disks were given the same overlay file: two
/// QEMUs writing one overlay, or a rollback of one member deleting the file the other runs on,
/// would lose data. Overlay names make that impossible but for one case: in a shared
/// `--overlay-dir`, domains of one name on two daemons of this host (system and session).
pub fn plan_group(
    members: &[Member],
    opts: &Options,
) -> Result<Vec<PlannedMember>, PreflightError> {
    let plans = members
        .iter()
        .map(|m| plan_member(m, opts))
        .collect::<Result<Vec<_>, _>>()?;
    check_unique_overlays(&plans)?;
    Ok(plans)
}

/// No overlay path planned twice on one host (all local URIs share this host's files).
pub fn check_unique_overlays(plans: &[PlannedMember]) -> Result<(), PreflightError> {
    let mut seen = std::collections::BTreeMap::new();
    for p in plans {
        let uri = p.member.host.uri();
        let host = if crate::hypervisor::is_local(uri) {
            ""
        } else {
            uri
        };
        for d in &p.disks {
            // Both are called the same: only the host tells them apart.
            let who = format!("{}/{} ({uri})", p.member.domain, d.target);
            if let Some(first) = seen.insert((host, d.overlay.as_str()), who.clone()) {
                return Err(PreflightError::OverlayClash {
                    path: d.overlay.clone(),
                    first,
                    second: who,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::Host;
    use crate::hypervisor::fake::FakeHost;
    use std::sync::Arc;

    fn xml(dir: &Path, fmt: &str, kind: &str) -> String {
        format!(
            "<domain><devices><disk type='{kind}' device='disk'><driver type='{fmt}'/><source file='{}/a.qcow2'/><target dev='vda'/></disk>\
             <disk type='file' device='cdrom'><source file='/x.iso'/><target dev='hdc'/><readonly/></disk></devices></domain>",
            dir.display()
        )
    }

    /// One qcow2 disk on `top`, backed by `below`.
    fn chained(top: &str, below: &str) -> String {
        crate::hypervisor::fake::one_disk(
            top,
            &format!(
                "<backingStore type='file'><format type='qcow2'/><source file='{below}'/></backingStore>"
            ),
        )
    }

    fn member(h: &Arc<FakeHost>, name: &str) -> Member {
        Member {
            host: h.clone() as Arc<dyn Host>,
            domain: name.into(),
            state: DomState::Running,
        }
    }

    fn opts() -> Options<'static> {
        Options {
            id: "g-1",
            overlay_dir: None,
            min_free: 0,
        }
    }

    #[test]
    fn images_of_one_file_name_never_share_an_overlay() {
        let t = tempfile::tempdir().expect("tmp");
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir(&a).expect("mkdir");
        std::fs::create_dir(&b).expect("mkdir");
        let h = Arc::new(FakeHost::new("qemu:///system"));
        h.add("x", &xml(&a, "qcow2", "file"));
        h.add("y", &xml(&b, "qcow2", "file"));
        let both = [member(&h, "x"), member(&h, "y")];
        // Next to their images, and in one overlay directory for both (a.qcow2 twice).
        let dir = t.path().join("ovl");
        std::fs::create_dir(&dir).expect("mkdir");
        let o = Options {
            overlay_dir: Some(&dir),
            ..opts()
        };
        for opts in [&opts(), &o] {
            let plans = plan_group(&both, opts).expect("distinct overlays");
            assert_ne!(plans[0].disks[0].overlay, plans[1].disks[0].overlay);
        }
        // One domain name on two daemons of this host, one overlay directory: refused.
        let session = Arc::new(FakeHost::new("qemu:///session"));
        session.add("x", &xml(&b, "qcow2", "file"));
        let e = plan_group(&[member(&h, "x"), member(&session, "x")], &o)
            .err()
            .expect("clash");
        assert!(matches!(e, PreflightError::OverlayClash { .. }), "{e}");
        assert!(
            e.to_string().contains(
                "disks x/vda (qemu:///system) and x/vda (qemu:///session) would share the overlay"
            ),
            "{e}"
        );
        assert_eq!(e.exit_code(), ExitCode::Precondition);
        // The same path on another host names another file.
        let far = Arc::new(FakeHost::new("qemu+tcp://far/system"));
        far.add("x", &xml(&b, "qcow2", "file"));
        plan_group(&[member(&h, "x"), member(&far, "x")], &o).expect("different hosts");
    }

    #[test]
    fn plans_overlay_next_to_image_and_skips_readonly() {
        let t = tempfile::tempdir().expect("tmp");
        let h = Arc::new(FakeHost::new("fake:///"));
        h.add("a", &xml(t.path(), "qcow2", "file"));
        let p = plan_member(&member(&h, "a"), &opts()).expect("plan");
        assert_eq!(p.disks.len(), 1);
        assert_eq!(
            p.disks[0].overlay,
            t.path()
                .join("a.qcow2.g-1.cgsnap-overlay")
                .to_string_lossy()
        );
        assert!(p.snapshot_xml.contains("name='hdc' snapshot='no'"));
    }

    #[test]
    fn refuses_a_disk_already_on_a_snapshot_overlay() {
        let t = tempfile::tempdir().expect("tmp");
        let h = Arc::new(FakeHost::new("fake:///"));
        let d = t.path().display();
        let held = format!("{d}/a.qcow2.other-20261126T000000000Z.cgsnap-overlay");
        h.add("a", &chained(&held, &format!("{d}/a.qcow2")));
        let e = plan_member(&member(&h, "a"), &opts())
            .err()
            .expect("on an overlay");
        let msg = e.to_string();
        assert!(matches!(e, PreflightError::OnOverlay { .. }), "{msg}");
        assert!(
            msg.contains(&held) && msg.contains("virsh blockcommit a vda"),
            "{msg}"
        );
        assert_eq!(e.exit_code(), ExitCode::Precondition);
        // Deeper in the chain counts too (an overlay someone snapshotted by hand on top).
        h.add("b", &chained(&format!("{d}/b.manual"), &held));
        let e = plan_member(&member(&h, "b"), &opts())
            .err()
            .expect("overlay below");
        assert!(matches!(e, PreflightError::OnOverlay { .. }), "{e}");
    }

    #[test]
    fn rejects_raw_network_stopped_and_full() {
        let t = tempfile::tempdir().expect("tmp");
        let h = Arc::new(FakeHost::new("fake:///"));
        h.add("raw", &xml(t.path(), "raw", "file"));
        h.add("net", &xml(t.path(), "raw", "network"));
        h.add("off", &xml(t.path(), "qcow2", "file"));
        h.add("ok", &xml(t.path(), "qcow2", "file"));
        h.suspend("off").expect("pause");
        let e = plan_member(&member(&h, "raw"), &opts()).err().expect("raw");
        assert!(
            e.to_string().contains("disk vda of raw") && e.to_string().contains("qemu-img convert")
        );
        assert_eq!(e.exit_code(), ExitCode::Precondition);
        assert!(e.to_string().contains("snapshot='no'"), "{e}");
        let e = plan_member(&member(&h, "net"), &opts()).err().expect("net");
        assert!(e.to_string().contains("network disks"));
        // A raw disk the domain itself excludes: planned without it.
        let d = t.path().display();
        h.add(
            "swap",
            &format!(
                "<domain><devices>\
                 <disk type='file' device='disk' snapshot='no'><driver type='raw'/><source file='{d}/swap.raw'/><target dev='vda'/></disk>\
                 <disk type='file' device='disk'><driver type='qcow2'/><source file='{d}/b.qcow2'/><target dev='vdb'/></disk>\
                 </devices></domain>"
            ),
        );
        let p = plan_member(&member(&h, "swap"), &opts()).expect("swap disk left out");
        assert_eq!(p.disks.len(), 1);
        assert_eq!(p.disks[0].target, "vdb");
        assert!(
            p.snapshot_xml.contains("name='vda' snapshot='no'"),
            "{}",
            p.snapshot_xml
        );
        let e = plan_member(&member(&h, "off"), &opts()).err().expect("off");
        assert!(e.to_string().contains("member off (fake:///) is paused"));
        let o = Options {
            min_free: u64::MAX,
            ..opts()
        };
        let e = plan_member(&member(&h, "ok"), &o).err().expect("space");
        assert!(matches!(e, PreflightError::NoSpace { .. }));
    }

    #[test]
    fn another_host_s_directories_are_checked_through_its_pools_never_here() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().display();
        let h = Arc::new(FakeHost::new("fake://far/"));
        h.add(
            "db",
            &crate::hypervisor::fake::one_disk(&format!("{d}/a.qcow2"), ""),
        );
        // Here the directory is full and an overlay of that name exists: neither is the far
        // host's business.
        let mut p = plan_member(&member(&h, "db"), &opts()).expect("planned");
        std::fs::write(&p.disks.remove(0).overlay, b"someone else's").expect("file here");
        let o = Options {
            min_free: u64::MAX,
            ..opts()
        };
        plan_member(&member(&h, "db"), &o).expect("not checked here, no pool there");
        h.pools
            .lock()
            .expect("pools")
            .insert(t.path().to_string_lossy().into(), 1 << 20);
        let e = plan_member(&member(&h, "db"), &o)
            .err()
            .expect("pool too small");
        assert!(matches!(e, PreflightError::NoSpace { .. }), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("{d} on fake://far/ has 1048576 bytes free")),
            "{e}"
        );
        plan_member(&member(&h, "db"), &opts()).expect("room in the pool");
    }
}
