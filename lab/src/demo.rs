//! `cgsnap demo`: the embedded default job. Builds a group of small TCG guests whose `/init`
//! writes sequence records to every disk, snapshots the group, checks the frozen images form
//! one instant per VM, releases, checks every disk is back on its image, and tears down.
//!
//! Invariant: the demo only touches domains and files it created (names `cgsnap-demo-*`,
//! files under its own directory) and removes them at the end unless `--keep` is given.

use cgsnap::catalog::{Catalog, Manifest};
use cgsnap::events::Events;
use cgsnap::exit::ExitCode;
use cgsnap::exit::Failure;
use cgsnap::hypervisor::pool::Ctx;
use cgsnap::snapshot::tuning::{SnapTuning, snap_options};
use cgsnap::{domxml, group, release, snapshot};
use cgsnap_testbeds::{assets, guest, record};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `cgsnap demo`: the throwaway group's size and where its images go.
#[derive(Args)]
pub struct DemoArgs {
    /// Number of VMs in the demo group.
    #[arg(long, default_value_t = 3)]
    pub vms: usize,
    /// Disks per VM.
    #[arg(long, default_value_t = 2)]
    pub disks: usize,
    /// Directory for the demo VMs' images.
    #[arg(long, default_value = "/var/lib/libvirt/images/cgsnap-demo")]
    pub dir: PathBuf,
    /// Leave the VMs running (group `demo`) instead of tearing them down.
    #[arg(long)]
    pub keep: bool,
}

fn fail(msg: impl Into<String>) -> Failure {
    Failure {
        code: ExitCode::Internal,
        msg: msg.into(),
    }
}

/// Frozen images of one member must hold one instant: check the writer's records.
fn check_frozen(domain: &str, images: &[String]) -> Result<Vec<record::Record>, Failure> {
    let mut recs = Vec::new();
    for i in images {
        let r = record::read(Path::new(i))
            .map_err(|e| fail(e.to_string()))?
            .ok_or_else(|| fail(format!("{domain}: no record in frozen image {i}")))?;
        recs.push(r);
    }
    record::check_order(&recs).map_err(|e| fail(format!("{domain}: {e}")))?;
    Ok(recs)
}

/// `cgsnap demo`; `ev` carries the caller's reporter and probe (test holds apply to the
/// demo's snapshot only).
pub fn run(ctx: &Ctx, catalog: &Path, a: &DemoArgs, ev: Events) -> Result<(), Failure> {
    let uri = ctx
        .uris
        .first()
        .cloned()
        .unwrap_or_else(|| "qemu:///system".into());
    let cat = Catalog::open(catalog)?;
    let report = ev.unprobed();
    for id in release::release_leftovers(&ctx.pool, &cat, "demo", &Default::default(), report)? {
        println!("demo: released snapshot {id}, left by an interrupted run");
    }
    println!(
        "demo: building guest kernel + initramfs (cached in {})",
        assets::cache_dir().display()
    );
    let assets = assets::ensure(&assets::cache_dir()).map_err(|e| fail(e.to_string()))?;
    let guests = start_guests(&uri, a, &assets)?;
    let hosts = ctx.hosts()?;
    let names: Vec<String> = guests.iter().map(|g| g.name().to_string()).collect();
    group::add(&hosts, "demo", &names)?;
    println!("demo: group demo = {}", names.join(" "));

    let tuning = tuning();
    let opts = snap_options(&tuning, "demo", Duration::from_secs(120))?;
    let m = snapshot::take(&hosts, &cat, &opts, chrono::Utc::now(), ev)?;
    println!(
        "demo: snapshot {} taken, freeze window {:.1} ms (pause {:.1} ms, snapshot {:.1} ms, resume {:.1} ms)",
        m.id,
        m.freeze_window_ms.unwrap_or_default(),
        m.phases.pause_ms,
        m.phases.snapshot_ms,
        m.phases.resume_ms
    );
    check_members(&m, &guests)?;
    let rel = release::release_snapshot(&ctx.pool, &cat, &m.id, &Default::default(), report)?;
    check_released(ctx, &rel)?;
    println!(
        "demo: released {}: every disk is back on its original image, overlays removed",
        rel.id
    );
    if a.keep {
        for g in guests {
            g.keep();
        }
        println!("demo: VMs kept running as group demo");
    } else {
        group::remove(&hosts, "demo", &[])?;
        drop(guests);
        println!("demo: torn down");
    }
    Ok(())
}

/// Start the demo's guests and wait until each writes its records.
fn start_guests(
    uri: &str,
    a: &DemoArgs,
    assets: &assets::Assets,
) -> Result<Vec<guest::Guest>, Failure> {
    let mut guests = Vec::new();
    for i in 1..=a.vms {
        let spec = guest::Spec::writer(&format!("cgsnap-demo-{i}"), a.disks);
        guests
            .push(guest::Guest::start(uri, &a.dir, spec, assets).map_err(|e| fail(e.to_string()))?);
    }
    for g in &guests {
        let t = g
            .wait_console("seq ", Duration::from_secs(90))
            .map_err(|e| fail(e.to_string()))?;
        println!(
            "demo: {} booted and writing to {} disks after {:.1} s",
            g.name(),
            a.disks,
            t.as_secs_f64()
        );
    }
    Ok(guests)
}

/// The demo's snapshot settings: a 2 s freeze budget, no unsafe knobs.
fn tuning() -> SnapTuning {
    SnapTuning {
        freeze_budget: Duration::from_secs(2),
        overlay_dir: None,
        min_free: 64 << 20,
        no_precreate: false,
        shared_connection: false,
        unsafe_stagger: None,
        unsafe_disk_order: None,
        unsafe_disk_gap: 1000,
        resume: Default::default(),
    }
}

/// Each member's frozen images hold one instant, and its guest resumed writing.
fn check_members(m: &Manifest, guests: &[guest::Guest]) -> Result<(), Failure> {
    for mem in &m.members {
        let g = guests
            .iter()
            .find(|g| g.name() == mem.domain)
            .ok_or_else(|| fail(format!("{} is not a demo guest", mem.domain)))?;
        let images: Vec<String> = mem.disks.iter().map(|d| d.image.clone()).collect();
        let recs = check_frozen(&mem.domain, &images)?;
        let seqs: Vec<String> = recs
            .iter()
            .map(|r| format!("{}={}", r.disk, r.seq))
            .collect();
        let after = g
            .wait_progress(recs[0].seq + 50, Duration::from_secs(60))
            .map_err(|e| fail(e.to_string()))?;
        println!(
            "demo: {} freeze {:.1} ms; frozen images hold {} (one instant); guest resumed, now at seq {after}",
            mem.domain,
            mem.freeze_ms.unwrap_or_default(),
            seqs.join(" ")
        );
    }
    Ok(())
}

/// After the release every disk is back on its original image and the overlays are gone.
fn check_released(ctx: &Ctx, rel: &Manifest) -> Result<(), Failure> {
    for mem in &rel.members {
        let host = ctx.pool.get(&mem.uri)?;
        let live = domxml::disks(&mem.domain, &host.xml(&mem.domain)?)?;
        for d in &mem.disks {
            let now = live
                .iter()
                .find(|x| x.target == d.target)
                .and_then(|x| x.source.clone());
            if now.as_deref() != Some(d.image.as_str()) || Path::new(&d.overlay).exists() {
                return Err(fail(format!(
                    "{}/{} not back on {}",
                    mem.domain, d.target, d.image
                )));
            }
        }
    }
    Ok(())
}
