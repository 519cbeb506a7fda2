//! `backup::copy` against real components, no VM: qcow2 images written with qemu-io, exported
//! read-only by qemu-nbd (a persistent dirty bitmap exported as `qemu:dirty-bitmap:b0` with
//! `-B`, as libvirt's pull-mode backup does), copied through libnbd, checked with
//! `qemu-img compare`:
//! - a full copy of the state before the bitmap's writes reads exactly the allocated data and
//!   equals that state;
//! - an incremental copy onto it (relative backing, a target folder that did not exist) reads
//!   exactly the dirty data, zeros the dirty zeros (shadowing the backing's old data) and,
//!   through its chain, equals the final state;
//! - an existing target is refused and untouched; a backing of another size is refused; a
//!   missing source and a source that dies mid-copy fail and leave no target file.
//!
//! Skips (printing why) when qemu-nbd, qemu-img or qemu-io is missing.

use crate::common::run_ok;
use cgsnap::backup::copy::{CopyError, CopyJob, CopyStats, Tally, copy_disk, plan};
use cgsnap::hypervisor::nbd::Nbd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Bitmap granularity and qcow2 cluster size: every write below is aligned to it.
const G: u64 = 64 << 10;
const SIZE: u64 = 64 << 20;

fn missing_tools() -> Option<&'static str> {
    ["qemu-nbd", "qemu-img", "qemu-io"].into_iter().find(|t| {
        !Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

macro_rules! skip_without_qemu {
    () => {
        if let Some(t) = missing_tools() {
            println!("skipped: {t} is not installed (qemu-utils)");
            return;
        }
    };
}

/// What each 64 KiB granule of the source holds.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Gr {
    Unallocated,
    Data(u8),
    Zero,
}

/// One qemu-io write: `n` granules from granule `at`, a pattern byte or zeros (`write -z`).
type Write = (u64, u64, Option<u8>);

/// Apply `writes` to `img` with qemu-io and to the model; returns the granules touched.
fn write(img: &Path, model: &mut [Gr], writes: &[Write]) -> Vec<u64> {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "qcow2"]);
    let mut touched = Vec::new();
    for &(at, n, pat) in writes {
        let c = match pat {
            Some(p) => format!("write -P {p} {} {}", at * G, n * G),
            None => format!("write -z {} {}", at * G, n * G),
        };
        cmd.arg("-c").arg(c);
        for g in at..at + n {
            model[g as usize] = pat.map_or(Gr::Zero, Gr::Data);
            touched.push(g);
        }
    }
    run_ok(cmd.arg(img));
    touched.sort_unstable();
    touched.dedup();
    touched
}

fn data_bytes<'a>(grs: impl Iterator<Item = &'a Gr>) -> u64 {
    grs.filter(|g| matches!(g, Gr::Data(_))).count() as u64 * G
}

/// A read-only qemu-nbd export, killed on drop.
struct Served {
    child: Child,
    uri: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(img: &Path, bitmap: Option<&str>) -> Served {
    let sock = img.with_extension("sock");
    let mut cmd = Command::new("qemu-nbd");
    // -t: stay up between connections; -e 8: planning plus the workers at once.
    cmd.args(["-r", "-t", "-e", "8", "-f", "qcow2"]);
    if let Some(b) = bitmap {
        cmd.args(["-B", b]);
    }
    let child = cmd
        .arg("-k")
        .arg(&sock)
        .arg(img)
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-nbd");
    let served = Served {
        child,
        uri: format!("nbd+unix:///?socket={}", sock.display()),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Nbd::connect(&served.uri, &[]).is_err() {
        assert!(
            Instant::now() < deadline,
            "qemu-nbd on {} never accepted",
            img.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    served
}

fn job(uri: &str, dirty: Option<&str>, target: &Path, backing: Option<&str>) -> CopyJob {
    CopyJob {
        source_uri: uri.to_string(),
        dirty_context: dirty.map(String::from),
        target: target.to_path_buf(),
        backing: backing.map(PathBuf::from),
        workers: 4,
    }
}

fn copy(job: &CopyJob) -> CopyStats {
    let progress = Tally::default();
    let stats = copy_disk(job, &progress).unwrap_or_else(|e| panic!("copy: {e}"));
    assert_eq!(
        progress.done.load(Ordering::Relaxed),
        stats.bytes_read + stats.bytes_zeroed
    );
    assert_eq!(stats.planned_bytes, stats.bytes_read + stats.bytes_zeroed);
    stats
}

fn identical(a: &Path, b: &Path) -> bool {
    let out = Command::new("qemu-img")
        .args(["compare", "-U", "-f", "qcow2", "-F", "qcow2"])
        .arg(a)
        .arg(b)
        .output()
        .expect("qemu-img compare");
    out.status.success()
}

/// The bytes of `img` (through its backing chain) at `offset`.
fn bytes(img: &Path, offset: u64, len: usize) -> Vec<u8> {
    let raw = img.with_extension("raw");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-U", "-f", "qcow2", "-O", "raw"])
            .arg(img)
            .arg(&raw),
    );
    let all = std::fs::read(&raw).expect("read raw");
    std::fs::remove_file(&raw).expect("rm raw");
    all[offset as usize..offset as usize + len].to_vec()
}

const FIRST: &[Write] = &[
    (0, 16, Some(0x11)),
    (100, 3, Some(0x22)),
    (200, 10, None),
    (300, 10, Some(0x55)),
    (500, 80, Some(0x33)), // 5 MiB: more than one chunk
    (1000, 24, Some(0x44)),
];
const SECOND: &[Write] = &[
    (8, 16, Some(0x66)), // half over old data, half new
    (300, 10, None),     // zeros over old data
    (400, 2, None),      // zeros where nothing was
    (505, 1, Some(0x77)),
    (700, 1, Some(0x78)),
];

#[test]
fn full_then_incremental_copies_equal_their_sources() {
    skip_without_qemu!();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (src, pre) = (tmp.path().join("src.qcow2"), tmp.path().join("pre.qcow2"));
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&src)
            .arg(SIZE.to_string()),
    );
    let mut model = vec![Gr::Unallocated; (SIZE / G) as usize];
    write(&src, &mut model, FIRST);
    run_ok(
        Command::new("qemu-img")
            .args(["bitmap", "--add", "-g", "65536"])
            .arg(&src)
            .arg("b0"),
    );
    std::fs::copy(&src, &pre).expect("copy pre-state");
    let pre_data = data_bytes(model.iter());
    let dirty = write(&src, &mut model, SECOND);

    let full = tmp.path().join("full.qcow2");
    let old = serve(&pre, None);
    let stats = copy(&job(&old.uri, None, &full, None));
    drop(old);
    assert_eq!(
        stats.bytes_read, pre_data,
        "full copy reads the allocated data only"
    );
    assert_eq!(stats.bytes_zeroed, 0);
    assert!(
        identical(&full, &pre),
        "full.qcow2 differs from the pre-state"
    );

    // A folder that does not exist yet, and a backing path relative to it.
    let inc = tmp.path().join("inc/inc.qcow2");
    let now = serve(&src, Some("b0"));
    let ctx = "qemu:dirty-bitmap:b0";
    let j = job(&now.uri, Some(ctx), &inc, Some("../full.qcow2"));
    let planned = plan(&j).expect("plan");
    assert!(planned.iter().any(|c| c.zero) && planned.iter().any(|c| !c.zero));
    let stats = copy(&j);
    let dirty_grs = || dirty.iter().map(|&g| &model[g as usize]);
    assert_eq!(stats.bytes_read, data_bytes(dirty_grs()), "dirty data only");
    let zeros = dirty_grs().filter(|g| **g == Gr::Zero).count() as u64 * G;
    assert_eq!(stats.bytes_zeroed, zeros, "every dirty zero written");
    drop(now);
    assert!(
        identical(&inc, &src),
        "inc.qcow2 (with its backing) differs from src"
    );

    let info = run_ok(
        Command::new("qemu-img")
            .args(["info", "--output=json", "-U"])
            .arg(&inc),
    );
    let info: serde_json::Value = serde_json::from_str(&info).expect("json");
    assert_eq!(
        info["backing-filename"], "../full.qcow2",
        "backing recorded as given"
    );
    assert_eq!(info["backing-filename-format"], "qcow2");

    // The zeros written over old data shadow the backing's 0x55.
    let (at, len) = (300 * G, (10 * G) as usize);
    assert_eq!(bytes(&full, at, len), vec![0x55; len]);
    assert_eq!(bytes(&inc, at, len), vec![0; len]);
}

#[test]
fn existing_targets_and_resized_backings_are_refused() {
    skip_without_qemu!();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&src)
            .arg(SIZE.to_string()),
    );
    write(
        &src,
        &mut vec![Gr::Unallocated; (SIZE / G) as usize],
        &[(3, 2, Some(9))],
    );
    let small = tmp.path().join("small.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&small)
            .arg((SIZE / 2).to_string()),
    );
    let served = serve(&src, None);
    let progress = Tally::default();

    let exists = tmp.path().join("exists.qcow2");
    std::fs::write(&exists, b"an older export").expect("write");
    match copy_disk(&job(&served.uri, None, &exists, None), &progress) {
        Err(e @ CopyError::TargetExists { .. }) => {
            assert!(e.to_string().contains("exists.qcow2"), "{e}")
        }
        r => panic!("an existing target was not refused: {r:?}"),
    }
    assert_eq!(std::fs::read(&exists).expect("read"), b"an older export");

    let target = tmp.path().join("inc.qcow2");
    let j = job(&served.uri, None, &target, Some("small.qcow2"));
    match copy_disk(&j, &progress) {
        Err(e @ CopyError::BackingSize { .. }) => {
            assert!(e.to_string().contains("full copy"), "{e}")
        }
        r => panic!("a backing of another size was not refused: {r:?}"),
    }
    assert!(!target.exists(), "a refused copy left {}", target.display());
}

#[test]
fn a_missing_or_dying_source_leaves_no_target() {
    skip_without_qemu!();
    let tmp = tempfile::tempdir().expect("tempdir");
    let progress = Tally::default();
    let target = tmp.path().join("vda.qcow2");
    let gone = format!(
        "nbd+unix:///?socket={}",
        tmp.path().join("none.sock").display()
    );
    match copy_disk(&job(&gone, None, &target, None), &progress) {
        Err(e @ CopyError::Source { .. }) => assert!(e.to_string().contains(&gone), "{e}"),
        r => panic!("a missing source did not fail: {r:?}"),
    }
    assert!(!target.exists());

    // 256 MiB of data: the copy is still running when its source is killed.
    let src = tmp.path().join("big.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&src)
            .arg("256M"),
    );
    run_ok(
        Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -P 90 0 256M"])
            .arg(&src),
    );
    let mut served = serve(&src, None);
    let j = job(&served.uri, None, &target, None);
    let r = std::thread::scope(|s| {
        let copying = s.spawn(|| copy_disk(&j, &progress));
        while progress.done.load(Ordering::Relaxed) == 0 && !copying.is_finished() {
            std::thread::sleep(Duration::from_micros(200));
        }
        served.child.kill().expect("kill qemu-nbd");
        copying.join().expect("join")
    });
    assert!(
        progress.done.load(Ordering::Relaxed) < 256 << 20,
        "the copy ended before its source was killed: the test proves nothing"
    );
    match r {
        Err(e @ (CopyError::Source { .. } | CopyError::Convert { .. })) => {
            assert!(e.to_string().contains("big.sock"), "{e}")
        }
        r => panic!("a dying source did not fail the copy: {r:?}"),
    }
    assert!(!target.exists(), "a failed copy left {}", target.display());
}
