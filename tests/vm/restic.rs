//! End to end with restic (Debian package): the shipped `hooks/restic/cgsnap-restic.sh` backs up
//! the frozen images of two running writer guests (two disks each) into a fresh repository; the
//! snapshot must be released afterwards with no overlay left, and the restored images must hold
//! no overlay, pass `qemu-img check`, and show one instant per guest (writer records in order,
//! see `cgsnap_testbeds::record`). Failure paths with the real binary and real VMs: restic
//! cannot open the repository, or has the wrong password, or the script gets SIGTERM during the
//! backup; each time post still ran (released, VMs running on their own images, no overlay) and
//! the script's exit code is restic's (or 143 after SIGTERM).
//!
//! Backup-cut mode (`CGSNAP_BACKUP_TO`): three runs (full; incremental whose restic backup
//! fails; incremental to that one) stage the chain, hold nothing afterwards (no job, every cut
//! ended, disk chains unchanged), and the last restic snapshot alone restores the whole chain
//! with one instant per guest.

use crate::common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../hooks/restic/cgsnap-restic.sh"
);
const PASSWORD: &str = "cgsnap-test-password";

/// The shipped script pointed at this lab's catalog and the built binary; backs up the guests'
/// directories.
fn script(lab: &Lab, group: &str, repo: &Path, password: &str) -> Command {
    let mut c = script_bare(lab, group, repo, password);
    c.args(lab.guests.iter().map(|g| g.dir.clone()));
    c
}

/// The adapter with no PATH: it backs up its default (the staging directory in backup-cut mode).
fn script_bare(lab: &Lab, group: &str, repo: &Path, password: &str) -> Command {
    let mut c = Command::new(SCRIPT);
    c.arg(group)
        .env("CGSNAP", assert_cmd::cargo::cargo_bin("cgsnap"))
        .env("CGSNAP_CATALOG", lab.catalog.path())
        .env("LIBVIRT_DEFAULT_URI", URI)
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD", password);
    c
}

fn restic(repo: &Path, password: &str) -> Command {
    let mut c = Command::new("restic");
    c.arg("--repo")
        .arg(repo)
        .arg("--no-cache")
        .env("RESTIC_PASSWORD", password);
    c
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn init_repo(repo: &Path) {
    ok(
        restic(repo, PASSWORD).arg("init").output().expect("restic"),
        "restic init",
    );
}

fn summary(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(text.lines().count(), 1, "one summary line: {text}");
    text.trim_end().to_string()
}

#[test]
fn restic_backup_of_a_running_group_restores_a_consistent_cut() {
    let lab = lab_alone("cgt-restic", 2, 2);
    lab.group_add("cgt-restic", &lab.names());
    let work = tempfile::tempdir().expect("work dir");
    let repo = work.path().join("repo");
    init_repo(&repo);

    let start = Instant::now();
    let out = script(&lab, "cgt-restic", &repo, PASSWORD)
        .output()
        .expect("run script");
    let line = summary(&out);
    eprintln!("{line} ({:.1} s)", start.elapsed().as_secs_f64());
    assert!(
        out.status.success(),
        "{line}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        line.starts_with("cgsnap-restic: group cgt-restic: snapshot cgt-restic-")
            && line.ends_with(", released; exit 0"),
        "{line}"
    );
    assert_all_released(&lab, None);

    // Restore the restic snapshot the summary names.
    let id = line
        .split("as restic snapshot ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .expect("restic snapshot id in the summary");
    let restored = work.path().join("restore");
    ok(
        restic(&repo, PASSWORD)
            .args(["restore", id, "--target"])
            .arg(&restored)
            .output()
            .expect("restic"),
        "restic restore",
    );
    let checked = assert_restored_backup(&lab, &restored);
    assert_eq!(checked, 4, "two guests with two disks each");
}

#[test]
fn restic_failure_or_sigterm_still_releases_the_group() {
    let lab = lab_alone("cgt-restic-f", 2, 2);
    lab.group_add("cgt-restic-f", &lab.names());
    let work = tempfile::tempdir().expect("work dir");

    // 1. The repository does not exist.
    let missing = work.path().join("no-such-repo");
    let out = script(&lab, "cgt-restic-f", &missing, PASSWORD)
        .output()
        .expect("run script");
    let line = summary(&out);
    eprintln!("missing repository: {line}");
    assert_eq!(out.status.code(), Some(1), "restic's exit code: {line}");
    assert!(
        line.contains("restic backup FAILED (restic exit 1), released; exit 1"),
        "{line}"
    );
    assert_all_released(&lab, None);

    // 2. Wrong password for an existing repository.
    let repo = work.path().join("repo");
    init_repo(&repo);
    let out = script(&lab, "cgt-restic-f", &repo, "not-the-password")
        .output()
        .expect("run script");
    let line = summary(&out);
    eprintln!("wrong password: {line}");
    assert_eq!(out.status.code(), Some(1), "restic's exit code: {line}");
    assert!(line.contains("restic backup FAILED"), "{line}");
    assert_all_released(&lab, None);
    assert_eq!(list_json(&lab).as_array().map(Vec::len), Some(2));

    // 3. SIGTERM while the backup runs (a stand-in restic that blocks until killed).
    let marker = work.path().join("backup-started");
    let slow = work.path().join("slow-restic");
    write_script(
        &slow,
        &format!(
            "#!/bin/sh\ntouch {}\nexec sleep 120\n",
            marker.to_string_lossy()
        ),
    );
    let child = script(&lab, "cgt-restic-f", &repo, PASSWORD)
        .env("RESTIC", &slow)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn script");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the backup never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The snapshot is held while the backup runs.
    assert_eq!(lab.overlays_on_disk().len(), 4);
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: plain kill(2) of our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let start = Instant::now();
    let out = child.wait_with_output().expect("wait script");
    let line = summary(&out);
    eprintln!("SIGTERM: {line} ({:.1} s)", start.elapsed().as_secs_f64());
    assert!(start.elapsed() < Duration::from_secs(110), "backup stopped");
    assert_eq!(out.status.code(), Some(143), "{line}");
    assert!(line.contains("interrupted by SIGTERM, released"), "{line}");
    assert_all_released(&lab, None);
    assert_eq!(list_json(&lab).as_array().map(Vec::len), Some(3));
}

/// The restic snapshot ID a successful run's summary names.
fn saved_id(line: &str) -> String {
    line.split("as restic snapshot ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .expect("restic snapshot id in the summary")
        .to_string()
}

/// The cut ID a backup-cut run's summary names (`... backup cut ID (MODE) ...`).
fn cut_id(line: &str) -> String {
    line.split("backup cut ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .expect("cut id in the summary")
        .to_string()
}

#[test]
fn restic_backup_cut_mode_stages_a_chain_every_snapshot_restores_from() {
    let lab = lab_alone("cgt-restic-c", 2, 2);
    lab.group_add("cgt-restic-c", &lab.names());
    let before = crate::backup::chains(&lab.names());
    let work = tempfile::tempdir().expect("work dir");
    let staging = work.path().join("staging");
    let repo = work.path().join("repo");
    init_repo(&repo);
    let cut = |repo: &Path| {
        let start = Instant::now();
        let out = script_bare(&lab, "cgt-restic-c", repo, PASSWORD)
            .env("CGSNAP_BACKUP_TO", &staging)
            .output()
            .expect("run script");
        let line = summary(&out);
        eprintln!("{line} ({:.1} s)", start.elapsed().as_secs_f64());
        (
            out.status.code(),
            line,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // 1. A full cut, staged and backed up.
    let (code, line, err) = cut(&repo);
    assert_eq!(code, Some(0), "{line}\n{err}");
    assert!(
        line.contains(" (full) backed up as restic snapshot ")
            && line.ends_with(", jobs ended; exit 0"),
        "{line}"
    );
    let a = cut_id(&line);
    // 2. restic fails: the cut was still exported and ended, so it is the next one's base and
    //    the next snapshot of the staging directory holds it.
    let (code, line, _) = cut(&work.path().join("no-such-repo"));
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.contains(&format!(
            "(incremental since {a}): restic backup FAILED (restic exit 1), jobs ended"
        )),
        "{line}"
    );
    let b = cut_id(&line);
    // 3. Incremental to the cut whose backup failed.
    let (code, line, err) = cut(&repo);
    assert_eq!(code, Some(0), "{line}\n{err}");
    assert!(
        line.contains(&format!("(incremental since {b}) backed up")),
        "{line}"
    );
    let c = cut_id(&line);

    // Nothing held: no job, every cut ended, the disk chains as they were, the VMs running.
    assert_eq!(
        crate::backup::chains(&lab.names()),
        before,
        "chains unchanged"
    );
    let listed = assert_all_released(&lab, Some(3));
    for m in listed.as_array().expect("list") {
        assert!(m["backup"]["ended_at"].is_string(), "{m}");
    }
    for n in lab.names() {
        let job = run_ok(Command::new("virsh").args(["-c", URI, "domjobinfo", &n]));
        assert!(job.contains("None"), "{n} has no job: {job}");
    }
    // The staging directory holds exactly the chain c <- b <- a.
    let mut staged: Vec<String> = std::fs::read_dir(&staging)
        .expect("staging")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    staged.sort();
    assert_eq!(staged, [a.clone(), b.clone(), c.clone()]);

    // The last restic snapshot alone restores the whole chain, consistent across the guests.
    let restored = work.path().join("restore");
    ok(
        restic(&repo, PASSWORD)
            .args(["restore", &saved_id(&line), "--target"])
            .arg(&restored)
            .output()
            .expect("restic"),
        "restic restore",
    );
    let top = restored
        .join(staging.strip_prefix("/").expect("absolute"))
        .join(&c);
    assert_eq!(
        assert_restored_backup(&lab, &top),
        4,
        "two guests with two disks each"
    );
}
