//! Waiting for one disk's active commit to be ready, then pivoting it back to its image.
//!
//! Invariant: the wait is bounded by time without progress, not total time: a large overlay
//! copying steadily is never cut off, one the guest's writes outpace is (cancelled, the disk
//! stays on its overlay, nothing lost).

use super::error::ReleaseError;
use super::options::Options;
use crate::catalog::DiskRecord;
use crate::events::Reporter;
use crate::hypervisor::Host;
use std::time::{Duration, Instant};

/// How often a commit still running reports its progress.
pub(super) const REPORT_EVERY: Duration = Duration::from_secs(30);

/// Least drop in the bytes a commit has left to copy that counts as progress: small enough for
/// any real copy rate, large enough that a copy the guest's writes outpace (the bytes left
/// wobble up and down) does not keep postponing its deadline.
pub(super) const MIN_GAIN: u64 = 1 << 20;

/// A commit's progress towards ready: its deadline is `timeout` after the bytes left to copy
/// last reached a new low by at least [`MIN_GAIN`] (or after the wait began).
pub(super) struct Progress {
    best: Option<u64>,
    since: Instant,
}

impl Progress {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            best: None,
            since: now,
        }
    }

    pub(super) fn observe(&mut self, cur: u64, end: u64, now: Instant) {
        let left = end.saturating_sub(cur);
        match self.best {
            Some(b) if left.saturating_add(MIN_GAIN) > b => {}
            Some(_) => {
                self.best = Some(left);
                self.since = now;
            }
            // The first reading is the baseline; the clock still runs from the start.
            None => self.best = Some(left),
        }
    }

    pub(super) fn stalled(&self, now: Instant, timeout: Duration) -> bool {
        now.duration_since(self.since) >= timeout
    }
}

/// Wait for the job on one disk to be ready, then pivot. Cancels the job once it has made no
/// progress for the timeout.
pub(crate) fn wait_and_pivot(
    host: &dyn Host,
    domain: &str,
    d: &DiskRecord,
    opts: &Options,
    report: &dyn Reporter,
) -> Result<(), ReleaseError> {
    let mut progress = Progress::new(Instant::now());
    let mut next_report = Instant::now() + REPORT_EVERY;
    let mut last;
    loop {
        match host.block_job(domain, &d.target)? {
            None => return Ok(()), // pivoted or finished by a concurrent actor: XML decides next.
            Some(j) => {
                last = (j.cur, j.end);
                progress.observe(j.cur, j.end, Instant::now());
                // A long commit says how far it got (the command line prints it on stderr:
                // the backup job's log), so nobody mistakes it for a hang; a short one stays
                // quiet.
                if Instant::now() >= next_report {
                    report.progress(&crate::events::Progress::Commit {
                        domain,
                        target: &d.target,
                        copied: j.cur,
                        total: j.end,
                    });
                    next_report += REPORT_EVERY;
                }
                if j.is_ready() {
                    match host.pivot(domain, &d.target) {
                        Ok(()) => return Ok(()),
                        // Not ready after all (guest wrote in between): keep waiting.
                        Err(e) if progress.stalled(Instant::now(), opts.timeout) => {
                            return Err(e.into());
                        }
                        Err(_) => {}
                    }
                }
            }
        }
        if progress.stalled(Instant::now(), opts.timeout) {
            // Cancel: the disk stays on its overlay, which keeps every write.
            let _ = host.abort_job(domain, &d.target);
            return Err(ReleaseError::NotConverged {
                domain: domain.to_string(),
                target: d.target.clone(),
                secs: opts.timeout.as_secs_f64(),
                cur: last.0,
                end: last.1,
            });
        }
        std::thread::sleep(opts.poll);
    }
}
