//! The manifest of a group snapshot: its members, disks, overlays, timings and state, as
//! stored (versioned JSON, see [`crate::catalog`] for where and how it is written).
//!
//! Invariants:
//! - A member is a domain on a host ([`MemberId`]): a group may hold two domains of the same
//!   name on two hosts, so nothing that concerns one member is keyed by its name alone.
//! - Format 2 names the host in every release mark ([`DiskMark`]). A format 1 manifest is
//!   read with each of its marks (`DOMAIN/TARGET`) given to the only member of that name; a
//!   mark whose name several members share is kept as it was ([`Marked::Legacy`]) and the
//!   snapshot is not released until someone says whose it is, never guessed.
//! - A manifest's state changes only through [`Manifest::transition`], which refuses every
//!   change not in this table (a manifest is created `pending`; tests and readers may build
//!   one in any state):
//!
//!   | from        | to          | when                                                   |
//!   |-------------|-------------|--------------------------------------------------------|
//!   | `pending`   | `taken`     | every member was cut and resumed                       |
//!   | `pending`   | `aborted`   | the run failed and every member is back on its images  |
//!   | `pending`   | `failed`    | the run failed and its rollback did not finish         |
//!   | `pending`   | `releasing` | release of a run that died before it ended             |
//!   | `taken`     | `releasing` | release started                                        |
//!   | `failed`    | `releasing` | release of what the rollback left                      |
//!   | `releasing` | `releasing` | release run again after it failed or was interrupted   |
//!   | `releasing` | `released`  | every member released                                  |
//!
//!   `aborted` and `released` are final: nothing of the snapshot is left to change.

use crate::model::exit::{Classify, ExitCode};
pub use crate::model::negative::{ControlKind, NegativeControl};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The manifest format this cgsnap writes (`format_version`).
pub const FORMAT_VERSION: u32 = 2;
/// Formats this cgsnap reads: 1 had release marks without a host (see [`Marked::Legacy`]).
pub const READ_VERSIONS: [u32; 2] = [1, FORMAT_VERSION];
/// The catalog directory when `--catalog` is not given.
pub const DEFAULT_DIR: &str = "/var/lib/cgsnap";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
/// Where a snapshot is in its life cycle (the table in the module docs).
pub enum SnapState {
    /// Recorded before the freeze; overlays may or may not exist yet.
    Pending,
    /// Every disk of every member writes to its overlay; base images are frozen.
    Taken,
    /// Failed and rolled back: no overlay is in use; nothing to release.
    Aborted,
    /// Failed and not fully rolled back: some overlays may still be in use; run release.
    Failed,
    /// Release started and has not finished.
    Releasing,
    /// Every overlay was committed back and removed.
    Released,
}

impl SnapState {
    /// Every state, in the order of their life cycle.
    pub const ALL: [SnapState; 6] = [
        SnapState::Pending,
        SnapState::Taken,
        SnapState::Aborted,
        SnapState::Failed,
        SnapState::Releasing,
        SnapState::Released,
    ];

    /// Whether a manifest in state `self` may change to `to` (the table in the module docs).
    pub fn may_become(self, to: SnapState) -> bool {
        use SnapState::*;
        matches!(
            (self, to),
            (Pending, Taken | Aborted | Failed | Releasing)
                | (Taken | Failed | Releasing, Releasing)
                | (Releasing, Released)
        )
    }

    /// Overlays of this snapshot may still be in use: the group cannot be snapshotted again.
    pub fn outstanding(self) -> bool {
        !matches!(self, SnapState::Aborted | SnapState::Released)
    }
}

impl std::fmt::Display for SnapState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// How long each phase of taking the snapshot lasted, for the whole group.
pub struct Phases {
    /// Milliseconds spent checking and planning the members, before any pause.
    pub preflight_ms: f64,
    /// Milliseconds from the first pause call to the last pause returning.
    pub pause_ms: f64,
    /// Milliseconds from the first snapshot call to the last one returning.
    pub snapshot_ms: f64,
    /// Milliseconds from the first resume call to the last one returning.
    pub resume_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// One disk of a member, switched to an overlay by the snapshot.
pub struct DiskRecord {
    /// The disk's target in the domain (`vda`).
    pub target: String,
    /// The image the disk wrote to before the snapshot: frozen while the snapshot is held.
    pub image: String,
    /// The qcow2 overlay the disk writes to while the snapshot is held.
    pub overlay: String,
    /// Format of `image` (`qcow2`, `raw`): the overlay's backing format.
    pub format: String,
    /// Size of the disk as the guest sees it, in bytes.
    pub virtual_size: u64,
}

/// Who a member is: a domain name is unique on its host only.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId {
    /// The libvirt URI of the member's host.
    pub uri: String,
    /// The domain's name on that host.
    pub domain: String,
}

impl MemberId {
    /// The member `domain` on the host `uri`.
    pub(crate) fn new(uri: &str, domain: &str) -> Self {
        Self {
            uri: uri.to_string(),
            domain: domain.to_string(),
        }
    }
}

impl std::fmt::Display for MemberId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.domain, self.uri)
    }
}

/// One disk of one member, as a release mark names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskMark {
    /// The libvirt URI of the member's host.
    pub uri: String,
    /// The member's domain name on that host.
    pub domain: String,
    /// The disk's target (`vda`).
    pub target: String,
}

impl DiskMark {
    /// The disk `target` of `member`.
    pub(crate) fn new(member: &MemberId, target: &str) -> Self {
        Self {
            uri: member.uri.clone(),
            domain: member.domain.clone(),
            target: target.to_string(),
        }
    }
}

/// An entry of a manifest's release marks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Marked {
    /// A mark naming its disk exactly (format 2).
    Disk(DiskMark),
    /// A format 1 mark, `DOMAIN/TARGET`, whose domain name several members of the snapshot
    /// share (or none has): whose disk it was is unknown, so it marks nothing, and a release
    /// of the snapshot is refused until it is replaced by a [`DiskMark`].
    Legacy(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// One member of a snapshot: who it is, its timings, its definition and its disks.
pub struct MemberRecord {
    /// The domain's name on its host.
    pub domain: String,
    /// The libvirt URI of its host.
    pub uri: String,
    /// Time this member was paused (its own pause call start to its resume call end).
    pub freeze_ms: Option<f64>,
    /// Milliseconds its pause call took; `None` until it was paused.
    pub pause_ms: Option<f64>,
    /// Milliseconds its snapshot call took; `None` until it was snapshotted.
    pub snapshot_ms: Option<f64>,
    /// Milliseconds its resume call took; `None` until it was resumed.
    pub resume_ms: Option<f64>,
    /// Its domain XML as it was before the snapshot (disks on their images).
    pub domain_xml: String,
    /// Every disk the snapshot switched to an overlay.
    pub disks: Vec<DiskRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// The record of one group snapshot, `CATALOG/snapshots/ID.json`: everything a release,
/// a verification or a report needs, written before each step that depends on it.
pub struct Manifest {
    /// The format it was written in (see [`READ_VERSIONS`]).
    pub format_version: u32,
    /// Unique in the catalog: the group's name and a sequence number.
    pub id: String,
    /// The consistency group snapshotted.
    pub group: String,
    /// Changed only through [`Manifest::transition`].
    pub state: SnapState,
    /// When the snapshot was started.
    pub created_at: DateTime<Utc>,
    /// Wall-clock instant at which every member was paused.
    pub consistency_point: Option<DateTime<Utc>>,
    /// First pause to last resume: how long the group was frozen together. `None` for a
    /// negative control, which never was (see [`Manifest::negative_control`]).
    pub freeze_window_ms: Option<f64>,
    /// Duration of each phase of the snapshot.
    pub phases: Phases,
    /// Every member of the group, in the order they are paused.
    pub members: Vec<MemberRecord>,
    /// Why the snapshot failed, for states `aborted` and `failed`.
    pub error: Option<String>,
    /// When the release finished (state `released`).
    pub released_at: Option<DateTime<Utc>>,
    /// Set only for a negative control: what it did (older manifests have only the
    /// `unsafe_*` fields). See [`crate::model::negative`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_control: Option<NegativeControl>,
    /// Set only for the negative control `--unsafe-stagger`: NOT a consistent cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsafe_stagger_ms: Option<u64>,
    /// Set only for the negative control `--unsafe-disk-order`: targets cut one by one in this
    /// order (then the rest), `unsafe_disk_gap_ms` apart, nothing paused. NOT a consistent cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsafe_disk_order: Option<Vec<String>>,
    /// Milliseconds between two cuts of `unsafe_disk_order`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsafe_disk_gap_ms: Option<u64>,
    /// The job that took the snapshot through `hook pre --token T`: `hook post --token T`
    /// releases only snapshots of its own job, so a job whose `pre` failed cannot release the
    /// snapshot another job is still reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_token: Option<String>,
    /// Disks whose commit a release has started, recorded before it starts.
    /// A disk found back on its image is released only if listed: otherwise something else
    /// switched it (the VM was recreated from its old definition, a snapshot call still in
    /// flight) and its overlay may hold the only copy of data, so it is kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commits_started: Vec<Marked>,
    /// Disks a release switched back to their image, recorded before their
    /// overlay is deleted: an overlay left by a crash in between is stale (the guest has
    /// written to the image since) and must never be merged again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commits_pivoted: Vec<Marked>,
    /// Set only for a backup cut (`cgsnap backup begin`): no overlay, nothing to release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<crate::model::backup::BackupRecord>,
}

/// What the catalog's readers (metrics, retention) need from a verification report
/// (`reports/ID/report.json`, written by `verify`).
#[derive(Debug, Clone, Deserialize)]
pub struct VerifyView {
    /// `pass` or `fail`.
    pub verdict: String,
    /// When the verification finished.
    pub finished_at: DateTime<Utc>,
    /// Largest data loss, in seconds, the verification profile allowed (the RPO).
    pub rpo_seconds: f64,
    /// What the verification found for each member.
    pub members: Vec<VerifyMemberView>,
    /// Checks across members (beacon order, profile).
    #[serde(default)]
    pub cross_checks: Vec<CheckView>,
}

/// One check of a verification report.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckView {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// The numbers or the error it was judged on.
    #[serde(default)]
    pub evidence: String,
}

impl VerifyView {
    /// The first failed check as one line (`DOMAIN: CHECK: EVIDENCE`), if any failed.
    pub fn first_error(&self) -> Option<String> {
        let member = self.members.iter().find_map(|m| {
            let c = m.checks.iter().find(|c| !c.ok)?;
            Some(format!("{}: {}: {}", m.domain, c.name, c.evidence))
        });
        let line = member.or_else(|| {
            let c = self.cross_checks.iter().find(|c| !c.ok)?;
            Some(format!("{}: {}", c.name, c.evidence))
        })?;
        Some(line.lines().next().unwrap_or_default().to_string())
    }

    /// The largest value of `f` over the members that measured it.
    pub fn max_of(&self, f: impl Fn(&VerifyMemberView) -> Option<f64>) -> Option<f64> {
        self.members.iter().filter_map(f).reduce(f64::max)
    }
}

/// One member of a verification report.
#[derive(Debug, Clone, Deserialize)]
pub struct VerifyMemberView {
    /// The member's domain name.
    pub domain: String,
    /// Seconds from boot of the restored copy to its database ready (the RTO), when measured.
    pub recovery_seconds: Option<f64>,
    /// Seconds between the consistency point and the newest recovered beacon, when found.
    pub data_loss_seconds: Option<f64>,
    /// Every check of the member, in the order made.
    #[serde(default)]
    pub checks: Vec<CheckView>,
}

impl MemberRecord {
    /// Who this member is.
    pub(crate) fn id(&self) -> MemberId {
        MemberId::new(&self.uri, &self.domain)
    }

    /// A member as planned, before it is frozen (no timings yet).
    pub fn new(domain: &str, uri: &str, domain_xml: String, disks: Vec<DiskRecord>) -> Self {
        Self {
            domain: domain.to_string(),
            uri: uri.to_string(),
            freeze_ms: None,
            pause_ms: None,
            snapshot_ms: None,
            resume_ms: None,
            domain_xml,
            disks,
        }
    }
}

impl Manifest {
    /// Taken with `--unsafe-stagger` or `--unsafe-disk-order`: a test of verifiers, never a
    /// consistent cut, so never a backup or DR evidence.
    pub fn is_negative_control(&self) -> bool {
        self.negative_control.is_some()
            || self.unsafe_stagger_ms.is_some()
            || self.unsafe_disk_order.is_some()
    }

    /// The one line that names a negative control wherever it is shown, starting with
    /// [`crate::model::negative::MARK`]; `None` for a real snapshot. Older manifests give it
    /// from their `unsafe_*` fields, without the numbers they did not record.
    pub fn negative_control_line(&self) -> Option<String> {
        crate::model::negative::line(&crate::model::negative::LineParts {
            marker: self.negative_control.as_ref(),
            stagger_ms: self.unsafe_stagger_ms,
            disk_order: self.unsafe_disk_order.as_deref(),
            disk_gap_ms: self.unsafe_disk_gap_ms,
        })
    }

    /// Format 1 marks whose member is unknown (see [`Marked::Legacy`]), each once.
    pub fn unresolved_marks(&self) -> Vec<&str> {
        let set: std::collections::BTreeSet<&str> = self
            .commits_started
            .iter()
            .chain(&self.commits_pivoted)
            .filter_map(|m| match m {
                Marked::Legacy(s) => Some(s.as_str()),
                Marked::Disk(_) => None,
            })
            .collect();
        set.into_iter().collect()
    }

    /// Give each format 1 mark (`DOMAIN/TARGET`) to the only member named DOMAIN, if there is
    /// exactly one; others stay [`Marked::Legacy`]. Then the manifest is of the current format.
    pub(crate) fn upgrade_marks(&mut self) {
        let members: Vec<MemberId> = self.members.iter().map(MemberRecord::id).collect();
        let upgrade = |m: &mut Marked| {
            let Marked::Legacy(s) = m else { return };
            let Some((domain, target)) = s.rsplit_once('/') else {
                return;
            };
            let mut named = members.iter().filter(|id| id.domain == domain);
            if let (Some(id), None) = (named.next(), named.next()) {
                *m = Marked::Disk(DiskMark::new(id, target));
            }
        };
        self.commits_started.iter_mut().for_each(upgrade);
        self.commits_pivoted.iter_mut().for_each(upgrade);
        self.format_version = FORMAT_VERSION;
    }

    /// Change the state to `to`, if the table in the module docs allows it; otherwise nothing
    /// changes and the error names the snapshot and both states.
    pub fn transition(&mut self, to: SnapState) -> Result<(), TransitionError> {
        if !self.state.may_become(to) {
            return Err(TransitionError {
                id: self.id.clone(),
                from: self.state,
                to,
            });
        }
        self.state = to;
        Ok(())
    }

    /// A manifest of the current format with no members, timings or outcome yet.
    pub fn new(id: &str, group: &str, state: SnapState, created_at: DateTime<Utc>) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            id: id.to_string(),
            group: group.to_string(),
            state,
            created_at,
            consistency_point: None,
            freeze_window_ms: None,
            phases: Phases::default(),
            members: vec![],
            error: None,
            released_at: None,
            negative_control: None,
            unsafe_stagger_ms: None,
            unsafe_disk_order: None,
            unsafe_disk_gap_ms: None,
            hook_token: None,
            commits_started: Vec::new(),
            commits_pivoted: Vec::new(),
            backup: None,
        }
    }
}

/// A state change the life cycle does not allow (see the module docs): a bug in cgsnap, or a
/// manifest changed by something else while this run held its group's lock.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "snapshot {id}: state {from} cannot change to {to}; its manifest was left {from}: see `cgsnap show {id}` and report this"
)]
pub struct TransitionError {
    /// The snapshot.
    pub id: String,
    /// Its state, left unchanged.
    pub from: SnapState,
    /// The state refused.
    pub to: SnapState,
}

impl Classify for TransitionError {
    fn exit_code(&self) -> ExitCode {
        ExitCode::Internal
    }
}
