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

/// Why a member or disk cannot be snapshotted; each message names the domain, disk and fix.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// The member is not running.
    #[error(
        "member {domain} ({uri}) is {state}: start or resume it (`virsh start {domain}`), or remove it from the group (`cgsnap group remove GROUP {domain}`)"
    )]
    NotRunning {
        /// The member's domain.
        domain: String,
        /// Its host.
        uri: String,
        /// Its state instead.
        state: DomState,
    },
    #[error("disk {target} of {domain} is unsupported: {reason}")]
    /// A disk cannot get an overlay (type, format, no source, no directory).
    UnsupportedDisk {
        /// The member's domain.
        domain: String,
        /// The disk target.
        target: String,
        /// Why, and the fix.
        reason: String,
    },
    #[error(
        "disk {target} of {domain} has a block job in flight: wait for it or cancel it (`virsh blockjob {domain} {target} --abort`)"
    )]
    /// A disk has a block job in flight.
    BlockJob {
        /// The member's domain.
        domain: String,
        /// The disk target.
        target: String,
    },
    #[error("member {domain} has no disk to snapshot: remove it from the group")]
    /// The member has no disk to snapshot.
    NoDisks {
        /// The member's domain.
        domain: String,
    },
    #[error(
        "disk {target} of {domain} is on {path}, an overlay of a snapshot not yet released (another group's, or one whose manifest is gone): release that snapshot first (`cgsnap list --json` names its overlays), or commit the overlay back with `virsh blockcommit {domain} {target} --active --pivot`"
    )]
    /// A disk already runs on (or is backed by) an unreleased overlay.
    OnOverlay {
        /// The member's domain.
        domain: String,
        /// The disk target.
        target: String,
        /// That overlay.
        path: String,
    },
    #[error(
        "overlay {path} already exists: remove it if no domain uses it, or release the snapshot that owns it"
    )]
    /// The overlay file this snapshot would create is already there.
    OverlayExists {
        /// The overlay.
        path: PathBuf,
    },
    #[error(
        "disks {first} and {second} would share the overlay {path}: two daemons of this host define domains of one name; rename one of them (`virsh domrename`)"
    )]
    /// Two disks were planned onto one overlay file.
    OverlayClash {
        /// The overlay.
        path: String,
        /// The first disk, as `DOMAIN/TARGET (URI)`.
        first: String,
        /// The second disk, likewise.
        second: String,
    },
    #[error(
        "overlay directory {dir} is not writable ({detail}): fix its permissions or pass --overlay-dir"
    )]
    /// An overlay directory cannot be written.
    NotWritable {
        /// The directory.
        dir: PathBuf,
        /// Why.
        detail: String,
    },
    #[error(
        "overlay directory {dir} has {free} bytes free, below the {need} required: free space or lower --min-free"
    )]
    /// An overlay directory has less free space than required.
    NoSpace {
        /// The directory (with its host when remote).
        dir: PathBuf,
        /// Free bytes.
        free: u64,
        /// Bytes required (`--min-free`).
        need: u64,
    },
    /// A domain's XML could not be parsed.
    #[error(transparent)]
    Xml(#[from] domxml::XmlError),
    /// A libvirt call failed.
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

/// What planning needs besides the members.
pub struct Options<'a> {
    /// The snapshot ID, part of every overlay name.
    pub id: &'a str,
    /// Put overlays here instead of next to each image (required for block-device disks).
    pub overlay_dir: Option<&'a Path>,
    /// Free bytes required in each overlay directory.
    pub min_free: u64,
}

/// One member, ready to freeze.
pub struct PlannedMember {
    /// The member.
    pub member: Member,
    /// Its domain XML as planned, kept in the manifest.
    pub domain_xml: String,
    /// Its disks to cut, each with its overlay.
    pub disks: Vec<DiskRecord>,
    /// The `<domainsnapshot>` XML that cuts them.
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
#[path = "preflight_tests.rs"]
mod tests;
