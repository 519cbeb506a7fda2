//! Unit tests of the libvirt adapter's error classification (real messages).

use super::*;

#[test]
fn kinds_come_from_codes_and_the_rpc_layer() {
    let k = |code, from| kind_of(Enum::Known(code), Enum::Known(from));
    use {ErrorDomain as D, ErrorNumber as N};
    assert_eq!(k(N::NoDomain, D::Qemu), HvErrorKind::NoDomain);
    assert_eq!(k(N::NoDomainMetadata, D::Domain), HvErrorKind::NoMetadata);
    assert_eq!(
        k(N::OperationInvalid, D::Qemu),
        HvErrorKind::OperationInvalid
    );
    assert_eq!(k(N::NoSupport, D::Qemu), HvErrorKind::Unsupported);
    assert_eq!(
        k(N::OperationUnsupported, D::Qemu),
        HvErrorKind::Unsupported
    );
    assert_eq!(k(N::SystemError, D::Storage), HvErrorKind::System);
    // "unable to connect to server at '127.0.0.1:1': Connection refused", and a socket
    // closed under a call, are the RPC layer's.
    assert_eq!(k(N::SystemError, D::Rpc), HvErrorKind::ConnectionLost);
    assert_eq!(k(N::InternalError, D::Rpc), HvErrorKind::ConnectionLost);
    assert_eq!(k(N::NoConnect, D::None), HvErrorKind::ConnectionLost);
    assert_eq!(k(N::InternalError, D::Qemu), HvErrorKind::Other);
}

// The messages were produced on a Debian 12 host (libvirt 9.0, QEMU 7.2) by starting a
// paused transient domain (the remote merge's helper) on qemu:///system whose one disk
// is, in turn, a missing file and a qcow2 whose backing file is missing. Both came with
// code VIR_ERR_SYSTEM_ERROR from VIR_FROM_STORAGE.

#[test]
fn a_missing_disk_file() {
    let m = "Cannot access storage file '/tmp/qlock/missing.qcow2' (as uid:64055, gid:64055): No such file or directory";
    assert_eq!(
        classify_text(m),
        LibvirtFailure::StorageMissing {
            path: "/tmp/qlock/missing.qcow2"
        }
    );
    // Without the credentials (libvirt before 4.x), and a quote in the name.
    let m = "Cannot access storage file '/v/it's.qcow2': No such file or directory";
    assert_eq!(
        classify_text(m),
        LibvirtFailure::StorageMissing {
            path: "/v/it's.qcow2"
        }
    );
}

#[test]
fn a_missing_backing_file() {
    let m = "Cannot access backing file '/tmp/qlock/gone-base.qcow2' of storage file '/tmp/qlock/orphan.qcow2' (as uid:64055, gid:64055): No such file or directory";
    assert_eq!(
        classify_text(m),
        LibvirtFailure::BackingMissing {
            backing: "/tmp/qlock/gone-base.qcow2",
            of: "/tmp/qlock/orphan.qcow2"
        }
    );
}

#[test]
fn other_messages() {
    for m in [
        "Cannot access storage file '/v/a.qcow2' (as uid:0, gid:0): Permission denied",
        "internal error: qemu unexpectedly closed the monitor: ...: Failed to get \"write\" lock",
        "Domain not found: no domain with matching name 'nope'",
    ] {
        assert_eq!(classify_text(m), LibvirtFailure::Other, "{m}");
    }
}
