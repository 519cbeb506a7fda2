//! `cgsnap testbed up|status|down postgres-pair` and `cgsnap beacon`: the CLI side of the
//! testbeds (the VMs and workloads themselves live in the `cgsnap-testbeds` crate).
//!
//! Invariant: `up` records its state before starting anything and spawns the workload as a
//! detached process whose pid is in that state, so `down` can always stop and remove all of it.

use crate::cli::{Ctx, Failure};
use crate::exit::ExitCode;
use crate::group;
use cgsnap_testbeds::{pair, workload};
use clap::{Args, Subcommand};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Subcommand)]
pub enum TestbedCmd {
    /// Boot the testbed, define its group, start its workload.
    Up {
        #[arg(default_value = pair::NAME)]
        name: String,
        /// Loopback ports of the orders and payments servers.
        #[arg(long, value_delimiter = ',', default_values_t = [25501u16, 25502])]
        ports: Vec<u16>,
        /// Directory for the testbed VMs' images.
        #[arg(long, default_value = "/var/lib/libvirt/images/cgsnap-testbed")]
        dir: PathBuf,
    },
    /// Show the testbed's VMs and the workload's throughput so far.
    Status {
        #[arg(default_value = pair::NAME)]
        name: String,
    },
    /// Stop the workload and remove the VMs, their images and the testbed state.
    Down {
        #[arg(default_value = pair::NAME)]
        name: String,
    },
    #[command(name = "__workload", hide = true)]
    Workload { name: String },
}

#[derive(Args)]
pub struct BeaconArgs {
    /// Member databases as NAME=CONNINFO, written in this order (repeatable).
    #[arg(long = "target", required = true)]
    pub targets: Vec<String>,
    #[arg(long, default_value = "100ms", value_parser = crate::duration::parse)]
    pub interval: Duration,
    /// Stop after this many rounds (default: run until killed).
    #[arg(long)]
    pub count: Option<u64>,
}

fn fail(code: ExitCode, msg: impl Into<String>) -> Failure {
    Failure {
        code,
        msg: msg.into(),
    }
}

fn known(name: &str) -> Result<(), Failure> {
    if name == pair::NAME {
        Ok(())
    } else {
        Err(fail(
            ExitCode::NotFound,
            format!("unknown testbed {name:?}: available: {}", pair::NAME),
        ))
    }
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

pub fn run(ctx: &Ctx, catalog: &Path, cmd: &TestbedCmd) -> Result<(), Failure> {
    match cmd {
        TestbedCmd::Up { name, ports, dir } => {
            known(name)?;
            let &[po, pp] = ports.as_slice() else {
                return Err(fail(
                    ExitCode::Usage,
                    "--ports takes two ports: ORDERS,PAYMENTS",
                ));
            };
            let uri = ctx
                .uris
                .first()
                .cloned()
                .unwrap_or_else(|| "qemu:///system".into());
            let sdir = state_dir(catalog, name);
            let mut st = pair::up(&uri, &sdir, dir, (po, pp))
                .map_err(|e| fail(ExitCode::Precondition, e))?;
            let names: Vec<String> = st.vms.iter().map(|v| v.name.clone()).collect();
            group::add(&ctx.hosts()?, name, &names)?;
            st.workload_pid = Some(spawn_workload(catalog, name, &sdir)?);
            pair::save(&sdir, &st).map_err(|e| fail(ExitCode::Internal, e))?;
            for v in &st.vms {
                println!(
                    "testbed {name}: {} ({:?}) ready {:.1} s after boot; psql -h 127.0.0.1 -p {} -U postgres  (password cgsnap)",
                    v.name, v.role, v.boot_to_ready_s, v.port
                );
            }
            // Let the workload run briefly so its throughput can be reported.
            std::thread::sleep(Duration::from_secs(5));
            match pair::throughput(&sdir) {
                Some((n, tps)) => println!(
                    "testbed {name}: group {name} defined; workload running: {n} commits, {tps:.1} commits/s"
                ),
                None => {
                    return Err(fail(
                        ExitCode::Internal,
                        format!(
                            "the workload did not commit anything: see {}",
                            sdir.join("workload.log").display()
                        ),
                    ));
                }
            }
            Ok(())
        }
        TestbedCmd::Status { name } => {
            known(name)?;
            let sdir = state_dir(catalog, name);
            let st = pair::load(&sdir).map_err(|e| fail(ExitCode::NotFound, e))?;
            for v in &st.vms {
                println!(
                    "{}\t{:?}\t127.0.0.1:{}\tboot-to-ready {:.1} s",
                    v.name, v.role, v.port, v.boot_to_ready_s
                );
            }
            if let Some((n, tps)) = pair::throughput(&sdir) {
                println!(
                    "workload: {n} commits, {tps:.1} commits/s (pid {:?})",
                    st.workload_pid
                );
            }
            Ok(())
        }
        TestbedCmd::Down { name } => {
            known(name)?;
            let sdir = state_dir(catalog, name);
            let tp = pair::throughput(&sdir);
            let st = pair::down(&sdir).map_err(|e| fail(ExitCode::NotFound, e))?;
            if let Some((n, tps)) = tp {
                println!("testbed {name}: workload made {n} commits, {tps:.1} commits/s");
            }
            println!(
                "testbed {name}: removed {}",
                st.vms
                    .iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(())
        }
        TestbedCmd::Workload { name } => {
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
