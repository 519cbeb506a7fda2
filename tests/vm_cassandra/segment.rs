//! A restored copy whose commit log a node cannot replay: the images of a held snapshot copied
//! the way `verify --images` expects them (under their absolute paths), with one commit log
//! segment cut short inside the copy of the commit log disk, by e2fsprogs' debugfs on a raw
//! image, so the copy's filesystem stays consistent and nothing else changes.
//!
//! A frozen image is a crash image: its ext4 journal still holds the newest metadata (the
//! segment's extents among them), which debugfs does not read. The journal is replayed first,
//! as the guest's mount would; an edit made on the stale metadata would be undone by that
//! replay at boot.

use crate::common::run_ok;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `(name, size)` of the commit log segments in the filesystem image `raw`, oldest first.
fn segments(raw: &Path) -> Vec<(String, u64)> {
    // `ls -p` lines: /inode/mode/uid/gid/name/size/
    let text = run_ok(
        Command::new("debugfs")
            .arg("-R")
            .arg("ls -p /commitlog")
            .arg(raw),
    );
    let mut segs: Vec<(u64, String, u64)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('/').collect();
            let name = f.get(5)?;
            let id = name
                .strip_prefix("CommitLog-")?
                .strip_suffix(".log")?
                .rsplit('-')
                .next()?
                .parse()
                .ok()?;
            Some((id, name.to_string(), f.get(6)?.parse().ok()?))
        })
        .collect();
    segs.sort();
    segs.into_iter().map(|(_, n, s)| (n, s)).collect()
}

/// Bytes up to the last non-zero one: how much of a preallocated segment holds data.
fn used_bytes(b: &[u8]) -> usize {
    b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1)
}

/// Copy every disk of snapshot `manifest` under `dir`, cutting the oldest commit log segment
/// of the copy of disk `commitlog` (a filesystem holding `/commitlog`) to half of the data it
/// holds. Returns the segment's name, its data bytes and the length it was cut to.
pub fn copy_with_cut_segment(
    manifest: &serde_json::Value,
    commitlog: &str,
    dir: &Path,
) -> (String, usize, u64) {
    let mut cut = None;
    for m in manifest["members"].as_array().expect("members") {
        for d in m["disks"].as_array().expect("disks") {
            let image = d["image"].as_str().expect("image");
            let dst = dir.join(image.trim_start_matches('/'));
            std::fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir");
            if d["target"] != commitlog {
                run_ok(
                    Command::new("qemu-img")
                        .args(["convert", "-O", "qcow2", image])
                        .arg(&dst),
                );
                continue;
            }
            let raw = dst.with_extension("raw");
            run_ok(
                Command::new("qemu-img")
                    .args(["convert", "-O", "raw", image])
                    .arg(&raw),
            );
            cut = Some(cut_oldest_segment(&raw));
            run_ok(
                Command::new("qemu-img")
                    .args(["convert", "-f", "raw", "-O", "qcow2"])
                    .arg(&raw)
                    .arg(&dst),
            );
            std::fs::remove_file(&raw).expect("remove raw");
        }
    }
    // QEMU runs as its own user and must traverse the tree.
    run_ok(Command::new("chmod").arg("-R").arg("a+rX").arg(dir));
    cut.unwrap_or_else(|| panic!("no disk {commitlog} in the snapshot"))
}

fn cut_oldest_segment(raw: &Path) -> (String, usize, u64) {
    run_ok(
        Command::new("e2fsck")
            .args(["-E", "journal_only", "-y"])
            .arg(raw),
    );
    let segs = segments(raw);
    println!("commit log segments in the copy: {segs:?}");
    let (name, _) = segs.first().expect("a commit log segment").clone();
    let path = format!("/commitlog/{name}");
    let dump: PathBuf = raw.with_extension("segment");
    run_ok(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump {path} {}", dump.display()))
            .arg(raw),
    );
    let used = used_bytes(&std::fs::read(&dump).expect("segment"));
    std::fs::remove_file(&dump).expect("remove dump");
    assert!(used > 8192, "{name} holds only {used} bytes");
    // Whole 4 KiB blocks: punch frees those past the cut, the size ends the file inside them.
    let keep_blocks = (used / 2 / 4096).max(1) as u64;
    let len = keep_blocks * 4096;
    let cmds = raw.with_extension("debugfs");
    std::fs::write(
        &cmds,
        format!("punch {path} {keep_blocks}\nsif {path} size {len}\n"),
    )
    .expect("commands");
    run_ok(
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&cmds)
            .arg(raw),
    );
    std::fs::remove_file(&cmds).expect("remove commands");
    let after = segments(raw);
    assert!(
        after.iter().any(|(n, s)| *n == name && *s == len),
        "{name} cut to {len}: {after:?}"
    );
    (name, used, len)
}
