//! QEMU's failures as only its text tells them: `qemu-img` and `qemu-system-*` report an image
//! lock held by another process with an exit status of 1 and a message, nothing more typed.
//! When libvirt starts a QEMU that fails so, it passes the same text on inside its own
//! (`internal error: qemu unexpectedly closed the monitor: ...`).
//!
//! Invariant: this is the one place that reads QEMU's messages; callers decide on a
//! [`QemuFailure`], never on the text.

/// What a QEMU failure message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QemuFailure {
    /// Some process has the image (or an image of its chain) open: QEMU could not take its
    /// image lock (`Failed to get "write" lock`, `Failed to get shared "write" lock`, each
    /// followed by `Is another process using the image [PATH]?`).
    HeldOpen,
    /// Anything else.
    Other,
}

/// Classify the text of a QEMU failure (a tool's stderr, or a libvirt message quoting it).
pub fn classify(message: &str) -> QemuFailure {
    let lock = message.contains("Failed to get") && message.contains("lock");
    if lock || message.contains("Is another process using the image") {
        QemuFailure::HeldOpen
    } else {
        QemuFailure::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The messages below were produced on a Debian 12 host (QEMU 7.2, libvirt 9.0) with an
    // overlay /tmp/qlock/ovl.qcow2 on /tmp/qlock/base.qcow2, the file named in each held open
    // by `qemu-io -f qcow2 FILE`: `qemu-img info -f qcow2` (release's lock probe), `qemu-img
    // commit -q -d -f qcow2` (offline merge) and libvirt starting a paused helper domain on
    // the overlay (remote merge); the last two without any process holding a file.

    #[test]
    fn qemu_img_info_on_an_overlay_a_process_writes() {
        let m = "qemu-img: Could not open '/tmp/qlock/ovl.qcow2': Failed to get shared \"write\" lock\n\
                 Is another process using the image [/tmp/qlock/ovl.qcow2]?\n";
        assert_eq!(classify(m), QemuFailure::HeldOpen);
    }

    #[test]
    fn qemu_img_commit_of_an_overlay_a_process_writes() {
        let m = "qemu-img: Could not open '/tmp/qlock/ovl.qcow2': Failed to get \"write\" lock\n\
                 Is another process using the image [/tmp/qlock/ovl.qcow2]?\n";
        assert_eq!(classify(m), QemuFailure::HeldOpen);
        // `merge` reports only the first line.
        let first = m.lines().next().unwrap_or_default();
        assert_eq!(classify(first), QemuFailure::HeldOpen);
    }

    #[test]
    fn qemu_img_commit_into_an_image_a_process_writes() {
        let m = "qemu-img: Could not open '/tmp/qlock/ovl.qcow2': Could not open backing file: \
                 Failed to get shared \"write\" lock\n\
                 Is another process using the image [/tmp/qlock/base.qcow2]?\n";
        assert_eq!(classify(m), QemuFailure::HeldOpen);
    }

    #[test]
    fn libvirt_quoting_qemu_that_could_not_lock_the_helpers_disk() {
        let m = "internal error: qemu unexpectedly closed the monitor: \
                 2026-12-02T14:36:29.396378Z qemu-system-x86_64: -blockdev \
                 {\"node-name\":\"libvirt-1-format\",\"read-only\":false,\"driver\":\"qcow2\",\
                 \"file\":\"libvirt-1-storage\",\"backing\":\"libvirt-2-format\"}: \
                 Failed to get \"write\" lock\n\
                 Is another process using the image [/tmp/qlock/ovl.qcow2]?";
        assert_eq!(classify(m), QemuFailure::HeldOpen);
    }

    #[test]
    fn other_failures_are_not_held_open() {
        for m in [
            // qemu-img commit -q -d -f qcow2 of a file that does not exist.
            "qemu-img: Could not open '/tmp/qlock/missing.qcow2': Could not open \
             '/tmp/qlock/missing.qcow2': No such file or directory",
            // libvirt starting the helper on a missing overlay.
            "Cannot access storage file '/tmp/qlock/missing.qcow2' (as uid:64055, gid:64055): \
             No such file or directory",
            "block commit on cgsnap-merge-db-vda via qemu+tcp://far/system: failed",
            "its backing file is /srv/block-overlays/x, not the snapshot's image",
        ] {
            assert_eq!(classify(m), QemuFailure::Other, "{m}");
        }
    }
}
