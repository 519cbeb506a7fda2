//! The libvirt adapter: the only module that calls libvirt (through the `virt` crate, and its
//! raw `sys` bindings for the block-job calls the safe wrapper does not expose).
//!
//! Invariants: every libvirt error is turned into an [`HvError`] naming the operation, the domain
//! or disk, and the connection URI; nothing here retries or sleeps, policy lives in the callers.
//! Its kind comes from libvirt's error code and domain ([`kind_of`]); the one thing only the
//! text tells (which file a `VIR_ERR_SYSTEM_ERROR` could not find) is read by
//! [`classify_text`] alone.

use super::{BlockJob, DomState, DomainSummary, Host, HvError, HvErrorKind, HvResult};
use std::ffi::CString;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::enumutil::Enum;
use virt::error::{ErrorDomain, ErrorDomainEnum, ErrorNumber, ErrorNumberEnum};
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::sys;

/// A [`Host`] on a real libvirt connection.
pub struct LibvirtHost {
    uri: String,
    /// Replaced by [`Host::reconnect`] after libvirtd restarted; readers clone the handle.
    conn: std::sync::RwLock<Connect>,
}

impl LibvirtHost {
    /// Open a connection to `uri`; an error of kind [`HvErrorKind::Connection`] if it fails.
    pub fn open(uri: &str) -> HvResult<Self> {
        // libvirt prints every error to stderr by default; we report them ourselves.
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri)).map_err(|e| HvError {
            uri: uri.to_string(),
            op: "connect",
            target: uri.to_string(),
            message: e.message().to_string(),
            kind: HvErrorKind::Connection,
        })?;
        Ok(Self {
            uri: uri.to_string(),
            conn: std::sync::RwLock::new(conn),
        })
    }

    fn conn(&self) -> Connect {
        self.conn.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn err(&self, op: &'static str, target: &str, e: virt::error::Error) -> HvError {
        HvError {
            uri: self.uri.clone(),
            op,
            target: target.to_string(),
            message: e.message().to_string(),
            kind: kind_of(e.code(), e.domain()),
        }
    }

    /// The active storage pool whose target is exactly `dir`, if any.
    fn pool_at(&self, dir: &str) -> HvResult<Option<StoragePool>> {
        match self.conn().lookup_storage_pool_by_target_path(dir) {
            Ok(p) => match p.is_active() {
                Ok(active) => Ok(active.then_some(p)),
                Err(e) => Err(self.err("get storage pool state", dir, e)),
            },
            Err(e) if matches!(e.code(), Enum::Known(ErrorNumber::NoStoragePool)) => Ok(None),
            Err(e) => Err(self.err("look up storage pool", dir, e)),
        }
    }

    /// [`Self::pool_at`], refreshed: a pool learns of files created behind its back (the
    /// snapshot's overlays) and of its free space only when it is refreshed.
    fn refreshed_pool_at(&self, dir: &str) -> HvResult<Option<StoragePool>> {
        let Some(p) = self.pool_at(dir)? else {
            return Ok(None);
        };
        p.refresh(0)
            .map_err(|e| self.err("refresh storage pool", dir, e))?;
        Ok(Some(p))
    }

    /// The file `path` as a volume of the (refreshed) pool of its directory: `None` when no
    /// active pool has that directory as target, `Some(None)` when the pool has no such file.
    fn pool_volume(&self, path: &str) -> HvResult<Option<Option<StorageVol>>> {
        let dir = std::path::Path::new(path)
            .parent()
            .and_then(|d| d.to_str())
            .unwrap_or("/");
        if self.refreshed_pool_at(dir)?.is_none() {
            return Ok(None);
        }
        match self.conn().lookup_storage_vol_by_path(path) {
            Ok(v) => Ok(Some(Some(v))),
            Err(e) if matches!(e.code(), Enum::Known(ErrorNumber::NoStorageVolume)) => {
                Ok(Some(None))
            }
            Err(e) => Err(self.err("look up storage volume", path, e)),
        }
    }

    pub(super) fn last_err(&self, op: &'static str, target: &str) -> HvError {
        self.err(op, target, virt::error::Error::last_error())
    }

    pub(super) fn dom(&self, name: &str) -> HvResult<Domain> {
        self.conn()
            .lookup_domain_by_name(name)
            .map_err(|e| self.err("lookup domain", name, e))
    }

    pub(super) fn cstr(&self, op: &'static str, target: &str, s: &str) -> HvResult<CString> {
        CString::new(s).map_err(|_| HvError {
            uri: self.uri.clone(),
            op,
            target: target.to_string(),
            message: "string contains a NUL byte".into(),
            kind: HvErrorKind::Other,
        })
    }
}

/// The kind of a libvirt error, from its code and the part of libvirt that raised it.
pub fn kind_of(code: ErrorNumberEnum, from: ErrorDomainEnum) -> HvErrorKind {
    use ErrorNumber as N;
    // A broken connection is raised by the RPC layer under many codes (a system error for
    // a reset socket, an internal error for a closed one): its domain says it.
    if from == Enum::Known(ErrorDomain::Rpc) {
        return HvErrorKind::ConnectionLost;
    }
    let Enum::Known(code) = code else {
        return HvErrorKind::Other;
    };
    match code {
        N::NoDomain => HvErrorKind::NoDomain,
        N::NoDomainMetadata => HvErrorKind::NoMetadata,
        N::NoConnect | N::Rpc => HvErrorKind::ConnectionLost,
        N::OperationInvalid => HvErrorKind::OperationInvalid,
        N::NoSupport | N::OperationUnsupported | N::ArgumentUnsupported => HvErrorKind::Unsupported,
        N::SystemError => HvErrorKind::System,
        N::NoDomainBackup => HvErrorKind::NoBackup,
        N::NoDomainCheckpoint => HvErrorKind::NoCheckpoint,
        N::CheckpointInconsistent => HvErrorKind::CheckpointInconsistent,
        _ => HvErrorKind::Other,
    }
}

/// What libvirt's text says where its code does not (see [`classify_text`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LibvirtFailure<'a> {
    /// A disk's own file does not exist (`Cannot access storage file 'PATH' ...: No such
    /// file or directory`).
    StorageMissing {
        /// The missing file.
        path: &'a str,
    },
    /// A disk's backing file does not exist (`Cannot access backing file 'BACKING' of storage
    /// file 'PATH' ...: No such file or directory`).
    BackingMissing {
        /// The missing backing file.
        backing: &'a str,
        /// The image whose backing file it is.
        of: &'a str,
    },
    /// Anything else.
    Other,
}

/// Classify the message of a libvirt error: the one place that reads libvirt's text. libvirt
/// reports a missing disk file as `VIR_ERR_SYSTEM_ERROR` from its storage driver; errno and
/// the file are only in the message.
pub(crate) fn classify_text(message: &str) -> LibvirtFailure<'_> {
    let Some(rest) = message.strip_suffix(": No such file or directory") else {
        return LibvirtFailure::Other;
    };
    // Since libvirt 4.x, the file is followed by the daemon's credentials.
    let rest = match rest.rfind(" (as uid:") {
        Some(i) if rest.ends_with(')') => &rest[..i],
        _ => rest,
    };
    let Some(rest) = rest.strip_suffix('\'') else {
        return LibvirtFailure::Other;
    };
    if let Some(i) = rest.find("Cannot access backing file '") {
        let rest = &rest[i + "Cannot access backing file '".len()..];
        return match rest.split_once("' of storage file '") {
            Some((backing, of)) => LibvirtFailure::BackingMissing { backing, of },
            None => LibvirtFailure::Other,
        };
    }
    match rest.find("Cannot access storage file '") {
        Some(i) => LibvirtFailure::StorageMissing {
            path: &rest[i + "Cannot access storage file '".len()..],
        },
        None => LibvirtFailure::Other,
    }
}

fn map_state(state: i32, reason: i32) -> DomState {
    match state as u32 {
        sys::VIR_DOMAIN_RUNNING => DomState::Running,
        sys::VIR_DOMAIN_PAUSED if reason as u32 == sys::VIR_DOMAIN_PAUSED_USER => {
            DomState::PausedByUser
        }
        sys::VIR_DOMAIN_PAUSED => DomState::PausedOther,
        sys::VIR_DOMAIN_SHUTOFF => DomState::ShutOff,
        _ => DomState::Other,
    }
}

/// libvirt's state and reason of the domain, `None` when the call failed.
fn state_reason(d: &Domain) -> Option<(i32, i32)> {
    let (mut state, mut reason) = (-1, -1);
    // SAFETY: `d` holds a valid domain pointer for the duration of the call; the two
    // out-parameters are plain ints that outlive it.
    let rc = unsafe { sys::virDomainGetState(d.as_ptr(), &mut state, &mut reason, 0) };
    (rc >= 0).then_some((state, reason))
}

fn raw_state(d: &Domain) -> Option<DomState> {
    state_reason(d).map(|(state, reason)| map_state(state, reason))
}

impl Host for LibvirtHost {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn reconnect(&self) -> HvResult<()> {
        let fresh = Self::open(&self.uri)?;
        let conn = fresh.conn();
        *self.conn.write().unwrap_or_else(|p| p.into_inner()) = conn;
        Ok(())
    }

    fn list_domains(&self) -> HvResult<Vec<DomainSummary>> {
        let doms = self
            .conn()
            .list_all_domains(0)
            .map_err(|e| self.err("list domains", &self.uri, e))?;
        let mut out = Vec::with_capacity(doms.len());
        for d in doms {
            // A domain can vanish between listing and inspection; skip it rather than fail.
            let Ok(name) = d.name() else { continue };
            let Some(state) = raw_state(&d) else { continue };
            let persistent = d.is_persistent().unwrap_or(false);
            out.push(DomainSummary {
                name,
                state,
                persistent,
            });
        }
        Ok(out)
    }

    fn state(&self, dom: &str) -> HvResult<DomState> {
        let d = self.dom(dom)?;
        raw_state(&d).ok_or_else(|| self.last_err("get state", dom))
    }

    fn paused_on_io_error(&self, dom: &str) -> HvResult<bool> {
        let d = self.dom(dom)?;
        let (state, reason) = state_reason(&d).ok_or_else(|| self.last_err("get state", dom))?;
        Ok(state as u32 == sys::VIR_DOMAIN_PAUSED
            && reason as u32 == sys::VIR_DOMAIN_PAUSED_IOERROR)
    }

    fn xml(&self, dom: &str) -> HvResult<String> {
        self.dom(dom)?
            .xml_desc(0)
            .map_err(|e| self.err("get XML", dom, e))
    }

    fn uuid(&self, dom: &str) -> HvResult<String> {
        self.dom(dom)?
            .uuid_string()
            .map_err(|e| self.err("get uuid", dom, e))
    }

    fn persistent(&self, dom: &str) -> HvResult<bool> {
        self.dom(dom)?
            .is_persistent()
            .map_err(|e| self.err("get persistence", dom, e))
    }

    fn has_managed_save(&self, dom: &str) -> HvResult<bool> {
        self.dom(dom)?
            .has_managed_save(0)
            .map_err(|e| self.err("check managed save", dom, e))
    }

    fn capacity(&self, dom: &str, disk: &str) -> HvResult<u64> {
        self.dom(dom)?
            .block_info(disk, 0)
            .map(|b| b.capacity)
            .map_err(|e| self.err("get block info", &format!("{dom}/{disk}"), e))
    }

    fn metadata(&self, dom: &str, ns: &str) -> HvResult<Option<String>> {
        let d = self.dom(dom)?;
        match d.metadata(sys::VIR_DOMAIN_METADATA_ELEMENT as i32, Some(ns), 0) {
            Ok(x) => Ok(Some(x)),
            Err(e) => {
                let e = self.err("get metadata", dom, e);
                if e.kind == HvErrorKind::NoMetadata {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    fn set_metadata(&self, dom: &str, ns: &str, key: &str, xml: Option<&str>) -> HvResult<()> {
        let d = self.dom(dom)?;
        let active = d.is_active().map_err(|e| self.err("get state", dom, e))?;
        let persistent = d
            .is_persistent()
            .map_err(|e| self.err("get persistence", dom, e))?;
        // Membership must survive a restart of the VM, so write the persistent config too.
        let mut flags = 0;
        if active {
            flags |= sys::VIR_DOMAIN_AFFECT_LIVE;
        }
        if persistent {
            flags |= sys::VIR_DOMAIN_AFFECT_CONFIG;
        }
        d.set_metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            xml,
            xml.map(|_| key),
            Some(ns),
            flags,
        )
        .map_err(|e| self.err("set metadata", dom, e))
    }

    fn suspend(&self, dom: &str) -> HvResult<()> {
        self.dom(dom)?
            .suspend()
            .map_err(|e| self.err("suspend", dom, e))
    }

    fn resume(&self, dom: &str) -> HvResult<()> {
        self.dom(dom)?
            .resume()
            .map_err(|e| self.err("resume", dom, e))
    }

    fn snapshot(&self, dom: &str, snapshot_xml: &str, reuse: bool) -> HvResult<()> {
        let mut flags = sys::VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
            | sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
            | sys::VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA;
        if reuse {
            flags |= sys::VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT;
        }
        self.dom(dom)?
            .create_snapshot_xml(snapshot_xml, flags)
            .map(|_| ())
            .map_err(|e| self.err("create disk-only snapshot", dom, e))
    }

    fn commit_active(&self, dom: &str, disk: &str, bandwidth: u64) -> HvResult<()> {
        let d = self.dom(dom)?;
        let target = format!("{dom}/{disk}");
        let c = self.cstr("block commit", &target, disk)?;
        // SAFETY: valid domain pointer and NUL-terminated disk name. NULL top is the active
        // layer; NULL base alone would mean the *bottom* of the chain, which for an image that
        // itself has a backing file (a VM cloned from a shared base) would merge the overlay
        // into that shared base. SHALLOW makes the base the overlay's immediate backing file,
        // i.e. exactly the image the snapshot froze.
        let rc = unsafe {
            sys::virDomainBlockCommit(
                d.as_ptr(),
                c.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                bandwidth as std::os::raw::c_ulong,
                sys::VIR_DOMAIN_BLOCK_COMMIT_ACTIVE
                    | sys::VIR_DOMAIN_BLOCK_COMMIT_SHALLOW
                    | sys::VIR_DOMAIN_BLOCK_COMMIT_BANDWIDTH_BYTES,
            )
        };
        if rc < 0 {
            return Err(self.last_err("block commit", &target));
        }
        Ok(())
    }

    fn block_job(&self, dom: &str, disk: &str) -> HvResult<Option<BlockJob>> {
        let d = self.dom(dom)?;
        let target = format!("{dom}/{disk}");
        let c = self.cstr("block job info", &target, disk)?;
        let mut info = sys::virDomainBlockJobInfo {
            type_: 0,
            bandwidth: 0,
            cur: 0,
            end: 0,
        };
        // SAFETY: `info` is a properly sized out-parameter.
        let rc = unsafe { sys::virDomainGetBlockJobInfo(d.as_ptr(), c.as_ptr(), &mut info, 0) };
        match rc {
            0 => Ok(None),
            r if r > 0 => Ok(Some(BlockJob {
                cur: info.cur,
                end: info.end,
            })),
            _ => Err(self.last_err("block job info", &target)),
        }
    }

    fn pivot(&self, dom: &str, disk: &str) -> HvResult<()> {
        self.job_abort(dom, disk, sys::VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT, "pivot")
    }

    fn abort_job(&self, dom: &str, disk: &str) -> HvResult<()> {
        self.job_abort(dom, disk, 0, "abort block job")
    }

    fn set_disk_config(&self, dom: &str, disk_xml: &str) -> HvResult<()> {
        self.dom(dom)?
            .update_device_flags(disk_xml, sys::VIR_DOMAIN_AFFECT_CONFIG)
            .map_err(|e| self.err("update disk definition", dom, e))
    }

    fn pool_free(&self, dir: &str) -> HvResult<Option<u64>> {
        let Some(p) = self.refreshed_pool_at(dir)? else {
            return Ok(None);
        };
        p.info()
            .map(|i| Some(i.available))
            .map_err(|e| self.err("get storage pool info", dir, e))
    }

    fn pool_delete(&self, path: &str) -> HvResult<bool> {
        match self.pool_volume(path)? {
            None => Ok(false),
            Some(None) => Ok(true),
            Some(Some(v)) => {
                v.delete(0)
                    .map_err(|e| self.err("delete storage volume", path, e))?;
                Ok(true)
            }
        }
    }

    fn pool_has(&self, path: &str) -> HvResult<Option<bool>> {
        Ok(self.pool_volume(path)?.map(|v| v.is_some()))
    }

    fn start_helper(&self, name: &str, xml: &str) -> HvResult<()> {
        self.conn()
            .create_domain_xml(
                xml,
                sys::VIR_DOMAIN_START_PAUSED | sys::VIR_DOMAIN_START_AUTODESTROY,
            )
            .map(|_| ())
            .map_err(|e| self.err("start helper domain", name, e))
    }

    fn backup_begin(&self, dom: &str, backup_xml: &str, checkpoint_xml: &str) -> HvResult<()> {
        self.begin_backup(dom, backup_xml, checkpoint_xml)
    }

    fn backup_xml(&self, dom: &str) -> HvResult<Option<String>> {
        self.backup_desc(dom)
    }

    fn backup_abort(&self, dom: &str) -> HvResult<()> {
        self.abort_backup(dom)
    }

    fn checkpoints(&self, dom: &str) -> HvResult<Vec<String>> {
        self.list_checkpoints(dom)
    }

    fn checkpoint_probe(&self, dom: &str, name: &str) -> HvResult<()> {
        self.probe_checkpoint(dom, name)
    }

    fn checkpoint_delete(&self, dom: &str, name: &str, metadata_only: bool) -> HvResult<()> {
        self.delete_checkpoint(dom, name, metadata_only)
    }

    fn destroy(&self, dom: &str) -> HvResult<()> {
        self.dom(dom)?
            .destroy()
            .map_err(|e| self.err("destroy", dom, e))
    }
}

impl LibvirtHost {
    fn job_abort(&self, dom: &str, disk: &str, flags: u32, op: &'static str) -> HvResult<()> {
        let d = self.dom(dom)?;
        let target = format!("{dom}/{disk}");
        let c = self.cstr(op, &target, disk)?;
        // SAFETY: valid domain pointer and NUL-terminated disk name. Without the ASYNC flag the
        // call returns once the job is gone (pivoted or cancelled).
        let rc = unsafe { sys::virDomainBlockJobAbort(d.as_ptr(), c.as_ptr(), flags) };
        if rc < 0 {
            return Err(self.last_err(op, &target));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "libvirt_tests.rs"]
mod tests;
