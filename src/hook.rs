//! The contract with backup schedulers: `cgsnap hook pre|post --group G`.
//!
//! - `pre` takes a group snapshot; on success the frozen images can be read by the backup tool
//!   (overlays match `*.cgsnap-overlay` and should be excluded). Exit codes are those of
//!   `cgsnap snapshot`; a second `pre` without `post` exits 6 and changes nothing.
//! - `post` releases every outstanding snapshot of the group. It is safe without a `pre`, when
//!   called twice, and after a failed `pre` (it then finishes any rollback): with nothing to
//!   release it prints so and exits 0.
//! - Each prints exactly one summary line on stdout; errors go to stderr.

use crate::catalog::Catalog;
use crate::hypervisor::Host;
use crate::hypervisor::pool::Pool;
use crate::release::{self, SnapshotReleaseError};
use crate::snapshot::{self, SnapshotError};
use chrono::{DateTime, Utc};
use std::sync::Arc;

pub fn pre(
    hosts: &[Arc<dyn Host>],
    cat: &Catalog,
    opts: &snapshot::Options,
    now: DateTime<Utc>,
) -> Result<String, SnapshotError> {
    let m = snapshot::take(hosts, cat, opts, now)?;
    let disks: usize = m.members.iter().map(|x| x.disks.len()).sum();
    Ok(format!(
        "cgsnap: snapshot {} of group {} taken: {} members, {} disks, freeze window {:.1} ms, consistency point {}",
        m.id,
        m.group,
        m.members.len(),
        disks,
        m.freeze_window_ms.unwrap_or_default(),
        m.consistency_point
            .map(|c| c.to_rfc3339())
            .unwrap_or_default()
    ))
}

pub fn post(
    pool: &Pool,
    cat: &Catalog,
    group: &str,
    opts: &release::Options,
) -> Result<String, SnapshotReleaseError> {
    let outstanding = cat.outstanding(group)?;
    if outstanding.is_empty() {
        return Ok(format!("cgsnap: nothing to release for group {group}"));
    }
    let mut ids = Vec::new();
    for m in outstanding {
        release::release_snapshot(pool, cat, &m.id, opts)?;
        ids.push(m.id);
    }
    Ok(format!(
        "cgsnap: released {} of group {group}",
        ids.join(", ")
    ))
}
