//! Commands over the catalog alone (no hypervisor): `list`, `show`, `prune`, `metrics`.

use cgsnap::catalog::prune;
use cgsnap::catalog::{Catalog, Manifest};
use cgsnap::exit::Failure;
use cgsnap::{duration, metrics};
use clap::Args;
use std::path::Path;
use std::time::Duration;

#[derive(Args)]
pub struct PruneArgs {
    /// Only this group (default: every group in the catalog).
    #[arg(long)]
    pub group: Option<String>,
    /// Finished snapshots kept per group, newest first.
    #[arg(long, default_value_t = 30)]
    pub keep: usize,
    /// Never remove a snapshot younger than this.
    #[arg(long, default_value = "7d", value_parser = duration::parse)]
    pub min_age: Duration,
    /// Only print what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

/// `cgsnap list [--group G] [--json]`: every manifest, oldest first; the table adds the space
/// held overlays take here.
pub fn list(cat: &Catalog, group: Option<&str>, as_json: bool) -> Result<(), Failure> {
    let all: Vec<Manifest> = cat
        .list()?
        .into_iter()
        .filter(|m| group.is_none_or(|g| m.group == g))
        .collect();
    if as_json {
        println!("{}", Failure::json(&all)?);
        return Ok(());
    }
    for line in table(&all) {
        println!("{line}");
    }
    Ok(())
}

/// The `list` table. A negative control ends its row with `NOT CONSISTENT` and shows no freeze
/// window (`-`, also for older manifests that recorded one); other rows end with OVERLAYS, so
/// their shape is what it always was.
fn table(all: &[Manifest]) -> Vec<String> {
    let mut out = vec![format!(
        "{:<40} {:<16} {:<10} {:>10} {:>7} {:>10} NOTE",
        "ID", "GROUP", "STATE", "FREEZE_MS", "MEMBERS", "OVERLAYS"
    )];
    for m in all {
        let control = m.is_negative_control();
        let freeze = match m.freeze_window_ms {
            Some(w) if !control => format!("{w:.1}"),
            _ => "-".into(),
        };
        let mut row = format!(
            "{:<40} {:<16} {:<10} {:>10} {:>7} {:>10}",
            m.id,
            m.group,
            m.state.to_string(),
            freeze,
            m.members.len(),
            overlay_use(m)
        );
        if control {
            row.push_str(" NOT CONSISTENT");
        }
        out.push(row);
    }
    out
}

/// Space the overlays of a held snapshot take on this host (they grow with every guest
/// write until release): `-` when nothing is held or no overlay is here.
fn overlay_use(m: &Manifest) -> String {
    use std::os::unix::fs::MetadataExt;
    if !m.state.outstanding() {
        return "-".into();
    }
    // A remote member's overlay paths name files on its host, not here.
    let bytes: Option<u64> = m
        .members
        .iter()
        .filter(|x| cgsnap::hypervisor::is_local(&x.uri))
        .flat_map(|x| x.disks.iter())
        .filter_map(|d| std::fs::metadata(&d.overlay).ok())
        .map(|md| md.blocks() * 512)
        .reduce(|a, b| a + b);
    match bytes {
        None => "-".into(),
        Some(b) if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        Some(b) => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
    }
}

/// `cgsnap show ID`: one manifest as JSON.
pub fn show(cat: &Catalog, id: &str) -> Result<(), Failure> {
    println!("{}", Failure::json(&cat.load(id)?)?);
    Ok(())
}

/// `cgsnap prune`: one line per group, naming what went (or would go).
pub fn prune(cat: &Catalog, a: &PruneArgs) -> Result<(), Failure> {
    let policy = prune::Policy {
        keep: a.keep,
        min_age: a.min_age,
    };
    let plans = prune::run(
        cat,
        a.group.as_deref(),
        &policy,
        a.dry_run,
        chrono::Utc::now(),
    )?;
    let verb = if a.dry_run { "would prune" } else { "pruned" };
    for p in &plans {
        println!(
            "group {}: {verb} {} snapshot(s), kept {}{}{}",
            p.group,
            p.remove.len(),
            p.kept,
            if p.remove.is_empty() { "" } else { ": " },
            p.remove.join(", ")
        );
    }
    if plans.is_empty() {
        println!("nothing to prune: no snapshot in {}", cat.dir().display());
    }
    Ok(())
}

/// `cgsnap metrics`: re-render the metrics file, print it, name it on stderr.
pub fn metrics(cat: &Catalog, dir: &Path) -> Result<(), Failure> {
    let (path, text) = metrics::refresh(cat, dir)?;
    print!("{text}");
    eprintln!("cgsnap: wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cgsnap::catalog::SnapState;

    #[test]
    fn list_marks_negative_controls_and_shows_them_no_freeze_window() {
        let mut real = Manifest::new("g-1", "g", SnapState::Released, chrono::Utc::now());
        real.freeze_window_ms = Some(41.0);
        let mut old_control = real.clone();
        old_control.id = "g-2".into();
        old_control.freeze_window_ms = Some(2210.0);
        old_control.unsafe_stagger_ms = Some(1000);
        let t = table(&[real, old_control]);
        assert!(t[0].ends_with(" OVERLAYS NOTE"), "{t:?}");
        assert!(t[1].starts_with("g-1 ") && t[1].contains(" 41.0 ") && t[1].ends_with(" -"));
        assert!(
            t[2].starts_with("g-2 ") && t[2].ends_with(" - NOT CONSISTENT"),
            "{t:?}"
        );
        assert!(
            !t[2].contains("2210"),
            "no freeze window for a control: {t:?}"
        );
    }
}
