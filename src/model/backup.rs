//! What a manifest records of a backup cut (`cgsnap backup begin`): the checkpoint it made,
//! what it is incremental to, the NBD exports of its running jobs, and its export.
//!
//! Invariants:
//! - A backup cut changes no disk chain: its members' [`crate::model::manifest::DiskRecord`]s
//!   have no overlay (empty), and release never touches it; `backup end` ends it.
//! - States mean: `taken` = every member's backup job runs and serves its disks; `released` =
//!   every job ended. The checkpoint stays after the end; the export record says whether the
//!   cut was read in full, and only such a cut may be the base of the next incremental.
//! - `since` is set exactly when the cut is incremental; `full_reason` says why a cut asked to
//!   be incremental was not.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Full or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupMode {
    /// Every allocated block is read.
    Full,
    /// Only the blocks dirty since the base cut's checkpoint are read.
    Incremental,
}

impl std::fmt::Display for BackupMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackupMode::Full => "full",
            BackupMode::Incremental => "incremental",
        })
    }
}

/// The backup part of a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupRecord {
    /// Full or incremental.
    pub mode: BackupMode,
    /// The checkpoint this cut created on every member (its manifest's id).
    pub checkpoint: String,
    /// The cut this one is incremental to (its checkpoint has the same name).
    pub since: Option<String>,
    /// Why the cut is full though an incremental was asked for.
    pub full_reason: Option<String>,
    /// Directory holding this cut's sockets and scratch files.
    pub scratch_dir: String,
    /// One per member, in the manifest's member order.
    pub members: Vec<BackupMember>,
    /// Set once every disk was exported in full.
    pub export: Option<ExportRecord>,
    /// When the jobs were ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// Free bytes the scratch filesystem must keep (`begin --min-free`): what its export's
    /// guard keeps unless told otherwise. Absent in cuts recorded before the guard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_free: Option<u64>,
}

#[cfg(test)]
impl BackupRecord {
    /// A memberless cut `id` (incremental since `since`, else full) whose export to `dir`
    /// read `bytes_read` bytes, not ended: what unit tests of bases and staging build on.
    pub(crate) fn exported(id: &str, since: Option<&str>, dir: &str, bytes_read: u64) -> Self {
        BackupRecord {
            mode: if since.is_some() {
                BackupMode::Incremental
            } else {
                BackupMode::Full
            },
            checkpoint: id.into(),
            since: since.map(str::to_string),
            full_reason: None,
            scratch_dir: String::new(),
            members: Vec::new(),
            export: Some(ExportRecord {
                dir: dir.into(),
                parent_dir: None,
                finished_at: Utc::now(),
                bytes_read,
                bytes_zeroed: 0,
                seconds: 0.1,
            }),
            ended_at: None,
            min_free: None,
        }
    }
}

/// One member's backup job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupMember {
    /// The member's domain.
    pub domain: String,
    /// Its host.
    pub uri: String,
    /// The unix socket of the job's NBD server.
    pub socket: String,
    /// Every disk the job serves.
    pub disks: Vec<BackupDisk>,
}

/// One disk served by a backup job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupDisk {
    /// The disk's target, also its NBD export name.
    pub target: String,
    /// The disk's image (unchanged by the cut).
    pub image: String,
    /// Size of the disk as the guest sees it, in bytes.
    pub virtual_size: u64,
    /// The job's copy-before-write file.
    pub scratch: String,
    /// Where the disk is served: `nbd+unix:///TARGET?socket=SOCKET`.
    pub nbd_uri: String,
    /// The NBD meta context of the blocks dirty since `since` (incremental cuts only).
    pub dirty_context: Option<String>,
}

/// A completed export of a cut (`cgsnap backup export`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRecord {
    /// The directory the disks were written under, by their absolute image paths.
    pub dir: String,
    /// The export this one's files are backed by (incremental cuts only).
    pub parent_dir: Option<String>,
    /// When the last disk was written.
    pub finished_at: DateTime<Utc>,
    /// Bytes read from the exports.
    pub bytes_read: u64,
    /// Bytes written as zeroes (changed to zero since the base).
    pub bytes_zeroed: u64,
    /// Seconds the export took.
    pub seconds: f64,
}

/// The NBD URI of the export `target` on the unix socket `socket`.
pub fn nbd_uri(target: &str, socket: &str) -> String {
    format!("nbd+unix:///{target}?socket={socket}")
}

/// The meta context libvirt gives an incremental export's dirty blocks (`backup-TARGET`).
pub fn dirty_context(target: &str) -> String {
    format!("qemu:dirty-bitmap:backup-{target}")
}

/// The name of the record an export writes at the top of its directory.
pub const EXPORT_SIDECAR: &str = "cgsnap-export.json";

/// What an export directory holds (`DIR/cgsnap-export.json`): enough for `verify --images` to
/// follow and check a chain of exports without the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSidecar {
    /// `cgsnap.export/1`.
    pub format: String,
    /// The cut exported.
    pub id: String,
    /// Its group.
    pub group: String,
    /// Full or incremental.
    pub mode: BackupMode,
    /// The cut this one is incremental to.
    pub since: Option<String>,
    /// Every disk exported.
    pub disks: Vec<SidecarDisk>,
}

/// One disk of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarDisk {
    /// The member.
    pub domain: String,
    /// The disk's target.
    pub target: String,
    /// The disk's image, whose absolute path the file repeats under the directory.
    pub image: String,
    /// Size of the disk as the guest sees it, in bytes.
    pub virtual_size: u64,
}

/// The sidecar format this cgsnap writes.
pub const SIDECAR_FORMAT: &str = "cgsnap.export/1";
