//! The contract with backup schedulers: `cgsnap hook pre|post --group G [--token T]`.
//!
//! - `pre` takes a group snapshot; on success the frozen images can be read by the backup tool
//!   (overlays match `*.cgsnap-overlay` and should be excluded). Exit codes are those of
//!   `cgsnap snapshot`; a second `pre` without `post` exits 6 and changes nothing. With a token,
//!   the manifest carries it (`hook_token`) from its first write, so a snapshot that failed,
//!   is still pending or whose rollback was incomplete belongs to its job too.
//! - `post --token T` releases only the outstanding snapshots whose token is T: the snapshot
//!   of another job (another token, or none) is never touched, so a job whose `pre` failed
//!   (busy, outstanding) and whose scheduler runs `post` anyway cannot release the snapshot a
//!   concurrent job is still reading. Each such snapshot is named in a note
//!   ([`Note::OtherJobs`], on stderr) with the way to release it, and `post` exits 0.
//! - `post` without a token releases every outstanding snapshot of the group: for manual use
//!   only, unsafe while another job of the group may be running.
//! - `post` is safe without a `pre`, when called twice, and after a failed `pre` of its own job
//!   (it then finishes the rollback): with nothing to release it prints so and exits 0.
//! - Each prints exactly one summary line on stdout; errors and notes go to stderr. The line of
//!   a `pre` that took a negative control (`--unsafe-stagger`, `--unsafe-disk-order`) names
//!   no freeze window and ends with its `NOT CONSISTENT (negative control)` line.
//! - A token is 1 to [`MAX_TOKEN`] printable ASCII characters without spaces; an empty or
//!   malformed one is a usage error, never a silent fallback to "release everything".
//! - `pre --backup-to STAGING` takes a backup cut instead ([`backup`]): exported into the
//!   staging directory and ended within `pre`, so nothing is held between the hooks and a
//!   second `pre` is a new cut. `post` ends whatever backup cut of its job is still
//!   outstanding (a `pre` whose export or end failed) with `backup end`, never a merge, and
//!   releases overlay snapshots as before: `post` is the same call in both modes.

pub mod backup;

use crate::backup::BackupError;
use crate::catalog::Catalog;
use crate::events::{Events, Note};
use crate::hypervisor::Host;
use crate::hypervisor::pool::Pool;
use crate::model::exit::{Classify, ExitCode};
use crate::release::{self, SnapshotReleaseError};
use crate::snapshot::{self, SnapshotError};
use chrono::{DateTime, Utc};
use std::ffi::OsString;
use std::sync::Arc;

/// A failed `post`: a snapshot's release or a backup cut's end.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// Releasing an overlay snapshot failed.
    #[error(transparent)]
    Release(#[from] SnapshotReleaseError),
    /// Ending a backup cut failed (boxed: it is the larger of the two).
    #[error(transparent)]
    End(Box<BackupError>),
}

impl From<BackupError> for PostError {
    fn from(e: BackupError) -> Self {
        PostError::End(Box::new(e))
    }
}

impl Classify for PostError {
    fn exit_code(&self) -> ExitCode {
        match self {
            PostError::Release(e) => e.exit_code(),
            PostError::End(e) => e.exit_code(),
        }
    }
}

/// The environment variable read when `--token` is not given.
pub const TOKEN_ENV: &str = "CGSNAP_HOOK_TOKEN";
/// Longest accepted token, in bytes.
pub const MAX_TOKEN: usize = 128;

/// A hook token that is empty, too long, or not printable ASCII without spaces.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid hook token {token:?} (from {origin}): give 1 to {MAX_TOKEN} printable ASCII characters without spaces, the same for pre and post of one backup job"
)]
pub struct TokenError {
    token: String,
    origin: &'static str,
}

impl Classify for TokenError {
    fn exit_code(&self) -> ExitCode {
        ExitCode::Usage
    }
}

/// The job's token: `--token` when given, else `$CGSNAP_HOOK_TOKEN` when set. A value that is
/// set but empty is refused: a script whose token variable came out empty must not fall back
/// to releasing other jobs' snapshots.
pub fn token(flag: Option<String>, env: Option<OsString>) -> Result<Option<String>, TokenError> {
    let (token, origin) = match (flag, env) {
        (Some(t), _) => (t, "--token"),
        (None, Some(e)) => (e.to_string_lossy().into_owned(), TOKEN_ENV),
        (None, None) => return Ok(None),
    };
    let ok = !token.is_empty()
        && token.len() <= MAX_TOKEN
        && token.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(Some(token))
    } else {
        Err(TokenError { token, origin })
    }
}

/// Take a snapshot of the group (`hook pre`); returns the summary line for the scheduler.
pub fn pre(
    hosts: &[Arc<dyn Host>],
    cat: &Catalog,
    opts: &snapshot::Options,
    now: DateTime<Utc>,
    ev: Events,
) -> Result<String, SnapshotError> {
    let m = snapshot::take(hosts, cat, opts, now, ev)?;
    Ok(pre_line(&m))
}

/// The summary line of `pre`. A negative control has no freeze window; its line ends with the
/// NOT CONSISTENT line instead, after the part scripts read the snapshot's ID from.
fn pre_line(m: &crate::catalog::Manifest) -> String {
    let disks: usize = m.members.iter().map(|x| x.disks.len()).sum();
    let cp = m
        .consistency_point
        .map(|c| c.to_rfc3339())
        .unwrap_or_default();
    let head = format!(
        "cgsnap: snapshot {} of group {} taken: {} members, {} disks",
        m.id,
        m.group,
        m.members.len(),
        disks
    );
    match m.negative_control_line() {
        Some(line) => format!("{head}, consistency point {cp}; {line}"),
        None => format!(
            "{head}, freeze window {:.1} ms, consistency point {cp}",
            m.freeze_window_ms.unwrap_or_default()
        ),
    }
}

/// Release the group's outstanding snapshots of this job (all without a token) and end its
/// outstanding backup cuts; returns the summary line. Once they are done (not after a
/// failure), `ev` is told of each snapshot or cut of another job left outstanding.
pub fn post(
    pool: &Pool,
    cat: &Catalog,
    group: &str,
    token: Option<&str>,
    opts: &release::Options,
    ev: Events,
) -> Result<String, PostError> {
    let (mine, others): (Vec<_>, Vec<_>) = cat
        .outstanding(group)
        .map_err(SnapshotReleaseError::from)?
        .into_iter()
        .partition(|m| token.is_none() || m.hook_token.as_deref() == token);
    let notes = || {
        for m in &others {
            ev.report.note(&Note::OtherJobs {
                id: &m.id,
                group,
                state: m.state,
                token: m.hook_token.as_deref(),
                cut: m.backup.is_some(),
            });
        }
    };
    let job = token.map(|t| format!(" (token {t})")).unwrap_or_default();
    let left = if others.is_empty() {
        String::new()
    } else {
        let ids: Vec<&str> = others.iter().map(|m| m.id.as_str()).collect();
        format!("; left {} of other jobs", ids.join(", "))
    };
    if mine.is_empty() {
        notes();
        return Ok(format!(
            "cgsnap: nothing to release for group {group}{job}{left}"
        ));
    }
    let (mut released, mut ended) = (Vec::new(), Vec::new());
    for m in mine {
        if m.backup.is_some() {
            crate::backup::end(pool, cat, &m.id)?;
            ended.push(m.id);
        } else {
            release::release_snapshot(pool, cat, &m.id, opts, ev)?;
            released.push(m.id);
        }
    }
    notes();
    let mut done = Vec::new();
    if !released.is_empty() {
        done.push(format!("released {}", released.join(", ")));
    }
    if !ended.is_empty() {
        done.push(format!("ended backup cut {}", ended.join(", ")));
    }
    Ok(format!(
        "cgsnap: {} of group {group}{left}",
        done.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Manifest, SnapState};
    use crate::hypervisor::fake::FakeHost;

    /// A process spawned while a group lock is held inherits the lock's descriptor until its
    /// exec (or its failure): the test that spawns a watchdog runs alone, apart from the tests
    /// that take group locks.
    static SPAWNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SPAWNS.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fake_pool() -> Pool {
        let host: Arc<dyn Host> = Arc::new(FakeHost::new("qemu:///system"));
        Pool::new(Box::new(move |_| Ok(host.clone())))
    }

    /// An outstanding snapshot without disks: releasing it only changes its state.
    fn held(cat: &Catalog, id: &str, token: Option<&str>, state: SnapState) {
        let mut m = Manifest::new(id, "g", state, Utc::now());
        m.hook_token = token.map(str::to_string);
        cat.write(&m).expect("write manifest");
    }

    fn state(cat: &Catalog, id: &str) -> SnapState {
        cat.load(id).expect("load").state
    }

    /// `post` with a reporter of its own; its summary and notes.
    fn post_noted(
        pool: &Pool,
        cat: &Catalog,
        token: Option<&str>,
        opts: &release::Options,
    ) -> (String, Vec<String>) {
        let notes = crate::events::Collected::default();
        let summary = post(pool, cat, "g", token, opts, Events::reporting(&notes)).expect("post");
        (summary, notes.lines())
    }

    #[test]
    fn post_with_a_token_releases_only_its_own_jobs_snapshot() {
        let _serial = serial();
        let t = tempfile::tempdir().expect("tmp");
        let cat = Catalog::open(&t.path().join("cat")).expect("catalog");
        let pool = fake_pool();
        held(&cat, "g-1", Some("job-1"), SnapState::Taken);
        held(&cat, "g-2", Some("job-2"), SnapState::Failed);
        held(&cat, "g-3", None, SnapState::Pending);
        let opts = release::Options::default();

        let r = post_noted(&pool, &cat, Some("job-2"), &opts);
        assert_eq!(
            r.0,
            "cgsnap: released g-2 of group g; left g-1, g-3 of other jobs"
        );
        assert_eq!(state(&cat, "g-2"), SnapState::Released);
        assert_eq!(state(&cat, "g-1"), SnapState::Taken, "job 1 still reads it");
        assert_eq!(state(&cat, "g-3"), SnapState::Pending);
        assert_eq!(r.1.len(), 2, "{:?}", r.1);
        assert!(
            r.1[0].contains("snapshot g-1 of group g (taken, token job-1)")
                && r.1[0].contains("`cgsnap release g-1`"),
            "{}",
            r.1[0]
        );
        assert!(r.1[1].contains("(pending, no token)"), "{}", r.1[1]);

        // A job whose pre failed (busy, outstanding) releases nothing of the others.
        let r = post_noted(&pool, &cat, Some("job-9"), &opts);
        assert_eq!(
            r.0,
            "cgsnap: nothing to release for group g (token job-9); left g-1, g-3 of other jobs"
        );
        assert_eq!(state(&cat, "g-1"), SnapState::Taken);

        // Its own job's post does release it.
        let r = post_noted(&pool, &cat, Some("job-1"), &opts);
        assert_eq!(
            r.0,
            "cgsnap: released g-1 of group g; left g-3 of other jobs"
        );
        assert_eq!(state(&cat, "g-1"), SnapState::Released);

        // Without a token (manual use): everything outstanding.
        let r = post_noted(&pool, &cat, None, &opts);
        assert_eq!(r.0, "cgsnap: released g-3 of group g");
        assert!(r.1.is_empty());
        assert_eq!(state(&cat, "g-3"), SnapState::Released);
    }

    #[test]
    fn post_with_a_token_and_nothing_held_has_nothing_to_release() {
        let _serial = serial();
        let t = tempfile::tempdir().expect("tmp");
        let cat = Catalog::open(&t.path().join("cat")).expect("catalog");
        let pool = fake_pool();
        let opts = release::Options::default();
        let r = post_noted(&pool, &cat, Some("job-1"), &opts);
        assert_eq!(r.0, "cgsnap: nothing to release for group g (token job-1)");
        assert!(r.1.is_empty());
        // Finished snapshots of the same job are not outstanding: still nothing.
        held(&cat, "g-1", Some("job-1"), SnapState::Released);
        held(&cat, "g-2", Some("job-1"), SnapState::Aborted);
        let r = post_noted(&pool, &cat, Some("job-1"), &opts);
        assert_eq!(r.0, "cgsnap: nothing to release for group g (token job-1)");
        let r = post_noted(&pool, &cat, None, &opts);
        assert_eq!(r.0, "cgsnap: nothing to release for group g");
    }

    #[test]
    fn pre_records_its_token_from_the_first_manifest_write() {
        let _serial = serial();
        let t = tempfile::tempdir().expect("tmp");
        let cat = Catalog::open(&t.path().join("cat")).expect("catalog");
        let hosts = crate::group::db_in_groups(t.path(), &["g"]);
        // No watchdog can start: the snapshot is abandoned after its pending manifest was
        // written and before anything froze. That manifest already names the job.
        let opts = snapshot::Options {
            group: "g".into(),
            freeze_budget: std::time::Duration::from_secs(2),
            overlay_dir: None,
            min_free: 0,
            precreate: false,
            exe: t.path().join("no-such-cgsnap"),
            release: release::Options::default(),
            connect_each: None,
            unsafe_stagger: None,
            unsafe_disk_order: None,
            resume: crate::snapshot::protocol::Resume::default(),
            hook_token: Some("job-1".into()),
        };
        let e = pre(&hosts, &cat, &opts, Utc::now(), Events::NONE).expect_err("no watchdog");
        assert!(e.to_string().contains("no-such-cgsnap"), "{e}");
        let all = cat.list().expect("list");
        assert_eq!(all.len(), 1, "one manifest");
        assert_eq!(all[0].state, SnapState::Aborted);
        assert_eq!(all[0].hook_token.as_deref(), Some("job-1"));
        assert_eq!(
            hosts[0].state_rechecked("db").expect("state"),
            crate::hypervisor::DomState::Running
        );
    }

    #[test]
    fn pre_marks_a_negative_control_and_gives_it_no_freeze_window() {
        let mut m = Manifest::new("g-1", "g", SnapState::Taken, Utc::now());
        m.freeze_window_ms = Some(12.5);
        let real = pre_line(&m);
        assert!(
            real.starts_with(
                "cgsnap: snapshot g-1 of group g taken: 0 members, 0 disks, freeze window 12.5 ms"
            ),
            "{real}"
        );
        assert!(!real.contains("NOT CONSISTENT"), "{real}");
        m.freeze_window_ms = None;
        m.unsafe_stagger_ms = Some(1000);
        let control = pre_line(&m);
        assert!(
            control.starts_with("cgsnap: snapshot g-1 of group g taken: "),
            "scripts still find the ID: {control}"
        );
        assert!(
            control.contains("; NOT CONSISTENT (negative control): members cut 1000 ms apart"),
            "{control}"
        );
        assert!(!control.contains("freeze window"), "{control}");
    }

    #[test]
    fn tokens_come_from_the_flag_then_the_environment_and_empty_is_refused() {
        let env = |s: &str| Some(OsString::from(s));
        assert_eq!(token(None, None).expect("none"), None);
        assert_eq!(
            token(Some("a".into()), env("b")).expect("flag"),
            Some("a".into())
        );
        assert_eq!(token(None, env("b-12")).expect("env"), Some("b-12".into()));
        for (flag, e) in [
            (Some(String::new()), None),
            (None, env("")),
            (Some("two words".into()), None),
            (Some("x".repeat(MAX_TOKEN + 1)), None),
        ] {
            let err = token(flag, e).expect_err("refused");
            assert_eq!(err.exit_code(), ExitCode::Usage);
            assert!(err.to_string().contains("invalid hook token"), "{err}");
        }
    }
}
