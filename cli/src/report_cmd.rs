//! `cgsnap report [--group G] [--since 30d] [--json]`: each group's DR status against its
//! policy, newest verified restore point, counts and failures (rendered by
//! [`cgsnap::report`]), after writing `CATALOG/reports/index.html`.

use cgsnap::catalog::Catalog;
use cgsnap::duration::human;
use cgsnap::exit::Failure;
use cgsnap::report::{self, GroupReport};
use std::time::Duration;

/// The arguments of `cgsnap report`.
pub struct ReportArgs<'a> {
    pub group: Option<&'a str>,
    pub since: Duration,
    pub json: bool,
}

/// Prints the report of `cat` (text, or JSON with `--json`) and where its page is.
pub fn run(cat: &Catalog, a: &ReportArgs) -> Result<(), Failure> {
    let now = chrono::Utc::now();
    let back =
        chrono::Duration::from_std(a.since).map_err(|_| Failure::usage("--since is too long"))?;
    let r = report::build(cat, a.group, now - back, now)?;
    let index = report::write_index(cat, &r)?;
    if a.json {
        println!("{}", Failure::json(&r)?);
        return Ok(());
    }
    if r.groups.is_empty() {
        println!(
            "no group has a snapshot or a policy in {}",
            cat.dir().display()
        );
    }
    for g in &r.groups {
        print_group(g, &human(a.since.as_secs_f64()));
    }
    println!("report: {}", index.display());
    Ok(())
}

fn print_group(g: &GroupReport, period: &str) {
    println!(
        "{}: {} - {}",
        g.group,
        g.status.name().replace('_', " ").to_uppercase(),
        g.reason
    );
    for r in g.reasons.iter().skip(1) {
        println!("  also: {r}");
    }
    match &g.newest_restore_point {
        Some(p) => println!(
            "  newest verified restore point: {} ({} old)",
            p.snapshot_id,
            human(p.age_seconds)
        ),
        None => println!("  newest verified restore point: none"),
    }
    let c = &g.counts;
    println!(
        "  last {period}: {} snapshots ({} taken, {} failed), {} verifications passed, {} failed; \
         {} negative controls ({} caught, {} missed)",
        c.snapshots,
        c.taken,
        c.snapshot_failures,
        c.verifications_passed,
        c.verifications_failed,
        c.negative_controls,
        c.negative_controls_caught,
        c.negative_controls_missed
    );
    for f in &g.failures {
        println!(
            "  {} {} {}: {}",
            f.at.format("%Y-%m-%d %H:%M"),
            f.snapshot_id,
            f.kind.replace('_', " "),
            f.first_error
        );
    }
}
