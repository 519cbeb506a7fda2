//! The catalog: versioned JSON manifests of group snapshots (its locks: [`crate::lock`]).
//!
//! Layout under the catalog directory (default `/var/lib/cgsnap`):
//! `snapshots/<ID>.json` (one manifest per snapshot), `locks/<GROUP>.lock`, `reports/<ID>/`
//! (verification reports) and `metrics/cgsnap.prom` (the default metrics directory).
//!
//! Invariants:
//! - A manifest is written to a temporary file, fsynced, renamed over the old one and the
//!   directory fsynced: a reader sees the old or the new manifest, never a torn one.
//! - A manifest is written *before* anything is frozen (state `pending`), so a crash at any
//!   later point leaves a record of every overlay that may exist; `release` can finish it.
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

use crate::exit::{Classify, ExitCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const FORMAT_VERSION: u32 = 2;
/// Formats this cgsnap reads: 1 had release marks without a host (see [`Marked::Legacy`]).
pub const READ_VERSIONS: [u32; 2] = [1, FORMAT_VERSION];
pub const DEFAULT_DIR: &str = "/var/lib/cgsnap";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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
pub struct Phases {
    pub preflight_ms: f64,
    pub pause_ms: f64,
    pub snapshot_ms: f64,
    pub resume_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskRecord {
    pub target: String,
    /// The image the disk wrote to before the snapshot: frozen while the snapshot is held.
    pub image: String,
    /// The qcow2 overlay the disk writes to while the snapshot is held.
    pub overlay: String,
    pub format: String,
    pub virtual_size: u64,
}

/// Who a member is: a domain name is unique on its host only.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId {
    pub uri: String,
    pub domain: String,
}

impl MemberId {
    pub fn new(uri: &str, domain: &str) -> Self {
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
    pub uri: String,
    pub domain: String,
    pub target: String,
}

impl DiskMark {
    pub fn new(member: &MemberId, target: &str) -> Self {
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
    Disk(DiskMark),
    /// A format 1 mark, `DOMAIN/TARGET`, whose domain name several members of the snapshot
    /// share (or none has): whose disk it was is unknown, so it marks nothing, and a release
    /// of the snapshot is refused until it is replaced by a [`DiskMark`].
    Legacy(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberRecord {
    pub domain: String,
    pub uri: String,
    /// Time this member was paused (its own pause call start to its resume call end).
    pub freeze_ms: Option<f64>,
    pub pause_ms: Option<f64>,
    pub snapshot_ms: Option<f64>,
    pub resume_ms: Option<f64>,
    pub domain_xml: String,
    pub disks: Vec<DiskRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub id: String,
    pub group: String,
    /// Changed only through [`Manifest::transition`].
    pub state: SnapState,
    pub created_at: DateTime<Utc>,
    /// Wall-clock instant at which every member was paused.
    pub consistency_point: Option<DateTime<Utc>>,
    /// First pause to last resume.
    pub freeze_window_ms: Option<f64>,
    pub phases: Phases,
    pub members: Vec<MemberRecord>,
    pub error: Option<String>,
    pub released_at: Option<DateTime<Utc>>,
    /// Set only for the negative control `--unsafe-stagger`: NOT a consistent cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsafe_stagger_ms: Option<u64>,
    /// Set only for the negative control `--unsafe-disk-order`: targets cut one by one in this
    /// order (then the rest), `unsafe_disk_gap_ms` apart, nothing paused. NOT a consistent cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsafe_disk_order: Option<Vec<String>>,
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
}

/// What the catalog's readers (metrics, retention) need from a verification report
/// (`reports/ID/report.json`, written by `verify`).
#[derive(Debug, Clone, Deserialize)]
pub struct VerifyView {
    pub verdict: String,
    pub finished_at: DateTime<Utc>,
    pub rpo_seconds: f64,
    pub members: Vec<VerifyMemberView>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VerifyMemberView {
    pub domain: String,
    pub recovery_seconds: Option<f64>,
    pub data_loss_seconds: Option<f64>,
}

impl MemberRecord {
    pub fn id(&self) -> MemberId {
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
        self.unsafe_stagger_ms.is_some() || self.unsafe_disk_order.is_some()
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
    fn upgrade_marks(&mut self) {
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
            unsafe_stagger_ms: None,
            unsafe_disk_order: None,
            unsafe_disk_gap_ms: None,
            hook_token: None,
            commits_started: Vec::new(),
            commits_pivoted: Vec::new(),
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
    pub id: String,
    pub from: SnapState,
    pub to: SnapState,
}

impl Classify for TransitionError {
    fn exit_code(&self) -> ExitCode {
        ExitCode::Internal
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {path}: {source} (check --catalog / CGSNAP_CATALOG and permissions)")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "malformed manifest {path}: {detail}; restore it from a copy or move it out of the catalog"
    )]
    Malformed { path: PathBuf, detail: String },
    #[error("unknown snapshot {id:?}: see `cgsnap list`")]
    UnknownSnapshot { id: String },
    #[error("group {group} has no snapshot in the catalog: nothing to release")]
    NoSnapshot { group: String },
    #[error(
        "another cgsnap run (pid {pid}) holds the lock on group {group}: wait for it to finish, or check `ps -p {pid}`"
    )]
    Busy { group: String, pid: String },
    #[error(
        "another cgsnap run (pid {pid}) has been planning a snapshot for {secs} s (it holds the catalog's planning lock): check `ps -p {pid}`, then run again"
    )]
    PlanningBusy { pid: String, secs: u64 },
}

impl Classify for CatalogError {
    fn exit_code(&self) -> ExitCode {
        match self {
            CatalogError::Io { .. } => ExitCode::Internal,
            CatalogError::Malformed { .. } => ExitCode::Malformed,
            CatalogError::UnknownSnapshot { .. } | CatalogError::NoSnapshot { .. } => {
                ExitCode::NotFound
            }
            CatalogError::Busy { .. } | CatalogError::PlanningBusy { .. } => ExitCode::Busy,
        }
    }
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CatalogError + '_ {
    move |source| CatalogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Replace `path` with `body` atomically: written to `tmp` (same directory), fsynced, renamed
/// over `path`, so a reader sees the old or the new content, never a torn one. An error names
/// the file it concerns.
pub(crate) fn replace_file(
    tmp: &Path,
    path: &Path,
    body: &[u8],
) -> Result<(), (PathBuf, std::io::Error)> {
    let at = |p: &Path| {
        let p = p.to_path_buf();
        move |e| (p, e)
    };
    let mut f = File::create(tmp).map_err(at(tmp))?;
    f.write_all(body).map_err(at(tmp))?;
    f.sync_all().map_err(at(tmp))?;
    fs::rename(tmp, path).map_err(at(path))
}

/// Snapshot IDs sort by time and name their group: `GROUP-YYYYMMDDTHHMMSSmmmZ`.
pub fn new_id(group: &str, now: DateTime<Utc>) -> String {
    format!("{group}-{}", now.format("%Y%m%dT%H%M%S%3fZ"))
}

pub struct Catalog {
    pub(crate) dir: PathBuf,
}

impl Catalog {
    pub fn open(dir: &Path) -> Result<Self, CatalogError> {
        let p = dir.join("snapshots");
        fs::create_dir_all(&p).map_err(io(&p))?;
        // Its owner's alone, like the lock files in it (see crate::lock); best effort on a
        // directory someone else owns.
        let p = dir.join("locks");
        fs::create_dir_all(&p).map_err(io(&p))?;
        let _ = fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `verify` writes the report of snapshot `id` by default.
    pub fn report_dir(&self, id: &str) -> PathBuf {
        self.dir.join("reports").join(id)
    }

    /// The verification reports the catalog holds for `manifests`, by snapshot ID. A report
    /// that cannot be read is left out: it was written by `verify` itself, and a torn one must
    /// not stop the metrics or retention.
    pub fn verifications(&self, manifests: &[Manifest]) -> BTreeMap<String, VerifyView> {
        manifests
            .iter()
            .filter_map(|m| {
                let b = fs::read(self.report_dir(&m.id).join("report.json")).ok()?;
                let v: VerifyView = serde_json::from_slice(&b).ok()?;
                Some((m.id.clone(), v))
            })
            .collect()
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join("snapshots").join(format!("{id}.json"))
    }

    /// Atomically replace the manifest of `m.id`.
    pub fn write(&self, m: &Manifest) -> Result<(), CatalogError> {
        let path = self.path_of(&m.id);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(m).map_err(|e| CatalogError::Malformed {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        replace_file(&tmp, &path, &body).map_err(|(p, e)| io(&p)(e))?;
        self.sync_snapshots_dir()
    }

    /// Make a rename or removal in `snapshots/` durable.
    fn sync_snapshots_dir(&self) -> Result<(), CatalogError> {
        let dir = self.dir.join("snapshots");
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&dir))
    }

    /// Remove the manifest of `id` (retention; the caller holds its group's lock). Removing an
    /// absent manifest succeeds, so an interrupted prune can simply run again.
    pub fn remove(&self, id: &str) -> Result<(), CatalogError> {
        let path = self.path_of(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path)(e)),
            _ => {}
        }
        self.sync_snapshots_dir()
    }

    pub fn parse(path: &Path, body: &[u8]) -> Result<Manifest, CatalogError> {
        let mut m: Manifest =
            serde_json::from_slice(body).map_err(|e| CatalogError::Malformed {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        if !READ_VERSIONS.contains(&m.format_version) {
            return Err(CatalogError::Malformed {
                path: path.to_path_buf(),
                detail: format!(
                    "format_version {} is not supported (this cgsnap reads {} to {FORMAT_VERSION})",
                    m.format_version, READ_VERSIONS[0]
                ),
            });
        }
        m.upgrade_marks();
        Ok(m)
    }

    pub fn load(&self, id: &str) -> Result<Manifest, CatalogError> {
        let path = self.path_of(id);
        let body = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CatalogError::UnknownSnapshot { id: id.to_string() });
            }
            Err(e) => return Err(io(&path)(e)),
        };
        Self::parse(&path, &body)
    }

    /// All manifests, oldest first. A malformed manifest is an error naming its file.
    pub fn list(&self) -> Result<Vec<Manifest>, CatalogError> {
        let dir = self.dir.join("snapshots");
        let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        let mut out = Vec::with_capacity(paths.len());
        for p in paths {
            let body = fs::read(&p).map_err(io(&p))?;
            out.push(Self::parse(&p, &body)?);
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The newest manifest of a group.
    pub fn latest(&self, group: &str) -> Result<Option<Manifest>, CatalogError> {
        Ok(self.list()?.into_iter().rev().find(|m| m.group == group))
    }

    /// Manifests of a group whose overlays may still be in use.
    pub fn outstanding(&self, group: &str) -> Result<Vec<Manifest>, CatalogError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|m| m.group == group && m.state.outstanding())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(id: &str, group: &str, state: SnapState) -> Manifest {
        Manifest::new(id, group, state, Utc::now())
    }

    #[test]
    fn write_load_roundtrip_and_outstanding() {
        let t = tempfile::tempdir().expect("tempdir");
        let c = Catalog::open(t.path()).expect("open");
        c.write(&manifest("g-1", "g", SnapState::Released))
            .expect("write");
        c.write(&manifest("g-2", "g", SnapState::Taken))
            .expect("write");
        assert_eq!(c.load("g-2").expect("load").state, SnapState::Taken);
        let out = c.outstanding("g").expect("outstanding");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].id, "g-2");
        assert_eq!(
            c.latest("g").expect("latest").map(|m| m.id),
            Some("g-2".into())
        );
        assert!(matches!(
            c.load("nope"),
            Err(CatalogError::UnknownSnapshot { .. })
        ));
    }

    #[test]
    fn malformed_and_unknown_fields_are_rejected() {
        let t = tempfile::tempdir().expect("tempdir");
        let c = Catalog::open(t.path()).expect("open");
        let p = t.path().join("snapshots/bad.json");
        fs::write(&p, b"{\"format_version\": 1, \"id\": ").expect("write");
        let e = c.load("bad").unwrap_err();
        assert_eq!(e.exit_code(), ExitCode::Malformed);
        assert!(e.to_string().contains("bad.json"));
        let mut v = serde_json::to_value(manifest("x", "g", SnapState::Taken)).expect("json");
        v["surprise"] = serde_json::json!(1);
        assert!(Catalog::parse(&p, v.to_string().as_bytes()).is_err());
        let mut v = serde_json::to_value(manifest("x", "g", SnapState::Taken)).expect("json");
        v["format_version"] = serde_json::json!(99);
        let e = Catalog::parse(&p, v.to_string().as_bytes()).unwrap_err();
        assert!(e.to_string().contains("format_version 99"));
    }

    /// One test per (from, to) pair: `allowed` or `refused`, as in the module docs' table.
    macro_rules! transitions {
        ($($name:ident: $from:ident -> $to:ident $verdict:ident;)*) => {
            $(
                #[test]
                fn $name() {
                    check(SnapState::$from, SnapState::$to, stringify!($verdict));
                }
            )*

            #[test]
            fn the_cases_are_every_pair_once_and_eight_are_allowed() {
                let cases = [$((SnapState::$from, SnapState::$to, stringify!($verdict))),*];
                for from in SnapState::ALL {
                    for to in SnapState::ALL {
                        let n = cases.iter().filter(|c| (c.0, c.1) == (from, to)).count();
                        assert_eq!(n, 1, "{from} -> {to}");
                    }
                }
                let allowed = cases.iter().filter(|c| c.2 == "allowed").count();
                assert_eq!((cases.len(), allowed), (36, 8));
            }
        };
    }

    fn check(from: SnapState, to: SnapState, verdict: &str) {
        let mut m = manifest("g-1", "g", from);
        match (verdict, m.transition(to)) {
            ("allowed", Ok(())) => assert_eq!(m.state, to),
            ("refused", Err(e)) => {
                assert_eq!(m.state, from, "a refused change changes nothing");
                assert_eq!(
                    e,
                    TransitionError {
                        id: "g-1".into(),
                        from,
                        to
                    }
                );
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("snapshot g-1: state {from} cannot change to {to}")),
                    "{msg}"
                );
                assert_eq!(e.exit_code(), ExitCode::Internal);
            }
            (v, r) => panic!("{from} -> {to}: expected {v}, got {r:?}"),
        }
    }

    transitions! {
        pending_to_pending: Pending -> Pending refused;
        pending_to_taken: Pending -> Taken allowed;
        pending_to_aborted: Pending -> Aborted allowed;
        pending_to_failed: Pending -> Failed allowed;
        pending_to_releasing: Pending -> Releasing allowed;
        pending_to_released: Pending -> Released refused;
        taken_to_pending: Taken -> Pending refused;
        taken_to_taken: Taken -> Taken refused;
        taken_to_aborted: Taken -> Aborted refused;
        taken_to_failed: Taken -> Failed refused;
        taken_to_releasing: Taken -> Releasing allowed;
        taken_to_released: Taken -> Released refused;
        aborted_to_pending: Aborted -> Pending refused;
        aborted_to_taken: Aborted -> Taken refused;
        aborted_to_aborted: Aborted -> Aborted refused;
        aborted_to_failed: Aborted -> Failed refused;
        aborted_to_releasing: Aborted -> Releasing refused;
        aborted_to_released: Aborted -> Released refused;
        failed_to_pending: Failed -> Pending refused;
        failed_to_taken: Failed -> Taken refused;
        failed_to_aborted: Failed -> Aborted refused;
        failed_to_failed: Failed -> Failed refused;
        failed_to_releasing: Failed -> Releasing allowed;
        failed_to_released: Failed -> Released refused;
        releasing_to_pending: Releasing -> Pending refused;
        releasing_to_taken: Releasing -> Taken refused;
        releasing_to_aborted: Releasing -> Aborted refused;
        releasing_to_failed: Releasing -> Failed refused;
        releasing_to_releasing: Releasing -> Releasing allowed;
        releasing_to_released: Releasing -> Released allowed;
        released_to_pending: Released -> Pending refused;
        released_to_taken: Released -> Taken refused;
        released_to_aborted: Released -> Aborted refused;
        released_to_failed: Released -> Failed refused;
        released_to_releasing: Released -> Releasing refused;
        released_to_released: Released -> Released refused;
    }

    #[test]
    fn ids_sort_by_time() {
        let a = new_id("g", DateTime::from_timestamp(1_000, 0).expect("ts"));
        let b = new_id("g", DateTime::from_timestamp(1_001, 5_000_000).expect("ts"));
        assert!(a < b, "{a} {b}");
        assert_eq!(b, "g-19700101T001641005Z");
    }
}
