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
    pub backup: &'a crate::backup_cmd::HookBackupArgs,
    pub group: &'a str,
    pub token: Option<String>,
    pub timeout: Duration,
}

/// `cgsnap hook pre|post --group GROUP`: prints the one summary line schedulers log.
pub fn hook(ctx: &Ctx, cat: &Catalog, h: HookCall, ev: Events) -> Result<(), Failure> {
    let token = hook::token(h.token, std::env::var_os(hook::TOKEN_ENV))?;
    let line = match h.phase {
        Phase::Pre if h.backup.backup_to.is_some() => {
            let mut opts = crate::backup_cmd::hook_options(h.snap, h.backup, h.group)?;
            opts.begin.snap.hook_token = token;
            hook::backup::pre(&ctx.hosts()?, &ctx.pool, cat, opts, chrono::Utc::now(), ev)?
        }
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
    for line in manifest_summary(m) {
        println!("{line}");
    }
}

/// What `snapshot` prints. A negative control's first line is its NOT CONSISTENT line, and it
/// names no freeze window: its members were never frozen together.
fn manifest_summary(m: &Manifest) -> Vec<String> {
    let cp = m
        .consistency_point
        .map(|c| c.to_rfc3339())
        .unwrap_or_else(|| "-".into());
    let head = format!("snapshot {} of group {}: {}", m.id, m.group, m.state);
    let mut out = match m.negative_control_line() {
        Some(line) => vec![line, format!("{head} (consistency point {cp}, nominal)")],
        None => vec![format!(
            "{head} (freeze window {:.1} ms, consistency point {cp})",
            m.freeze_window_ms.unwrap_or_default()
        )],
    };
    for mem in &m.members {
        let freeze = match mem.freeze_ms {
            Some(f) => format!("freeze {f:.1} ms"),
            None => "not paused".into(),
        };
        out.push(format!("  {} ({}) {freeze}", mem.domain, mem.uri));
        for d in &mem.disks {
            out.push(format!(
                "    {}: frozen {} -> overlay {}",
                d.target, d.image, d.overlay
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cgsnap::catalog::{MemberRecord, NegativeControl, SnapState};

    fn taken() -> Manifest {
        let mut m = Manifest::new("g-1", "g", SnapState::Taken, chrono::Utc::now());
        m.freeze_window_ms = Some(41.0);
        m.members.push(MemberRecord {
            freeze_ms: Some(40.0),
            ..MemberRecord::new("db", "qemu:///system", String::new(), vec![])
        });
        m
    }

    #[test]
    fn a_real_snapshot_names_its_freeze_window() {
        let out = manifest_summary(&taken());
        assert!(out[0].starts_with("snapshot g-1 of group g: taken (freeze window 41.0 ms"));
        assert!(!out.join("\n").contains("NOT CONSISTENT"), "{out:?}");
    }

    #[test]
    fn a_negative_control_says_so_first_and_names_no_freeze_window() {
        let mut m = taken();
        m.freeze_window_ms = None;
        m.unsafe_stagger_ms = Some(1000);
        m.negative_control = Some(NegativeControl {
            kind: cgsnap::catalog::ControlKind::UnsafeStagger,
            span_ms: Some(1150.0),
            deliberate_gap_ms: 1000,
            max_member_freeze_ms: Some(40.0),
        });
        let out = manifest_summary(&m);
        assert_eq!(
            out[0],
            "NOT CONSISTENT (negative control): members cut 1000 ms apart; span 1150 ms = per-member freezes (max 40 ms) + deliberate gaps 1000 ms; never a restore point"
        );
        assert!(!out.join("\n").contains("freeze window"), "{out:?}");
        assert_eq!(out[2], "  db (qemu:///system) freeze 40.0 ms");
        // An old manifest of a control, which still has the window it once reported.
        m.negative_control = None;
        m.freeze_window_ms = Some(1150.0);
        let out = manifest_summary(&m);
        assert!(out[0].starts_with("NOT CONSISTENT (negative control)"));
        assert!(!out.join("\n").contains("freeze window"), "{out:?}");
    }
}
