//! `cgsnap group add|remove|list|show`: consistency groups, stored in each member domain's
//! libvirt metadata and resolved live on every connected host (see [`cgsnap::group`]).

use cgsnap::exit::Failure;
use cgsnap::group;
use cgsnap::hypervisor::pool::Ctx;
use clap::Subcommand;

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
}

pub fn run(ctx: &Ctx, cmd: &GroupCmd) -> Result<(), Failure> {
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
    }
    Ok(())
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
