//! `cgsnap report`: the history of snapshots and verifications as a table (or JSON), after
//! writing `CATALOG/reports/index.html` (rendered by [`cgsnap::history`]).

use cgsnap::catalog::Catalog;
use cgsnap::exit::Failure;
use cgsnap::history::{cell, write_index};

/// Prints the history of `cat` (a table, or JSON with `json`) and where its page is.
pub fn run(cat: &Catalog, json: bool) -> Result<(), Failure> {
    let (rows, index) = write_index(cat)?;
    if json {
        let s = Failure::json(&rows)?;
        println!("{s}");
        return Ok(());
    }
    println!(
        "{:<40} {:<16} {:<9} {:>10} {:>12} {:>8} {:>9}",
        "ID", "GROUP", "STATE", "FREEZE_MS", "VERIFY", "RTO_S", "LOSS_S"
    );
    for r in &rows {
        println!(
            "{:<40} {:<16} {:<9} {:>10} {:>12} {:>8} {:>9}",
            r.id,
            r.group,
            r.state,
            cell(r.freeze_window_ms),
            r.verdict.as_deref().unwrap_or("-"),
            cell(r.max_recovery_seconds),
            cell(r.max_data_loss_seconds)
        );
    }
    println!("history: {}", index.display());
    Ok(())
}
