//! Comparing a fresh benchmark run with committed results (`bench --compare FILE`), pure.
//!
//! "Within noise" for a median: the fresh median differs from the committed one by at most the
//! committed run's own spread (p95 − min) or 20 % of its median, whichever is larger. For the
//! ratio ours/baseline: at most 20 % relative. Configurations present in only one run are
//! skipped.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct Cmp {
    pub config: String,
    pub metric: &'static str,
    pub committed: f64,
    pub fresh: f64,
    pub diff_pct: f64,
    pub within: bool,
}

const REL: f64 = 0.20;

fn key(row: &Value) -> Option<String> {
    let c = &row["config"];
    Some(format!(
        "N={} D={} S={} W={}",
        c["vms"].as_u64()?,
        c["disks"].as_u64()?,
        c["disk_size"].as_u64()?,
        c["written"].as_u64()?
    ))
}

fn median_cmp(config: &str, metric: &'static str, old: &Value, new: &Value) -> Option<Cmp> {
    let (m0, m1) = (old["median"].as_f64()?, new["median"].as_f64()?);
    let spread = old["p95"].as_f64()? - old["min"].as_f64()?;
    let allowed = spread.max(REL * m0);
    Some(Cmp {
        config: config.to_string(),
        metric,
        committed: m0,
        fresh: m1,
        diff_pct: (m1 / m0 - 1.0) * 100.0,
        within: (m1 - m0).abs() <= allowed,
    })
}

/// Every comparable metric of every configuration both runs measured.
pub fn compare(committed: &Value, fresh: &Value) -> Vec<Cmp> {
    let empty = Vec::new();
    let old_rows = committed["rows"].as_array().unwrap_or(&empty);
    let mut out = Vec::new();
    for new in fresh["rows"].as_array().unwrap_or(&empty) {
        let Some(k) = key(new) else { continue };
        let Some(old) = old_rows.iter().find(|r| key(r).as_deref() == Some(&k)) else {
            continue;
        };
        for metric in ["ours_window_ms", "baseline_window_ms"] {
            out.extend(median_cmp(&k, metric, &old[metric], &new[metric]));
        }
        if let (Some(r0), Some(r1)) = (old["ratio"].as_f64(), new["ratio"].as_f64()) {
            out.push(Cmp {
                config: k.clone(),
                metric: "ratio",
                committed: r0,
                fresh: r1,
                diff_pct: (r1 / r0 - 1.0) * 100.0,
                within: (r1 / r0 - 1.0).abs() <= REL,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(vms: u64, med: f64, p95: f64, min: f64, base: f64) -> Value {
        let s = |m: f64| json!({"median": m, "p95": p95, "min": min});
        json!({"config": {"vms": vms, "disks": 2, "disk_size": 1, "written": 0},
               "ours_window_ms": s(med), "baseline_window_ms": {"median": base, "p95": base, "min": base},
               "ratio": med / base})
    }

    #[test]
    fn within_spread_or_twenty_percent_and_skips_unmatched() {
        let old =
            json!({"rows": [row(1, 20.0, 30.0, 18.0, 100.0), row(8, 100.0, 105.0, 99.0, 1000.0)]});
        let new = json!({"rows": [row(1, 29.0, 0.0, 0.0, 100.0), row(8, 130.0, 0.0, 0.0, 1000.0), row(2, 1.0, 1.0, 1.0, 1.0)]});
        let c = compare(&old, &new);
        let get = |cfg: &str, m: &str| {
            c.iter()
                .find(|x| x.config.starts_with(cfg) && x.metric == m)
                .cloned()
                .expect("row")
        };
        // N=1: +9 ms is inside the committed spread (12 ms) although it is +45 %.
        assert!(get("N=1 ", "ours_window_ms").within);
        // N=8: +30 ms is outside both the spread (6 ms) and 20 % (20 ms).
        let n8 = get("N=8 ", "ours_window_ms");
        assert!(!n8.within);
        assert!((n8.diff_pct - 30.0).abs() < 1e-9);
        assert!(!get("N=8 ", "ratio").within);
        assert!(
            c.iter().all(|x| !x.config.starts_with("N=2 ")),
            "N=2 only in the fresh run"
        );
    }
}
