//! `cgsnap snapshot`, `release` and `hook pre|post`: the commands that change a group's disks.
//!
//! Invariant: each prints its result only once the library call returned; a failure prints
//! nothing here (the caller prints its one error line).

use crate::args::{Phase, ReleaseArgs, SnapArgs};
use cgsnap::catalog::{self, Catalog, Manifest};
use cgsnap::events::Events;
use cgsnap::exit::Failure;
use cgsnap::hypervisor::pool::Ctx;
use cgsnap::snapshot::tuning::{SnapTuning, release_options, snap_options};
use cgsnap::{hook, release, snapshot};
use std::time::Duration;

/// `cgsnap snapshot GROUP`.
pub fn snapshot(ctx: &Ctx, cat: &Catalog, a: &SnapArgs, ev: Events) -> Result<(), Failure> {
    let opts = snap_options(&a.tuning, &a.group, Duration::from_secs(300))?;
    let m = snapshot::take(&ctx.hosts()?, cat, &opts, chrono::Utc::now(), ev)?;
    if a.json {
        println!("{}", Failure::json(&m)?);
    } else {
        print_manifest_summary(&m);
    }
    Ok(())
}

/// `cgsnap release ID|--group GROUP`.
pub fn release(ctx: &Ctx, cat: &Catalog, a: &ReleaseArgs, ev: Events) -> Result<(), Failure> {
    let id = match (&a.id, &a.group) {
        (Some(id), _) => id.clone(),
        (None, Some(g)) => cat
            .latest(g)?
            .map(|m| m.id)
            .ok_or(catalog::CatalogError::NoSnapshot { group: g.clone() })?,
        (None, None) => {
            return Err(Failure::usage(
                "release needs a snapshot ID or --group GROUP",
            ));
        }
    };
    let opts = release::Options {
        bandwidth: a.bandwidth,
        ..release_options(a.timeout)
    };
    let m = release::release_snapshot(&ctx.pool, cat, &id, &opts, ev)?;
    if a.json {
        println!("{}", Failure::json(&m)?);
    } else {
        println!("snapshot {} of group {}: {}", m.id, m.group, m.state);
    }
    Ok(())
}

/// The arguments of one `cgsnap hook` call.
pub struct HookCall<'a> {
    pub phase: Phase,
    pub snap: &'a SnapTuning,
    pub group: &'a str,
    pub token: Option<String>,
    pub timeout: Duration,
}

/// `cgsnap hook pre|post --group GROUP`: prints the one summary line schedulers log.
pub fn hook(ctx: &Ctx, cat: &Catalog, h: HookCall, ev: Events) -> Result<(), Failure> {
    let token = hook::token(h.token, std::env::var_os(hook::TOKEN_ENV))?;
    let line = match h.phase {
        Phase::Pre => {
            let opts = snapshot::Options {
                hook_token: token,
                ..snap_options(h.snap, h.group, h.timeout)?
            };
            hook::pre(&ctx.hosts()?, cat, &opts, chrono::Utc::now(), ev)?
        }
        Phase::Post => {
            let opts = release_options(h.timeout);
            hook::post(&ctx.pool, cat, h.group, token.as_deref(), &opts, ev)?
        }
    };
    println!("{line}");
    Ok(())
}

fn print_manifest_summary(m: &Manifest) {
    println!(
        "snapshot {} of group {}: {} (freeze window {:.1} ms, consistency point {})",
        m.id,
        m.group,
        m.state,
        m.freeze_window_ms.unwrap_or_default(),
        m.consistency_point
            .map(|c| c.to_rfc3339())
            .unwrap_or_else(|| "-".into())
    );
    for mem in &m.members {
        println!(
            "  {} ({}) freeze {:.1} ms",
            mem.domain,
            mem.uri,
            mem.freeze_ms.unwrap_or_default()
        );
        for d in &mem.disks {
            println!(
                "    {}: frozen {} -> overlay {}",
                d.target, d.image, d.overlay
            );
        }
    }
}
