//! `cgsnap bench --sustained-minutes M`: sustained protection of a group of writer VMs by
//! backup cuts, each incrementally exported, every `--sustained-interval`: the interval
//! achieved, the data-loss bound it gives, and the guests' write throughput against the same
//! guests with no cuts, measured in the same run before and after the protected phase.
//!
//! Invariants: the bound at any instant is its distance to the consistency point of the newest
//! cut whose export had completed then, so its maximum over the run is the longest stretch
//! from one exported cut's consistency point to the end of the next one's export; throughput
//! is the writers' fsync'd rounds per second, read from their consoles.

use super::{fail, stats};
use cgsnap::backup;
use cgsnap::catalog::Catalog;
use cgsnap::events::{Events, NoReport};
use cgsnap::exit::Failure;
use cgsnap::hypervisor::pool::Ctx;
use cgsnap_testbeds::{assets, guest};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// One cut of the run.
#[derive(Debug, Serialize)]
pub struct Cycle {
    /// Seconds since the protected phase started, at the cut's consistency point.
    pub at_s: f64,
    pub mode: String,
    pub freeze_window_ms: f64,
    pub export_s: f64,
    pub bytes_read: u64,
    /// Seconds from the previous exported cut's consistency point to this export's end.
    pub loss_bound_s: Option<f64>,
}

/// The run, as written to `results.json`.
#[derive(Debug, Serialize)]
pub struct Sustained {
    pub vms: usize,
    pub disks: usize,
    pub interval_s: f64,
    pub minutes: f64,
    pub baseline_minutes: f64,
    /// Writer rounds per second, all guests, without cuts (the mean of the stretches before
    /// and after the protected phase, so host drift over the run is bracketed) and with them.
    pub throughput_unprotected: f64,
    pub throughput_unprotected_before: f64,
    pub throughput_unprotected_after: f64,
    pub throughput_protected: f64,
    /// 1 - protected / unprotected, in percent.
    pub throughput_lost_pct: f64,
    /// Seconds between consecutive cuts' consistency points.
    pub achieved_interval_s: stats::Summary,
    pub loss_bound_s: stats::Summary,
    pub freeze_window_ms: stats::Summary,
    pub cycles: Vec<Cycle>,
}

/// What the sustained run is given.
pub struct Plan<'a> {
    pub vms: usize,
    pub minutes: f64,
    pub baseline_minutes: f64,
    pub interval: Duration,
    pub dir: &'a Path,
    pub out: &'a Path,
}

fn rounds(guests: &[guest::Guest]) -> u64 {
    guests.iter().map(guest::Guest::console_seq).sum()
}

/// Writer rounds per second over `d`, all guests.
fn rate(guests: &[guest::Guest], d: Duration) -> f64 {
    let (s0, t0) = (rounds(guests), Instant::now());
    std::thread::sleep(d);
    (rounds(guests).saturating_sub(s0)) as f64 / t0.elapsed().as_secs_f64()
}

/// Run it and write `OUT/results.json` and `OUT/sustained.svg`.
pub fn run(
    ctx: &Ctx,
    cat: &Catalog,
    p: &Plan,
    snap: cgsnap::snapshot::Options,
) -> Result<Sustained, Failure> {
    let uri = ctx
        .uris
        .first()
        .cloned()
        .unwrap_or_else(|| "qemu:///system".into());
    let assets = assets::ensure(&assets::cache_dir()).map_err(|e| fail(e.to_string()))?;
    let mut guests = Vec::new();
    for i in 1..=p.vms {
        let spec = guest::Spec::writer(&format!("cgsnap-sustained-{i}"), 2);
        guests.push(
            guest::Guest::start(&uri, p.dir, spec, &assets).map_err(|e| fail(e.to_string()))?,
        );
    }
    for g in &guests {
        g.wait_console("seq ", Duration::from_secs(300))
            .map_err(|e| fail(e.to_string()))?;
    }
    let hosts = ctx.hosts()?;
    let names: Vec<String> = guests.iter().map(|g| g.name().to_string()).collect();
    cgsnap::group::add(&hosts, "sustained", &names)?;
    let unprotected = rate(&guests, Duration::from_secs_f64(p.baseline_minutes * 60.0));
    let exports = p.dir.join("sustained-exports");
    let (cycles, protected) = protect(ctx, cat, p, snap, &hosts, &guests, &exports)?;
    // The same guests again without cuts: a baseline on both sides of the protected phase
    // separates the cuts' cost from the guests' own drift (caches filling, disks growing).
    let after = rate(&guests, Duration::from_secs_f64(p.baseline_minutes * 60.0));
    let unprotected_mean = (unprotected + after) / 2.0;
    cgsnap::group::remove(&hosts, "sustained", &[])?;
    drop(guests);
    let _ = std::fs::remove_dir_all(&exports);
    let gaps: Vec<f64> = cycles.windows(2).map(|w| w[1].at_s - w[0].at_s).collect();
    let loss: Vec<f64> = cycles.iter().filter_map(|c| c.loss_bound_s).collect();
    let win: Vec<f64> = cycles.iter().map(|c| c.freeze_window_ms).collect();
    let s = |v: &[f64]| stats::summarize(v).ok_or_else(|| fail("too few cycles"));
    let r = Sustained {
        vms: p.vms,
        disks: 2,
        interval_s: p.interval.as_secs_f64(),
        minutes: p.minutes,
        baseline_minutes: p.baseline_minutes,
        throughput_unprotected: unprotected_mean,
        throughput_unprotected_before: unprotected,
        throughput_unprotected_after: after,
        throughput_protected: protected,
        throughput_lost_pct: (1.0 - protected / unprotected_mean.max(1e-9)) * 100.0,
        achieved_interval_s: s(&gaps)?,
        loss_bound_s: s(&loss)?,
        freeze_window_ms: s(&win)?,
        cycles,
    };
    write(p.out, &r)?;
    Ok(r)
}

/// The protected phase: a cut, its incremental export into `exports` and its end every
/// interval; returns the cycles and the writers' rounds per second meanwhile.
fn protect(
    ctx: &Ctx,
    cat: &Catalog,
    p: &Plan,
    snap: cgsnap::snapshot::Options,
    hosts: &[std::sync::Arc<dyn cgsnap::hypervisor::Host>],
    guests: &[guest::Guest],
    exports: &Path,
) -> Result<(Vec<Cycle>, f64), Failure> {
    let mut opts = super::backup::options(snap, true);
    opts.snap.group = "sustained".into();
    let _ = std::fs::remove_dir_all(exports);
    let ev = Events::reporting(&NoReport);
    let (t0, s0) = (Instant::now(), rounds(guests));
    let end = Duration::from_secs_f64(p.minutes * 60.0);
    let mut cycles: Vec<Cycle> = Vec::new();
    let mut last_cp: Option<f64> = None;
    let mut k = 0;
    while t0.elapsed() < end {
        let due = t0 + p.interval * k;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        k += 1;
        let m = backup::begin(hosts, cat, &opts, chrono::Utc::now(), ev)?;
        let at = t0.elapsed().as_secs_f64();
        let te = Instant::now();
        let e = backup::export::export(
            &ctx.pool,
            cat,
            &m.id,
            &exports.join(format!("c{k:03}")),
            super::backup::READING,
            ev,
        )?;
        let export_s = te.elapsed().as_secs_f64();
        backup::end(&ctx.pool, cat, &m.id)?;
        let b = e.backup.as_ref();
        cycles.push(Cycle {
            at_s: at,
            mode: b.map_or("-".into(), |b| b.mode.to_string()),
            freeze_window_ms: e.freeze_window_ms.unwrap_or_default(),
            export_s,
            bytes_read: b
                .and_then(|b| b.export.as_ref())
                .map_or(0, |x| x.bytes_read),
            loss_bound_s: last_cp.map(|cp| at + export_s - cp),
        });
        last_cp = Some(at);
    }
    let protected = rounds(guests).saturating_sub(s0) as f64 / t0.elapsed().as_secs_f64();
    Ok((cycles, protected))
}

fn write(out: &Path, r: &Sustained) -> Result<(), Failure> {
    std::fs::create_dir_all(out).map_err(|e| fail(format!("{}: {e}", out.display())))?;
    let json = serde_json::to_string_pretty(r).map_err(|e| fail(e.to_string()))?;
    std::fs::write(out.join("results.json"), json).map_err(|e| fail(e.to_string()))?;
    std::fs::write(out.join("sustained.svg"), svg(r)).map_err(|e| fail(e.to_string()))?;
    Ok(())
}

/// The data-loss bound after each cut's export, against the run's time, with the interval.
fn svg(r: &Sustained) -> String {
    let (w, h, l, b) = (720.0, 300.0, 60.0, 40.0);
    let tmax = r.minutes * 60.0;
    let ymax = r
        .cycles
        .iter()
        .filter_map(|c| c.loss_bound_s)
        .fold(r.interval_s * 2.0, f64::max);
    let x = |t: f64| l + t / tmax * (w - l - 20.0);
    let y = |v: f64| h - b - v / ymax * (h - b - 40.0);
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\
         <rect width='100%' height='100%' fill='white'/>\
         <text x='{l}' y='20' font-size='14'>Data-loss bound over {} min, {} writer VMs, a cut + incremental export every {} s</text>\
         <line x1='{l}' y1='{}' x2='{}' y2='{}' stroke='black'/><line x1='{l}' y1='30' x2='{l}' y2='{}' stroke='black'/>\
         <line x1='{l}' y1='{:.1}' x2='{}' y2='{:.1}' stroke='#c0392b' stroke-dasharray='5,4'/>\
         <text x='{}' y='{:.1}' fill='#c0392b'>interval {} s</text>\
         <text x='{}' y='{}' text-anchor='middle'>minutes since the first cut</text><text x='8' y='{}'>{:.0} s</text><text x='8' y='{}'>0 s</text>",
        r.minutes,
        r.vms,
        r.interval_s,
        h - b,
        w - 20.0,
        h - b,
        h - b,
        y(r.interval_s),
        w - 20.0,
        y(r.interval_s),
        w - 120.0,
        y(r.interval_s) - 4.0,
        r.interval_s,
        (l + w) / 2.0,
        h - 8.0,
        40.0,
        ymax,
        h - b
    );
    let pts: Vec<String> = r
        .cycles
        .iter()
        .filter_map(|c| {
            c.loss_bound_s
                .map(|v| format!("{:.1},{:.1}", x(c.at_s + c.export_s), y(v)))
        })
        .collect();
    s.push_str(&format!(
        "<polyline points='{}' fill='none' stroke='#1f6fb2' stroke-width='2'/></svg>",
        pts.join(" ")
    ));
    s
}
