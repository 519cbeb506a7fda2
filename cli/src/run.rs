//! The `cgsnap` command line: dispatch each command to the library, print, and map errors to
//! exit codes.
//!
//! Invariant: every failure is printed as one line `cgsnap: error: ...` on stderr and exits with
//! the code of [`cgsnap::exit::ExitCode`] its error classifies as.

use crate::args::{Cli, Cmd};
use crate::events::{Stderr, env_probe};
use cgsnap::catalog::Catalog;
use cgsnap::events::Events;
use cgsnap::exit::{ExitCode, Failure};
use cgsnap::hypervisor::pool::{Ctx, Pool};
use cgsnap::metrics;
use cgsnap::snapshot::watchdog::Said;
use clap::Parser;
use std::path::PathBuf;

pub fn uris(cli: &Cli) -> Vec<String> {
    if !cli.connect.is_empty() {
        return cli.connect.clone();
    }
    match std::env::var("LIBVIRT_DEFAULT_URI") {
        Ok(u) if !u.is_empty() => vec![u],
        _ => vec!["qemu:///system".into()],
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let ctx = Ctx {
        pool: Pool::libvirt(),
        uris: uris(&cli),
    };
    let open_catalog = || Catalog::open(&cli.catalog);
    let probe = env_probe();
    let ev = Events {
        report: &Stderr,
        probe: probe.as_ref(),
    };
    match &cli.cmd {
        Cmd::Watchdog => std::process::exit(cgsnap::snapshot::watchdog::main(&|said| match said {
            Said::Coordinator(l) => println!("{l}"),
            Said::Log(l) => eprintln!("{l}"),
        })),
        Cmd::Group { cmd } => crate::group_cmd::run(&ctx, &cli.catalog, cmd),
        Cmd::Snapshot(a) => crate::snap_cmd::snapshot(&ctx, &open_catalog()?, a, ev),
        Cmd::Check(a) => crate::check::run(&ctx.hosts()?, &open_catalog()?, a),
        Cmd::Release(a) => crate::snap_cmd::release(&ctx, &open_catalog()?, a, ev),
        Cmd::Backup { cmd } => crate::backup_cmd::run(&ctx, &open_catalog()?, cmd, ev),
        Cmd::List { group, json } => {
            crate::catalog_cmd::list(&open_catalog()?, group.as_deref(), *json)
        }
        Cmd::Show { id } => crate::catalog_cmd::show(&open_catalog()?, id),
        Cmd::Hook {
            phase,
            snap,
            backup,
            group,
            token,
            timeout,
        } => {
            let hook = crate::snap_cmd::HookCall {
                phase: *phase,
                snap,
                backup,
                group,
                token: token.clone(),
                timeout: *timeout,
            };
            crate::snap_cmd::hook(&ctx, &open_catalog()?, hook, ev)
        }
        Cmd::Demo(a) => cgsnap_lab::demo::run(&ctx, &cli.catalog, a, ev),
        Cmd::Bench(a) => cgsnap_lab::bench::run(&ctx, &cli.catalog, a, &Stderr),
        Cmd::Report { group, since, json } => {
            let a = crate::report_cmd::ReportArgs {
                group: group.as_deref(),
                since: *since,
                json: *json,
            };
            crate::report_cmd::run(&open_catalog()?, &a)
        }
        Cmd::Prune(a) => crate::catalog_cmd::prune(&open_catalog()?, a),
        Cmd::Metrics => crate::catalog_cmd::metrics(&open_catalog()?, &metrics_dir(&cli)),
        Cmd::Verify(a) => crate::verify_cmd::run(&cli.catalog, &cli.connect, a),
        Cmd::Testbed { cmd } => cgsnap_lab::testbed::run(&ctx, &cli.catalog, cmd),
        Cmd::Beacon(a) => cgsnap_lab::testbed::beacon(a),
    }
}

fn metrics_dir(cli: &Cli) -> PathBuf {
    cli.metrics_dir
        .clone()
        .unwrap_or_else(|| cli.catalog.join("metrics"))
}

/// After a command that changes or verifies snapshots, successful or not, re-render the
/// metrics. Monitoring must not decide a backup's fate: a failure here is a warning only, and
/// only after a command that succeeded, so that a failed one still prints exactly one line (its
/// error, usually the same cause); stale metrics show in their timestamps.
fn refresh_metrics(catalog: &std::path::Path, dir: &std::path::Path, warn: bool) {
    let r = Catalog::open(catalog)
        .map_err(metrics::MetricsError::from)
        .and_then(|cat| metrics::refresh(&cat, dir));
    if let Err(e) = r
        && warn
    {
        eprintln!(
            "cgsnap: warning: metrics not updated: {}",
            Failure::from(e).msg
        );
    }
}

/// Entry point of the binary; returns the process exit code.
pub fn main() -> u8 {
    let cli = Cli::parse();
    let metrics_after = matches!(
        cli.cmd,
        Cmd::Snapshot(_)
            | Cmd::Release(_)
            | Cmd::Backup { .. }
            | Cmd::Hook { .. }
            | Cmd::Verify(_)
            | Cmd::Prune(_)
            | Cmd::Group {
                cmd: crate::group_cmd::GroupCmd::Policy(_)
            }
    )
    .then(|| (cli.catalog.clone(), metrics_dir(&cli)));
    // Commands that create throwaway VMs remove them when interrupted (exit 128 + signal).
    // Others keep the default action: a killed snapshot is the watchdog's job.
    if matches!(cli.cmd, Cmd::Demo(_) | Cmd::Bench(_) | Cmd::Verify(_))
        && let Err(e) = cgsnap_lab::install_interrupt_handler()
    {
        eprintln!("cgsnap: error: cannot install the interrupt handler: {e}");
        return ExitCode::Internal.code();
    }
    let code = match run(cli) {
        Ok(()) => ExitCode::Ok.code(),
        Err(f) => {
            eprintln!("cgsnap: error: {}", f.msg);
            f.code.code()
        }
    };
    if let Some((catalog, dir)) = metrics_after {
        refresh_metrics(&catalog, &dir, code == ExitCode::Ok.code());
    }
    code
}
