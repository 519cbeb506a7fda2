//! What every testbed's `down` does ([`down`]): stop its workload process, remove its domains
//! and image directories; and how every testbed reports workload throughput from its
//! acknowledgement log.
//!
//! Invariant: each step tolerates what an interrupted `up` left (no process, no domain, no
//! directory), so `down` always gets to the end.

use crate::error::TestbedError;
use crate::{guest, workload};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// SIGTERM the workload, SIGKILL it if it is still there after 5 s.
fn stop_workload(pid: Option<u32>) {
    let Some(pid) = pid.filter(|p| alive(*p)) else {
        return;
    };
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let start = Instant::now();
    while alive(pid) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
}

/// Destroy each named domain on `uri` and remove its image directory.
fn remove_vms<'a>(uri: &str, vms: impl IntoIterator<Item = (&'a str, &'a Path)>) {
    for (name, dir) in vms {
        guest::remove(uri, name, dir);
    }
}

/// A testbed's whole `down`: stop its workload, remove its VMs, then its state directory.
pub fn down<'a>(
    state_dir: &Path,
    uri: &str,
    workload_pid: Option<u32>,
    vms: impl IntoIterator<Item = (&'a str, &'a Path)>,
) -> Result<(), TestbedError> {
    stop_workload(workload_pid);
    remove_vms(uri, vms);
    std::fs::remove_dir_all(state_dir).map_err(TestbedError::io(state_dir))
}

/// Acknowledged commits and commits per second over the whole acknowledgement log.
pub fn throughput(ack_log: &Path) -> Option<(usize, f64)> {
    let acks = workload::read_acks(ack_log).ok()?;
    let (first, last) = (acks.first()?, acks.last()?);
    let secs = (last.at - first.at).num_milliseconds() as f64 / 1000.0;
    (secs > 0.0).then(|| (acks.len(), acks.len() as f64 / secs))
}
