//! End to end with real Bacula daemons (Debian 12's Bacula 9.6; Debian has no Bareos package):
//! the private director, storage and file daemon of `tests/common/bacula` (127.0.0.1, non-default
//! ports, a temporary directory) run the shipped `hooks/bareos/cgsnap-job.conf` unchanged except
//! for its placeholders (group, the guests' image directories as `File` lines, and `cgsnap hook`
//! given as the built binary with this lab's `--connect` and `--catalog`). Against two running
//! writer guests (two qcow2 disks each) it proves:
//! - the backup job terminates OK (JobStatus `T`, no errors) and its log holds the output of
//!   both RunScripts run by the file daemon: pre took the group snapshot, post released it;
//! - afterwards the snapshot is `released`, no `*.cgsnap-overlay` file is left and the guests
//!   run on their own images;
//! - the job's file list holds every image and no overlay (the overlays existed while it read);
//! - a Bacula restore job of that backup yields images without overlays that pass
//!   `qemu-img check` and whose writer records show one instant per guest
//!   (`cgsnap_testbeds::record`).
//!
//! And when a job fails after pre took the snapshot, in the middle of reading (the job reads a
//! FIFO the test holds open, and the test waits until the snapshot is `taken` and the file
//! daemon is reading before it acts), the shipped post (`RunsOnFailure = yes`) still releases:
//! - the file daemon's connection to the storage daemon breaks: the job fails (JobStatus `f`
//!   or `E`), the director's job log holds post's `released` line, and the director ends the
//!   job only after post has run;
//! - the job is cancelled (JobStatus `A`): the file daemon still runs post, but the director
//!   does not wait for it and its job log does not get post's output, so the test waits for the
//!   release and finds the `released` line in the file daemon's own log.
//!
//! Either way the snapshot ends `released` (none is left `taken`), no overlay is left and the
//! guests run on their own images.

use crate::common;

use common::bacula::{Bacula, FAILING_FILESET, GROUP};
use common::*;
use std::time::{Duration, Instant};

/// Job `job`'s log holds pre's `taken` line and post's `released` line for snapshot `snap`.
fn assert_hook_lines(log: &str, job: &str, snap: &str) {
    for expected in [
        format!(
            "JobId {job}: ClientBeforeJob: cgsnap: snapshot {snap} of group {GROUP} taken: 2 members, 4 disks"
        ),
        format!("JobId {job}: ClientAfterJob: cgsnap: released {snap} of group {GROUP}"),
    ] {
        assert!(
            log.contains(&expected),
            "{expected:?} not in the job log:\n{log}"
        );
    }
}

#[test]
fn bacula_job_with_the_shipped_snippet_backs_up_and_restores_a_consistent_cut() {
    let lab = lab_alone(GROUP, 2, 2);
    lab.group_add(GROUP, &lab.names());
    let start = Instant::now();
    let bacula = Bacula::start(&lab);
    eprintln!("daemons up in {:.1} s", start.elapsed().as_secs_f64());

    let t = Instant::now();
    let backup = bacula.run_job(&format!("run job=cgsnap-{GROUP} yes"));
    eprintln!("backup job {backup}: {:.1} s", t.elapsed().as_secs_f64());

    // pre and post ran, through the file daemon: one snapshot, released, nothing left over.
    let listed = assert_all_released(&lab, Some(1));
    let id = listed[0]["id"].as_str().expect("snapshot id");
    assert_hook_lines(&bacula.read("jobs.log"), &backup, id);

    // What the job read: every image, no overlay.
    let files = bacula.console(
        &format!("list files jobid={backup}"),
        Duration::from_secs(30),
    );
    for g in &lab.guests {
        for d in &g.disks {
            assert!(
                files.contains(&*d.to_string_lossy()),
                "{} backed up: {files}",
                d.display()
            );
        }
    }
    assert!(
        !files.contains(".cgsnap-overlay"),
        "overlay backed up: {files}"
    );

    // Restore into a fresh directory.
    let restored = tempfile::tempdir().expect("restore dir");
    let t = Instant::now();
    bacula.run_job(&format!(
        "restore jobid={backup} client=hypervisor-fd where={} all done yes",
        restored.path().display()
    ));
    eprintln!("restore job: {:.1} s", t.elapsed().as_secs_f64());
    let checked = assert_restored_backup(&lab, restored.path());
    assert_eq!(checked, 4, "two guests with two disks each");
    eprintln!("total {:.1} s", start.elapsed().as_secs_f64());
}

/// The id of the snapshot in state `taken`, once `cgsnap list` shows one.
fn wait_taken(lab: &Lab, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let listed = list_json(lab);
        let taken = listed
            .as_array()
            .expect("list is an array")
            .iter()
            .find(|s| s["state"] == "taken")
            .and_then(|s| s["id"].as_str().map(str::to_string));
        if let Some(id) = taken {
            return id;
        }
        assert!(
            start.elapsed() < timeout,
            "no snapshot taken after {timeout:?}: {listed}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Run the shipped job with [`FAILING_FILESET`] and wait until pre has taken the snapshot and
/// the file daemon is reading the held FIFO: the job is mid-read and cannot end by itself.
/// Returns the JobId, the snapshot id and the FIFO handle (drop it to let the read go on).
fn start_blocked_job(lab: &Lab, bacula: &Bacula) -> (String, String, std::fs::File) {
    let fifo = bacula.hold_fifo();
    let job = bacula.queue(&format!(
        "run job=cgsnap-{GROUP} fileset={FAILING_FILESET} yes"
    ));
    let snap = wait_taken(lab, Duration::from_secs(180));
    bacula.wait_reading_fifo(&job, Duration::from_secs(60));
    eprintln!("job {job}: snapshot {snap} taken, file daemon reading the FIFO");
    (job, snap, fifo)
}

/// The lines of a Bacula log about job `job` (the job report aside), for the test output.
fn job_lines(log: &str, job: &str) -> String {
    let tag = format!("JobId {job}:");
    log.lines()
        .filter(|l| l.contains(&tag))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn bacula_job_failing_after_the_snapshot_still_releases_it() {
    let lab = lab_alone(GROUP, 2, 2);
    lab.group_add(GROUP, &lab.names());
    let start = Instant::now();
    let bacula = Bacula::start(&lab);

    // 1. The connection between file and storage daemon breaks mid-read; then the FIFO gives
    //    EOF and the file daemon's next send to the storage daemon fails: a fatal job error.
    let t = Instant::now();
    let (job, snap, fifo) = start_blocked_job(&lab, &bacula);
    bacula.reset_storage_connection();
    drop(fifo);
    let (status, errors) = bacula.wait(&job, Duration::from_secs(300));
    let log = bacula.read("jobs.log");
    eprintln!(
        "storage connection lost: job {job} JobStatus {status}, JobErrors {errors}, {:.1} s; job log:\n{}",
        t.elapsed().as_secs_f64(),
        job_lines(&log, &job)
    );
    assert!(
        ["f", "E"].contains(&status.as_str()),
        "job {job} must fail (f or E), got {status}; job log:\n{log}"
    );
    assert_hook_lines(&log, &job, &snap);
    // The file daemon runs After scripts before it reports the job's end, and the director
    // waited for that report: the release is already complete.
    assert_all_released(&lab, Some(1));

    // 2. The operator cancels the job mid-read.
    let (job, snap, fifo) = start_blocked_job(&lab, &bacula);
    let t = Instant::now();
    let out = bacula.console(&format!("cancel jobid={job} yes"), Duration::from_secs(30));
    assert!(out.contains("marked to be canceled"), "cancel: {out}");
    let (status, errors) = bacula.wait(&job, Duration::from_secs(120));
    let state = |lab: &Lab| {
        list_json(lab)
            .as_array()
            .expect("list is an array")
            .iter()
            .find(|s| s["id"] == snap.as_str())
            .map(|s| s["state"].to_string())
            .unwrap_or_default()
    };
    eprintln!(
        "cancelled: job {job} JobStatus {status}, JobErrors {errors}, ended {:.1} s after the cancel with snapshot {snap} {}",
        t.elapsed().as_secs_f64(),
        state(&lab)
    );
    assert_eq!(
        status,
        "A",
        "job {job} cancelled; job log:\n{}",
        bacula.read("jobs.log")
    );
    drop(fifo);
    // The director reports the job ended without waiting for the file daemon's After script:
    // wait for post's line in the file daemon's log and for the snapshot to be released.
    let released = format!("JobId {job}: ClientAfterJob: cgsnap: released {snap} of group {GROUP}");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = bacula.read("fd.log").contains(&released) && state(&lab) == "\"released\"";
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "post did not release {snap} after the cancel; file daemon log:\n{}\njob log:\n{}",
            bacula.read("fd.log"),
            bacula.read("jobs.log")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "cancelled job {job}: released {:.1} s after the cancel; file daemon log:\n{}\ndirector's job log:\n{}",
        t.elapsed().as_secs_f64(),
        job_lines(&bacula.read("fd.log"), &job),
        job_lines(&bacula.read("jobs.log"), &job)
    );
    assert_all_released(&lab, Some(2));
    eprintln!("total {:.1} s", start.elapsed().as_secs_f64());
}
