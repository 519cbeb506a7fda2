//! Release needs room where the images live: a running member whose images sit on a small
//! filesystem, next to its overlays (the default layout), gets 64 MiB of new data in an
//! overlay while the snapshot is held; with that filesystem nearly full, release is refused
//! before any commit starts (exit 4, one line naming the overlay, the directory, the need and
//! the free space), the VM keeps running and writing on its overlays, and once room is made the
//! same release merges everything, the new data included, into the image: rate-limited so that
//! the copy takes twice `--timeout`, which bounds time without progress, not the copy.

use crate::common;

use cgsnap_testbeds::guest;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const ROOM: &str = "/run/cgsnap-room";

/// A small tmpfs holding the guest's images; lazily unmounted on drop (the guest may still
/// have it open while a failed test unwinds).
struct SmallFs;

impl SmallFs {
    fn mount(size: &str) -> Self {
        let _ = Command::new("umount").args(["-l", ROOM]).status();
        std::fs::create_dir_all(ROOM).expect("mkdir");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755")])
            .args(["tmpfs", ROOM])
            .status()
            .expect("mount");
        assert!(st.success(), "mount tmpfs on {ROOM}");
        SmallFs
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").args(["-l", ROOM]).status();
    }
}

/// `qemu-io` on an image in use (`-U`, read-only): does it hold `pattern` at `off`, `len`?
fn holds(image: &str, pattern: &str, off: &str, len: &str) -> bool {
    let out = Command::new("qemu-io")
        .args(["-U", "-r", "-f", "qcow2", "-c"])
        .arg(format!("read -P {pattern} {off} {len}"))
        .arg(image)
        .output()
        .expect("qemu-io");
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && text.contains("read ") && !text.contains("failed")
}

#[test]
fn release_without_room_for_the_overlays_data_is_refused_then_completes() {
    let mut lab = lab("cgt-room", 0, 2);
    let _fs = SmallFs::mount("180m");
    let g = guest::Guest::start(
        URI,
        Path::new(ROOM),
        // Writing every 200 ms: a rewrite of its record must not outpace the rate-limited
        // commit below (the fault suite covers a commit that never converges).
        guest::Spec {
            interval_ms: 200,
            disk_size: 256 << 20,
            ..guest::Spec::writer("cgt-room-1", 2)
        },
        &lab.assets,
    )
    .expect("guest on the small filesystem");
    g.wait_console("seq ", Duration::from_secs(120))
        .expect("boots and writes");
    lab.guests.push(g);
    let dom = lab.names()[0].clone();
    lab.group_add("cgt-room", &lab.names());
    let (id, m) = lab.snapshot_json("cgt-room", &["--min-free", "4194304"]);
    let (overlays, images) = (disk_fields(&m, 0, "overlay"), disk_fields(&m, 0, "image"));
    assert!(
        overlays[0].starts_with(ROOM),
        "default layout: next to the image"
    );

    // 64 MiB the image does not have, written by the guest's own QEMU into the active layer.
    // Then flushed, as a guest's fsync would: QEMU caches qcow2 metadata until then.
    for cmd in ["write -P 0x5a 1M 64M", "flush"] {
        let out = Command::new("virsh")
            .args(["-c", URI, "qemu-monitor-command", &dom, "--hmp"])
            // Through the disk's own block backend (its QOM path: the PCI proxy has none).
            .arg(format!(
                "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"{cmd}\""
            ))
            .output()
            .expect("virsh");
        let said = String::from_utf8_lossy(&out.stdout);
        // Silent on success (qemu-io reports to QEMU's stdout); errors come back here.
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{cmd}: {said}"
        );
    }
    assert!(holds(&overlays[0], "0x5a", "1M", "64M"), "in the overlay");

    // Leave 1 MiB free.
    let filler = Path::new(ROOM).join("filler");
    let keep = 1 << 20;
    let fill = cgsnap::release::room::free_bytes(Path::new(ROOM))
        .expect("statvfs")
        .saturating_sub(keep);
    let st = Command::new("fallocate")
        .args(["-l", &fill.to_string()])
        .arg(&filler)
        .status()
        .expect("fallocate");
    assert!(st.success());

    let out = lab.cgsnap().args(["release", &id]).assert().code(4);
    let err = String::from_utf8_lossy(&out.get_output().stderr)
        .trim()
        .to_string();
    eprintln!("{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&format!("snapshot {id}: no room to release"))
            && err.contains(&overlays[0])
            // Free space is rounded down; the guest may have taken a few clusters since.
            && ["1", "0"].iter().any(|n| err.contains(&format!(
                "more in {ROOM}/cgt-room-1, which has {n} MiB free"
            )))
            && err.contains("free space there"),
        "{err}"
    );
    // Nothing started: still taken, still on the overlays, still writing.
    let listed = list_json(&lab);
    assert_eq!(listed[0]["state"], "taken", "{listed}");
    assert_eq!(domstate(&dom), "running");
    let on: Vec<String> = domblklist(&dom).into_iter().map(|(_, s)| s).collect();
    assert_eq!(on, overlays);
    let g = lab.guest(&dom);
    g.wait_progress(g.console_seq() + 20, Duration::from_secs(60))
        .expect("the guest keeps writing");

    std::fs::remove_file(&filler).expect("make room");
    // Rate-limited, QEMU copies in bursts of 16 MiB and then waits: at 16 MiB/s the 64 MiB
    // take about 4 s, twice the timeout, gaining every second. The copy is not cut off: the
    // timeout bounds time without progress, not the copy.
    let t = std::time::Instant::now();
    lab.cgsnap()
        .args(["release", &id, "--timeout", "2s", "--bandwidth", "16777216"])
        .assert()
        .success();
    let took = t.elapsed();
    assert!(
        took > Duration::from_secs(3),
        "the copy outlasted the timeout: {took:?}"
    );
    let on: Vec<String> = domblklist(&dom).into_iter().map(|(_, s)| s).collect();
    assert_eq!(on, images, "back on the images");
    lab.assert_no_overlays(std::slice::from_ref(&dom));
    assert!(
        holds(&images[0], "0x5a", "1M", "64M"),
        "the new data merged"
    );
    drop(lab);
}
