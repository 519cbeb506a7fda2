//! The report as one self-contained HTML page: status per group, newest restore point,
//! counts, trend charts against the targets, failures with links to each run's report, and
//! the snapshot history with negative controls marked.
//!
//! Invariants:
//! - Self-contained: inline CSS and SVG, no script, no external font, image or style sheet;
//!   links to verification reports are relative (`ID/report.html`, beside this page in
//!   `CATALOG/reports/`), so the directory can be copied or archived whole.
//! - Readable on a phone (viewport meta, charts that scale, wide tables scroll in their own
//!   box) and printable to PDF (a page per group, tables unclipped, links as text).
//! - A status is never shown by colour alone: its badge carries its name.
//! - Every value comes from the [`Report`] the JSON is made of.

use super::svg::{self, Chart, Series};
use super::{GroupReport, MemberSample, Report, Sample, Status};
use crate::model::duration::human;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

const STYLE: &str = "\
:root{color-scheme:light}\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',Arial,sans-serif;\
margin:0 auto;max-width:1100px;padding:1em;color:#1b1b1b;line-height:1.4}\
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.25em;margin:1.2em 0 .3em}h3{font-size:1.05em}\
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:4px 6px;text-align:left;\
vertical-align:top}th{background:#f3f3f3}.scroll{overflow-x:auto;max-width:100%}\
.badge{display:inline-block;padding:2px 8px;border-radius:4px;font-weight:bold;font-size:.85em;\
color:#fff;vertical-align:middle;white-space:nowrap}.compliant{background:#1a7f37}.at_risk{background:#9a6700}\
.violated{background:#c0392b}.no_policy{background:#57606a}\
.reason{font-weight:600}.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,420px),1fr));\
gap:1em}.chart{border:1px solid #e3e3e3;padding:4px;break-inside:avoid}\
.neg{background:#fff4e5}.neg-mark{color:#b35900;font-weight:bold}.fail{color:#c0392b;font-weight:bold}\
.pass{color:#1a7f37}dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px}dt{font-weight:600}\
dd{margin:0;overflow-wrap:anywhere}td{overflow-wrap:break-word}td.n{white-space:nowrap}.muted{color:#57606a}\
@page{size:A4;margin:14mm}\
@media print{body{max-width:none;padding:0;font-size:10pt}.group{break-before:page}\
.scroll{overflow:visible}a{color:inherit;text-decoration:none}tr,.chart{break-inside:avoid}}";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The link from `CATALOG/reports/index.html` to a run's report `CATALOG/reports/ID/report.html`.
fn link(p: &Path, text: &str) -> String {
    let rel = match (p.parent().and_then(|d| d.file_name()), p.file_name()) {
        (Some(id), Some(f)) => format!("{}/{}", id.to_string_lossy(), f.to_string_lossy()),
        _ => p.to_string_lossy().into_owned(),
    };
    format!("<a href='{}'>{}</a>", esc(&rel), esc(text))
}

fn badge(s: Status) -> String {
    let text = match s {
        Status::NoPolicy => "NO POLICY",
        Status::Compliant => "COMPLIANT",
        Status::AtRisk => "AT RISK",
        Status::Violated => "VIOLATED",
    };
    format!("<span class='badge {}'>{text}</span>", s.name())
}

fn secs(v: Option<f64>) -> String {
    v.map(human).unwrap_or_else(|| "-".into())
}

/// The page of `r`.
pub fn page(r: &Report) -> String {
    let mut o = format!(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>\
         <meta name='viewport' content='width=device-width, initial-scale=1'>\
         <title>cgsnap DR compliance report</title><style>{STYLE}</style></head><body>\
         <h1>DR compliance report</h1><p class='muted'>Generated {} for the period from {} \
         (catalog {}). A restore point is a consistent group snapshot whose restore was verified; \
         negative controls never count as one.</p>",
        r.generated_at.format("%Y-%m-%d %H:%M UTC"),
        r.since.format("%Y-%m-%d %H:%M UTC"),
        esc(&r.catalog.to_string_lossy())
    );
    summary(&mut o, r);
    for g in &r.groups {
        group(&mut o, r, g);
    }
    o.push_str("</body></html>");
    o
}

fn summary(o: &mut String, r: &Report) {
    if r.groups.is_empty() {
        o.push_str("<p>No group has a snapshot or a policy in this catalog.</p>");
        return;
    }
    o.push_str(
        "<div class='scroll'><table><tr><th>group</th><th>status</th><th>newest verified restore point</th>\
         <th>age</th><th>reason</th></tr>",
    );
    for g in &r.groups {
        let (id, age) = g
            .newest_restore_point
            .as_ref()
            .map(|p| (esc(&p.snapshot_id), human(p.age_seconds)))
            .unwrap_or_else(|| ("none".into(), "-".into()));
        let _ = write!(
            o,
            "<tr><td><a href='#g-{n}'>{n}</a></td><td>{}</td><td>{id}</td><td>{age}</td><td>{}</td></tr>",
            badge(g.status),
            esc(&g.reason),
            n = esc(&g.group)
        );
    }
    o.push_str("</table></div>");
}

fn group(o: &mut String, r: &Report, g: &GroupReport) {
    let _ = write!(
        o,
        "<section class='group' id='g-{n}'><h2>{n} {}</h2><p class='reason'>{}</p>",
        badge(g.status),
        esc(&g.reason),
        n = esc(&g.group)
    );
    if g.reasons.len() > 1 {
        o.push_str("<ul>");
        for x in &g.reasons[1..] {
            let _ = write!(o, "<li>{}</li>", esc(x));
        }
        o.push_str("</ul>");
    }
    facts(o, g);
    counts(o, g);
    charts(o, r, g);
    failures(o, g);
    history(o, g);
    o.push_str("</section>");
}

fn facts(o: &mut String, g: &GroupReport) {
    o.push_str("<dl>");
    match &g.policy {
        Some(p) => {
            let _ = write!(
                o,
                "<dt>policy</dt><dd>newest verified restore point at most {} old; RPO {}; RTO {}</dd>",
                human(p.max_restore_point_age_seconds),
                human(p.rpo_seconds),
                human(p.rto_seconds)
            );
        }
        None => o.push_str("<dt>policy</dt><dd>none set</dd>"),
    }
    match &g.newest_restore_point {
        Some(p) => {
            let _ = write!(
                o,
                "<dt>newest verified restore point</dt><dd>{} ({} old; consistency point {}, verified {}; \
                 max RTO {}, max data loss {})</dd>",
                link(&p.report, &p.snapshot_id),
                human(p.age_seconds),
                p.consistency_point.format("%Y-%m-%d %H:%M:%S UTC"),
                p.verified_at.format("%Y-%m-%d %H:%M UTC"),
                secs(p.max_recovery_seconds),
                secs(p.max_data_loss_seconds)
            );
        }
        None => o.push_str("<dt>newest verified restore point</dt><dd class='fail'>none</dd>"),
    }
    o.push_str("</dl>");
}

fn counts(o: &mut String, g: &GroupReport) {
    let c = &g.counts;
    let _ = write!(
        o,
        "<div class='scroll'><table><tr><th>snapshots</th><th>taken</th><th>snapshot failures</th>\
         <th>verifications passed</th><th>verifications failed</th><th>negative controls (caught / missed)</th></tr>\
         <tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ({} / {})</td></tr></table></div>",
        c.snapshots,
        c.taken,
        c.snapshot_failures,
        c.verifications_passed,
        c.verifications_failed,
        c.negative_controls,
        c.negative_controls_caught,
        c.negative_controls_missed
    );
}

fn group_series(s: &[Sample]) -> Vec<Series> {
    vec![Series {
        name: "group".into(),
        points: s
            .iter()
            .map(|p| (p.at, p.value, p.snapshot_id.clone()))
            .collect(),
    }]
}

fn member_series(s: &[MemberSample]) -> Vec<Series> {
    let mut by: BTreeMap<&str, Series> = BTreeMap::new();
    for p in s {
        by.entry(&p.domain)
            .or_insert_with(|| Series {
                name: p.domain.clone(),
                points: Vec::new(),
            })
            .points
            .push((p.at, p.value, p.snapshot_id.clone()));
    }
    by.into_values().collect()
}

fn charts(o: &mut String, r: &Report, g: &GroupReport) {
    let p = g.policy.as_ref();
    let charts = [
        (
            "Freeze window",
            "ms",
            group_series(&g.trends.freeze_window_ms),
            None,
        ),
        (
            "Recovery time per member (RTO)",
            "s",
            member_series(&g.trends.recovery_seconds),
            p.map(|p| p.rto_seconds),
        ),
        (
            "Data loss per member",
            "s",
            member_series(&g.trends.data_loss_seconds),
            p.map(|p| p.rpo_seconds),
        ),
    ];
    o.push_str("<h3>Trends</h3><div class='charts'>");
    for (title, unit, series, target) in &charts {
        let c = Chart {
            title,
            unit,
            from: r.since,
            to: r.generated_at,
            series,
            target: *target,
        };
        let _ = write!(o, "<div class='chart'>{}</div>", svg::render(&c));
    }
    o.push_str("</div>");
}

fn failures(o: &mut String, g: &GroupReport) {
    o.push_str("<h3>Failures</h3>");
    if g.failures.is_empty() {
        o.push_str("<p>None in this period.</p>");
        return;
    }
    o.push_str(
        "<div class='scroll'><table><tr><th>when</th><th>snapshot</th><th>what</th><th>first error</th></tr>",
    );
    for f in &g.failures {
        let id = match &f.report {
            Some(p) => link(p, &f.snapshot_id),
            None => esc(&f.snapshot_id),
        };
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{id}</td><td>{}</td><td>{}</td></tr>",
            f.at.format("%Y-%m-%d %H:%M"),
            f.kind.replace('_', " "),
            esc(&f.first_error)
        );
    }
    o.push_str("</table></div>");
}

fn history(o: &mut String, g: &GroupReport) {
    let _ = write!(
        o,
        "<h3>Snapshots ({})</h3><div class='scroll'><table><tr><th>snapshot</th><th>state</th>\
         <th>freeze window</th><th>verification</th><th>max RTO</th><th>max data loss</th></tr>",
        g.snapshots.len()
    );
    for s in &g.snapshots {
        let verdict = match (&s.verdict, &s.report) {
            (Some(v), Some(p)) => format!("<span class='{}'>{}</span>", esc(v), link(p, v)),
            _ => "not verified".into(),
        };
        let (class, mark) = match &s.negative_control {
            Some(line) => (
                " class='neg'",
                format!("<br><span class='neg-mark'>{}</span>", esc(line)),
            ),
            None => ("", String::new()),
        };
        let _ = write!(
            o,
            "<tr{class}><td>{}{mark}</td><td class='n'>{}</td><td class='n'>{}</td><td class='n'>{verdict}</td>\
             <td class='n'>{}</td><td class='n'>{}</td></tr>",
            esc(&s.id),
            esc(&s.state),
            s.freeze_window_ms
                .map(|w| format!("{w:.1} ms"))
                .unwrap_or_else(|| "-".into()),
            secs(s.max_recovery_seconds),
            secs(s.max_data_loss_seconds)
        );
    }
    o.push_str("</table></div>");
}
