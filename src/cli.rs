//! The `cgsnap` command line: parse, call the library, print, map errors to exit codes.
//!
//! Invariant: every failure is printed as one line `cgsnap: error: ...` on stderr and exits with
//! the code of [`crate::exit::ExitCode`] its error classifies as.

use crate::catalog::{self, Catalog, Manifest};
use crate::events::{Events, NoProbe, Note, Point, Probe, Progress, Reporter};
use crate::exit::{Classify, ExitCode};
use crate::hypervisor::Host;
use crate::hypervisor::pool::Pool;
use crate::protocol::Resume;
use crate::{duration, hook, metrics, release, snapshot};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "cgsnap",
    version,
    about = "Crash-consistent snapshots of groups of libvirt/QEMU VMs"
)]
pub struct Cli {
    /// libvirt URI of a host holding group members (repeatable).
    /// Default: $LIBVIRT_DEFAULT_URI, else qemu:///system.
    #[arg(long = "connect", short = 'c', global = true, value_name = "URI")]
    pub connect: Vec<String>,
    /// Catalog directory for manifests and locks.
    #[arg(long, global = true, env = "CGSNAP_CATALOG", default_value = catalog::DEFAULT_DIR)]
    pub catalog: PathBuf,
    /// Directory for `cgsnap.prom` (node_exporter textfile collector), re-rendered after every
    /// snapshot, release, hook and verify. Default: CATALOG/metrics.
    #[arg(long, global = true, env = "CGSNAP_METRICS_DIR", value_name = "DIR")]
    pub metrics_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Define consistency groups (stored in each domain's libvirt metadata).
    Group {
        #[command(subcommand)]
        cmd: crate::group_cmd::GroupCmd,
    },
    /// Take a crash-consistent snapshot of every disk of every member of GROUP.
    Snapshot(SnapArgs),
    /// Check that GROUP can be snapshotted now (everything `snapshot` checks before it
    /// freezes), without freezing or writing anything.
    Check(crate::check::CheckArgs),
    /// Commit a snapshot's overlays back into their images and remove them.
    Release(ReleaseArgs),
    /// List the snapshots in the catalog with their states.
    List {
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print one manifest as JSON.
    Show { id: String },
    /// Entry points for backup schedulers: pre = snapshot, post = release.
    Hook {
        phase: Phase,
        #[command(flatten)]
        snap: SnapTuning,
        #[arg(long)]
        group: String,
        /// Identifies one backup job, the same for its pre and post, different for concurrent
        /// jobs (e.g. a job ID): pre records it, post releases only that job's snapshots.
        /// Default: $CGSNAP_HOOK_TOKEN. Without a token post releases every outstanding
        /// snapshot of the group, unsafe while another job of the group may be running.
        #[arg(long, value_name = "T")]
        token: Option<String>,
        /// Longest time one disk's commit may go without progress towards ready (post).
        #[arg(long, default_value = "300s", value_parser = duration::parse)]
        timeout: Duration,
    },
    /// Build a demo group of small VMs, snapshot and release it, tear it down.
    Demo(crate::demo::DemoArgs),
    /// Restore a held snapshot into a sandbox and verify the databases recovered.
    Verify(crate::verify_cmd::VerifyArgs),
    /// The history of snapshots and verifications (table, JSON, and CATALOG/reports/index.html).
    Report {
        #[arg(long)]
        json: bool,
    },
    /// Remove old finished snapshots (aborted, released) and their reports from the catalog.
    Prune(crate::catalog_cmd::PruneArgs),
    /// Write METRICS_DIR/cgsnap.prom (Prometheus textfile) from the catalog and print it.
    Metrics,
    /// Reproducible testbeds (PostgreSQL VMs with workloads).
    Testbed {
        #[command(subcommand)]
        cmd: crate::testbed_cmd::TestbedCmd,
    },
    /// Write (seq, timestamp) beacons to every member database in order.
    Beacon(crate::testbed_cmd::BeaconArgs),
    /// Benchmark the freeze window against the sequential virsh baseline (creates its own VMs).
    Bench(crate::bench::BenchArgs),
    #[command(name = "__watchdog", hide = true)]
    Watchdog,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Phase {
    Pre,
    Post,
}

#[derive(Args, Clone)]
pub struct SnapTuning {
    /// Longest time any member may stay paused before the watchdog resumes it.
    #[arg(long, default_value = "2s", value_parser = duration::parse)]
    pub freeze_budget: Duration,
    /// Directory for overlays (default: next to each image).
    #[arg(long)]
    pub overlay_dir: Option<PathBuf>,
    /// Free bytes required in each overlay directory.
    #[arg(long, default_value_t = crate::preflight::DEFAULT_MIN_FREE)]
    pub min_free: u64,
    /// Let libvirt create the overlays inside the freeze instead of pre-creating them.
    #[arg(long)]
    pub no_precreate: bool,
    /// Use one libvirt connection for all members instead of one per member.
    #[arg(long)]
    pub shared_connection: bool,
    /// TESTING ONLY (negative control): snapshot members one after the other, MS apart,
    /// without the group freeze. The result is NOT crash-consistent across members.
    #[arg(long, value_name = "MS", conflicts_with = "unsafe_disk_order")]
    pub unsafe_stagger: Option<u64>,
    /// TESTING ONLY (negative control): without pausing, cut these disks one by one in this
    /// order (e.g. `vdc,vdb`: WAL before data), then the others. NOT crash-consistent at all.
    #[arg(long, value_name = "TARGETS", value_delimiter = ',')]
    pub unsafe_disk_order: Option<Vec<String>>,
    /// Time between two disks of `--unsafe-disk-order`.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 1000,
        requires = "unsafe_disk_order"
    )]
    pub unsafe_disk_gap: u64,
    /// When members are resumed: `together`, all once every snapshot is done (shorter group
    /// window when the guests keep the CPUs busy); `early`, each once its own snapshot is done.
    #[arg(long, value_enum, default_value_t = Resume::Together)]
    pub resume: Resume,
}

#[derive(Args)]
pub struct SnapArgs {
    pub group: String,
    #[command(flatten)]
    pub tuning: SnapTuning,
    /// Print the manifest as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ReleaseArgs {
    /// Snapshot ID (see `cgsnap list`).
    pub id: Option<String>,
    /// Release the newest snapshot of this group instead.
    #[arg(long, conflicts_with = "id")]
    pub group: Option<String>,
    /// Longest time one disk's commit may go without progress towards ready (a steady copy
    /// of a large overlay may take longer).
    #[arg(long, default_value = "300s", value_parser = duration::parse)]
    pub timeout: Duration,
    /// Limit each commit's copy rate to this many bytes/s (0: unlimited).
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub bandwidth: u64,
    #[arg(long)]
    pub json: bool,
}

/// A failure ready to print: one line and an exit code.
pub struct Failure {
    pub code: ExitCode,
    pub msg: String,
}

impl<E: Classify + std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        let mut msg = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            let t = s.to_string();
            if !msg.contains(&t) {
                msg.push_str(": ");
                msg.push_str(&t);
            }
            src = s.source();
        }
        Failure {
            code: e.exit_code(),
            msg: msg.replace('\n', " "),
        }
    }
}

pub(crate) fn usage(msg: impl Into<String>) -> Failure {
    Failure {
        code: ExitCode::Usage,
        msg: msg.into(),
    }
}

fn internal(msg: impl Into<String>) -> Failure {
    Failure {
        code: ExitCode::Internal,
        msg: msg.into(),
    }
}

pub fn uris(cli: &Cli) -> Vec<String> {
    if !cli.connect.is_empty() {
        return cli.connect.clone();
    }
    match std::env::var("LIBVIRT_DEFAULT_URI") {
        Ok(u) if !u.is_empty() => vec![u],
        _ => vec!["qemu:///system".into()],
    }
}

pub struct Ctx {
    pub pool: Pool,
    pub uris: Vec<String>,
}

impl Ctx {
    pub fn hosts(&self) -> Result<Vec<Arc<dyn Host>>, Failure> {
        Ok(self.pool.get_all(&self.uris)?)
    }
}

pub(crate) fn json<T: serde::Serialize>(v: &T) -> Result<String, Failure> {
    serde_json::to_string_pretty(v).map_err(|e| internal(e.to_string()))
}

pub fn snap_options(
    t: &SnapTuning,
    group: &str,
    rel_timeout: Duration,
) -> Result<snapshot::Options, Failure> {
    let exe =
        std::env::current_exe().map_err(|e| internal(format!("cannot find own binary: {e}")))?;
    Ok(snapshot::Options {
        group: group.to_string(),
        freeze_budget: t.freeze_budget,
        overlay_dir: t.overlay_dir.clone(),
        min_free: t.min_free,
        precreate: !t.no_precreate,
        exe,
        release: release::Options {
            timeout: rel_timeout,
            ..Default::default()
        },
        unsafe_stagger: t.unsafe_stagger.map(Duration::from_millis),
        unsafe_disk_order: t
            .unsafe_disk_order
            .clone()
            .map(|o| (o, Duration::from_millis(t.unsafe_disk_gap))),
        resume: t.resume,
        hook_token: None,
        connect_each: if t.shared_connection {
            None
        } else {
            Some(Arc::new(|uri: &str| {
                crate::hypervisor::libvirt::LibvirtHost::open(uri)
                    .map(|h| Arc::new(h) as Arc<dyn Host>)
            }))
        },
    })
}

fn release_options(timeout: Duration) -> release::Options {
    release::Options {
        timeout,
        ..Default::default()
    }
}

/// The engine's progress and notes, printed on stderr as `cgsnap: ...` lines.
pub struct Stderr;

impl Reporter for Stderr {
    fn progress(&self, p: &Progress<'_>) {
        eprintln!("cgsnap: {p}");
    }
    fn note(&self, n: &Note<'_>) {
        eprintln!("cgsnap: {n}");
    }
}

/// Test-only fault injection: holds the run at the points named by `CGSNAP_TEST_HOLD_*_MS`
/// (milliseconds), each announced on stderr, so that an integration test can break something
/// right there (kill the process, restart libvirtd, delete a VM).
#[derive(Default)]
pub struct EnvHolds {
    /// Every member paused, before the snapshots.
    frozen: Option<Duration>,
    /// Each member after its snapshot, before its resume.
    snapped: Option<Duration>,
    /// Member `i` waits `i` times this before its pause.
    pausing: Option<Duration>,
    /// Group resolved (preflight done, overlays pre-created), before the watchdog.
    resolved: Option<Duration>,
    /// Watchdog ready, before it is armed.
    watched: Option<Duration>,
    /// A release's commits started, before it waits for them.
    commit: Option<Duration>,
}

impl EnvHolds {
    /// The holds set in the environment, read once; `None` when no hold is set.
    pub fn from_env() -> Option<Self> {
        let hold = |var: &str| {
            std::env::var(var)
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis)
        };
        let h = EnvHolds {
            frozen: hold("CGSNAP_TEST_HOLD_FROZEN_MS"),
            snapped: hold("CGSNAP_TEST_HOLD_SNAPPED_MS"),
            pausing: hold("CGSNAP_TEST_HOLD_PAUSING_MS"),
            resolved: hold("CGSNAP_TEST_HOLD_RESOLVED_MS"),
            watched: hold("CGSNAP_TEST_HOLD_WATCHED_MS"),
            commit: hold("CGSNAP_TEST_HOLD_COMMIT_MS"),
        };
        let any = [
            h.frozen, h.snapped, h.pausing, h.resolved, h.watched, h.commit,
        ]
        .iter()
        .any(Option::is_some);
        any.then_some(h)
    }
}

/// Say where the run stands, then hold it there (when `hold` is set).
fn hold_at(hold: Option<Duration>, what: &str) {
    if let Some(h) = hold {
        eprintln!("cgsnap: {what}");
        std::thread::sleep(h);
    }
}

impl Probe for EnvHolds {
    fn at(&self, point: Point<'_>) {
        match point {
            Point::Resolved => hold_at(self.resolved, "members resolved, not yet frozen"),
            Point::Watched => hold_at(self.watched, "watchdog ready, not yet armed"),
            Point::Pausing { order } => {
                if let Some(h) = self.pausing {
                    std::thread::sleep(h * order as u32);
                }
            }
            Point::Paused { .. } => {
                if self.pausing.is_some() {
                    eprintln!("cgsnap: member paused");
                }
            }
            Point::Frozen => hold_at(self.frozen, "all members frozen"),
            Point::Snapped { .. } => hold_at(self.snapped, "member snapshotted, not yet resumed"),
            Point::CommitsStarted { domain } => {
                hold_at(self.commit, &format!("commits of {domain} started"))
            }
        }
    }
}

/// The probe of a command: [`EnvHolds`] when a hold is set, else none.
pub fn env_probe() -> Box<dyn Probe> {
    match EnvHolds::from_env() {
        Some(h) => Box::new(h),
        None => Box::new(NoProbe),
    }
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
        Cmd::Watchdog => std::process::exit(crate::watchdog::main(&|said| match said {
            crate::watchdog::Said::Coordinator(l) => println!("{l}"),
            crate::watchdog::Said::Log(l) => eprintln!("{l}"),
        })),
        Cmd::Group { cmd } => crate::group_cmd::run(&ctx, cmd),
        Cmd::Snapshot(a) => {
            let cat = open_catalog()?;
            let opts = snap_options(&a.tuning, &a.group, Duration::from_secs(300))?;
            let m = snapshot::take(&ctx.hosts()?, &cat, &opts, chrono::Utc::now(), ev)?;
            if a.json {
                println!("{}", json(&m)?);
            } else {
                print_manifest_summary(&m);
            }
            Ok(())
        }
        Cmd::Check(a) => {
            print!("{}", crate::check::run(&ctx.hosts()?, &open_catalog()?, a)?);
            Ok(())
        }
        Cmd::Release(a) => {
            let cat = open_catalog()?;
            let id = match (&a.id, &a.group) {
                (Some(id), _) => id.clone(),
                (None, Some(g)) => cat
                    .latest(g)?
                    .map(|m| m.id)
                    .ok_or(catalog::CatalogError::NoSnapshot { group: g.clone() })?,
                (None, None) => return Err(usage("release needs a snapshot ID or --group GROUP")),
            };
            let opts = release::Options {
                bandwidth: a.bandwidth,
                ..release_options(a.timeout)
            };
            let m = release::release_snapshot(&ctx.pool, &cat, &id, &opts, ev)?;
            if a.json {
                println!("{}", json(&m)?);
            } else {
                println!("snapshot {} of group {}: {}", m.id, m.group, m.state);
            }
            Ok(())
        }
        Cmd::List { group, json } => {
            crate::catalog_cmd::list(&open_catalog()?, group.as_deref(), *json)
        }
        Cmd::Show { id } => crate::catalog_cmd::show(&open_catalog()?, id),
        Cmd::Hook {
            phase,
            snap,
            group,
            token,
            timeout,
        } => {
            let token = hook::token(token.clone(), std::env::var_os(hook::TOKEN_ENV))?;
            let cat = open_catalog()?;
            let line = match phase {
                Phase::Pre => {
                    let opts = snapshot::Options {
                        hook_token: token,
                        ..snap_options(snap, group, *timeout)?
                    };
                    hook::pre(&ctx.hosts()?, &cat, &opts, chrono::Utc::now(), ev)?
                }
                Phase::Post => {
                    let opts = release_options(*timeout);
                    hook::post(&ctx.pool, &cat, group, token.as_deref(), &opts, ev)?
                }
            };
            println!("{line}");
            Ok(())
        }
        Cmd::Demo(a) => crate::demo::run(&ctx, &cli.catalog, a),
        Cmd::Bench(a) => crate::bench::run(&ctx, &cli.catalog, a),
        Cmd::Report { json } => {
            print!("{}", crate::history::run(&open_catalog()?, *json)?);
            Ok(())
        }
        Cmd::Prune(a) => crate::catalog_cmd::prune(&open_catalog()?, a),
        Cmd::Metrics => crate::catalog_cmd::metrics(&open_catalog()?, &metrics_dir(&cli)),
        Cmd::Verify(a) => crate::verify_cmd::run(&cli.catalog, &cli.connect, a),
        Cmd::Testbed { cmd } => crate::testbed_cmd::run(&ctx, &cli.catalog, cmd),
        Cmd::Beacon(a) => crate::testbed_cmd::beacon(a),
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
        Cmd::Snapshot(_) | Cmd::Release(_) | Cmd::Hook { .. } | Cmd::Verify(_) | Cmd::Prune(_)
    )
    .then(|| (cli.catalog.clone(), metrics_dir(&cli)));
    // Commands that create throwaway VMs remove them when interrupted (exit 128 + signal).
    // Others keep the default action: a killed snapshot is the watchdog's job.
    if matches!(cli.cmd, Cmd::Demo(_) | Cmd::Bench(_) | Cmd::Verify(_))
        && let Err(e) = cgsnap_testbeds::interrupt::install()
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
