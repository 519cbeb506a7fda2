//! The hypervisor boundary: every call cgsnap makes to libvirt goes through [`Host`].
//!
//! Invariants:
//! - Only `hypervisor::libvirt` talks to libvirt; the protocol, release and group logic see this
//!   trait, so their abort paths can be unit-tested with [`fake::FakeHost`].
//! - A `Host` is one libvirt connection (one URI). Implementations are `Send + Sync` and may be
//!   called from several threads at once (libvirt connections are thread-safe).
//! - Domains are addressed by name; a name is unique within one host.
//! - Disk contents exported over NBD (pull-mode backup) are read only through [`nbd`] (libnbd).

mod backup_api;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod libvirt;
pub mod nbd;
pub mod pool;
pub mod qemu_img;
pub mod qemu_text;
pub mod uri;

pub use uri::is_local;

use std::fmt;

/// Run state of a domain, reduced to what the protocol needs to distinguish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomState {
    /// Running (`VIR_DOMAIN_RUNNING`).
    Running,
    /// Paused by a user/API call (what `suspend` produces; the watchdog only resumes these).
    PausedByUser,
    /// Paused for another reason (I/O error, migration, ...): never resumed by cgsnap.
    PausedOther,
    /// Defined but not running.
    ShutOff,
    /// Any other state (blocked, shutting down, crashed, suspended by the guest).
    Other,
}

impl fmt::Display for DomState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DomState::Running => "running",
            DomState::PausedByUser => "paused",
            DomState::PausedOther => "paused (not by user)",
            DomState::ShutOff => "shut off",
            DomState::Other => "not running",
        };
        f.write_str(s)
    }
}

/// Progress of a block job on one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockJob {
    /// Bytes processed so far.
    pub cur: u64,
    /// Bytes to process in all, as far as the job knows (grows while the guest writes).
    pub end: u64,
}

impl BlockJob {
    /// An active commit is ready to pivot when it has mirrored everything it knows of.
    pub fn is_ready(&self) -> bool {
        self.end > 0 && self.cur == self.end
    }
}

/// Summary of one domain as listed by a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSummary {
    /// The domain's name, unique on its host.
    pub name: String,
    /// Its run state.
    pub state: DomState,
    /// It has a persistent definition (it is not transient).
    pub persistent: bool,
}

/// A libvirt error, with the operation and object it concerned.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.describe())]
pub struct HvError {
    /// The connection the call was made on.
    pub uri: String,
    /// The call that failed (`suspend`, `snapshot`, ...).
    pub op: &'static str,
    /// What it concerned: a domain, `DOMAIN/DISK`, a path.
    pub target: String,
    /// libvirt's message, as it gave it.
    pub message: String,
    /// What went wrong, from libvirt's error code.
    pub kind: HvErrorKind,
}

impl HvError {
    fn describe(&self) -> String {
        if self.kind == HvErrorKind::Connection {
            // A host that cannot be reached names the URI and what to check, once.
            format!(
                "cannot connect to libvirt at {}: {}; check that its daemon runs and that --connect names it",
                self.uri, self.message
            )
        } else {
            format!(
                "{} on {} via {}: {}",
                self.op, self.target, self.uri, self.message
            )
        }
    }
}

/// What went wrong, from libvirt's error code (and, for the connection, from which call
/// failed), never from its message: see `libvirt::kind_of`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HvErrorKind {
    /// `VIR_ERR_NO_DOMAIN`: no domain of that name on the host (it vanished).
    NoDomain,
    /// `VIR_ERR_NO_DOMAIN_METADATA`: the domain has no such metadata element.
    NoMetadata,
    /// The connection could not be opened (the daemon is down, the URI names nothing).
    Connection,
    /// An open connection broke during the call: any error of libvirt's RPC layer
    /// (`VIR_FROM_RPC`), `VIR_ERR_NO_CONNECT`, `VIR_ERR_RPC`.
    ConnectionLost,
    /// `VIR_ERR_OPERATION_INVALID`: the domain's state does not allow the call (e.g. resuming
    /// a running domain).
    OperationInvalid,
    /// `VIR_ERR_NO_SUPPORT`, `VIR_ERR_OPERATION_UNSUPPORTED`, `VIR_ERR_ARGUMENT_UNSUPPORTED`:
    /// this driver or hypervisor cannot do it.
    Unsupported,
    /// `VIR_ERR_SYSTEM_ERROR`: a system call failed on the daemon's host (a file missing or
    /// unreadable); which one and why only its message says (`libvirt::classify_text`).
    System,
    /// `VIR_ERR_NO_DOMAIN_BACKUP`: the domain has no backup job.
    NoBackup,
    /// `VIR_ERR_NO_DOMAIN_CHECKPOINT`: no checkpoint of that name.
    NoCheckpoint,
    /// `VIR_ERR_CHECKPOINT_INCONSISTENT`: a checkpoint's bitmap is missing or broken, so no
    /// incremental can be based on it.
    CheckpointInconsistent,
    /// Any other libvirt error.
    Other,
}

/// The result of a [`Host`] call.
pub type HvResult<T> = Result<T, HvError>;

/// One libvirt connection.
pub trait Host: Send + Sync {
    /// The libvirt URI of this connection.
    fn uri(&self) -> &str;
    /// Replace a connection that broke (libvirtd restarted). The default does nothing.
    fn reconnect(&self) -> HvResult<()> {
        Ok(())
    }
    /// Every domain of the host, running or not.
    fn list_domains(&self) -> HvResult<Vec<DomainSummary>>;
    /// The domain's run state.
    fn state(&self, dom: &str) -> HvResult<DomState>;
    /// [`Host::state`], asked once more over a fresh connection when the first question fails
    /// (the connection died with a libvirtd restart; the domains did not). A domain that is
    /// gone is not asked twice.
    fn state_rechecked(&self, dom: &str) -> HvResult<DomState> {
        match self.state(dom) {
            Err(e) if e.kind != HvErrorKind::NoDomain => {
                let _ = self.reconnect();
                self.state(dom)
            }
            r => r,
        }
    }
    /// Whether the domain is paused because a disk write failed (QEMU stops a guest whose
    /// write hit ENOSPC, e.g. on a full copy-before-write scratch file). The default knows no
    /// such pause.
    fn paused_on_io_error(&self, _dom: &str) -> HvResult<bool> {
        Ok(false)
    }
    /// Live XML of a running domain (inactive XML otherwise).
    fn xml(&self, dom: &str) -> HvResult<String>;
    /// Whether the domain has a persistent definition.
    fn persistent(&self, dom: &str) -> HvResult<bool>;
    /// The domain's UUID (stable across renames, unique on its host).
    fn uuid(&self, dom: &str) -> HvResult<String>;
    /// Whether a shut-off domain has a managed save image: `virsh start` then restores the
    /// saved memory, whose disk sources (the overlays) are those of the moment it was saved.
    fn has_managed_save(&self, _dom: &str) -> HvResult<bool> {
        Ok(false)
    }
    /// Virtual size in bytes of the disk with this target.
    fn capacity(&self, dom: &str, disk: &str) -> HvResult<u64>;
    /// Our metadata element, or `None` when the domain has none.
    fn metadata(&self, dom: &str, ns: &str) -> HvResult<Option<String>>;
    /// Replace (or with `None` remove) our metadata element, live and in the persistent config.
    fn set_metadata(&self, dom: &str, ns: &str, key: &str, xml: Option<&str>) -> HvResult<()>;
    /// Pause the domain's vCPUs (it becomes [`DomState::PausedByUser`]).
    fn suspend(&self, dom: &str) -> HvResult<()>;
    /// Let a paused domain's vCPUs run again.
    fn resume(&self, dom: &str) -> HvResult<()>;
    /// Disk-only, atomic, external snapshot without libvirt metadata.
    /// `reuse` says the overlay files already exist (pre-created) and must be used as they are.
    fn snapshot(&self, dom: &str, snapshot_xml: &str, reuse: bool) -> HvResult<()>;
    /// Start an active commit of the disk's top overlay into its backing image, copying at
    /// most `bandwidth` bytes/s (0: unlimited).
    fn commit_active(&self, dom: &str, disk: &str, bandwidth: u64) -> HvResult<()>;
    /// The block job running on the disk, if any, and its progress.
    fn block_job(&self, dom: &str, disk: &str) -> HvResult<Option<BlockJob>>;
    /// Finish a ready active commit: switch the disk to the base image.
    fn pivot(&self, dom: &str, disk: &str) -> HvResult<()>;
    /// Cancel a block job, leaving the disk on its current top image.
    fn abort_job(&self, dom: &str, disk: &str) -> HvResult<()>;
    /// Replace one disk (matched by its target) in the persistent definition only; the
    /// running domain, if any, is not touched.
    fn set_disk_config(&self, dom: &str, disk_xml: &str) -> HvResult<()>;
    /// Bytes free in the directory `dir` of the daemon's host, from the active storage pool
    /// whose target is that directory (refreshed first); `None` when no pool has it as target.
    /// For hosts whose files cgsnap cannot see; the default knows no pools.
    fn pool_free(&self, _dir: &str) -> HvResult<Option<u64>> {
        Ok(None)
    }
    /// Delete the file `path` on the daemon's host through the active storage pool whose
    /// target is its directory; `false` when no pool has it as target (nothing was done).
    /// A file already gone counts as deleted. The default knows no pools.
    fn pool_delete(&self, _path: &str) -> HvResult<bool> {
        Ok(false)
    }
    /// Whether the file `path` exists on the daemon's host, from the active storage pool whose
    /// target is its directory (refreshed first); `None` when no pool has it as target.
    fn pool_has(&self, _path: &str) -> HvResult<Option<bool>> {
        Ok(None)
    }
    /// Start a transient domain `name` from `xml` with its vCPUs stopped (no guest code ever runs
    /// until it is resumed), tied to this connection: libvirt destroys it when the connection
    /// closes, so a helper cannot outlive the process that started it.
    fn start_helper(&self, name: &str, xml: &str) -> HvResult<()>;
    /// Stop a domain at once (QEMU is asked to quit, then killed).
    fn destroy(&self, dom: &str) -> HvResult<()>;
    /// Start a pull-mode backup job of the (running) domain from `<domainbackup>` XML, creating
    /// the `<domaincheckpoint>` in the same call: both cover the domain's disks at one instant.
    /// The disks' chains are not changed; the job serves each disk over NBD until aborted.
    /// Its scratch files exist already (pre-created, qcow2 of the disk's size): libvirt
    /// neither creates nor deletes them.
    fn backup_begin(&self, dom: &str, _backup_xml: &str, _checkpoint_xml: &str) -> HvResult<()> {
        Err(unsupported(self.uri(), "begin backup", dom))
    }
    /// The running backup job's XML (scratch files, exports), or `None` when there is none.
    fn backup_xml(&self, dom: &str) -> HvResult<Option<String>> {
        Err(unsupported(self.uri(), "get backup XML", dom))
    }
    /// End the domain's backup job (`virDomainAbortJob`): libvirt stops its NBD server once
    /// QEMU has cancelled the per-disk jobs.
    fn backup_abort(&self, dom: &str) -> HvResult<()> {
        Err(unsupported(self.uri(), "abort backup job", dom))
    }
    /// Names of the domain's checkpoints.
    fn checkpoints(&self, dom: &str) -> HvResult<Vec<String>> {
        Err(unsupported(self.uri(), "list checkpoints", dom))
    }
    /// Check that the checkpoint's bitmaps are whole on every disk, by asking libvirt for the
    /// size of what changed since it (which merges them). An error of kind
    /// [`HvErrorKind::CheckpointInconsistent`] or [`HvErrorKind::NoCheckpoint`] says no
    /// incremental can be based on it.
    fn checkpoint_probe(&self, dom: &str, name: &str) -> HvResult<()> {
        Err(unsupported(
            self.uri(),
            "probe checkpoint",
            &format!("{dom}/{name}"),
        ))
    }
    /// Delete a checkpoint (its bitmaps merged into its parent's); `metadata_only` forgets it
    /// without touching the images (the only way for a shut-off domain).
    fn checkpoint_delete(&self, dom: &str, name: &str, _metadata_only: bool) -> HvResult<()> {
        Err(unsupported(
            self.uri(),
            "delete checkpoint",
            &format!("{dom}/{name}"),
        ))
    }
}

/// The error of a [`Host`] that cannot make the call `op`.
fn unsupported(uri: &str, op: &'static str, target: &str) -> HvError {
    HvError {
        uri: uri.to_string(),
        op,
        target: target.to_string(),
        message: "this connection cannot do that".into(),
        kind: HvErrorKind::Unsupported,
    }
}

impl crate::model::exit::Classify for HvError {
    fn exit_code(&self) -> crate::model::exit::ExitCode {
        match self.kind {
            HvErrorKind::NoDomain => crate::model::exit::ExitCode::NotFound,
            _ => crate::model::exit::ExitCode::Hypervisor,
        }
    }
}
