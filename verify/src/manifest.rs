//! The parts of a cgsnap manifest verification reads (the manifest is the catalog's format).
//!
//! Invariant: read-only views; unknown fields of the manifest are ignored, so the catalog may
//! grow without verify changing.

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// One snapshot as verify sees it.
#[derive(Debug, Clone, Deserialize)]
pub struct ManifestView {
    /// Snapshot id.
    pub id: String,
    /// Group the snapshot is of.
    pub group: String,
    /// `taken`, `released`, ...: only held (or, from copies, released) snapshots are verified.
    pub state: String,
    /// The instant every member was paused at (this host's clock).
    pub consistency_point: Option<DateTime<Utc>>,
    /// How long the members were paused, if recorded.
    pub freeze_window_ms: Option<f64>,
    /// The members, in the group's order.
    pub members: Vec<MemberView>,
}

/// One member of a snapshot.
#[derive(Debug, Clone, Deserialize)]
pub struct MemberView {
    /// Domain name.
    pub domain: String,
    /// The libvirt daemon it ran on.
    pub uri: String,
    /// Its domain XML as saved at snapshot time.
    pub domain_xml: String,
    /// Its snapshotted disks.
    pub disks: Vec<DiskView>,
}

/// One snapshotted disk.
#[derive(Debug, Clone, Deserialize)]
pub struct DiskView {
    /// Target (`vda`, ...).
    pub target: String,
    /// The frozen image.
    pub image: String,
    /// Virtual size of the image in bytes, as recorded at snapshot time.
    #[serde(default)]
    pub virtual_size: Option<u64>,
}
