//! `cgsnap verify`: restore a held group snapshot into a sandbox and check the databases, via
//! the `cgsnap-verify` crate; writes the report (JSON, HTML, Prometheus textfile).
//!
//! Invariant: the group lock is held for the whole verification, so the snapshot cannot be
//! released (its frozen images merged and changed) while sandboxes read them.

use crate::catalog::{Catalog, CatalogError};
use crate::cli::Failure;
use crate::exit::ExitCode;
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
    /// First loopback port for the sandboxes' database forwards.
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

pub fn run(catalog: &Path, a: &VerifyArgs) -> Result<(), Failure> {
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
    let _lock = cat.lock(&m.group)?;
    let prof = profile::load(&a.profile).map_err(|e| {
        let code = match e {
            profile::ProfileError::Io { .. } => ExitCode::NotFound,
            profile::ProfileError::Malformed { .. } => ExitCode::Malformed,
        };
        fail(code, e.to_string())
    })?;
    // Sandboxes are built from files on this host and started on the member's daemon: both
    // must be here (a URI without a host part, as for the overlays a snapshot pre-creates).
    if let Some(x) = m
        .members
        .iter()
        .find(|x| !crate::snapshot::is_local(&x.uri))
    {
        return Err(fail(
            ExitCode::VerifyCouldNotRun,
            format!(
                "cannot verify: member {} runs on {}: verify builds its sandboxes on this host; run it on that host",
                x.domain, x.uri
            ),
        ));
    }
    let view: ManifestView = serde_json::to_value(&m)
        .and_then(serde_json::from_value)
        .map_err(|e| fail(ExitCode::Internal, e.to_string()))?;
    let req = Request {
        manifest: &view,
        profile: &prof,
        images_dir: a.images.as_deref(),
        sandbox_root: a.sandbox_dir.clone(),
        base_port: a.base_port,
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
        println!("  report: {}", html.display());
    }
    if r.passed() {
        Ok(())
    } else {
        Err(fail(
            ExitCode::VerifyFailed,
            format!(
                "verification of {id} found {} violation(s); see {}",
                r.violations().len(),
                html.display()
            ),
        ))
    }
}
