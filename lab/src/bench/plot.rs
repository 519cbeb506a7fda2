//! A self-contained SVG chart: group freeze window (median and p99, log scale) versus group
//! size, ours against the sequential baseline. Pure string building, no dependencies.

use super::Row;
use std::fmt::Write as _;

const W: f64 = 720.0;
const H: f64 = 420.0;
const L: f64 = 70.0;
const R: f64 = 20.0;
const T: f64 = 40.0;
const B: f64 = 50.0;

fn y_of(v: f64, lo: f64, hi: f64) -> f64 {
    let f = (v.max(lo).ln() - lo.ln()) / (hi.ln() - lo.ln());
    H - B - f * (H - T - B)
}

fn line(out: &mut String, pts: &[(f64, f64)], color: &str, dash: &str, label: &str) {
    let d: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = write!(
        out,
        "<polyline fill='none' stroke='{color}' stroke-width='2' stroke-dasharray='{dash}' points='{}'><title>{label}</title></polyline>",
        d.join(" ")
    );
    for (x, y) in pts {
        let _ = write!(
            out,
            "<circle cx='{x:.1}' cy='{y:.1}' r='3' fill='{color}'/>"
        );
    }
}

/// Chart of the rows with the smallest disks and nothing pre-written (the group-size sweep).
pub fn svg(rows: &[Row]) -> String {
    let mut sweep: Vec<&Row> = rows
        .iter()
        .filter(|r| r.config.written == 0 && r.config.disk_size == 1 << 30)
        .collect();
    sweep.sort_by_key(|r| r.config.vms);
    let mut out = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' font-family='sans-serif' font-size='12'>\
         <rect width='100%' height='100%' fill='white'/>\
         <text x='{L}' y='22' font-size='15'>Group freeze window vs group size (log scale; solid = median, dashed = p99)</text>"
    );
    if sweep.is_empty() {
        out.push_str("</svg>");
        return out;
    }
    let (lo, hi) = range(&sweep);
    axes(&mut out, &sweep, lo, hi);
    series(&mut out, &sweep, lo, hi);
    out.push_str("</svg>");
    out
}

/// Centre of the `i`-th of `n` columns.
fn x_of(i: usize, n: usize) -> f64 {
    L + (i as f64 + 0.5) * (W - L - R) / n as f64
}

/// The log scale's range: whole decades around the medians and p99s plotted.
fn range(sweep: &[&Row]) -> (f64, f64) {
    let vals: Vec<f64> = sweep
        .iter()
        .flat_map(|r| {
            [
                r.ours_window_ms.median,
                r.baseline_window_ms.p99,
                r.ours_window_ms.p99,
            ]
        })
        .collect();
    let lo = 10f64.powf(
        vals.iter()
            .cloned()
            .fold(f64::MAX, f64::min)
            .max(0.1)
            .log10()
            .floor(),
    );
    let hi = 10f64.powf(vals.iter().cloned().fold(0.0, f64::max).log10().ceil());
    (lo, hi)
}

/// Axes, decade lines with their labels, and the group size under each column.
fn axes(out: &mut String, sweep: &[&Row], lo: f64, hi: f64) {
    let _ = write!(
        out,
        "<line x1='{L}' y1='{}' x2='{}' y2='{}' stroke='black'/>",
        H - B,
        W - R,
        H - B
    );
    let _ = write!(
        out,
        "<line x1='{L}' y1='{T}' x2='{L}' y2='{}' stroke='black'/>",
        H - B
    );
    let mut d = lo;
    while d <= hi * 1.0001 {
        let y = y_of(d, lo, hi);
        let _ = write!(
            out,
            "<line x1='{L}' y1='{y:.1}' x2='{}' y2='{y:.1}' stroke='#ddd'/><text x='{}' y='{:.1}' text-anchor='end'>{d} ms</text>",
            W - R,
            L - 6.0,
            y + 4.0
        );
        d *= 10.0;
    }
    for (i, r) in sweep.iter().enumerate() {
        let _ = write!(
            out,
            "<text x='{:.1}' y='{}' text-anchor='middle'>{} VM{}</text>",
            x_of(i, sweep.len()),
            H - B + 18.0,
            r.config.vms,
            if r.config.vms == 1 { "" } else { "s" }
        );
    }
    let _ = write!(
        out,
        "<text x='{:.1}' y='{}' text-anchor='middle'>members ({} disks each, 1 GiB)</text>",
        (L + W - R) / 2.0,
        H - 10.0,
        sweep[0].config.disks
    );
}

/// The four series (baseline and ours, median and p99) and the legend.
fn series(out: &mut String, sweep: &[&Row], lo: f64, hi: f64) {
    let pts = |f: &dyn Fn(&Row) -> f64| -> Vec<(f64, f64)> {
        sweep
            .iter()
            .enumerate()
            .map(|(i, r)| (x_of(i, sweep.len()), y_of(f(r), lo, hi)))
            .collect()
    };
    line(
        out,
        &pts(&|r| r.baseline_window_ms.median),
        "#c0392b",
        "",
        "baseline median",
    );
    line(
        out,
        &pts(&|r| r.baseline_window_ms.p99),
        "#c0392b",
        "5,4",
        "baseline p99",
    );
    line(
        out,
        &pts(&|r| r.ours_window_ms.median),
        "#1f6fb2",
        "",
        "cgsnap median",
    );
    line(
        out,
        &pts(&|r| r.ours_window_ms.p99),
        "#1f6fb2",
        "5,4",
        "cgsnap p99",
    );
    // Backup cuts (`bench --backup`), measured in the same rounds, when every row has them.
    if sweep.iter().all(|r| r.backup.is_some()) {
        let med = |r: &Row| {
            r.backup
                .as_ref()
                .map_or(0.0, |b| b.window_ms.median.max(lo))
        };
        line(out, &pts(&med), "#27ae60", "", "backup cut median");
        let _ = write!(
            out,
            "<rect x='{}' y='{}' width='12' height='4' fill='#27ae60'/><text x='{}' y='{}'>cgsnap backup cut (median)</text>",
            L + 400.0,
            T + 6.0,
            L + 418.0,
            T + 11.0
        );
    }
    let _ = write!(
        out,
        "<rect x='{}' y='{}' width='12' height='4' fill='#1f6fb2'/><text x='{}' y='{}'>cgsnap (parallel freeze)</text>\
         <rect x='{}' y='{}' width='12' height='4' fill='#c0392b'/><text x='{}' y='{}'>baseline (sequential virsh)</text>",
        L + 10.0,
        T + 6.0,
        L + 28.0,
        T + 11.0,
        L + 200.0,
        T + 6.0,
        L + 218.0,
        T + 11.0
    );
}

#[cfg(test)]
mod tests {
    use super::super::stats::summarize;
    use super::super::{Config, Phases, Row};
    use super::svg;

    fn row(vms: usize, ours: f64, base: f64) -> Row {
        let s = |v: f64| summarize(&[v, v * 1.1]).expect("summary");
        Row {
            backup: None,
            config: Config {
                vms,
                disks: 2,
                disk_size: 1 << 30,
                written: 0,
            },
            ours_window_ms: s(ours),
            ours_member_freeze_ms: s(ours),
            ours_phases: Phases {
                preflight_ms: s(1.0),
                pause_ms: s(1.0),
                snapshot_ms: s(1.0),
                resume_ms: s(1.0),
                release_ms: s(1.0),
            },
            ours_window_cpu: None,
            resume: cgsnap::snapshot::protocol::Resume::Early,
            alternatives: vec![],
            baseline_window_ms: s(base),
            baseline_member_freeze_ms: s(base),
            ratio: ours / base,
        }
    }

    #[test]
    fn svg_is_well_formed_with_both_series() {
        let x = svg(&[
            row(1, 13.0, 70.0),
            row(2, 25.0, 180.0),
            row(8, 90.0, 1900.0),
        ]);
        let doc = roxmltree::Document::parse(&x).expect("valid SVG");
        let lines: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0].attribute("points").map(|p| p.split(' ').count()),
            Some(3)
        );
        assert!(x.contains("8 VMs") && x.contains("1000 ms"));
        // Higher values plot higher (smaller y).
        let ys: Vec<f64> = lines[2]
            .attribute("points")
            .expect("points")
            .split(' ')
            .map(|p| p.split(',').nth(1).expect("y").parse().expect("num"))
            .collect();
        assert!(ys[0] > ys[1] && ys[1] > ys[2], "{ys:?}");
    }

    #[test]
    fn empty_rows_give_an_empty_chart() {
        assert!(roxmltree::Document::parse(&svg(&[])).is_ok());
    }
}
