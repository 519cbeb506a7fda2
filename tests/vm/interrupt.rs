//! Interrupted runs leave nothing behind: `cgsnap verify` killed with SIGTERM (a systemd stop,
//! a scheduler's timeout) while its sandbox boots, and `cgsnap bench` with SIGINT (Ctrl-C)
//! between rounds, remove their throwaway domains and directories and exit 128 + signal; the
//! snapshot and the next run are unharmed. A verify whose sandbox filesystem runs low stops
//! its sandboxes the same way (exit 12).

use crate::common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn domains_named(part: &str) -> Vec<String> {
    let out = Command::new("virsh")
        .args(["-c", URI, "list", "--all", "--name"])
        .output()
        .expect("virsh");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(part))
        .map(str::to_string)
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "{what} not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sha256(path: &str) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Send `sig`, wait (at most 30 s) for the exit code; returns it with the child's stderr.
fn interrupt(child: &mut std::process::Child, sig: libc::c_int) -> (i32, String) {
    let code = signal_and_wait(child, sig);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).expect("stderr");
    }
    eprintln!("{err}");
    (code, err)
}

fn signal_and_wait(child: &mut std::process::Child, sig: libc::c_int) -> i32 {
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st.code().expect("exited, not killed by the signal");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no exit after signal"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Start `verify ID` of the writer member `dom` with its sandboxes in `sandboxes`, and wait
/// until its sandbox domain runs. The writer guest runs no database: verify then waits for a
/// ready marker that never comes, which is where the test's fault lands.
fn verify_until_sandbox_runs(
    lab: &Lab,
    id: &str,
    dom: &str,
    work: &Path,
    sandboxes: &Path,
    extra: &[&str],
) -> std::process::Child {
    let profile = work.join("profile.toml");
    std::fs::write(
        &profile,
        format!(
            "format_version = 1\nrpo_seconds = 5\nready_timeout_seconds = 240\n\n[[member]]\ndomain = \"{dom}\"\nkind = \"postgres\"\nport = 5432\nuser = \"postgres\"\npassword = \"unused\"\nready_marker = \"never printed\"\n"
        ),
    )
    .expect("profile");
    let mut child = lab
        .std_cgsnap()
        .args(["verify", id, "--base-port", "40190", "--profile"])
        .arg(&profile)
        .arg("--sandbox-dir")
        .arg(sandboxes)
        .arg("--report-dir")
        .arg(work.join("report"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn verify");
    let sandbox = format!("{dom}-verify-{}", child.id());
    wait_for("sandbox running", Duration::from_secs(60), || {
        if let Some(st) = child.try_wait().expect("wait") {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("e"), &mut err);
            panic!("verify ended ({st}) before its sandbox ran: {err}");
        }
        domstate(&sandbox) == "running"
    });
    child
}

/// One writer VM in group `name` with a held snapshot: the lab, the snapshot ID, the VM, its
/// frozen images and their checksums.
fn held_writer(name: &str) -> (Lab, String, String, Vec<String>, Vec<String>) {
    let lab = lab(name, 1, 2);
    lab.group_add(name, &lab.names());
    let dom = lab.names()[0].clone();
    let (id, m) = lab.snapshot_json(name, &[]);
    let images = disk_fields(&m, 0, "image");
    let sums: Vec<String> = images.iter().map(|i| sha256(i)).collect();
    (lab, id, dom, images, sums)
}

#[test]
fn verify_interrupted_removes_its_sandbox() {
    let (lab, id, dom, images, sums) = held_writer("cgt-int");

    let work = tempfile::tempdir().expect("tmp");
    let sandboxes = work.path().join("sandboxes");
    let mut child = verify_until_sandbox_runs(&lab, &id, &dom, work.path(), &sandboxes, &[]);
    let (code, err) = interrupt(&mut child, libc::SIGTERM);
    assert_eq!(code, 143, "128 + SIGTERM");
    assert!(
        err.contains("interrupted by SIGTERM: removing sandbox"),
        "{err}"
    );
    assert_verify_left_nothing(&lab, &id, &dom, work.path(), &sandboxes, (&images, &sums));
}

/// After a verify that ended without a verdict: no sandbox domain, file or report left, the
/// held snapshot intact (frozen images with the checksums `sums`) and its group unlocked, so
/// it releases normally and the member is back on its images.
fn assert_verify_left_nothing(
    lab: &Lab,
    id: &str,
    dom: &str,
    work: &Path,
    sandboxes: &Path,
    (images, sums): (&[String], &[String]),
) {
    assert!(domains_named("-verify-").is_empty(), "sandbox domain left");
    let left: Vec<_> = std::fs::read_dir(sandboxes)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "sandbox files left: {left:?}");
    assert!(!work.join("report").exists(), "no verdict, no report");
    let now: Vec<String> = images.iter().map(|i| sha256(i)).collect();
    assert_eq!(now, sums, "frozen images unchanged");
    assert_eq!(domstate(dom), "running");
    lab.cgsnap().args(["release", id]).assert().success();
    assert_own_images(lab.guest(dom));
}

/// The sandbox directory's filesystem running low while a sandbox runs (here: something else
/// fills it, as production overlays growing would) stops the sandboxes at once: exit 12, no
/// verdict, nothing left, the frozen images untouched. Production VMs sharing that filesystem
/// never see it full because of a restore test.
#[test]
fn verify_stops_its_sandboxes_when_their_filesystem_runs_low() {
    let (lab, id, dom, images, sums) = held_writer("cgt-low");

    let work = tempfile::tempdir().expect("tmp");
    let fs = work.path().join("fs");
    std::fs::create_dir_all(&fs).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256m,mode=0755", "tmpfs"])
        .arg(&fs)
        .status()
        .expect("mount");
    assert!(mounted.success(), "mount tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&fs);
    let floor = (128u64 << 20).to_string();
    let sandboxes = fs.join("sandboxes");
    let mut child = verify_until_sandbox_runs(
        &lab,
        &id,
        &dom,
        work.path(),
        &sandboxes,
        &["--min-free", &floor],
    );
    let started = Instant::now();
    // 160 MiB of something else: the 256 MiB filesystem drops below the 128 MiB floor.
    std::fs::write(fs.join("other"), vec![1u8; 160 << 20]).expect("fill");
    let code = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st.code();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "verify still running with its filesystem below the floor"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).expect("stderr");
    }
    eprintln!("{err}\nstopped {took:?} after the filesystem filled");
    assert_eq!(code, Some(12), "could not run: {err}");
    assert!(
        err.contains("below --min-free") && err.contains("stopped"),
        "{err}"
    );
    assert_verify_left_nothing(&lab, &id, &dom, work.path(), &sandboxes, (&images, &sums));
}

#[test]
fn bench_interrupted_removes_its_guests_and_the_next_run_starts_clean() {
    let lab = lab("cgt-intb", 0, 2);
    let work = tempfile::tempdir().expect("tmp");
    let dir = work.path().join("vms");
    let bench = |rounds: &str| {
        let mut c = lab.std_cgsnap();
        c.args(["bench", "--only-vms", "1", "--rounds", rounds, "--out"])
            .arg(work.path().join("out"))
            .arg("--dir")
            .arg(&dir);
        c
    };
    let mut child = bench("1000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bench");
    // Interrupt once rounds are running (a manifest exists): possibly mid-snapshot.
    wait_for("a benchmark round", Duration::from_secs(120), || {
        !lab.manifest_files().is_empty()
    });
    let (code, err) = interrupt(&mut child, libc::SIGINT);
    assert_eq!(code, 130, "128 + SIGINT");
    assert!(
        err.contains("interrupted by SIGINT: removing guest cgsnap-bench-1"),
        "{err}"
    );
    assert!(
        domains_named("cgsnap-bench-").is_empty(),
        "bench guest left"
    );
    assert!(
        !Path::new(&dir).join("cgsnap-bench-1").exists(),
        "bench guest files left"
    );

    // A snapshot the interrupt left outstanding must not block the next run.
    let out = bench("1").output().expect("bench again");
    assert!(
        out.status.success(),
        "second bench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = list_json(&lab);
    let states: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .map(|m| m["state"].as_str().unwrap_or(""))
        .collect();
    // The interrupted round's snapshot ends released (by the next run) or aborted (when the
    // interrupt landed mid-snapshot and its rollback finished first); the new run's released.
    assert!(
        states.iter().all(|s| *s == "released" || *s == "aborted"),
        "nothing left outstanding: {states:?}"
    );
    assert_eq!(states.last(), Some(&"released"), "{states:?}");
    assert!(domains_named("cgsnap-bench-").is_empty());
}
