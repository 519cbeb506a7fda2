//! The marker of a negative control: a snapshot cut on purpose without the group freeze
//! (`--unsafe-stagger`, `--unsafe-disk-order`), to show that verifiers catch what a per-VM or
//! per-disk script gets wrong.
//!
//! Invariants:
//! - A negative control is never consistent: there is no instant at which the group was frozen
//!   together, so its manifest has no freeze window (`freeze_window_ms` is `None`); its
//!   [`NegativeControl::span_ms`] (first pause or cut to last resume or cut) is not one.
//! - Everything that shows a negative control to a person names it with [`line`], which
//!   starts with [`MARK`]; the line is built from what the manifest records, old ones (only
//!   `unsafe_stagger_ms`, `unsafe_disk_order`, `unsafe_disk_gap_ms`) included, and leaves out
//!   what was not recorded rather than guess it.
//! - `cgsnap-verify` reads manifests through its own view and builds the same line; a test of
//!   the command line crate checks both agree.

use serde::{Deserialize, Serialize};

/// How every display of a negative control starts.
pub const MARK: &str = "NOT CONSISTENT (negative control)";

/// Which negative control a snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ControlKind {
    /// `--unsafe-stagger MS`: members paused, cut and resumed one after the other, MS apart.
    UnsafeStagger,
    /// `--unsafe-disk-order T,T`: disks cut one by one, nothing paused.
    UnsafeDiskOrder,
}

/// What a negative control did, as measured while it ran (`negative_control` in a manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NegativeControl {
    /// Which control.
    pub kind: ControlKind,
    /// Milliseconds from the first pause (or disk cut) to the last resume (or disk cut);
    /// `None` when nothing was cut. Not a freeze window: no member was paused for all of it.
    pub span_ms: Option<f64>,
    /// Milliseconds of the deliberate gaps between members (or disk stages), all added up.
    pub deliberate_gap_ms: u64,
    /// The longest a single member was paused; `None` when nothing was paused (disk order).
    pub max_member_freeze_ms: Option<f64>,
}

/// What the display line of a negative control is made from: the marker when recorded, and
/// the fields older manifests have too.
#[derive(Debug, Clone, Copy, Default)]
pub struct LineParts<'a> {
    /// The marker (newer manifests).
    pub marker: Option<&'a NegativeControl>,
    /// `unsafe_stagger_ms`.
    pub stagger_ms: Option<u64>,
    /// `unsafe_disk_order`.
    pub disk_order: Option<&'a [String]>,
    /// `unsafe_disk_gap_ms`.
    pub disk_gap_ms: Option<u64>,
}

/// The one line naming a negative control, starting with [`MARK`]; `None` when `p` is not
/// one. Parts the manifest did not record are left out.
pub fn line(p: &LineParts) -> Option<String> {
    let kind = match (p.marker, p.stagger_ms, p.disk_order) {
        (Some(m), _, _) => m.kind,
        (None, Some(_), _) => ControlKind::UnsafeStagger,
        (None, None, Some(_)) => ControlKind::UnsafeDiskOrder,
        (None, None, None) => return None,
    };
    let mut parts = Vec::new();
    match kind {
        ControlKind::UnsafeStagger => {
            parts.push(match p.stagger_ms {
                Some(g) => format!("members cut {g} ms apart"),
                None => "members cut one after the other".into(),
            });
            if let Some(m) = p.marker
                && let Some(span) = m.span_ms
            {
                let max = m
                    .max_member_freeze_ms
                    .map(|f| format!(" (max {f:.0} ms)"))
                    .unwrap_or_default();
                parts.push(format!(
                    "span {span:.0} ms = per-member freezes{max} + deliberate gaps {} ms",
                    m.deliberate_gap_ms
                ));
            }
        }
        ControlKind::UnsafeDiskOrder => {
            let order = p
                .disk_order
                .map(|o| format!(" in order {} (then the rest)", o.join(",")))
                .unwrap_or_default();
            let gap = p
                .disk_gap_ms
                .map(|g| format!(", {g} ms apart"))
                .unwrap_or_default();
            parts.push(format!("disks cut one by one{order}{gap}, nothing paused"));
            if let Some(m) = p.marker
                && let Some(span) = m.span_ms
            {
                parts.push(format!(
                    "span {span:.0} ms = disk cuts + deliberate gaps {} ms",
                    m.deliberate_gap_ms
                ));
            }
        }
    }
    parts.push("never a restore point".into());
    Some(format!("{MARK}: {}", parts.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stagger() -> NegativeControl {
        NegativeControl {
            kind: ControlKind::UnsafeStagger,
            span_ms: Some(2210.25),
            deliberate_gap_ms: 2000,
            max_member_freeze_ms: Some(104.25),
        }
    }

    #[test]
    fn a_staggered_control_names_its_gap_span_and_largest_freeze() {
        let m = stagger();
        let p = LineParts {
            marker: Some(&m),
            stagger_ms: Some(1000),
            ..LineParts::default()
        };
        assert_eq!(
            line(&p).as_deref(),
            Some(
                "NOT CONSISTENT (negative control): members cut 1000 ms apart; span 2210 ms = per-member freezes (max 104 ms) + deliberate gaps 2000 ms; never a restore point"
            )
        );
    }

    #[test]
    fn a_disk_order_control_names_its_order_gap_and_span() {
        let order = vec!["vdc".to_string(), "vdb".to_string()];
        let m = NegativeControl {
            kind: ControlKind::UnsafeDiskOrder,
            span_ms: Some(2012.0),
            deliberate_gap_ms: 2000,
            max_member_freeze_ms: None,
        };
        let p = LineParts {
            marker: Some(&m),
            disk_order: Some(&order),
            disk_gap_ms: Some(1000),
            ..LineParts::default()
        };
        assert_eq!(
            line(&p).as_deref(),
            Some(
                "NOT CONSISTENT (negative control): disks cut one by one in order vdc,vdb (then the rest), 1000 ms apart, nothing paused; span 2012 ms = disk cuts + deliberate gaps 2000 ms; never a restore point"
            )
        );
    }

    #[test]
    fn old_fields_alone_give_the_line_without_what_they_lack() {
        let old = LineParts {
            stagger_ms: Some(500),
            ..LineParts::default()
        };
        assert_eq!(
            line(&old).as_deref(),
            Some(
                "NOT CONSISTENT (negative control): members cut 500 ms apart; never a restore point"
            )
        );
        let order = vec!["vdc".to_string()];
        let old = LineParts {
            disk_order: Some(&order),
            ..LineParts::default()
        };
        assert_eq!(
            line(&old).as_deref(),
            Some(
                "NOT CONSISTENT (negative control): disks cut one by one in order vdc (then the rest), nothing paused; never a restore point"
            )
        );
        assert_eq!(line(&LineParts::default()), None, "not a control");
    }

    #[test]
    fn the_kind_is_written_as_the_flag_is_named() {
        let v = serde_json::to_value(stagger()).expect("json");
        assert_eq!(v["kind"], "unsafe-stagger");
        let back: NegativeControl = serde_json::from_value(v).expect("parse");
        assert_eq!(back, stagger());
    }

    /// A manifest as cgsnap wrote it before the marker existed.
    fn old_manifest(extra: serde_json::Value) -> crate::model::manifest::Manifest {
        let mut v = serde_json::json!({
            "format_version": 2, "id": "g-1", "group": "g", "state": "taken",
            "created_at": "2025-01-02T03:04:05Z", "consistency_point": "2025-01-02T03:04:06Z",
            "freeze_window_ms": 2210.0,
            "phases": {"preflight_ms": 1.0, "pause_ms": 2.0, "snapshot_ms": 3.0, "resume_ms": 4.0},
            "members": [], "error": null, "released_at": null,
        });
        for (k, x) in extra.as_object().expect("object") {
            v[k] = x.clone();
        }
        serde_json::from_value(v).expect("an old manifest parses")
    }

    #[test]
    fn old_manifests_are_still_negative_controls_with_their_line() {
        let m = old_manifest(serde_json::json!({"unsafe_stagger_ms": 1000}));
        assert!(m.is_negative_control() && m.negative_control.is_none());
        assert_eq!(
            m.negative_control_line().as_deref(),
            Some(
                "NOT CONSISTENT (negative control): members cut 1000 ms apart; never a restore point"
            )
        );
        let m = old_manifest(
            serde_json::json!({"unsafe_disk_order": ["vdc", "vdb"], "unsafe_disk_gap_ms": 1000}),
        );
        assert!(m.is_negative_control());
        assert!(
            m.negative_control_line()
                .expect("line")
                .contains("in order vdc,vdb (then the rest), 1000 ms apart")
        );
        let real = old_manifest(serde_json::json!({}));
        assert!(!real.is_negative_control() && real.negative_control_line().is_none());
    }

    #[test]
    fn the_marker_alone_makes_a_negative_control_and_is_written_back() {
        let mut m = old_manifest(serde_json::json!({}));
        m.freeze_window_ms = None;
        m.negative_control = Some(stagger());
        assert!(m.is_negative_control());
        let line = m.negative_control_line().expect("line");
        assert!(line.starts_with(MARK) && line.contains("members cut one after the other"));
        let v = serde_json::to_value(&m).expect("json");
        assert_eq!(v["negative_control"]["deliberate_gap_ms"], 2000);
        let back: crate::model::manifest::Manifest = serde_json::from_value(v).expect("parse");
        assert_eq!(back, m);
        let real = serde_json::to_value(old_manifest(serde_json::json!({}))).expect("json");
        assert!(real.get("negative_control").is_none(), "absent, not null");
    }
}
