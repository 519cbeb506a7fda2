//! `cgsnap bench`: freeze window versus group size, disk size and disk usage, on real libvirt +
//! QEMU guests, against the sequential `virsh` baseline measured in the same run.
//!
//! Invariants:
//! - Ours and the baseline run on the same guests, interleaved round by round, so drift in
//!   machine load affects both alike; ratios compare medians of the same run.
//! - Every round is released before the next (disk chains identical at each round's start).
//! - Results are medians/p95/p99/max over rounds; nothing is extrapolated.

mod backup;
mod baseline;
pub(crate) mod compare;
pub(crate) mod cpu;
mod ours;
mod plot;
pub(crate) mod results;
pub(crate) mod stats;
mod sustained;
mod table;

use cgsnap::catalog::Catalog;
use cgsnap::events::{Events, Reporter};
use cgsnap::exit::ExitCode;
use cgsnap::exit::Failure;
use cgsnap::hypervisor::pool::Ctx;
use cgsnap::snapshot::protocol::Resume;
use cgsnap::snapshot::tuning::{SnapTuning, snap_options};
use cgsnap::{group, release};
use cgsnap_testbeds::{assets, guest};
use clap::Args;
pub(crate) use results::{Alternative, Config, Phases, Results, Row, WindowCpu};
use stats::Summary;
use std::path::{Path, PathBuf};
use std::time::Duration;

const GIB: u64 = 1 << 30;

/// `cgsnap bench`: which sweep, how many rounds, where the results go.
#[derive(Args)]
pub struct BenchArgs {
    /// The full sweep (N up to 32, S up to 1 TiB, W 2 GiB at every S); default is reduced.
    #[arg(long)]
    pub full: bool,
    /// Snapshot rounds per configuration (each for ours and for the baseline).
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// Disks per VM.
    #[arg(long, default_value_t = 2)]
    pub disks: usize,
    /// Where results.json and freeze-window.svg are written.
    #[arg(long, default_value = "docs/bench")]
    pub out: PathBuf,
    /// Only these group sizes (comma-separated), at the smallest disk size; skips the other sweeps.
    #[arg(long, value_delimiter = ',')]
    pub only_vms: Vec<usize>,
    /// Freeze through one shared libvirt connection instead of one per member (for A/B runs).
    #[arg(long)]
    pub shared_connection: bool,
    /// Resume policies of our snapshots (see `snapshot --resume`). The first one is reported
    /// as "ours"; with two (`early,together`) both run in every round, alternating which goes
    /// first, and the second is reported next to it (A/B on the same guests).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "together")]
    pub resume: Vec<Resume>,
    /// Define the guests as persistent domains, as production VMs are (libvirt then also
    /// rewrites each one's definition on disk inside the snapshot call); default transient.
    #[arg(long)]
    pub persistent: bool,
    /// Directory for the benchmark VMs' images.
    #[arg(long, default_value = "/var/lib/libvirt/images/cgsnap-bench")]
    pub dir: PathBuf,
    /// Also cut the group through the backup API in every round (freeze window, merge bytes
    /// avoided), and measure exports (see `--export-gib`).
    #[arg(long)]
    pub backup: bool,
    /// With `--backup`: disk size in GiB of the export measurements (full vs `qemu-img
    /// convert`, incrementals after 1 % and 10 % rewritten); 0 skips them.
    #[arg(long, default_value_t = 4)]
    pub export_gib: u64,
    /// Instead of the sweep: protect a group of writer VMs for this many minutes with a backup
    /// cut and incremental export every `--sustained-interval` (results in OUT).
    #[arg(long, value_name = "MINUTES")]
    pub sustained_minutes: Option<f64>,
    /// Writer VMs of the sustained run.
    #[arg(long, default_value_t = 4)]
    pub sustained_vms: usize,
    /// Time between two cuts of the sustained run.
    #[arg(long, default_value = "60s", value_parser = cgsnap::duration::parse)]
    pub sustained_interval: Duration,
    /// Minutes the sustained run's guests write without cuts before and again after the
    /// protected phase (the throughput baseline, drift bracketed).
    #[arg(long, default_value_t = 3.0)]
    pub sustained_baseline_minutes: f64,
    /// Compare this run with committed results (e.g. docs/bench/default/results.json).
    #[arg(long, value_name = "RESULTS_JSON")]
    pub compare: Option<PathBuf>,
}

/// Print this run against committed results, metric by metric (see [`compare`]).
fn print_comparison(path: &Path, results: &Results) -> Result<(), Failure> {
    let text =
        std::fs::read_to_string(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let old: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| fail(format!("{}: not a results.json: {e}", path.display())))?;
    let new = serde_json::to_value(results).map_err(|e| fail(e.to_string()))?;
    let rows = compare::compare(&old, &new);
    println!("compared with {}:", path.display());
    for c in &rows {
        println!(
            "  {:<36} {:<20} committed {:>9.3} fresh {:>9.3} ({:+6.1}%) {}",
            c.config,
            c.metric,
            c.committed,
            c.fresh,
            c.diff_pct,
            if c.within {
                "within noise"
            } else {
                "OUTSIDE noise"
            }
        );
    }
    let ok = rows.iter().filter(|c| c.within).count();
    println!("{ok} of {} metrics within noise", rows.len());
    Ok(())
}

fn fail(msg: impl Into<String>) -> Failure {
    Failure {
        code: ExitCode::Internal,
        msg: msg.into(),
    }
}

fn sweep(full: bool, disks: usize) -> Vec<Config> {
    let c = |vms, disk_size, written| Config {
        vms,
        disks,
        disk_size,
        written,
    };
    let ns: &[usize] = if full {
        &[1, 2, 4, 8, 16, 32]
    } else {
        &[1, 2, 4, 8]
    };
    let mut v: Vec<Config> = ns.iter().map(|&n| c(n, GIB, 0)).collect();
    let sizes: &[u64] = if full {
        &[100 * GIB, 1024 * GIB]
    } else {
        &[1024 * GIB]
    };
    v.extend(sizes.iter().map(|&s| c(1, s, 0)));
    // Usage: 2 GiB already written, on a disk large enough to hold it, against 0 on the same size.
    v.push(c(1, 4 * GIB, 0));
    v.push(c(1, 4 * GIB, 2 * GIB));
    if full {
        v.push(c(8, 4 * GIB, 2 * GIB));
    }
    v
}

fn cmd_text(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> serde_json::Value {
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_string))
        .unwrap_or_default();
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory": mem,
        "kernel": cmd_text("uname", &["-r"]),
        "qemu": cmd_text("qemu-system-x86_64", &["--version"]).lines().next().unwrap_or_default(),
        "libvirt": cmd_text("virsh", &["--version"]),
        "qemu_conf": qemu_conf(),
        "guests": "TCG (type='qemu'), 1 vCPU, 192 MiB, writer init: 512-byte fsync'd record per disk every 20 ms",
    })
}

/// The libvirt QEMU driver settings that change the freeze time (see docs/benchmark.md, host tuning).
fn qemu_conf() -> serde_json::Value {
    let text = std::fs::read_to_string("/etc/libvirt/qemu.conf").unwrap_or_default();
    let set: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("namespaces") || l.starts_with("remember_owner"))
        .collect();
    serde_json::json!({
        "settings": set,
        "defaults_apply_to_the_rest": "namespaces = [\"mount\"], remember_owner = 1",
    })
}

fn summary(v: &[f64]) -> Result<Summary, Failure> {
    stats::summarize(v).ok_or_else(|| fail("no samples"))
}

fn run_config(
    ctx: &Ctx,
    a: &BenchArgs,
    cat: &Catalog,
    assets: &assets::Assets,
    c: Config,
    rounds: usize,
    report: &dyn Reporter,
) -> Result<Row, Failure> {
    let uri = ctx
        .uris
        .first()
        .cloned()
        .unwrap_or_else(|| "qemu:///system".into());
    let guests = start_guests(&uri, a, c, assets)?;
    let hosts = ctx.hosts()?;
    let names: Vec<String> = guests.iter().map(|g| g.name().to_string()).collect();
    group::add(&hosts, "bench", &names)?;
    let tuning = tuning(a);
    let mut ours = Vec::new();
    for &p in &a.resume {
        let opts = snap_options(&tuning, "bench", Duration::from_secs(120))?;
        ours.push(ours::Ours::new(opts, p));
    }
    let ropts = release::Options {
        timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let members = members(&guests);
    let host = ctx.pool.get(&uri)?;
    let (mut bwin, mut bfreeze) = (vec![], vec![]);
    let mut cuts = match a.backup {
        true => Some(backup::Cuts::new(snap_options(
            &tuning,
            "bench",
            Duration::from_secs(120),
        )?)),
        false => None,
    };
    for r in 0..rounds {
        for i in ours::order(ours.len(), r) {
            ours[i].round(ctx, &hosts, cat, &ropts, report)?;
        }
        if let Some(c) = cuts.as_mut() {
            c.round(ctx, &hosts, cat, report)?;
        }

        let b = baseline::round(&uri, &members, &format!("baseline-{r}"))
            .map_err(|e| fail(e.to_string()))?;
        bwin.push(b.window_ms);
        bfreeze.extend(b.freeze_ms);
        for (dom, disks) in &b.overlays {
            release::release_member(
                host.as_ref(),
                dom,
                disks,
                &ropts,
                &cgsnap::catalog::ledger::InMemory::default(),
                Events::reporting(report),
            )?;
        }
    }
    group::remove(&hosts, "bench", &[])?;
    drop(guests);
    let mut r = row(c, &ours, &bwin, &bfreeze)?;
    if let (Some(cuts), Some(first)) = (&cuts, ours.first()) {
        let window_ms = cuts.window()?;
        r.backup = Some(results::BackupRow {
            ratio_to_ours: window_ms.median / r.ours_window_ms.median,
            window_ms,
            overlay_merge_bytes: summary(&first.merge)?,
        });
    }
    Ok(r)
}

/// The export measurements on one guest with one disk of `a.export_gib` GiB, full of data.
fn run_exports(
    ctx: &Ctx,
    a: &BenchArgs,
    cat: &Catalog,
    assets: &assets::Assets,
) -> Result<backup::ExportResults, Failure> {
    let uri = ctx
        .uris
        .first()
        .cloned()
        .unwrap_or_else(|| "qemu:///system".into());
    let size = a.export_gib * GIB;
    let mut spec = guest::Spec::writer("cgsnap-bench-export", 1);
    spec.disk_size = size;
    spec.prefill = size;
    let g = guest::Guest::start(&uri, &a.dir, spec, assets).map_err(|e| fail(e.to_string()))?;
    g.wait_console("seq ", Duration::from_secs(300))
        .map_err(|e| fail(e.to_string()))?;
    let hosts = ctx.hosts()?;
    let names = vec![g.name().to_string()];
    group::add(&hosts, "bench", &names)?;
    let t = tuning(a);
    let cuts = backup::Cuts::new(snap_options(&t, "bench", Duration::from_secs(120))?);
    let inc = backup::options(snap_options(&t, "bench", Duration::from_secs(120))?, true);
    let work = a.dir.join("exports");
    let _ = std::fs::remove_dir_all(&work);
    let r = backup::exports(
        ctx,
        cat,
        &cuts,
        &inc,
        g.name(),
        size,
        a.rounds.min(3),
        &work,
    );
    let _ = std::fs::remove_dir_all(&work);
    group::remove(&hosts, "bench", &[])?;
    r
}

/// Start the configuration's guests and wait until each writes its records.
fn start_guests(
    uri: &str,
    a: &BenchArgs,
    c: Config,
    assets: &assets::Assets,
) -> Result<Vec<guest::Guest>, Failure> {
    let mut guests = Vec::new();
    for i in 1..=c.vms {
        let mut spec = guest::Spec::writer(&format!("cgsnap-bench-{i}"), c.disks);
        spec.disk_size = c.disk_size;
        spec.prefill = c.written;
        let g = if a.persistent {
            guest::Guest::start_persistent(uri, &a.dir, spec, assets)
        } else {
            guest::Guest::start(uri, &a.dir, spec, assets)
        };
        guests.push(g.map_err(|e| fail(e.to_string()))?);
    }
    for g in &guests {
        g.wait_console("seq ", Duration::from_secs(300))
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok(guests)
}

/// Our snapshot settings: a 10 s freeze budget, no unsafe knobs.
fn tuning(a: &BenchArgs) -> SnapTuning {
    SnapTuning {
        freeze_budget: Duration::from_secs(10),
        overlay_dir: None,
        min_free: 0,
        no_precreate: false,
        shared_connection: a.shared_connection,
        unsafe_stagger: None,
        unsafe_disk_order: None,
        unsafe_disk_gap: 1000,
        // Set per policy by `ours::Ours::new`.
        resume: Resume::default(),
    }
}

/// Each guest with its disks (target, image), as the baseline snapshots them.
fn members(guests: &[guest::Guest]) -> Vec<(String, Vec<(String, String)>)> {
    guests
        .iter()
        .map(|g| {
            let disks = g
                .disks
                .iter()
                .enumerate()
                .map(|(i, p)| (guest::target(i), p.to_string_lossy().to_string()))
                .collect();
            (g.name().to_string(), disks)
        })
        .collect()
}

/// The configuration's row from the rounds' samples: ours (first policy), the alternatives,
/// the baseline.
fn row(c: Config, ours: &[ours::Ours], bwin: &[f64], bfreeze: &[f64]) -> Result<Row, Failure> {
    let base = summary(bwin)?;
    let mut sums = ours
        .iter()
        .map(|o| Ok((o.resume, o.summaries(c.vms)?)))
        .collect::<Result<Vec<_>, Failure>>()?
        .into_iter();
    let (resume, first) = sums.next().ok_or_else(|| fail("no resume policy"))?;
    let alternatives = sums
        .map(|(resume, s)| Alternative {
            resume,
            ratio_to_ours: s.window_ms.median / first.window_ms.median,
            window_ms: s.window_ms,
            member_freeze_ms: s.member_freeze_ms,
            phases: s.phases,
            window_cpu: s.window_cpu,
        })
        .collect();
    Ok(Row {
        config: c,
        resume,
        ratio: first.window_ms.median / base.median,
        backup: None,
        ours_window_ms: first.window_ms,
        ours_member_freeze_ms: first.member_freeze_ms,
        ours_phases: first.phases,
        ours_window_cpu: first.window_cpu,
        baseline_window_ms: base,
        baseline_member_freeze_ms: summary(bfreeze)?,
        alternatives,
    })
}

/// The configurations to run: `--only-vms` at the smallest disk size, else the sweep.
fn configs(a: &BenchArgs) -> Vec<Config> {
    if a.only_vms.is_empty() {
        sweep(a.full, a.disks)
    } else {
        a.only_vms
            .iter()
            .map(|&vms| Config {
                vms,
                disks: a.disks,
                disk_size: GIB,
                written: 0,
            })
            .collect()
    }
}

/// Write results.json and freeze-window.svg into `out`.
fn write_results(out: &Path, results: &Results) -> Result<(), Failure> {
    std::fs::create_dir_all(out).map_err(|e| fail(format!("{}: {e}", out.display())))?;
    let json = serde_json::to_string_pretty(&results).map_err(|e| fail(e.to_string()))?;
    let jp = out.join("results.json");
    std::fs::write(&jp, json).map_err(|e| fail(format!("{}: {e}", jp.display())))?;
    let sp = out.join("freeze-window.svg");
    std::fs::write(&sp, plot::svg(&results.rows))
        .map_err(|e| fail(format!("{}: {e}", sp.display())))?;
    println!("wrote {} and {}", jp.display(), sp.display());
    Ok(())
}

/// `--sustained-minutes`: the sustained run alone, its summary on stdout.
fn run_sustained(ctx: &Ctx, cat: &Catalog, a: &BenchArgs, minutes: f64) -> Result<(), Failure> {
    let plan = sustained::Plan {
        vms: a.sustained_vms,
        minutes,
        baseline_minutes: a.sustained_baseline_minutes,
        interval: a.sustained_interval,
        dir: &a.dir,
        out: &a.out,
    };
    let r = sustained::run(
        ctx,
        cat,
        &plan,
        snap_options(&tuning(a), "sustained", Duration::from_secs(120))?,
    )?;
    println!(
        "sustained: {} cuts, interval median {:.1} s (max {:.1}), loss bound median {:.1} s (max {:.1}), freeze median {:.1} ms, throughput {:.1} (before {:.1}, after {:.1}) -> {:.1} rounds/s ({:.1} % lost)",
        r.cycles.len(),
        r.achieved_interval_s.median,
        r.achieved_interval_s.max,
        r.loss_bound_s.median,
        r.loss_bound_s.max,
        r.freeze_window_ms.median,
        r.throughput_unprotected,
        r.throughput_unprotected_before,
        r.throughput_unprotected_after,
        r.throughput_protected,
        r.throughput_lost_pct
    );
    Ok(())
}

/// `cgsnap bench`; the engine's progress and notes go to `report`.
pub fn run(ctx: &Ctx, catalog: &Path, a: &BenchArgs, report: &dyn Reporter) -> Result<(), Failure> {
    ours::check_policies(&a.resume)?;
    let assets = assets::ensure(&assets::cache_dir()).map_err(|e| fail(e.to_string()))?;
    let cat = Catalog::open(catalog)?;
    for id in release::release_leftovers(
        &ctx.pool,
        &cat,
        "bench",
        &Default::default(),
        Events::reporting(report),
    )? {
        println!("bench: released snapshot {id}, left by an interrupted run");
    }
    if let Some(minutes) = a.sustained_minutes {
        return run_sustained(ctx, &cat, a, minutes);
    }
    let mut rows = Vec::new();
    table::print_header();
    let configs = configs(a);
    for c in configs {
        let r = run_config(ctx, a, &cat, &assets, c, a.rounds, report)?;
        table::print_row(c, &r);
        if let Some(b) = &r.backup {
            println!(
                "  backup cut: window median {:.1} ms ({:.2}x the overlay snapshot), overlay merge per cycle {:.1} MiB (backup cut: 0)",
                b.window_ms.median,
                b.ratio_to_ours,
                b.overlay_merge_bytes.median / (1 << 20) as f64
            );
        }
        rows.push(r);
    }
    let backup_exports = match a.backup && a.export_gib > 0 {
        true => Some(run_exports(ctx, a, &cat, &assets)?),
        false => None,
    };
    if let Some(e) = &backup_exports {
        backup::print(e);
    }
    let (size_inv, usage_inv, size_rel, usage_rel) = table::invariances(&rows);
    let results = Results {
        machine: machine(),
        persistent: a.persistent,
        rounds: a.rounds,
        resume: a.resume.clone(),
        rows,
        size_invariance_pct: size_inv,
        usage_invariance_pct: usage_inv,
        size_invariance_vs_baseline_pct: size_rel,
        usage_invariance_vs_baseline_pct: usage_rel,
        backup_exports,
    };
    write_results(&a.out, &results)?;
    if let Some(path) = &a.compare {
        print_comparison(path, &results)?;
    }
    Ok(())
}
