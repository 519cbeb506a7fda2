//! `cgsnap check GROUP`: everything `snapshot` verifies before it freezes (group name, no
//! outstanding snapshot, members resolved and running, every disk snapshot-able, overlay names
//! free, space), for a monitoring probe or before enabling a schedule.
//!
//! Invariants: it runs the very code `snapshot` starts with ([`crate::snapshot::plan`]), so it
//! fails with the same one-line error and exit code, and only reads: nothing is paused,
//! written or created. It does not take the group lock (a probe must never make a scheduled
//! snapshot fail as busy); a snapshot in progress shows through its `pending` manifest (exit 6).

use crate::catalog::{self, Catalog};
use crate::cli::{Failure, json};
use crate::hypervisor::Host;
use crate::{preflight, snapshot};
use clap::Args;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct CheckArgs {
    pub group: String,
    /// Directory for overlays (default: next to each image), as for `snapshot`.
    #[arg(long)]
    pub overlay_dir: Option<PathBuf>,
    /// Free bytes required in each overlay directory, as for `snapshot`.
    #[arg(long, default_value_t = preflight::DEFAULT_MIN_FREE)]
    pub min_free: u64,
    /// Print the plan (members, disks, the overlays a snapshot now would create) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `cgsnap check`: plan the group as a snapshot would and return what the command prints.
pub fn run(hosts: &[Arc<dyn Host>], cat: &Catalog, a: &CheckArgs) -> Result<String, Failure> {
    let id = catalog::new_id(&a.group, chrono::Utc::now());
    let popts = preflight::Options {
        id: &id,
        overlay_dir: a.overlay_dir.as_deref(),
        min_free: a.min_free,
    };
    let plan = snapshot::plan(hosts, cat, &a.group, &popts)?;
    if a.json {
        let members: Vec<serde_json::Value> = plan
            .iter()
            .map(|p| {
                serde_json::json!({
                    "domain": p.member.domain,
                    "uri": p.member.host.uri(),
                    "disks": p.disks,
                })
            })
            .collect();
        let v = serde_json::json!({"group": a.group, "ready": true, "members": members});
        return Ok(format!("{}\n", json(&v)?));
    }
    let disks: usize = plan.iter().map(|p| p.disks.len()).sum();
    // Writing to a String cannot fail.
    let mut o = String::new();
    let _ = writeln!(
        o,
        "group {}: ready to snapshot: {} members, {disks} disks",
        a.group,
        plan.len()
    );
    for p in &plan {
        let targets: Vec<&str> = p.disks.iter().map(|d| d.target.as_str()).collect();
        let _ = writeln!(
            o,
            "  {} ({}): {}",
            p.member.domain,
            p.member.host.uri(),
            targets.join(" ")
        );
    }
    Ok(o)
}
