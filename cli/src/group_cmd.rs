//! `cgsnap group add|remove|list|show|policy`: consistency groups, stored in each member
//! domain's libvirt metadata and resolved live on every connected host (see
//! [`cgsnap::group`]), and their DR policies, stored beside the catalog
//! ([`cgsnap::catalog::policy`]).

use cgsnap::catalog::Catalog;
use cgsnap::catalog::policy::{self, Change, Policy};
use cgsnap::duration::{self, human};
use cgsnap::exit::{ExitCode, Failure};
use cgsnap::group;
use cgsnap::hypervisor::pool::Ctx;
use clap::{Args, Subcommand};
use std::path::Path;
use std::time::Duration;

#[derive(Subcommand)]
pub enum GroupCmd {
    /// Add domains to a group (creating it).
    Add { name: String, domains: Vec<String> },
    /// Remove domains from a group (all of them when none is named).
    Remove { name: String, domains: Vec<String> },
    /// List groups and their members.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show the members of one group with their state.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Show or set the group's DR policy (used by `report` and the metrics).
    Policy(PolicyArgs),
}

#[derive(Args)]
pub struct PolicyArgs {
    /// The group.
    pub name: String,
    /// Maximum age of the newest verified restore point (e.g. 26h).
    #[arg(long, value_parser = duration::parse)]
    pub max_age: Option<Duration>,
    /// RPO target: data loss a verified restore may show, per member (e.g. 5m).
    #[arg(long, value_parser = duration::parse)]
    pub rpo: Option<Duration>,
    /// RTO target: restored boot to database ready, per member (e.g. 15m).
    #[arg(long, value_parser = duration::parse)]
    pub rto: Option<Duration>,
    /// Remove the policy.
    #[arg(long, conflicts_with_all = ["max_age", "rpo", "rto"])]
    pub clear: bool,
    /// Print the policy as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, catalog: &Path, cmd: &GroupCmd) -> Result<(), Failure> {
    if let GroupCmd::Policy(a) = cmd {
        return policy_cmd(ctx, &Catalog::open(catalog)?, a);
    }
    let hosts = ctx.hosts()?;
    match cmd {
        GroupCmd::Add { name, domains } => {
            if domains.is_empty() {
                return Err(Failure::usage("group add needs at least one DOMAIN"));
            }
            group::add(&hosts, name, domains)?;
            println!("group {name}: added {}", domains.join(", "));
        }
        GroupCmd::Remove { name, domains } => {
            let n = group::remove(&hosts, name, domains)?;
            println!("group {name}: removed {n} member(s)");
        }
        GroupCmd::List { json: as_json } => {
            let all = group::list(&hosts)?;
            if *as_json {
                let v: serde_json::Map<String, serde_json::Value> = all
                    .iter()
                    .map(|(g, ms)| (g.clone(), members_json(ms)))
                    .collect();
                println!("{}", Failure::json(&v)?);
            } else if all.is_empty() {
                println!("no groups on {}", ctx.uris.join(", "));
            } else {
                for (g, ms) in &all {
                    let names: Vec<_> = ms.iter().map(|m| m.domain.as_str()).collect();
                    println!("{g}: {}", names.join(" "));
                }
            }
        }
        GroupCmd::Show {
            name,
            json: as_json,
        } => {
            let ms = group::resolve(&hosts, name)?;
            if *as_json {
                println!("{}", Failure::json(&members_json(&ms))?);
            } else {
                for m in &ms {
                    println!("{}\t{}\t{}", m.domain, m.host.uri(), m.state);
                }
            }
        }
        GroupCmd::Policy(_) => unreachable!("handled above"),
    }
    Ok(())
}

/// A policy is set only for a group that exists: live on a connected host, or with
/// snapshots in the catalog (its VMs may be gone; an auditor still asks about it).
fn known(ctx: &Ctx, cat: &Catalog, name: &str) -> Result<(), Failure> {
    if cat.latest(name)?.is_some() {
        return Ok(());
    }
    match group::resolve(&ctx.hosts()?, name) {
        Ok(_) => Ok(()),
        Err(e @ group::GroupError::UnknownGroup { .. }) => Err(Failure {
            code: ExitCode::NotFound,
            msg: format!("{e}; and the catalog has no snapshot of it: no policy set"),
        }),
        Err(e) => Err(e.into()),
    }
}

fn policy_cmd(ctx: &Ctx, cat: &Catalog, a: &PolicyArgs) -> Result<(), Failure> {
    let change = Change {
        max_restore_point_age: a.max_age,
        rpo: a.rpo,
        rto: a.rto,
    };
    let p = if a.clear {
        let had = policy::clear(cat, &a.name)?;
        println!(
            "group {}: {}",
            a.name,
            if had {
                "policy removed"
            } else {
                "had no policy"
            }
        );
        return Ok(());
    } else if change.is_empty() {
        policy::load(cat, &a.name)?
    } else {
        known(ctx, cat, &a.name)?;
        Some(policy::set(cat, &a.name, &change)?)
    };
    if a.json {
        let v = p.map(|p| cgsnap::report::PolicyView::from(&p));
        println!("{}", Failure::json(&v)?);
        return Ok(());
    }
    match p {
        Some(p) => println!("group {}: {}", a.name, describe(&p)),
        None => println!(
            "group {}: no policy (set one with `cgsnap group policy {} --max-age 26h --rpo 5m --rto 15m`)",
            a.name, a.name
        ),
    }
    Ok(())
}

fn describe(p: &Policy) -> String {
    format!(
        "newest verified restore point at most {} old, RPO {}, RTO {}",
        human(p.max_restore_point_age.as_secs_f64()),
        human(p.rpo.as_secs_f64()),
        human(p.rto.as_secs_f64())
    )
}

fn members_json(ms: &[group::Member]) -> serde_json::Value {
    serde_json::Value::Array(
        ms.iter()
            .map(|m| {
                serde_json::json!({"domain": m.domain, "uri": m.host.uri(), "state": m.state.to_string()})
            })
            .collect(),
    )
}
