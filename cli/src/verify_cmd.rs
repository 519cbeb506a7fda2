//! `cgsnap verify`: restore a held group snapshot into a sandbox and check the databases, via
//! the `cgsnap-verify` crate; writes the report (JSON, HTML, Prometheus textfile).
//!
//! Invariants:
//! - Verifying the frozen images (no `--images`), the group lock is held for the whole
//!   verification, so the snapshot cannot be released (its overlays committed into the frozen
//!   images the sandboxes read) meanwhile; the manifest is read again once the lock is held,
//!   so verify judges the state no run can change under it (a release that finished in
//!   between is seen, and refused).
//! - Verifying copies (`--images DIR`), the frozen images are not read and no lock is taken:
//!   a long verification of a restored backup must not make the backup job's release fail
//!   as busy.
//! - A negative control is verified like any snapshot; its report, HTML and output say
//!   `NOT CONSISTENT (negative control)` first, in the words of the engine's manifest (the
//!   tests check cgsnap-verify's view gives the same line).
//! - The sandbox directory's filesystem keeps `--min-free` bytes free (checked before any
//!   sandbox starts and watched while they run, `cgsnap_verify::space`); falling short is
//!   could-not-run (12), never a verdict.

use cgsnap::catalog::{Catalog, CatalogError};
use cgsnap::exit::ExitCode;
use cgsnap::exit::Failure;
use cgsnap_verify::{ManifestView, Request, profile, report};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct VerifyArgs {
    /// Snapshot ID (see `cgsnap list`).
    pub id: Option<String>,
    /// Verify the newest snapshot of this group instead.
    #[arg(long, conflicts_with = "id")]
    pub group: Option<String>,
    /// Verification profile (TOML); `cgsnap testbed up` writes one for its group.
    #[arg(long)]
    pub profile: PathBuf,
    /// Restore from copies of the images in this directory (e.g. extracted from a backup).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Where the report is written (default CATALOG/reports/ID).
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
    /// Where sandbox overlays live while verifying.
    #[arg(long, default_value = "/var/lib/libvirt/images/cgsnap-verify")]
    pub sandbox_dir: PathBuf,
    /// Free bytes the sandbox directory's filesystem must keep: below it no sandbox starts,
    /// and running sandboxes are stopped (exit 12), so production VMs sharing it never fill it.
    #[arg(long, value_name = "BYTES", default_value_t = cgsnap_verify::space::DEFAULT_MIN_FREE)]
    pub min_free: u64,
    /// First loopback port tried for the sandboxes' database forwards (a busy one is skipped).
    #[arg(long, default_value_t = 40100)]
    pub base_port: u16,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn fail(code: ExitCode, msg: impl Into<String>) -> Failure {
    Failure {
        code,
        msg: msg.into(),
    }
}

fn write(dir: &Path, name: &str, body: &str) -> Result<PathBuf, Failure> {
    let p = dir.join(name);
    std::fs::write(&p, body)
        .map_err(|e| fail(ExitCode::Internal, format!("{}: {e}", p.display())))?;
    Ok(p)
}

/// The daemon every sandbox runs on (`None`: each member's own), from the explicit `--connect`.
///
/// Sandboxes are built from files on this host, so their daemon must be here too (a URI
/// without a host part). A member that ran elsewhere can be verified here only from copies of
/// its images (`--images`, e.g. restored from the backup: the disaster-recovery drill on a
/// spare host) and on a daemon named with `--connect`: its own daemon and frozen images are
/// on its host, which verify never contacts.
pub fn sandbox_host(
    members: &[(&str, &str)],
    connect: &[String],
    images: bool,
) -> Result<Option<String>, Failure> {
    let on = match connect {
        [] => None,
        [u] if cgsnap::hypervisor::is_local(u) => Some(u.clone()),
        [u] => {
            return Err(fail(
                ExitCode::Usage,
                format!(
                    "verify --connect {u}: sandboxes are built from files on this host; name a daemon on this host (e.g. --connect qemu:///system)"
                ),
            ));
        }
        _ => {
            return Err(fail(
                ExitCode::Usage,
                "verify runs every sandbox on one libvirt daemon: give --connect once (e.g. --connect qemu:///system)",
            ));
        }
    };
    let Some((domain, uri)) = members
        .iter()
        .find(|(_, u)| !cgsnap::hypervisor::is_local(u))
    else {
        return Ok(on);
    };
    let fix = match (images, &on) {
        (true, Some(_)) => return Ok(on),
        (true, None) => {
            "name a daemon on this host for its sandbox with --connect (e.g. --connect qemu:///system)"
        }
        (false, _) => {
            "verify on that host, or here from copies of its images with --images DIR (e.g. restored from the backup) --connect qemu:///system"
        }
    };
    Err(fail(
        ExitCode::VerifyCouldNotRun,
        format!("cannot verify: member {domain} ran on {uri}, not on this host: {fix}"),
    ))
}

pub fn run(catalog: &Path, connect: &[String], a: &VerifyArgs) -> Result<(), Failure> {
    let cat = Catalog::open(catalog)?;
    let id = match (&a.id, &a.group) {
        (Some(id), _) => id.clone(),
        (None, Some(g)) => cat
            .latest(g)?
            .map(|m| m.id)
            .ok_or(CatalogError::NoSnapshot { group: g.clone() })?,
        (None, None) => {
            return Err(fail(
                ExitCode::Usage,
                "verify needs a snapshot ID or --group GROUP",
            ));
        }
    };
    let m = cat.load(&id)?;
    let (m, _lock) = if a.images.is_some() {
        (m, None)
    } else {
        let lock = cat.lock(&m.group)?;
        (cat.load(&id)?, Some(lock))
    };
    let prof = profile::load(&a.profile).map_err(|e| {
        let code = match e {
            profile::ProfileError::Io { .. } => ExitCode::NotFound,
            profile::ProfileError::Malformed { .. } => ExitCode::Malformed,
        };
        fail(code, e.to_string())
    })?;
    let members: Vec<(&str, &str)> = m
        .members
        .iter()
        .map(|x| (x.domain.as_str(), x.uri.as_str()))
        .collect();
    let sandbox_uri = sandbox_host(&members, connect, a.images.is_some())?;
    let view: ManifestView = serde_json::to_value(&m)
        .and_then(serde_json::from_value)
        .map_err(|e| fail(ExitCode::Internal, e.to_string()))?;
    let req = Request {
        manifest: &view,
        profile: &prof,
        images_dir: a.images.as_deref(),
        sandbox_root: a.sandbox_dir.clone(),
        base_port: a.base_port,
        sandbox_uri: sandbox_uri.as_deref(),
        min_free: a.min_free,
    };
    let r =
        cgsnap_verify::run(&req).map_err(|e| fail(ExitCode::VerifyCouldNotRun, e.to_string()))?;
    let dir = a.report_dir.clone().unwrap_or_else(|| cat.report_dir(&id));
    std::fs::create_dir_all(&dir)
        .map_err(|e| fail(ExitCode::Internal, format!("{}: {e}", dir.display())))?;
    let json =
        serde_json::to_string_pretty(&r).map_err(|e| fail(ExitCode::Internal, e.to_string()))?;
    write(&dir, "report.json", &json)?;
    let html = write(&dir, "report.html", &report::html(&r))?;
    write(&dir, "cgsnap_verify.prom", &report::metrics(&r))?;
    if a.json {
        println!("{json}");
    } else {
        if let Some(line) = &r.negative_control {
            println!("{line}");
        }
        println!(
            "verify {} of group {}: {}",
            r.snapshot_id,
            r.group,
            r.verdict.to_uppercase()
        );
        for mem in &r.members {
            println!(
                "  {}: recovery {} s, data loss {} s, lost acknowledged commits {}",
                mem.domain,
                mem.recovery_seconds
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or_else(|| "-".into()),
                mem.data_loss_seconds
                    .map(|v| format!("{v:.3}"))
                    .unwrap_or_else(|| "-".into()),
                mem.lost_acked_commits
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into()),
            );
        }
        for v in r.violations() {
            println!("  VIOLATION {v}");
        }
        for n in &r.notes {
            println!("  NOTE {n}");
        }
        println!("  report: {}", html.display());
    }
    if r.passed() {
        Ok(())
    } else {
        Err(fail(
            ExitCode::VerifyFailed,
            format!(
                "verification of {id} found {} violation(s){}; see {}",
                r.violations().len(),
                if r.negative_control.is_some() {
                    " (a negative control: the deliberate violation was caught)"
                } else {
                    ""
                },
                html.display()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: (&str, &str) = ("db1", "qemu:///system");
    const REMOTE: (&str, &str) = ("db2", "qemu+ssh://prod2/system");

    fn c(u: &[&str]) -> Vec<String> {
        u.iter().map(|s| s.to_string()).collect()
    }

    fn err(r: Result<Option<String>, Failure>) -> (ExitCode, String) {
        let e = r.expect_err("refused");
        (e.code, e.msg)
    }

    /// The view verify reads of a manifest, made as `run` makes it.
    fn view(m: &cgsnap::catalog::Manifest) -> ManifestView {
        serde_json::to_value(m)
            .and_then(serde_json::from_value)
            .expect("view")
    }

    #[test]
    fn verify_words_a_negative_control_as_the_engine_does() {
        use cgsnap::catalog::{ControlKind, Manifest, NegativeControl, SnapState};
        let real = Manifest::new("g-1", "g", SnapState::Taken, chrono::Utc::now());
        assert_eq!(view(&real).negative_control_line(), None);
        let mut stagger = real.clone();
        stagger.unsafe_stagger_ms = Some(1000);
        let mut disks = real.clone();
        disks.unsafe_disk_order = Some(vec!["vdc".into(), "vdb".into()]);
        disks.unsafe_disk_gap_ms = Some(1000);
        let mut cases = vec![stagger.clone(), disks.clone()];
        stagger.negative_control = Some(NegativeControl {
            kind: ControlKind::UnsafeStagger,
            span_ms: Some(2210.4),
            deliberate_gap_ms: 2000,
            max_member_freeze_ms: Some(104.0),
        });
        disks.negative_control = Some(NegativeControl {
            kind: ControlKind::UnsafeDiskOrder,
            span_ms: Some(2012.0),
            deliberate_gap_ms: 2000,
            max_member_freeze_ms: None,
        });
        cases.extend([stagger, disks]);
        for m in &cases {
            let line = m.negative_control_line().expect("a control");
            assert_eq!(
                view(m).negative_control_line().as_deref(),
                Some(line.as_str())
            );
        }
    }

    #[test]
    fn local_members_run_on_their_own_daemon_unless_connect_names_one() {
        assert_eq!(sandbox_host(&[LOCAL], &[], false).ok(), Some(None));
        assert_eq!(
            sandbox_host(&[LOCAL], &c(&["qemu:///session"]), true).ok(),
            Some(Some("qemu:///session".into()))
        );
    }

    #[test]
    fn a_remote_member_needs_copies_of_its_images_and_a_daemon_here() {
        let (code, msg) = err(sandbox_host(&[LOCAL, REMOTE], &[], false));
        assert_eq!(code, ExitCode::VerifyCouldNotRun);
        assert!(
            msg.contains("member db2 ran on qemu+ssh://prod2/system"),
            "{msg}"
        );
        assert!(msg.contains("--images DIR"), "{msg}");
        let (code, msg) = err(sandbox_host(&[REMOTE], &c(&["qemu:///system"]), false));
        assert_eq!(code, ExitCode::VerifyCouldNotRun);
        assert!(msg.contains("--images DIR"), "{msg}");
        let (code, msg) = err(sandbox_host(&[REMOTE], &[], true));
        assert_eq!(code, ExitCode::VerifyCouldNotRun);
        assert!(msg.contains("--connect qemu:///system"), "{msg}");
        assert_eq!(
            sandbox_host(&[LOCAL, REMOTE], &c(&["qemu:///system"]), true).ok(),
            Some(Some("qemu:///system".into()))
        );
    }

    #[test]
    fn the_sandbox_daemon_must_be_one_and_on_this_host() {
        let (code, msg) = err(sandbox_host(&[LOCAL], &c(&["qemu+ssh://dr/system"]), true));
        assert_eq!(code, ExitCode::Usage);
        assert!(
            msg.contains("verify --connect qemu+ssh://dr/system"),
            "{msg}"
        );
        let (code, msg) = err(sandbox_host(
            &[LOCAL],
            &c(&["qemu:///system", "qemu:///session"]),
            true,
        ));
        assert_eq!(code, ExitCode::Usage);
        assert!(msg.contains("give --connect once"), "{msg}");
    }
}
