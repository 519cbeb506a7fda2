//! One disk copied out of its NBD export into a new qcow2 file: fully (only the allocated data
//! is read) or incrementally (only what a `qemu:dirty-bitmap:NAME` context marks dirty, into a
//! qcow2 whose backing file is the previous export).
//!
//! Invariants:
//! - The target is created new (`O_EXCL`): an existing file is refused, never overwritten.
//! - Every failure deletes the partial target and ends the `qemu-nbd` serving it: a file that
//!   exists under a target's name holds the whole disk as of the export.
//! - Full copy: extents that read as zeros (`base:allocation` zero flag) are skipped, since a
//!   new qcow2 without backing reads zeros there. A hole without the zero flag is read: the NBD
//!   specification does not promise it reads as zeros.
//! - Incremental copy: every dirty byte is written: data is read and written, zeros are written
//!   as zeros (`nbd_zero`), so that they shadow the backing file's old data.
//! - The backing file must have the export's virtual size: a resized disk needs a full copy.
//! - [`CopyStats::bytes_read`] counts exactly the bytes read from the source.

mod target;

use crate::hypervisor::nbd::{self, BASE_ALLOCATION, Extent, Nbd, NbdError};
use crate::model::exit::{Classify, ExitCode};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

/// Largest data chunk read and written in one request (libnbd and qemu-nbd accept 32 MiB; 4 MiB
/// keeps several requests per worker in flight without large buffers).
pub const MAX_CHUNK: u64 = 4 << 20;
/// Largest zero chunk: `nbd_zero` lengths must fit in 32 bits; zeroing costs no transfer.
pub const MAX_ZERO_CHUNK: u64 = 1 << 30;

/// What to copy, from where, to where.
#[derive(Debug, Clone)]
pub struct CopyJob {
    /// The disk's NBD URI, e.g. `nbd+unix:///vda?socket=/run/libvirt/backup.sock`.
    pub source_uri: String,
    /// The dirty-bitmap meta context (`qemu:dirty-bitmap:NAME`) for an incremental copy;
    /// `None` copies the whole disk.
    pub dirty_context: Option<String>,
    /// The qcow2 file to create; it must not exist. Missing parent folders are created.
    pub target: PathBuf,
    /// The previous export, recorded as the target's backing file as given (a relative path is
    /// relative to the target's folder, as qemu reads it). Required for incremental copies.
    pub backing: Option<PathBuf>,
    /// Parallel connections (each worker has one to the source and one to the target).
    pub workers: usize,
}

/// What a copy did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CopyStats {
    /// Bytes read from the source and written to the target.
    pub bytes_read: u64,
    /// Bytes made to read as zeros in the target without reading them.
    pub bytes_zeroed: u64,
    /// Chunks copied or zeroed.
    pub extents: u64,
    /// Bytes the plan covered (read plus zeroed, when the copy completed).
    pub planned_bytes: u64,
    /// Wall time of the whole copy, planning and target creation included.
    pub seconds: f64,
}

/// A piece of the disk to copy: read and write `len` bytes at `offset`, or, when `zero`, make
/// them read as zeros in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// First byte.
    pub offset: u64,
    /// Length in bytes, at most [`MAX_CHUNK`] (data) or [`MAX_ZERO_CHUNK`] (zeros).
    pub len: u64,
    /// Write zeros instead of reading.
    pub zero: bool,
}

/// Why a copy failed. Its target file does not exist afterwards (unless it existed before and
/// was refused).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The source export could not be reached or read.
    #[error(
        "cannot read disk {uri}: {source}; check that the backup job still runs and exports this disk"
    )]
    Source {
        /// The disk's NBD URI.
        uri: String,
        /// The libnbd failure.
        source: NbdError,
    },
    /// `qemu-img convert` of a full copy failed.
    #[error(
        "cannot copy disk {uri}: {detail}; check that the backup job still runs and that the target's folder has room"
    )]
    Convert {
        /// The disk's NBD URI.
        uri: String,
        /// qemu-img's exit status and message.
        detail: String,
    },
    /// The export lacks a meta context the copy needs.
    #[error(
        "disk {uri} does not export {context}: start the backup with that checkpoint's bitmap, or make a full copy"
    )]
    NoContext {
        /// The disk's NBD URI.
        uri: String,
        /// The missing context.
        context: String,
    },
    /// The target file exists already.
    #[error(
        "target {} already exists and is never overwritten: choose another name or remove it",
        path.display()
    )]
    TargetExists {
        /// The target path.
        path: PathBuf,
    },
    /// The backing file's virtual size is not the disk's.
    #[error(
        "backing file {} holds {backing_size} bytes but disk {uri} has {size}: the disk was resized, make a full copy",
        backing.display()
    )]
    BackingSize {
        /// The backing file, as resolved.
        backing: PathBuf,
        /// Its virtual size.
        backing_size: u64,
        /// The disk's NBD URI.
        uri: String,
        /// The disk's size.
        size: u64,
    },
    /// A QEMU tool could not be started.
    #[error("cannot run {tool}: {source}; install qemu-utils")]
    ToolMissing {
        /// `qemu-img` or `qemu-nbd`.
        tool: &'static str,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// Creating, serving or writing the target failed.
    #[error("cannot write target {}: {detail}; check its folder's free space and permissions", path.display())]
    Target {
        /// The target path.
        path: PathBuf,
        /// What failed, with the tool's or libnbd's message.
        detail: String,
    },
}

impl Classify for CopyError {
    /// The source is the hypervisor's export (libvirt's backup job), hence `Hypervisor`; what a
    /// rerun with other arguments fixes is a `Precondition`; a failing local target is an I/O
    /// error, which `Internal` covers.
    fn exit_code(&self) -> ExitCode {
        match self {
            CopyError::Source { .. } | CopyError::Convert { .. } => ExitCode::Hypervisor,
            CopyError::NoContext { .. }
            | CopyError::TargetExists { .. }
            | CopyError::BackingSize { .. }
            | CopyError::ToolMissing { .. } => ExitCode::Precondition,
            CopyError::Target { .. } => ExitCode::Internal,
        }
    }
}

fn source_err(uri: &str) -> impl Fn(NbdError) -> CopyError + '_ {
    move |source| CopyError::Source {
        uri: uri.to_string(),
        source,
    }
}

/// The chunks a copy of `job` would copy, from the export's extents (it connects to read them).
pub fn plan(job: &CopyJob) -> Result<Vec<Chunk>, CopyError> {
    plan_sized(job).map(|(_, c)| c)
}

/// The export's size and the chunks to copy.
fn plan_sized(job: &CopyJob) -> Result<(u64, Vec<Chunk>), CopyError> {
    let uri = job.source_uri.as_str();
    let mut contexts = vec![BASE_ALLOCATION];
    contexts.extend(job.dirty_context.as_deref());
    let src = Nbd::connect(uri, &contexts).map_err(source_err(uri))?;
    for ctx in &contexts {
        if !src.can_meta_context(ctx) {
            return Err(CopyError::NoContext {
                uri: uri.to_string(),
                context: (*ctx).to_string(),
            });
        }
    }
    let size = src.size().map_err(source_err(uri))?;
    let alloc = src
        .extents(BASE_ALLOCATION, 0, size)
        .map_err(source_err(uri))?;
    let dirty = match job.dirty_context.as_deref() {
        Some(ctx) => Some(src.extents(ctx, 0, size).map_err(source_err(uri))?),
        None => None,
    };
    // Planning is over; the workers open connections of their own.
    let _ = src.shutdown();
    Ok((size, chunks(&alloc, dirty.as_deref())))
}

/// The chunks to copy given the allocation extents and, for an incremental copy, the dirty
/// extents (both covering the disk, in order).
pub fn chunks(alloc: &[Extent], dirty: Option<&[Extent]>) -> Vec<Chunk> {
    let is_zero = |e: &Extent| e.flags & nbd::STATE_ZERO != 0;
    let mut pieces: Vec<Chunk> = Vec::new();
    let mut push = |offset: u64, end: u64, zero: bool| match pieces.last_mut() {
        Some(last) if last.offset + last.len == offset && last.zero == zero => {
            last.len += end - offset;
        }
        _ => pieces.push(Chunk {
            offset,
            len: end - offset,
            zero,
        }),
    };
    match dirty {
        None => alloc
            .iter()
            .filter(|e| !is_zero(e))
            .for_each(|e| push(e.offset, e.end(), false)),
        Some(dirty) => {
            for d in dirty.iter().filter(|d| d.flags & nbd::STATE_DIRTY != 0) {
                // What the allocation does not describe is read: reading is always correct.
                let mut at = d.offset;
                for a in alloc
                    .iter()
                    .filter(|a| a.end() > d.offset && a.offset < d.end())
                {
                    let (s, e) = (a.offset.max(d.offset), a.end().min(d.end()));
                    if s > at {
                        push(at, s, false);
                    }
                    push(s, e, is_zero(a));
                    at = e;
                }
                if at < d.end() {
                    push(at, d.end(), false);
                }
            }
        }
    }
    split(&pieces)
}

/// `pieces` cut into requests of at most [`MAX_CHUNK`] (data) or [`MAX_ZERO_CHUNK`] (zeros).
fn split(pieces: &[Chunk]) -> Vec<Chunk> {
    let mut out = Vec::new();
    for p in pieces {
        let max = if p.zero { MAX_ZERO_CHUNK } else { MAX_CHUNK };
        let mut at = p.offset;
        let end = p.offset + p.len;
        while at < end {
            let len = (end - at).min(max);
            out.push(Chunk {
                offset: at,
                len,
                zero: p.zero,
            });
            at += len;
        }
    }
    out
}

/// What a running copy tells whoever watches it (a progress line).
#[derive(Debug, Default)]
pub struct Tally {
    /// Bytes read or zeroed so far.
    pub done: AtomicU64,
    /// Bytes the copy will read or zero, added once its plan is made.
    pub planned: AtomicU64,
}

/// Copy the disk `job` names into its new target, adding its plan to `tally.planned` once made
/// (the disk's block status is read once) and counting bytes read or zeroed into
/// `tally.done` as chunks complete.
pub fn copy_disk(job: &CopyJob, tally: &Tally) -> Result<CopyStats, CopyError> {
    let t0 = Instant::now();
    let progress = &tally.done;
    let (size, chunks) = plan_sized(job)?;
    tally
        .planned
        .fetch_add(chunks.iter().map(|c| c.len).sum(), Ordering::Relaxed);
    // Dropped last on an error path: the server is gone before the partial file is removed.
    let mut file = target::create(job, size)?;
    if job.dirty_context.is_none() && job.backing.is_none() {
        let planned: u64 = chunks.iter().filter(|c| !c.zero).map(|c| c.len).sum();
        target::convert_full(job, &file, progress)?;
        file.keep()?;
        progress.store(planned, Ordering::Relaxed);
        return Ok(CopyStats {
            bytes_read: planned,
            bytes_zeroed: 0,
            extents: chunks.len() as u64,
            planned_bytes: planned,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    let workers = job.workers.clamp(1, chunks.len().max(1));
    // `main` is held until the end: qemu-nbd exits when its last client leaves.
    let (server, main) = target::Server::start(&file, workers + 1)?;
    let counters = Counters::default();
    run_workers(job, &server, &chunks, workers, &counters, progress)?;
    main.flush().map_err(|e| file.error(e))?;
    main.shutdown().map_err(|e| file.error(e))?;
    drop(main);
    server.finish()?;
    file.keep()?;
    Ok(CopyStats {
        bytes_read: counters.read.load(Ordering::Relaxed),
        bytes_zeroed: counters.zeroed.load(Ordering::Relaxed),
        extents: counters.chunks.load(Ordering::Relaxed),
        planned_bytes: chunks.iter().map(|c| c.len).sum(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[derive(Default)]
struct Counters {
    read: AtomicU64,
    zeroed: AtomicU64,
    chunks: AtomicU64,
}

/// What the workers share: the chunk queue (an index into the plan), the stop flag, the first
/// error.
struct Shared<'a> {
    chunks: &'a [Chunk],
    next: AtomicUsize,
    failed: AtomicBool,
    error: Mutex<Option<CopyError>>,
    counters: &'a Counters,
    progress: &'a AtomicU64,
}

fn run_workers(
    job: &CopyJob,
    server: &target::Server,
    chunks: &[Chunk],
    workers: usize,
    counters: &Counters,
    progress: &AtomicU64,
) -> Result<(), CopyError> {
    let shared = Shared {
        chunks,
        next: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
        error: Mutex::new(None),
        counters,
        progress,
    };
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                if let Err(e) = worker(job, server, &shared) {
                    shared.failed.store(true, Ordering::Relaxed);
                    let mut slot = shared.error.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(e);
                }
            });
        }
    });
    match shared.error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One worker: its own source and target connections; takes chunks until none are left or
/// another worker failed.
fn worker(job: &CopyJob, server: &target::Server, sh: &Shared<'_>) -> Result<(), CopyError> {
    let uri = job.source_uri.as_str();
    let src = Nbd::connect(uri, &[]).map_err(source_err(uri))?;
    let dst = server.connect()?;
    let mut buf = vec![0u8; usize::try_from(MAX_CHUNK).unwrap_or(4 << 20)];
    while !sh.failed.load(Ordering::Relaxed) {
        let Some(c) = sh.chunks.get(sh.next.fetch_add(1, Ordering::Relaxed)) else {
            break;
        };
        if c.zero {
            dst.zero(c.len, c.offset).map_err(|e| server.error(e))?;
            sh.counters.zeroed.fetch_add(c.len, Ordering::Relaxed);
        } else {
            // Data chunks are at most MAX_CHUNK long: they fit the buffer.
            let n = usize::try_from(c.len).unwrap_or(buf.len()).min(buf.len());
            src.pread(&mut buf[..n], c.offset)
                .map_err(source_err(uri))?;
            dst.pwrite(&buf[..n], c.offset)
                .map_err(|e| server.error(e))?;
            sh.counters.read.fetch_add(c.len, Ordering::Relaxed);
        }
        sh.counters.chunks.fetch_add(1, Ordering::Relaxed);
        sh.progress.fetch_add(c.len, Ordering::Relaxed);
    }
    // The source is read-only and the target is flushed by the main connection: a failed
    // goodbye loses nothing.
    let _ = src.shutdown();
    let _ = dst.shutdown();
    Ok(())
}

#[cfg(test)]
#[path = "copy_tests.rs"]
mod tests;
