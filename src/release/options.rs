//! How a release runs: its progress timeout and commit bandwidth.

use std::time::Duration;

/// How one release runs; the same for every member and disk.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long one disk's commit may go without progress towards ready before it is cancelled
    /// (see [`super::pivot`]).
    pub timeout: Duration,
    /// Pause between two looks at a commit job's progress.
    pub poll: Duration,
    /// Copy rate limit of each commit in bytes/s (0: unlimited), to spare the storage.
    pub bandwidth: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            poll: Duration::from_millis(20),
            bandwidth: 0,
        }
    }
}
