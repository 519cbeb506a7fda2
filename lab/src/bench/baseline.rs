//! The baseline admins script today: for each VM in turn, `virsh suspend`,
//! `virsh snapshot-create-as --disk-only --atomic`, `virsh resume`, through the CLI.
//!
//! Invariant: the baseline's overlays use the same naming as ours, so the same release code
//! commits them back and the next round starts from identical disk chains.

use cgsnap::catalog::DiskRecord;
use std::process::Command;
use std::time::Instant;

/// One baseline round's times and the overlays it left.
pub struct Round {
    /// First suspend start to last resume end.
    pub window_ms: f64,
    /// Per VM: suspend start to resume end.
    pub freeze_ms: Vec<f64>,
    /// Overlays created, per domain, for the release that follows.
    pub overlays: Vec<(String, Vec<DiskRecord>)>,
}

/// Why a baseline `virsh` call failed; the text is what the benchmark reports.
#[derive(Debug, thiserror::Error)]
pub enum VirshError {
    /// `virsh` could not be run.
    #[error("virsh: {0}")]
    Spawn(#[source] std::io::Error),
    /// `virsh` ran and failed.
    #[error("virsh {args}: {stderr}")]
    Failed {
        /// Its arguments, space-separated.
        args: String,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },
}

fn virsh(uri: &str, args: &[&str]) -> Result<(), VirshError> {
    let out = Command::new("virsh")
        .arg("-q")
        .args(["-c", uri])
        .args(args)
        .output()
        .map_err(VirshError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(VirshError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// One sequential round over `members` (domain, [(target, image)]).
pub fn round(
    uri: &str,
    members: &[(String, Vec<(String, String)>)],
    tag: &str,
) -> Result<Round, VirshError> {
    let t0 = Instant::now();
    let mut freeze_ms = Vec::new();
    let mut overlays = Vec::new();
    let mut last_end = t0;
    for (dom, disks) in members {
        let mut args = vec![
            "snapshot-create-as".to_string(),
            dom.clone(),
            "--disk-only".into(),
            "--atomic".into(),
            "--no-metadata".into(),
        ];
        let mut recs = Vec::new();
        for (target, image) in disks {
            let overlay = format!(
                "{image}.{tag}.{}",
                cgsnap::snapshot::preflight::OVERLAY_SUFFIX
            );
            args.push("--diskspec".into());
            args.push(format!("{target},snapshot=external,file={overlay}"));
            recs.push(DiskRecord {
                target: target.clone(),
                image: image.clone(),
                overlay,
                format: "qcow2".into(),
                virtual_size: 0,
            });
        }
        let s = Instant::now();
        virsh(uri, &["suspend", dom])?;
        let snap: Vec<&str> = args.iter().map(String::as_str).collect();
        let snapped = virsh(uri, &snap);
        // Resume whatever the snapshot did: the baseline must not leave a VM paused either.
        let resumed = virsh(uri, &["resume", dom]);
        let e = Instant::now();
        snapped?;
        resumed?;
        freeze_ms.push((e - s).as_secs_f64() * 1000.0);
        last_end = e;
        overlays.push((dom.clone(), recs));
    }
    Ok(Round {
        window_ms: (last_end - t0).as_secs_f64() * 1000.0,
        freeze_ms,
        overlays,
    })
}
