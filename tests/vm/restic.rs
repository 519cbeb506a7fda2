//! End to end with restic (Debian package): the shipped `hooks/restic/cgsnap-restic.sh` backs up
//! the frozen images of two running writer guests (two disks each) into a fresh repository; the
//! snapshot must be released afterwards with no overlay left, and the restored images must hold
//! no overlay, pass `qemu-img check`, and show one instant per guest (writer records in order,
//! see `cgsnap_testbeds::record`). Failure paths with the real binary and real VMs: restic
//! cannot open the repository, or has the wrong password, or the script gets SIGTERM during the
//! backup; each time post still ran (released, VMs running on their own images, no overlay) and
//! the script's exit code is restic's (or 143 after SIGTERM).

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
    let mut c = Command::new(SCRIPT);
    c.arg(group)
        .args(lab.guests.iter().map(|g| g.dir.clone()))
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
