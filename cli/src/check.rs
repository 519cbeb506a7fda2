//! `cgsnap check GROUP`: everything `snapshot` verifies before it freezes (group name, no
//! outstanding snapshot, members resolved and running, every disk snapshot-able, overlay names
//! free, space), for a monitoring probe or before enabling a schedule.
//!
//! Invariants: it runs the very code `snapshot` starts with ([`cgsnap::snapshot::plan`]), so it
//! fails with the same one-line error and exit code, and only reads: nothing is paused,
//! written or created. It does not take the group lock (a probe must never make a scheduled
//! snapshot fail as busy); a snapshot in progress shows through its `pending` manifest (exit 6).

use cgsnap::catalog::{self, Catalog};
use cgsnap::exit::Failure;
use cgsnap::hypervisor::Host;
use cgsnap::snapshot::{self, preflight};
use clap::Args;
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

pub fn run(hosts: &[Arc<dyn Host>], cat: &Catalog, a: &CheckArgs) -> Result<(), Failure> {
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
        println!("{}", Failure::json(&v)?);
        return Ok(());
    }
    let disks: usize = plan.iter().map(|p| p.disks.len()).sum();
    println!(
        "group {}: ready to snapshot: {} members, {disks} disks",
        a.group,
        plan.len()
    );
    for p in &plan {
        let targets: Vec<&str> = p.disks.iter().map(|d| d.target.as_str()).collect();
        println!(
            "  {} ({}): {}",
            p.member.domain,
            p.member.host.uri(),
            targets.join(" ")
        );
    }
    Ok(())
}
