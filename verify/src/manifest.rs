//! The parts of a cgsnap manifest verification reads (the manifest is the catalog's format).
//!
//! Invariants:
//! - read-only views; unknown fields of the manifest are ignored, so the catalog may grow
//!   without verify changing;
//! - a negative control (`--unsafe-stagger`, `--unsafe-disk-order`) is known by its marker or,
//!   in older manifests, by its `unsafe_*` fields; [`ManifestView::negative_control_line`]
//!   words it as cgsnap's `Manifest::negative_control_line` does (the command line's tests
//!   check both agree), leaving out what the manifest did not record.

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
    /// Set for a negative control: what it did (newer manifests).
    #[serde(default)]
    pub negative_control: Option<NegativeControlView>,
    /// Negative control `--unsafe-stagger`: milliseconds between members.
    #[serde(default)]
    pub unsafe_stagger_ms: Option<u64>,
    /// Negative control `--unsafe-disk-order`: targets cut one by one in this order.
    #[serde(default)]
    pub unsafe_disk_order: Option<Vec<String>>,
    /// Milliseconds between two cuts of `unsafe_disk_order`.
    #[serde(default)]
    pub unsafe_disk_gap_ms: Option<u64>,
    /// Set for a backup cut (`cgsnap backup begin`): its images were never frozen, so it is
    /// verified from its exports only.
    #[serde(default)]
    pub backup: Option<serde_json::Value>,
}

/// The marker of a negative control: never a consistent cut.
#[derive(Debug, Clone, Deserialize)]
pub struct NegativeControlView {
    /// `unsafe-stagger` or `unsafe-disk-order`.
    pub kind: String,
    /// First pause or cut to last resume or cut, in milliseconds (not a freeze window).
    #[serde(default)]
    pub span_ms: Option<f64>,
    /// The deliberate gaps, added up, in milliseconds.
    #[serde(default)]
    pub deliberate_gap_ms: Option<u64>,
    /// The longest a single member was paused (none for the disk order: nothing paused).
    #[serde(default)]
    pub max_member_freeze_ms: Option<f64>,
}

/// How every display of a negative control starts.
pub const NEGATIVE_MARK: &str = "NOT CONSISTENT (negative control)";

impl ManifestView {
    /// Whether the snapshot is a negative control: never consistent, never a restore point.
    pub fn is_negative_control(&self) -> bool {
        self.negative_control_line().is_some()
    }

    /// The one line naming a negative control, starting with [`NEGATIVE_MARK`]; `None` for a
    /// real snapshot.
    pub fn negative_control_line(&self) -> Option<String> {
        let marker = self.negative_control.as_ref();
        let kind = match (marker, self.unsafe_stagger_ms, &self.unsafe_disk_order) {
            (Some(m), _, _) => m.kind.as_str(),
            (None, Some(_), _) => "unsafe-stagger",
            (None, None, Some(_)) => "unsafe-disk-order",
            (None, None, None) => return None,
        };
        let span = |what: &str| {
            let m = marker?;
            let span = m.span_ms?;
            let gaps = m
                .deliberate_gap_ms
                .map(|g| format!(" + deliberate gaps {g} ms"))
                .unwrap_or_default();
            Some(format!("span {span:.0} ms = {what}{gaps}"))
        };
        let mut parts = Vec::new();
        match kind {
            "unsafe-stagger" => {
                parts.push(match self.unsafe_stagger_ms {
                    Some(g) => format!("members cut {g} ms apart"),
                    None => "members cut one after the other".into(),
                });
                let max = marker
                    .and_then(|m| m.max_member_freeze_ms)
                    .map(|f| format!(" (max {f:.0} ms)"))
                    .unwrap_or_default();
                parts.extend(span(&format!("per-member freezes{max}")));
            }
            "unsafe-disk-order" => {
                let order = self
                    .unsafe_disk_order
                    .as_ref()
                    .map(|o| format!(" in order {} (then the rest)", o.join(",")))
                    .unwrap_or_default();
                let gap = self
                    .unsafe_disk_gap_ms
                    .map(|g| format!(", {g} ms apart"))
                    .unwrap_or_default();
                parts.push(format!("disks cut one by one{order}{gap}, nothing paused"));
                parts.extend(span("disk cuts"));
            }
            // A control of a newer cgsnap: still never consistent.
            other => parts.push(other.to_string()),
        }
        parts.push("never a restore point".into());
        Some(format!("{NEGATIVE_MARK}: {}", parts.join("; ")))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn view(extra: serde_json::Value) -> ManifestView {
        let mut v = serde_json::json!({
            "id": "g-1", "group": "g", "state": "taken", "consistency_point": null,
            "freeze_window_ms": null, "members": [], "phases": {"pause_ms": 1.0},
        });
        for (k, x) in extra.as_object().expect("object") {
            v[k] = x.clone();
        }
        serde_json::from_value(v).expect("view")
    }

    #[test]
    fn the_marker_gives_the_whole_line() {
        let m = view(serde_json::json!({
            "unsafe_stagger_ms": 1000,
            "negative_control": {"kind": "unsafe-stagger", "span_ms": 2210.4,
                                 "deliberate_gap_ms": 2000, "max_member_freeze_ms": 104.0},
        }));
        assert_eq!(
            m.negative_control_line().as_deref(),
            Some(
                "NOT CONSISTENT (negative control): members cut 1000 ms apart; span 2210 ms = per-member freezes (max 104 ms) + deliberate gaps 2000 ms; never a restore point"
            )
        );
        let m = view(serde_json::json!({
            "unsafe_disk_order": ["vdc", "vdb"], "unsafe_disk_gap_ms": 1000,
            "negative_control": {"kind": "unsafe-disk-order", "span_ms": 2012.0,
                                 "deliberate_gap_ms": 2000, "max_member_freeze_ms": null},
        }));
        assert_eq!(
            m.negative_control_line().as_deref(),
            Some(
                "NOT CONSISTENT (negative control): disks cut one by one in order vdc,vdb (then the rest), 1000 ms apart, nothing paused; span 2012 ms = disk cuts + deliberate gaps 2000 ms; never a restore point"
            )
        );
    }

    #[test]
    fn old_manifests_are_known_by_their_unsafe_fields() {
        let m = view(serde_json::json!({"unsafe_stagger_ms": 500}));
        assert!(m.is_negative_control());
        assert_eq!(
            m.negative_control_line().as_deref(),
            Some(
                "NOT CONSISTENT (negative control): members cut 500 ms apart; never a restore point"
            )
        );
        let m = view(serde_json::json!({"unsafe_disk_order": ["vdc"]}));
        assert!(
            m.negative_control_line().expect("line").starts_with(
                "NOT CONSISTENT (negative control): disks cut one by one in order vdc"
            )
        );
        assert!(!view(serde_json::json!({})).is_negative_control());
        let m = view(serde_json::json!({"negative_control": {"kind": "unsafe-future"}}));
        assert_eq!(
            m.negative_control_line().as_deref(),
            Some("NOT CONSISTENT (negative control): unsafe-future; never a restore point")
        );
    }
}
