//! `cgsnap testbed up|status|down postgres-pair|cassandra|pg-cassandra` and `cgsnap beacon`:
//! the CLI side of the testbeds (the VMs and workloads themselves live in the
//! `cgsnap-testbeds` crate).
//!
//! Invariants: `up` records its state before starting anything and spawns the workload as a
//! detached process whose pid is in that state, so `down` can always stop and remove all of it;
//! a Cassandra testbed without a usable `CGSNAP_CASSANDRA_HOME` (none, not a distribution, a
//! version or Java the testbed does not support) fails with the precondition exit code before
//! anything is built or started.

use cgsnap::exit::ExitCode;
use cgsnap::exit::Failure;
use cgsnap::group;
use cgsnap::hypervisor::pool::Ctx;
use cgsnap_testbeds::cassandra::{self, SyncMode};
use cgsnap_testbeds::{cass_bed, cass_config, pair, workload};
use clap::{Args, Subcommand};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The `cgsnap testbed` subcommands.
#[derive(Subcommand)]
pub enum TestbedCmd {
    /// Boot the testbed, define its group, start its workload.
    Up {
        #[allow(
            missing_docs,
            reason = "clap prints doc comments as help: documenting this would change `--help`"
        )]
        #[arg(default_value = pair::NAME)]
        name: String,
        /// Loopback ports of the VMs' databases, in VM order (default postgres-pair
        /// 25501,25502; cassandra 25541; pg-cassandra 25551,25552).
        #[arg(long, value_delimiter = ',')]
        ports: Vec<u16>,
        /// Directory for the testbed VMs' images.
        #[arg(long, default_value = "/var/lib/libvirt/images/cgsnap-testbed")]
        dir: PathBuf,
        /// Cassandra testbeds: commit log sync mode (default: periodic for cassandra, batch
        /// for pg-cassandra).
        #[arg(long, value_enum)]
        commitlog_sync: Option<SyncArg>,
        /// Cassandra testbeds, periodic mode: the sync period.
        #[arg(long, default_value_t = 2000)]
        commitlog_sync_period_ms: u64,
    },
    /// Show the testbed's VMs and the workload's throughput so far.
    Status {
        #[allow(
            missing_docs,
            reason = "clap prints doc comments as help: documenting this would change `--help`"
        )]
        #[arg(default_value = pair::NAME)]
        name: String,
    },
    /// Stop the workload and remove the VMs, their images and the testbed state.
    Down {
        #[allow(
            missing_docs,
            reason = "clap prints doc comments as help: documenting this would change `--help`"
        )]
        #[arg(default_value = pair::NAME)]
        name: String,
    },
    #[allow(
        missing_docs,
        reason = "clap prints doc comments as help: documenting this would change `--help`"
    )]
    #[command(name = "__workload", hide = true)]
    Workload { name: String },
}

/// `--commitlog-sync`: the Cassandra commit log sync mode a testbed boots with.
#[allow(
    missing_docs,
    reason = "clap prints doc comments as help: documenting this would change `--help`"
)]
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SyncArg {
    Batch,
    Periodic,
}

/// `cgsnap beacon`: where and how often to write beacons.
#[derive(Args)]
pub struct BeaconArgs {
    /// Member databases as NAME=CONNINFO, written in this order (repeatable).
    #[arg(long = "target", required = true)]
    pub targets: Vec<String>,
    #[allow(
        missing_docs,
        reason = "clap prints doc comments as help: documenting this would change `--help`"
    )]
    #[arg(long, default_value = "100ms", value_parser = cgsnap::duration::parse)]
    pub interval: Duration,
    /// Stop after this many rounds (default: run until killed).
    #[arg(long)]
    pub count: Option<u64>,
}

fn fail(code: ExitCode, msg: impl std::fmt::Display) -> Failure {
    Failure {
        code,
        msg: msg.to_string(),
    }
}

fn known(name: &str) -> Result<(), Failure> {
    if name == pair::NAME || cass_bed::is_cassandra_testbed(name) {
        Ok(())
    } else {
        Err(fail(
            ExitCode::NotFound,
            format!(
                "unknown testbed {name:?}: available: {}, {}, {}",
                pair::NAME,
                cass_bed::SINGLE,
                cass_bed::MIXED
            ),
        ))
    }
}

fn default_ports(name: &str) -> Vec<u16> {
    match name {
        cass_bed::SINGLE => vec![25541],
        cass_bed::MIXED => vec![25551, 25552],
        _ => vec![25501, 25502],
    }
}

/// The sync mode a Cassandra testbed boots with (see `--commitlog-sync`).
fn sync_mode(name: &str, arg: Option<SyncArg>, period_ms: u64) -> Result<SyncMode, Failure> {
    let arg = arg.unwrap_or(if name == cass_bed::MIXED {
        // The staggered negative control needs the later member's newest writes on disk.
        SyncArg::Batch
    } else {
        SyncArg::Periodic
    });
    match arg {
        SyncArg::Batch => Ok(SyncMode::Batch),
        SyncArg::Periodic if period_ms > 0 => Ok(SyncMode::Periodic { period_ms }),
        SyncArg::Periodic => Err(fail(
            ExitCode::Usage,
            "--commitlog-sync-period-ms must be > 0",
        )),
    }
}

/// `up` of a Cassandra testbed: refuse at once without a distribution, then like the pair.
fn cassandra_up(
    ctx: &Ctx,
    catalog: &Path,
    name: &str,
    ports: &[u16],
    dir: &Path,
    sync: SyncMode,
) -> Result<(), Failure> {
    let dist = cassandra::distribution().map_err(|e| {
        fail(
            ExitCode::Precondition,
            format!("testbed {name} needs a Cassandra distribution: {e}"),
        )
    })?;
    // Before anything is built: an unsupported version or Java is refused in one line.
    cass_config::check(&dist.version, &dist.home)
        .map_err(|e| fail(ExitCode::Precondition, format!("testbed {name}: {e}")))?;
    let sdir = state_dir(catalog, name);
    let mut st = cass_bed::up(name, &testbed_uri(ctx), &sdir, dir, ports, sync)
        .map_err(|e| fail(ExitCode::Precondition, e))?;
    let names: Vec<String> = st.vms.iter().map(|v| v.name.clone()).collect();
    st.workload_pid = Some(group_and_workload(ctx, catalog, name, &names, &sdir)?);
    cass_bed::save(&sdir, &st).map_err(|e| fail(ExitCode::Internal, e))?;
    for v in &st.vms {
        println!(
            "testbed {name}: {} ({:?}) ready {:.1} s after boot on 127.0.0.1:{}",
            v.name, v.engine, v.boot_to_ready_s, v.port
        );
    }
    println!(
        "testbed {name}: Cassandra {} from {}, commitlog_sync {sync}",
        dist.version,
        dist.home.display()
    );
    wait_for_workload(name, &sdir, cass_bed::throughput)
}

/// Let the workload run briefly, then report its throughput (or that it wrote nothing).
fn wait_for_workload(
    name: &str,
    sdir: &Path,
    throughput: fn(&Path) -> Option<(usize, f64)>,
) -> Result<(), Failure> {
    // The Cassandra client prepares statements on a slow guest before its first write.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(5));
        if let Some((n, tps)) = throughput(sdir) {
            println!(
                "testbed {name}: group {name} defined; workload running: {n} commits, {tps:.1} commits/s"
            );
            return Ok(());
        }
    }
    Err(fail(
        ExitCode::Internal,
        format!(
            "the workload did not commit anything: see {}",
            sdir.join("workload.log").display()
        ),
    ))
}

fn state_dir(catalog: &Path, name: &str) -> PathBuf {
    catalog.join("testbeds").join(name)
}

fn spawn_workload(catalog: &Path, name: &str, sdir: &Path) -> Result<u32, Failure> {
    let exe = std::env::current_exe().map_err(|e| fail(ExitCode::Internal, e.to_string()))?;
    let log = std::fs::File::create(sdir.join("workload.log"))
        .map_err(|e| fail(ExitCode::Internal, format!("workload log: {e}")))?;
    let err = log
        .try_clone()
        .map_err(|e| fail(ExitCode::Internal, e.to_string()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--catalog")
        .arg(catalog)
        .args(["testbed", "__workload", name])
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err);
    // SAFETY: setsid only detaches the child from our session so it outlives this command.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        fail(
            ExitCode::Internal,
            format!("cannot start the workload: {e}"),
        )
    })?;
    Ok(child.id())
}

/// Runs one `cgsnap testbed` subcommand.
pub fn run(ctx: &Ctx, catalog: &Path, cmd: &TestbedCmd) -> Result<(), Failure> {
    match cmd {
        TestbedCmd::Up {
            name,
            ports,
            dir,
            commitlog_sync,
            commitlog_sync_period_ms,
        } => up(
            ctx,
            catalog,
            name,
            ports,
            dir,
            (*commitlog_sync, *commitlog_sync_period_ms),
        ),
        TestbedCmd::Status { name } if cass_bed::is_cassandra_testbed(name) => {
            cassandra_status(catalog, name)
        }
        TestbedCmd::Status { name } => pair_status(catalog, name),
        TestbedCmd::Down { name } => down(catalog, name),
        TestbedCmd::Workload { name } if cass_bed::is_cassandra_testbed(name) => {
            cassandra_workload(catalog, name)
        }
        TestbedCmd::Workload { name } => pair_workload(catalog, name),
    }
}

/// `testbed up`: a Cassandra testbed, or the PostgreSQL pair.
fn up(
    ctx: &Ctx,
    catalog: &Path,
    name: &str,
    ports: &[u16],
    dir: &Path,
    (commitlog_sync, commitlog_sync_period_ms): (Option<SyncArg>, u64),
) -> Result<(), Failure> {
    known(name)?;
    let ports = if ports.is_empty() {
        default_ports(name)
    } else {
        ports.to_vec()
    };
    if cass_bed::is_cassandra_testbed(name) {
        let sync = sync_mode(name, commitlog_sync, commitlog_sync_period_ms)?;
        return cassandra_up(ctx, catalog, name, &ports, dir, sync);
    }
    let &[po, pp] = ports.as_slice() else {
        return Err(fail(
            ExitCode::Usage,
            "--ports takes two ports: ORDERS,PAYMENTS",
        ));
    };
    let sdir = state_dir(catalog, name);
    let mut st = pair::up(&testbed_uri(ctx), &sdir, dir, (po, pp))
        .map_err(|e| fail(ExitCode::Precondition, e))?;
    let names: Vec<String> = st.vms.iter().map(|v| v.name.clone()).collect();
    st.workload_pid = Some(group_and_workload(ctx, catalog, name, &names, &sdir)?);
    pair::save(&sdir, &st).map_err(|e| fail(ExitCode::Internal, e))?;
    for v in &st.vms {
        println!(
            "testbed {name}: {} ({:?}) ready {:.1} s after boot; psql -h 127.0.0.1 -p {} -U postgres  (password cgsnap)",
            v.name, v.role, v.boot_to_ready_s, v.port
        );
    }
    wait_for_workload(name, &sdir, pair::throughput)
}

/// `testbed status` of a Cassandra testbed.
fn cassandra_status(catalog: &Path, name: &str) -> Result<(), Failure> {
    let sdir = state_dir(catalog, name);
    let st = cass_bed::load(&sdir).map_err(|e| fail(ExitCode::NotFound, e))?;
    let vms = st.vms.iter().map(|v| {
        (
            &v.name,
            format!("{:?}", v.engine),
            v.port,
            v.boot_to_ready_s,
        )
    });
    print_status(vms, cass_bed::throughput(&sdir), st.workload_pid);
    println!(
        "Cassandra {}, commitlog_sync {}",
        st.cassandra_version, st.sync
    );
    Ok(())
}

/// `testbed status` of the PostgreSQL pair.
fn pair_status(catalog: &Path, name: &str) -> Result<(), Failure> {
    known(name)?;
    let sdir = state_dir(catalog, name);
    let st = pair::load(&sdir).map_err(|e| fail(ExitCode::NotFound, e))?;
    let vms = st
        .vms
        .iter()
        .map(|v| (&v.name, format!("{:?}", v.role), v.port, v.boot_to_ready_s));
    print_status(vms, pair::throughput(&sdir), st.workload_pid);
    Ok(())
}

/// `testbed down`: stop the workload, remove the VMs and the state.
fn down(catalog: &Path, name: &str) -> Result<(), Failure> {
    known(name)?;
    let sdir = state_dir(catalog, name);
    let cass = cass_bed::is_cassandra_testbed(name);
    let tp = if cass {
        cass_bed::throughput(&sdir)
    } else {
        pair::throughput(&sdir)
    };
    let removed: Vec<String> = if cass {
        let st = cass_bed::down(&sdir).map_err(|e| fail(ExitCode::NotFound, e))?;
        st.vms.into_iter().map(|v| v.name).collect()
    } else {
        let st = pair::down(&sdir).map_err(|e| fail(ExitCode::NotFound, e))?;
        st.vms.into_iter().map(|v| v.name).collect()
    };
    if let Some((n, tps)) = tp {
        println!("testbed {name}: workload made {n} commits, {tps:.1} commits/s");
    }
    println!("testbed {name}: removed {}", removed.join(", "));
    Ok(())
}

/// The detached workload of a Cassandra testbed.
fn cassandra_workload(catalog: &Path, name: &str) -> Result<(), Failure> {
    cass_bed::run_workload(&state_dir(catalog, name)).map_err(|e| fail(ExitCode::Internal, e))?;
    Ok(())
}

/// The detached workload of the PostgreSQL pair.
fn pair_workload(catalog: &Path, name: &str) -> Result<(), Failure> {
    let sdir = state_dir(catalog, name);
    let st = pair::load(&sdir).map_err(|e| fail(ExitCode::NotFound, e))?;
    let (Some(o), Some(p)) = (
        st.conninfo(workload::Role::Orders),
        st.conninfo(workload::Role::Payments),
    ) else {
        return Err(fail(ExitCode::Malformed, "testbed state lacks a VM"));
    };
    workload::run_pair(&o, &p, &pair::ack_log(&sdir), None)
        .map_err(|e| fail(ExitCode::Internal, e))?;
    Ok(())
}

/// Testbed VMs live on the first `--connect` host (default qemu:///system).
fn testbed_uri(ctx: &Ctx) -> String {
    ctx.uris
        .first()
        .cloned()
        .unwrap_or_else(|| "qemu:///system".into())
}

/// Define the testbed's group over its VMs and start its workload; returns the workload's pid.
fn group_and_workload(
    ctx: &Ctx,
    catalog: &Path,
    name: &str,
    vms: &[String],
    sdir: &Path,
) -> Result<u32, Failure> {
    group::add(&ctx.hosts()?, name, vms)?;
    spawn_workload(catalog, name, sdir)
}

/// `testbed status`: one line per VM (name, role, loopback port, boot-to-ready), then the
/// workload's throughput when it has recorded any.
fn print_status<'a>(
    vms: impl Iterator<Item = (&'a String, String, u16, f64)>,
    throughput: Option<(usize, f64)>,
    workload_pid: Option<u32>,
) {
    for (name, role, port, boot) in vms {
        println!("{name}\t{role}\t127.0.0.1:{port}\tboot-to-ready {boot:.1} s");
    }
    if let Some((n, tps)) = throughput {
        let pid = workload_pid.map_or("no pid recorded".to_string(), |p| format!("pid {p}"));
        println!("workload: {n} commits, {tps:.1} commits/s ({pid})");
    }
}

/// `cgsnap beacon`: write `(seq, ts)` to every target in order, each committed before the next.
pub fn beacon(a: &BeaconArgs) -> Result<(), Failure> {
    let mut clients = Vec::new();
    for t in &a.targets {
        let Some((name, conninfo)) = t.split_once('=') else {
            return Err(fail(
                ExitCode::Usage,
                format!("--target {t:?}: use NAME=CONNINFO"),
            ));
        };
        let mut c = workload::connect(conninfo)
            .map_err(|e| fail(ExitCode::Hypervisor, format!("{name}: {e}")))?;
        c.batch_execute("CREATE TABLE IF NOT EXISTS cgsnap_beacon(seq bigint PRIMARY KEY, ts timestamptz NOT NULL)")
            .map_err(|e| fail(ExitCode::Hypervisor, format!("{name}: {e}")))?;
        clients.push(c);
    }
    let mut seq = 0i64;
    for c in clients.iter_mut() {
        let row = c
            .query_one(
                "SELECT coalesce(max(seq), 0)::bigint FROM cgsnap_beacon",
                &[],
            )
            .map_err(|e| fail(ExitCode::Hypervisor, e.to_string()))?;
        seq = seq.max(row.get(0));
    }
    let mut rounds = 0;
    while a.count.is_none_or(|n| rounds < n) {
        seq += 1;
        let ts =
            workload::beacon_round(&mut clients, seq).map_err(|e| fail(ExitCode::Hypervisor, e))?;
        println!("beacon {seq} {}", ts.to_rfc3339());
        rounds += 1;
        std::thread::sleep(a.interval);
    }
    Ok(())
}
