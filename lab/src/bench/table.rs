//! The console table of `cgsnap bench`: one line per configuration (and per alternative
//! resume policy), then the ratio at N=8 and the size and usage invariances.

use super::{Config, GIB, Row, WindowCpu};

/// The table's header line.
pub(super) fn print_header() {
    println!(
        "{:>3} {:>3} {:>8} {:>7} | {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9} | {:>6} | pause/snap/resume med ms | in window: hv cpu ms/member, busy %, bound ms (guest cpu ms)",
        "N", "D", "size", "written", "med ms", "p95", "p99", "max", "base med", "base p99", "ratio"
    );
}

/// A configuration's line, and one per alternative resume policy.
pub(super) fn print_row(c: Config, r: &Row) {
    println!(
        "{:>3} {:>3} {:>8} {:>7} | {:>9.1} {:>9.1} {:>9.1} {:>9.1} | {:>9.1} {:>9.1} | {:>6.3} | {:.1}/{:.1}/{:.1} | {}",
        c.vms,
        c.disks,
        human(c.disk_size),
        human(c.written),
        r.ours_window_ms.median,
        r.ours_window_ms.p95,
        r.ours_window_ms.p99,
        r.ours_window_ms.max,
        r.baseline_window_ms.median,
        r.baseline_window_ms.p99,
        r.ratio,
        r.ours_phases.pause_ms.median,
        r.ours_phases.snapshot_ms.median,
        r.ours_phases.resume_ms.median,
        cpu_text(r.ours_window_cpu.as_ref()),
    );
    for alt in &r.alternatives {
        println!(
            "    resume {:?} in the same rounds: med {:.1} p95 {:.1} max {:.1} ({:.2} x resume {:?}) | {:.1}/{:.1}/{:.1} | {}",
            alt.resume,
            alt.window_ms.median,
            alt.window_ms.p95,
            alt.window_ms.max,
            alt.ratio_to_ours,
            r.resume,
            alt.phases.pause_ms.median,
            alt.phases.snapshot_ms.median,
            alt.phases.resume_ms.median,
            cpu_text(alt.window_cpu.as_ref()),
        );
    }
}

/// Print the ratio at N=8 and the invariances; returns (size, usage, size vs baseline, usage
/// vs baseline), in percent, each where the rows allow it.
pub(super) fn invariances(rows: &[Row]) -> (Option<f64>, Option<f64>, Option<f64>, Option<f64>) {
    let by_size = |c: &Config| {
        (c.vms == 1 && c.written == 0 && c.disk_size != 4 * GIB).then_some(c.disk_size)
    };
    let by_usage = |c: &Config| (c.vms == 1 && c.disk_size == 4 * GIB).then_some(c.written);
    let window = |r: &Row| r.ours_window_ms.median;
    let ratio = |r: &Row| r.ratio;
    let size_inv = invariance(rows, by_size, window);
    let usage_inv = invariance(rows, by_usage, window);
    let size_rel = invariance(rows, by_size, ratio);
    let usage_rel = invariance(rows, by_usage, ratio);
    if let Some(r8) = rows
        .iter()
        .find(|r| r.config.vms == 8 && r.config.written == 0)
    {
        println!(
            "ratio ours/baseline at N=8: {:.3} (target <= 0.25)",
            r8.ratio
        );
    }
    let rel = |v: Option<f64>| {
        v.map_or(String::new(), |v| {
            format!("; {v:+.1}% relative to the baseline of the same rounds")
        })
    };
    if let Some(v) = size_inv {
        println!(
            "freeze window, largest vs smallest disk size (N=1): {v:+.1}%{} (target within +-15%)",
            rel(size_rel)
        );
    }
    if let Some(v) = usage_inv {
        println!(
            "freeze window, 2 GiB written vs empty (N=1): {v:+.1}%{} (target within +-15%)",
            rel(usage_rel)
        );
    }
    (size_inv, usage_inv, size_rel, usage_rel)
}

fn cpu_text(w: Option<&WindowCpu>) -> String {
    w.map_or("-".to_string(), |w| {
        format!(
            "{:.1}, {:.0} %, {:.1} (guests {:.0})",
            w.per_member_ms.median, w.busy_pct.median, w.bound_ms, w.guest_ms.median
        )
    })
}

/// `metric` at the largest over the smallest key `pick` selects, minus 1, in percent.
fn invariance(
    rows: &[Row],
    pick: impl Fn(&Config) -> Option<u64>,
    metric: impl Fn(&Row) -> f64,
) -> Option<f64> {
    let pts: Vec<(u64, f64)> = rows
        .iter()
        .filter_map(|r| pick(&r.config).map(|k| (k, metric(r))))
        .collect();
    let lo = pts.iter().min_by_key(|p| p.0)?;
    let hi = pts.iter().max_by_key(|p| p.0)?;
    (hi.0 != lo.0).then(|| (hi.1 / lo.1 - 1.0) * 100.0)
}

fn human(bytes: u64) -> String {
    if bytes >= 1024 * GIB {
        format!("{} TiB", bytes / (1024 * GIB))
    } else {
        format!("{} GiB", bytes / GIB)
    }
}
