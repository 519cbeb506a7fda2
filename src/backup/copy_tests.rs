use super::*;
use crate::hypervisor::nbd::{STATE_DIRTY, STATE_HOLE, STATE_ZERO};

const K64: u64 = 64 << 10;
const M: u64 = 1 << 20;

fn ext(offset: u64, len: u64, flags: u32) -> Extent {
    Extent { offset, len, flags }
}

fn data(offset: u64, len: u64) -> Chunk {
    Chunk {
        offset,
        len,
        zero: false,
    }
}

fn zero(offset: u64, len: u64) -> Chunk {
    Chunk {
        offset,
        len,
        zero: true,
    }
}

#[test]
fn full_copy_reads_data_and_holes_without_zero_flag_only() {
    let alloc = [
        ext(0, K64, 0),
        ext(K64, K64, STATE_ZERO | STATE_HOLE),
        ext(2 * K64, K64, STATE_ZERO),
        ext(3 * K64, K64, STATE_HOLE),
        ext(4 * K64, K64, 0),
    ];
    assert_eq!(chunks(&alloc, None), [data(0, K64), data(3 * K64, 2 * K64)]);
}

#[test]
fn data_is_split_into_chunks_of_at_most_4_mib() {
    let alloc = [ext(K64, 9 * M, 0), ext(K64 + 9 * M, M, STATE_ZERO)];
    let c = chunks(&alloc, None);
    assert_eq!(
        c,
        [
            data(K64, MAX_CHUNK),
            data(K64 + MAX_CHUNK, MAX_CHUNK),
            data(K64 + 2 * MAX_CHUNK, M)
        ]
    );
    assert!(c.iter().all(|c| c.len <= MAX_CHUNK));
}

#[test]
fn zeros_are_split_at_the_zero_limit_only() {
    let len = 2 * MAX_ZERO_CHUNK + M;
    let alloc = [ext(0, len, STATE_ZERO)];
    let dirty = [ext(0, len, STATE_DIRTY)];
    assert_eq!(
        chunks(&alloc, Some(&dirty)),
        [
            zero(0, MAX_ZERO_CHUNK),
            zero(MAX_ZERO_CHUNK, MAX_ZERO_CHUNK),
            zero(2 * MAX_ZERO_CHUNK, M)
        ]
    );
}

#[test]
fn incremental_copies_dirty_intersected_with_allocation() {
    // Allocation: data 0..4, zero 4..6, data 6..10 (in 64 KiB units).
    let alloc = [
        ext(0, 4 * K64, 0),
        ext(4 * K64, 2 * K64, STATE_ZERO),
        ext(6 * K64, 4 * K64, 0),
    ];
    // Dirty: 1..2, 3..7, 9..10; clean elsewhere.
    let dirty = [
        ext(0, K64, 0),
        ext(K64, K64, STATE_DIRTY),
        ext(2 * K64, K64, 0),
        ext(3 * K64, 4 * K64, STATE_DIRTY),
        ext(7 * K64, 2 * K64, 0),
        ext(9 * K64, K64, STATE_DIRTY),
    ];
    assert_eq!(
        chunks(&alloc, Some(&dirty)),
        [
            data(K64, K64),
            data(3 * K64, K64),
            zero(4 * K64, 2 * K64),
            data(6 * K64, K64),
            data(9 * K64, K64),
        ]
    );
}

#[test]
fn incremental_never_skips_dirty_zeros_and_reads_what_allocation_misses() {
    // The allocation stops short of the dirty range: the rest is read, never assumed zero.
    let alloc = [ext(0, K64, STATE_ZERO | STATE_HOLE)];
    let dirty = [ext(0, 3 * K64, STATE_DIRTY)];
    assert_eq!(
        chunks(&alloc, Some(&dirty)),
        [zero(0, K64), data(K64, 2 * K64)]
    );
}

#[test]
fn nothing_dirty_plans_nothing() {
    let alloc = [ext(0, 8 * M, 0)];
    let dirty = [ext(0, 8 * M, 0)];
    assert!(chunks(&alloc, Some(&dirty)).is_empty());
    assert!(chunks(&[ext(0, 8 * M, STATE_ZERO)], None).is_empty());
}

#[test]
fn errors_are_one_line_with_their_exit_codes() {
    let e = CopyError::TargetExists {
        path: "/b/vda.qcow2".into(),
    };
    assert_eq!(e.exit_code(), ExitCode::Precondition);
    assert!(e.to_string().contains("/b/vda.qcow2"));
    let e = CopyError::Source {
        uri: "nbd://h/vda".into(),
        source: NbdError {
            uri: "nbd://h/vda".into(),
            call: "nbd_pread",
            message: "server disconnected".into(),
            errno: 0,
        },
    };
    assert_eq!(e.exit_code(), ExitCode::Hypervisor);
    let msg = e.to_string();
    assert!(
        msg.contains("nbd_pread") && msg.contains("server disconnected"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
}
