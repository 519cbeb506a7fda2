//! The scratch filesystem filling up while a backup cut is exported, on real guests that
//! overwrite 160 MiB of their disk (every block of it copied into the scratch file first):
//! with the guard's floor, the jobs end before the filesystem fills and no guest pauses; with
//! a floor of 0, the guest pauses on ENOSPC and the guard ends the job and resumes it. Either
//! way the export fails (exit 13), every write of the guests reaches their images, the chains
//! are unchanged and the next incremental is based on the last *completed* cut.

use crate::backup::{backup_json, checkpoints};
use crate::common;

use cgsnap_testbeds::guest::Spec;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

const G: &str = "cgt-bks";
/// What each guest overwrites (MiB, from 8 MiB on), well over what a scratch filesystem holds.
const CHURN_MIB: u64 = 160;
/// Seconds after boot the guests start overwriting: room for a base cut, its export and the
/// guarded exports to start first (the test checks they did).
const CHURN_AFTER_S: u64 = 60;
/// How long the exports hold after their guard started: past the churn, so the copy-before-
/// write happens while they are guarded.
const HOLD_MS: &str = "80000";
/// The guarded export's floor: 24 MiB of the 64 MiB scratch filesystem, in bytes.
const FLOOR: &str = "25165824";

/// A small ext4 filesystem on a loop device, reachable by QEMU; unmounted on drop.
struct SmallFs {
    /// Holds the image and the mount point; removed (after the unmount) on drop.
    _top: tempfile::TempDir,
    mnt: PathBuf,
}

impl SmallFs {
    fn new(mib: u64) -> SmallFs {
        use std::os::unix::fs::PermissionsExt;
        let top = tempfile::Builder::new()
            .prefix("cgt-bks")
            .tempdir_in("/var/tmp")
            .expect("tmp dir");
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod");
        let img = top.path().join("fs.img");
        let mnt = top.path().join("m");
        std::fs::create_dir(&mnt).expect("mount point");
        run_ok(Command::new("truncate").arg(format!("-s{mib}M")).arg(&img));
        run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
        run_ok(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&img)
                .arg(&mnt),
        );
        std::fs::set_permissions(&mnt, std::fs::Permissions::from_mode(0o711)).expect("chmod");
        SmallFs { _top: top, mnt }
    }

    fn dir(&self) -> &str {
        self.mnt.to_str().expect("utf8")
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // The guests' scratch files are gone by now (their cuts ended, or the guests did).
        let ok = Command::new("umount").arg(&self.mnt).status();
        if !ok.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

fn churner(name: &str) -> Spec {
    Spec {
        disk_size: 256 << 20,
        prefill: 224 << 20,
        cmdline: format!("cgsnap.churn={CHURN_AFTER_S}:{CHURN_MIB}"),
        ..Spec::writer(name, 1)
    }
}

fn id(m: &serde_json::Value) -> String {
    m["id"].as_str().expect("id").to_string()
}

/// `backup begin GROUP [--incremental]` with its scratch files on `fs` and `floor` free
/// bytes required there.
fn begin(
    lab: &Lab,
    group: &str,
    fs: &SmallFs,
    floor: &str,
    incremental: bool,
) -> serde_json::Value {
    let mut args = vec![
        "begin",
        group,
        "--scratch-dir",
        fs.dir(),
        "--min-free",
        floor,
    ];
    if incremental {
        args.push("--incremental");
    }
    backup_json(lab, &args)
}

/// `backup export ID --to DIR --min-free FLOOR`, held after its guard started: the child
/// and its later stderr lines.
fn guarded_export(lab: &Lab, id: &str, to: &Path, floor: &str) -> (Child, Receiver<String>) {
    spawn_watched(
        lab.std_cgsnap()
            .args(["backup", "export", id, "--min-free", floor, "--to"])
            .arg(to)
            .env("CGSNAP_TEST_HOLD_EXPORTING_MS", HOLD_MS),
        "guarded, not yet read",
    )
}

/// Its exit code and what it said on stderr afterwards.
fn failure((mut c, rx): (Child, Receiver<String>)) -> (i32, String) {
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = c.try_wait().expect("wait") {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "export still running after 300 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let err: Vec<String> = rx.iter().collect();
    (status.code().unwrap_or(-1), err.join("\n"))
}

#[test]
fn a_filling_scratch_filesystem_ends_the_jobs_and_no_guest_write_is_lost() {
    // Before the lab, so its guests (holding the scratch files) go first on a failure.
    let (fa, fb) = (SmallFs::new(64), SmallFs::new(64));
    let mut lab = lab(G, 0, 1);
    let (a, b) = (format!("{G}-a"), format!("{G}-b"));
    lab.add_guest(churner(&a));
    lab.add_guest(churner(&b));
    for n in [&a, &b] {
        lab.guest(n)
            .wait_console("seq ", Duration::from_secs(120))
            .expect("guest writes");
    }
    let (ga, gb) = (format!("{G}-floor"), format!("{G}-nofloor"));
    lab.group_add(&ga, std::slice::from_ref(&a));
    lab.group_add(&gb, std::slice::from_ref(&b));
    let blk = [domblklist(&a), domblklist(&b)];
    let exports = tempfile::tempdir().expect("exports");

    // A completed cut of the floor group: the base the next incremental must come back to.
    let base = id(&begin(&lab, &ga, &fa, FLOOR, false));
    backup_json(
        &lab,
        &[
            "export",
            &base,
            "--to",
            exports.path().join("base").to_str().expect("utf8"),
        ],
    );
    backup_json(&lab, &["end", &base]);

    // The cuts whose exports the churn overtakes: one guarded by a floor of 24 MiB, one by
    // none (it can only react to the pause that a full filesystem causes).
    let cut_a = id(&begin(&lab, &ga, &fa, FLOOR, true));
    let cut_b = id(&begin(&lab, &gb, &fb, "0", false));
    let ea = guarded_export(&lab, &cut_a, &exports.path().join("a"), FLOOR);
    let eb = guarded_export(&lab, &cut_b, &exports.path().join("b"), "0");
    for n in [&a, &b] {
        assert!(
            !lab.guest(n).console_text().contains("churning"),
            "{n} started overwriting before its export was guarded: raise CHURN_AFTER_S"
        );
    }
    for n in [&a, &b] {
        lab.guest(n)
            .wait_console("churned", Duration::from_secs(240))
            .expect("the guest's overwrite finished");
        assert!(
            lab.guest(n)
                .console_text()
                .contains(&format!("churned {CHURN_MIB} MiB rc=0")),
            "{n}: a write failed: {}",
            lab.guest(n).console_text()
        );
        assert_eq!(domstate(n), "running", "{n}");
    }
    let (code_a, err_a) = failure(ea);
    let (code_b, err_b) = failure(eb);
    println!("floor 24M: {}", err_a.trim());
    println!("floor 0: {}", err_b.trim());
    assert_eq!(code_a, 13, "{err_a}");
    assert_eq!(code_b, 13, "{err_b}");
    assert!(
        err_a.contains("MiB free, below --min-free 24 MiB"),
        "{err_a}"
    );
    assert!(
        !err_a.contains("resumed"),
        "the floor kept {a} from pausing: {err_a}"
    );
    assert!(
        err_b.contains(&format!("{b} paused on an I/O error"))
            && err_b.contains(&format!("resumed {b}")),
        "{err_b}"
    );
    for e in [exports.path().join("a"), exports.path().join("b")] {
        assert!(files_under(&e, ".qcow2").is_empty(), "no export file kept");
        assert!(
            files_under(&e, ".cgsnap-partial").is_empty(),
            "no partial file kept"
        );
    }

    // The cuts end (nothing left to end but the catalog), the manifests say what happened,
    // and the next incremental of the floor group is based on the last completed cut.
    for c in [&cut_a, &cut_b] {
        let m = backup_json(&lab, &["end", c]);
        assert_eq!(m["state"], "released");
        assert!(m["backup"]["export"].is_null(), "{m}");
        let why = m["error"].as_str().expect("the manifest says why");
        assert!(why.starts_with("export stopped: "), "{why}");
    }
    let next = begin(&lab, &ga, &fa, FLOOR, true);
    assert_eq!(next["backup"]["since"], base.as_str(), "{next}");
    backup_json(&lab, &["end", &id(&next)]);
    assert_eq!(
        checkpoints(&a),
        vec![base.clone()],
        "only the last exported cut keeps its checkpoint"
    );
    assert_eq!([domblklist(&a), domblklist(&b)], blk, "chains unchanged");

    // Every byte the guests wrote is on their images.
    for (n, disks) in [(&a, &blk[0]), (&b, &blk[1])] {
        virsh_ok(&["destroy", n]);
        let image = &disks[0].1;
        let out = Command::new("qemu-io")
            .args(["-r", "-f", "qcow2", "-c"])
            .arg(format!("read -P 0x63 8M {CHURN_MIB}M"))
            .arg(image)
            .output()
            .expect("qemu-io");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !text.contains("Pattern verification failed"),
            "{n}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
