//! `cgsnap report`: the history of snapshots and their verifications, as a table and as a
//! self-contained HTML page (`CATALOG/reports/index.html`) linking each verification report.
//!
//! Invariant: rendered only from what the catalog holds (manifests and `reports/ID/report.json`);
//! nothing is recomputed, so the history says exactly what each run recorded.

use crate::catalog::{Catalog, Manifest};
use crate::model::exit::ExitCode;
use crate::model::exit::Failure;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;

/// One snapshot of the history, with its verification when there is one.
#[derive(Debug, Serialize)]
pub struct Row {
    /// The snapshot's ID.
    pub id: String,
    /// Its group.
    pub group: String,
    /// Its state (`taken`, `released`, ...).
    pub state: String,
    /// When it was started (RFC 3339).
    pub created_at: String,
    /// Milliseconds from its first pause to its last resume.
    pub freeze_window_ms: Option<f64>,
    /// Milliseconds between member cuts of the negative control `--unsafe-stagger`.
    pub unsafe_stagger_ms: Option<u64>,
    /// Disk cut order of the negative control `--unsafe-disk-order`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsafe_disk_order: Option<Vec<String>>,
    /// The verification's verdict (`pass`, `fail`), when verified.
    pub verdict: Option<String>,
    /// Largest recovery time of its members, in seconds (the RTO).
    pub max_recovery_seconds: Option<f64>,
    /// Largest data loss of its members, in seconds.
    pub max_data_loss_seconds: Option<f64>,
    /// The verification's HTML report, when verified.
    pub report: Option<PathBuf>,
}

fn max_of(r: &serde_json::Value, key: &str) -> Option<f64> {
    r["members"]
        .as_array()?
        .iter()
        .filter_map(|m| m[key].as_f64())
        .reduce(f64::max)
}

/// A row per snapshot of `cat`, oldest first.
pub(crate) fn rows(cat: &Catalog) -> Result<Vec<Row>, Failure> {
    let ms: Vec<Manifest> = cat.list()?;
    Ok(ms
        .into_iter()
        .map(|m| {
            let dir = cat.report_dir(&m.id);
            let rep: Option<serde_json::Value> = std::fs::read(dir.join("report.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            Row {
                state: m.state.to_string(),
                created_at: m.created_at.to_rfc3339(),
                freeze_window_ms: m.freeze_window_ms,
                unsafe_stagger_ms: m.unsafe_stagger_ms,
                unsafe_disk_order: m.unsafe_disk_order.clone(),
                verdict: rep
                    .as_ref()
                    .and_then(|r| r["verdict"].as_str().map(str::to_string)),
                max_recovery_seconds: rep.as_ref().and_then(|r| max_of(r, "recovery_seconds")),
                max_data_loss_seconds: rep.as_ref().and_then(|r| max_of(r, "data_loss_seconds")),
                report: rep.map(|_| dir.join("report.html")),
                id: m.id,
                group: m.group,
            }
        })
        .collect())
}

/// A number cell of the history table: two decimals, `-` when unknown.
pub fn cell(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
}

/// The self-contained HTML page of `rows`.
pub(crate) fn html(rows: &[Row]) -> String {
    let mut o = String::from(
        "<!doctype html><html><head><meta charset='utf-8'><title>cgsnap history</title><style>\
         body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}\
         .pass{color:#1a7f37}.fail{color:#c0392b;font-weight:bold}</style></head><body><h1>Snapshots and verifications</h1>\
         <table><tr><th>snapshot</th><th>group</th><th>state</th><th>taken</th><th>freeze window ms</th>\
         <th>verification</th><th>max RTO s</th><th>max data loss s</th></tr>",
    );
    for r in rows {
        let verdict = match (&r.verdict, &r.report) {
            (Some(v), Some(p)) => format!(
                "<a class='{v}' href='file://{}'>{v}</a>",
                esc(&p.to_string_lossy())
            ),
            _ => "not verified".into(),
        };
        let _ = write!(
            o,
            "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{verdict}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.id),
            if r.unsafe_stagger_ms.is_some() {
                " (unsafe stagger)"
            } else if r.unsafe_disk_order.is_some() {
                " (unsafe disk order)"
            } else {
                ""
            },
            esc(&r.group),
            esc(&r.state),
            esc(&r.created_at),
            cell(r.freeze_window_ms),
            cell(r.max_recovery_seconds),
            cell(r.max_data_loss_seconds),
        );
    }
    o.push_str("</table></body></html>");
    o
}

/// Renders the history of `cat` and writes it as `CATALOG/reports/index.html`; returns the rows
/// and the page's path.
pub fn write_index(cat: &Catalog) -> Result<(Vec<Row>, PathBuf), Failure> {
    let rows = rows(cat)?;
    let dir = cat.dir().join("reports");
    std::fs::create_dir_all(&dir).map_err(|e| Failure {
        code: ExitCode::Internal,
        msg: format!("{}: {e}", dir.display()),
    })?;
    let index = dir.join("index.html");
    std::fs::write(&index, html(&rows)).map_err(|e| Failure {
        code: ExitCode::Internal,
        msg: format!("{}: {e}", index.display()),
    })?;
    Ok((rows, index))
}
