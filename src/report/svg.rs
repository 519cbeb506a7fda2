//! Line charts as inline SVG for the report page: values over time, one line per series, and
//! the target as a dashed line.
//!
//! Invariants:
//! - Self-contained markup: no script, no external font or image, colours as attributes (so
//!   the chart prints as it shows); it scales to its container (`viewBox`, width 100%).
//! - The y axis always shows the target when there is one, so a point above the line is above
//!   the target, never an artefact of the scale.
//! - Every point carries a `<title>` (snapshot and value) and the chart an `aria-label`.

use chrono::{DateTime, Utc};
use std::fmt::Write as _;

const W: f64 = 640.0;
const H: f64 = 240.0;
const LEFT: f64 = 58.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 30.0;
/// Colour-blind-safe palette (Okabe-Ito), one colour per series in turn.
const PALETTE: [&str; 6] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00",
];
/// The target line's colour.
pub const TARGET_COLOUR: &str = "#B00020";

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Its legend.
    pub name: String,
    /// Its points: when, the value, and what the point is (its tooltip).
    pub points: Vec<(DateTime<Utc>, f64, String)>,
}

/// A chart to draw.
#[derive(Debug, Clone)]
pub struct Chart<'a> {
    /// Its title (also its `aria-label`).
    pub title: &'a str,
    /// Unit of the values (`ms`, `s`).
    pub unit: &'a str,
    /// Start of the time axis.
    pub from: DateTime<Utc>,
    /// End of the time axis.
    pub to: DateTime<Utc>,
    /// The lines.
    pub series: &'a [Series],
    /// The target value, drawn as a dashed line.
    pub target: Option<f64>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The smallest of 1, 2, 5 × 10^k at or above `v` (> 0).
fn nice(v: f64) -> f64 {
    let k = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * k)
        .find(|x| *x >= v * 0.999_999)
        .unwrap_or(10.0 * k)
}

/// Top of the y axis: the largest value or the target, with headroom, rounded up.
pub fn y_max(c: &Chart) -> f64 {
    let top = c
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(c.target)
        .fold(0.0, f64::max);
    if top > 0.0 { nice(top * 1.1) } else { 1.0 }
}

fn number(v: f64) -> String {
    if v >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The SVG of `c`.
pub fn render(c: &Chart) -> String {
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let ymax = y_max(c);
    let span = (c.to - c.from).num_milliseconds().max(1) as f64;
    let x = |t: DateTime<Utc>| LEFT + pw * ((t - c.from).num_milliseconds() as f64 / span);
    let y = |v: f64| TOP + ph * (1.0 - v / ymax);
    let mut o = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {W} {H}' width='100%' role='img' \
         aria-label='{t}' font-size='11' font-family='sans-serif'><title>{t}</title>\
         <text x='{LEFT}' y='14' font-size='13' font-weight='bold' fill='#222'>{t} ({u})</text>",
        t = esc(c.title),
        u = esc(c.unit)
    );
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let _ = write!(
            o,
            "<line x1='{LEFT}' x2='{x2}' y1='{yy:.1}' y2='{yy:.1}' stroke='#ddd'/>\
             <text x='{tx}' y='{ty:.1}' text-anchor='end' fill='#444'>{n}</text>",
            x2 = W - RIGHT,
            yy = y(v),
            tx = LEFT - 6.0,
            ty = y(v) + 4.0,
            n = number(v)
        );
    }
    let fmt = if span < 2.0 * 86_400_000.0 {
        "%m-%d %H:%M"
    } else {
        "%Y-%m-%d"
    };
    for (t, anchor) in [(c.from, "start"), (c.to, "end")] {
        let _ = write!(
            o,
            "<text x='{:.1}' y='{:.1}' text-anchor='{anchor}' fill='#444'>{}</text>",
            x(t),
            H - 10.0,
            t.format(fmt)
        );
    }
    if let Some(tv) = c.target {
        let _ = write!(
            o,
            "<line class='target' x1='{LEFT}' x2='{x2}' y1='{yy:.1}' y2='{yy:.1}' stroke='{TARGET_COLOUR}' \
             stroke-width='1.5' stroke-dasharray='6 4'/><text x='{x2}' y='{ty:.1}' text-anchor='end' \
             fill='{TARGET_COLOUR}'>target {n} {u}</text>",
            x2 = W - RIGHT,
            yy = y(tv),
            ty = y(tv) - 4.0,
            n = number(tv),
            u = esc(c.unit)
        );
    }
    series(&mut o, c, &x, &y);
    o.push_str("</svg>");
    o
}

/// The lines, their points and the legend; or a note that there is nothing to draw.
fn series(o: &mut String, c: &Chart, x: &dyn Fn(DateTime<Utc>) -> f64, y: &dyn Fn(f64) -> f64) {
    if c.series.iter().all(|s| s.points.is_empty()) {
        let _ = write!(
            o,
            "<text class='empty' x='{:.1}' y='{:.1}' text-anchor='middle' fill='#666'>no data in this period</text>",
            LEFT + (W - LEFT - RIGHT) / 2.0,
            TOP + (H - TOP - BOTTOM) / 2.0
        );
        return;
    }
    let mut lx = W - RIGHT;
    for (i, s) in c.series.iter().enumerate().rev() {
        let colour = PALETTE[i % PALETTE.len()];
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|(t, v, _)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let _ = write!(
            o,
            "<polyline class='series' fill='none' stroke='{colour}' stroke-width='2' points='{}'/>",
            pts.join(" ")
        );
        for (t, v, what) in &s.points {
            let _ = write!(
                o,
                "<circle cx='{:.1}' cy='{:.1}' r='3' fill='{colour}'><title>{} {}: {}</title></circle>",
                x(*t),
                y(*v),
                esc(&s.name),
                esc(what),
                number(*v)
            );
        }
        // Legend right to left along the top, each entry as wide as its name.
        let w = 14.0 + 6.5 * s.name.chars().count() as f64;
        lx -= w;
        let _ = write!(
            o,
            "<rect x='{lx:.1}' y='20' width='10' height='10' fill='{colour}'/>\
             <text x='{:.1}' y='29' fill='#222'>{}</text>",
            lx + 13.0,
            esc(&s.name)
        );
        lx -= 8.0;
    }
}

#[cfg(test)]
#[path = "svg_tests.rs"]
mod tests;
