//! The backup-cut side of `cgsnap bench --backup`:
//! - per configuration, one backup cut (begin + end) per round next to our overlay snapshot,
//!   on the same guests in the same rounds: its freeze window, and the bytes a release merges
//!   back per overlay cycle (what a backup cut never writes);
//! - on one guest with a disk of `--export-gib` GiB, full of data: a full export against
//!   `qemu-img convert -t writeback` of the same served cut (the ceiling; durable on disk at
//!   its end, as an export is), and incremental exports after
//!   1 % and 10 % of the disk was rewritten by the guest's own block layer, against the bytes
//!   rewritten.
//!
//! Invariants: every figure is a median over rounds of this run; the rewrites go through the
//! running QEMU (HMP `qemu-io`), so the checkpoint's bitmaps see exactly them (and the
//! writer's own records, counted as what they are: a few 64 KiB blocks).

use super::{fail, stats};
use cgsnap::backup;
use cgsnap::catalog::Catalog;
use cgsnap::events::{Events, Reporter};
use cgsnap::exit::Failure;
use cgsnap::hypervisor::Host;
use cgsnap::hypervisor::pool::Ctx;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

/// Backup cuts of the benchmark group, one per round.
pub struct Cuts {
    opts: backup::Options,
    win: Vec<f64>,
}

impl Cuts {
    pub fn new(opts: cgsnap::snapshot::Options) -> Self {
        Cuts {
            opts: options(opts, false),
            win: Vec::new(),
        }
    }

    /// One cut of the group, then its end.
    pub fn round(
        &mut self,
        ctx: &Ctx,
        hosts: &[Arc<dyn Host>],
        cat: &Catalog,
        report: &dyn Reporter,
    ) -> Result<(), Failure> {
        let m = backup::begin(
            hosts,
            cat,
            &self.opts,
            chrono::Utc::now(),
            Events::reporting(report),
        )?;
        self.win.push(m.freeze_window_ms.unwrap_or_default());
        backup::end(&ctx.pool, cat, &m.id)?;
        Ok(())
    }

    pub fn window(&self) -> Result<stats::Summary, Failure> {
        stats::summarize(&self.win).ok_or_else(|| fail("no backup cut samples"))
    }
}

/// How the benchmark exports: the command's defaults.
pub const READING: backup::export::Reading = backup::export::Reading {
    workers: 4,
    min_free: None,
};

/// Backup options over the snapshot's `opts`, in the default scratch directory.
pub fn options(opts: cgsnap::snapshot::Options, incremental: bool) -> backup::Options {
    backup::Options {
        snap: opts,
        scratch_dir: PathBuf::from(backup::prepare::DEFAULT_SCRATCH),
        incremental,
        rules: backup::base::Rules::default(),
    }
}

/// Bytes a file holds on disk (its allocated blocks).
pub fn allocated(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// What the export part measured.
#[derive(Debug, Serialize)]
pub struct ExportResults {
    pub disk_bytes: u64,
    pub rounds: usize,
    /// Seconds of a full export (ours) and of `qemu-img convert` of the same cut.
    pub full_export_s: stats::Summary,
    pub qemu_img_convert_s: stats::Summary,
    /// Median full export / median convert.
    pub full_ratio_to_convert: f64,
    pub full_bytes_read: u64,
    pub incrementals: Vec<IncrementalResult>,
}

/// Incremental exports after `percent` of the disk was rewritten.
#[derive(Debug, Serialize)]
pub struct IncrementalResult {
    pub percent: f64,
    pub rewritten_bytes: u64,
    pub bytes_read: stats::Summary,
    /// Median bytes read / bytes rewritten.
    pub ratio_to_rewritten: f64,
    pub export_s: stats::Summary,
}

/// Rewrite `bytes` of the guest's `vda` in 1 MiB blocks at distinct offsets (a fixed
/// pseudo-random walk), through the running QEMU: the guest's own disk device, so the write
/// takes the path (and the dirty bitmaps) a guest write takes.
fn rewrite(dom: &str, disk_bytes: u64, bytes: u64, seed: u64) -> Result<u64, Failure> {
    const MIB: u64 = 1 << 20;
    let blocks = disk_bytes / MIB;
    let n = bytes / MIB;
    // A step coprime with the block count visits each block at most once.
    let step = (blocks / 2 + 1..blocks)
        .find(|s| gcd(*s, blocks) == 1)
        .unwrap_or(1);
    let mut at = seed % blocks;
    for _ in 0..n {
        let cmd = format!(
            "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"write -q -P 0x{:02x} {} {MIB}\"",
            (seed % 200 + 17) as u8,
            at * MIB
        );
        let out = Command::new("virsh")
            .args(["qemu-monitor-command", dom, "--hmp", &cmd])
            .output()
            .map_err(|e| fail(format!("virsh: {e}")))?;
        let text = String::from_utf8_lossy(&out.stdout);
        // `write -q` prints nothing when it wrote.
        if !out.status.success() || !text.trim().is_empty() {
            return Err(fail(format!(
                "rewrite on {dom}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        at = (at + step) % blocks;
    }
    Ok(n * MIB)
}

/// Write back whatever is dirty, so a timed copy does not pay for the one before it.
fn settle() {
    let _ = Command::new("sync").status();
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// `qemu-img convert` of every disk the cut serves into `dir` (the ceiling of a full export).
fn convert(m: &cgsnap::catalog::Manifest, dir: &Path) -> Result<f64, Failure> {
    let t = Instant::now();
    for mem in m.backup.iter().flat_map(|b| &b.members) {
        for d in &mem.disks {
            let out = dir.join(format!("{}-{}.qcow2", mem.domain, d.target));
            let st = Command::new("qemu-img")
                // Flushed at the end like an export (its default cache mode, unsafe, is not).
                .args([
                    "convert",
                    "-t",
                    "writeback",
                    "-f",
                    "raw",
                    "-O",
                    "qcow2",
                    &d.nbd_uri,
                ])
                .arg(&out)
                .status()
                .map_err(|e| fail(format!("qemu-img: {e}")))?;
            if !st.success() {
                return Err(fail(format!("qemu-img convert {} failed", d.nbd_uri)));
            }
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

/// The export part on the group `bench` of one guest (`dom`, one disk of `disk_bytes`).
#[allow(clippy::too_many_arguments)]
pub fn exports(
    ctx: &Ctx,
    cat: &Catalog,
    cuts: &Cuts,
    inc_opts: &backup::Options,
    dom: &str,
    disk_bytes: u64,
    rounds: usize,
    work: &Path,
) -> Result<ExportResults, Failure> {
    let hosts = ctx.hosts()?;
    let ev = Events::reporting(&cgsnap::events::NoReport);
    let (mut ours, mut conv, mut full_read) = (Vec::new(), Vec::new(), 0);
    let mut k = 0;
    let mut next_dir = || {
        k += 1;
        work.join(format!("e{k}"))
    };
    let mut previous: Option<PathBuf> = None;
    for r in 0..rounds {
        let m = backup::begin(&hosts, cat, &cuts.opts, chrono::Utc::now(), ev)?;
        let (cdir, edir) = (next_dir(), next_dir());
        std::fs::create_dir_all(&cdir).map_err(|e| fail(e.to_string()))?;
        // Each timed copy starts with nothing dirty in the page cache, and the two take turns
        // going first: this disk's speed drifts by 1.7x between runs of the same copy.
        let ours_first = r % 2 == 1;
        let mut timed_export = || -> Result<u64, Failure> {
            settle();
            let t = Instant::now();
            let e = backup::export::export(&ctx.pool, cat, &m.id, &edir, READING, ev)?;
            ours.push(t.elapsed().as_secs_f64());
            Ok(e.backup.and_then(|b| b.export).map_or(0, |x| x.bytes_read))
        };
        if ours_first {
            full_read = timed_export()?;
        }
        settle();
        conv.push(convert(&m, &cdir)?);
        let _ = std::fs::remove_dir_all(&cdir);
        if !ours_first {
            full_read = timed_export()?;
        }
        backup::end(&ctx.pool, cat, &m.id)?;
        // Only the newest full export stays: the incrementals below are based on it.
        if let Some(p) = previous.replace(edir) {
            let _ = std::fs::remove_dir_all(p);
        }
    }
    let mut incrementals = Vec::new();
    for (i, pct) in [1.0f64, 10.0].into_iter().enumerate() {
        let (mut read, mut secs) = (Vec::new(), Vec::new());
        let mut rewritten = 0;
        for r in 0..rounds {
            rewritten = rewrite(
                dom,
                disk_bytes,
                (disk_bytes as f64 * pct / 100.0) as u64,
                (i * 10 + r) as u64 * 7919,
            )?;
            let m = backup::begin(&hosts, cat, inc_opts, chrono::Utc::now(), ev)?;
            if m.backup.as_ref().is_some_and(|b| b.since.is_none()) {
                return Err(fail(format!("cut {} is not incremental", m.id)));
            }
            let t = Instant::now();
            let e = backup::export::export(&ctx.pool, cat, &m.id, &next_dir(), READING, ev)?;
            secs.push(t.elapsed().as_secs_f64());
            read.push(e.backup.and_then(|b| b.export).map_or(0, |x| x.bytes_read) as f64);
            backup::end(&ctx.pool, cat, &m.id)?;
        }
        let bytes_read = stats::summarize(&read).ok_or_else(|| fail("no samples"))?;
        incrementals.push(IncrementalResult {
            percent: pct,
            rewritten_bytes: rewritten,
            ratio_to_rewritten: bytes_read.median / rewritten.max(1) as f64,
            bytes_read,
            export_s: stats::summarize(&secs).ok_or_else(|| fail("no samples"))?,
        });
    }
    let full_export_s = stats::summarize(&ours).ok_or_else(|| fail("no samples"))?;
    let qemu_img_convert_s = stats::summarize(&conv).ok_or_else(|| fail("no samples"))?;
    Ok(ExportResults {
        disk_bytes,
        rounds,
        full_ratio_to_convert: full_export_s.median / qemu_img_convert_s.median,
        full_export_s,
        qemu_img_convert_s,
        full_bytes_read: full_read,
        incrementals,
    })
}

/// The export results as lines on stdout.
pub fn print(e: &ExportResults) {
    println!(
        "export of a {} GiB disk: full {:.1} s, qemu-img convert {:.1} s (ratio {:.2}), {} MiB read",
        e.disk_bytes >> 30,
        e.full_export_s.median,
        e.qemu_img_convert_s.median,
        e.full_ratio_to_convert,
        e.full_bytes_read >> 20
    );
    for i in &e.incrementals {
        println!(
            "incremental after {}% rewritten ({} MiB): {:.1} MiB read (ratio {:.3}), {:.1} s",
            i.percent,
            i.rewritten_bytes >> 20,
            i.bytes_read.median / (1 << 20) as f64,
            i.ratio_to_rewritten,
            i.export_s.median
        );
    }
}
