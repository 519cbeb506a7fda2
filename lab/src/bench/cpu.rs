//! CPU time spent inside the freeze window by the processes that do the freeze's work
//! (libvirtd / virtqemud and every QEMU), and how busy the host's CPUs were meanwhile.
//!
//! Why: with guests paused, the window is the libvirt + QEMU work of every member spread over
//! the host's cores. Guest execution (QEMU's vCPU threads, `CPU n/TCG` or `CPU n/KVM`) is
//! counted apart: it is not freeze work, and with early resume it competes with it. If the cores are (nearly) saturated during the window, no scheduling on
//! our side can make it shorter than that work divided by the cores; the benchmark prints this
//! bound next to the measured window so a missed target can be explained, not guessed.
//!
//! Invariants:
//! - Read from `/proc` only, nothing is changed. Times come in clock ticks (`_SC_CLK_TCK`,
//!   100 per second on Linux), so one round's figure has a resolution of 10 ms: only medians
//!   over rounds are reported.
//! - A process that exits inside the window is not counted (none of the counted ones does).

use std::collections::HashMap;
use std::sync::Mutex;

/// One reading of the counters.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// utime + stime per hypervisor process, by pid: (whole process, its vCPU threads) ticks.
    procs: HashMap<u32, (u64, u64)>,
    /// Host-wide busy and idle (incl. iowait) ticks, summed over all CPUs.
    busy: u64,
    idle: u64,
}

/// The work done between two samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delta {
    /// CPU time of libvirtd / virtqemud and the QEMU processes except their vCPU threads, ms.
    pub hypervisor_ms: f64,
    /// CPU time of the QEMU vCPU threads (guests running), ms.
    pub guest_ms: f64,
    /// Share of the host's CPU capacity that was busy, in percent (anything running).
    pub busy_pct: f64,
}

fn is_vcpu_thread(comm: &str) -> bool {
    // QEMU names vCPU threads "CPU <n>/<accelerator>" (debug-threads=on, set by libvirt).
    comm.starts_with("CPU ") && comm.contains('/')
}

fn is_hypervisor(comm: &str) -> bool {
    // comm is truncated to 15 bytes: "qemu-system-x86" for qemu-system-x86_64.
    comm == "libvirtd" || comm == "virtqemud" || comm.starts_with("qemu-system")
}

/// `(comm, utime + stime)` from the text of `/proc/PID/stat`. comm may contain spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<(&str, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?;
    let rest: Vec<&str> = text.get(close + 2..)?.split(' ').collect();
    // After comm: state(0) ppid(1) ... utime(11) stime(12).
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// `(busy, idle)` ticks from the first line of `/proc/stat`; idle includes iowait.
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().next()?;
    let mut f = line.split_whitespace();
    if f.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    // guest and guest_nice (8, 9) are already counted in user and nice.
    let total: u64 = v.iter().take(8).sum();
    Some((total - idle, idle))
}

pub fn sample() -> Sample {
    let mut procs = HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((comm, t)) = parse_stat(&text)
            && is_hypervisor(comm)
        {
            procs.insert(pid, (t, vcpu_ticks(pid)));
        }
    }
    let (busy, idle) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| parse_proc_stat(&t))
        .unwrap_or_default();
    Sample { procs, busy, idle }
}

/// utime + stime of the vCPU threads of process `pid`.
fn vcpu_ticks(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|text| {
            parse_stat(&text).and_then(|(comm, t)| is_vcpu_thread(comm).then_some(t))
        })
        .sum()
}

fn tick_ms() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1000.0 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// Work between `a` and `b`, counting processes present in both.
pub fn delta(a: &Sample, b: &Sample) -> Delta {
    let (mut all, mut vcpu) = (0u64, 0u64);
    for (pid, (t1, v1)) in &b.procs {
        if let Some((t0, v0)) = a.procs.get(pid) {
            all += t1.saturating_sub(*t0);
            vcpu += v1.saturating_sub(*v0);
        }
    }
    let busy = b.busy.saturating_sub(a.busy);
    let idle = b.idle.saturating_sub(a.idle);
    Delta {
        hypervisor_ms: all.saturating_sub(vcpu) as f64 * tick_ms(),
        guest_ms: vcpu as f64 * tick_ms(),
        busy_pct: if busy + idle == 0 {
            0.0
        } else {
            100.0 * busy as f64 / (busy + idle) as f64
        },
    }
}

/// Collects one [`Delta`] per freeze window, fed by the snapshot's window probe.
#[derive(Default)]
pub struct Recorder {
    open: Mutex<Option<Sample>>,
    windows: Mutex<Vec<Delta>>,
}

impl cgsnap::events::Probe for Recorder {
    fn window(&self, opening: bool) {
        let now = sample();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if opening {
            *open = Some(now);
        } else if let Some(a) = open.take() {
            let d = delta(&a, &now);
            self.windows
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(d);
        }
    }
}

impl Recorder {
    pub fn windows(&self) -> Vec<Delta> {
        self.windows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parentheses_in_comm() {
        let t = "4242 (qemu-system-x86) S 1 2 3 4 5 6 7 8 9 10 120 35 0 0 20 0 9";
        assert_eq!(parse_stat(t), Some(("qemu-system-x86", 155)));
        let t = "7 (a) b) c) R 1 2 3 4 5 6 7 8 9 10 3 4 0 0";
        assert_eq!(parse_stat(t), Some(("a) b) c", 7)));
        assert_eq!(parse_stat("7 (x) R 1 2"), None);
    }

    #[test]
    fn proc_stat_busy_and_idle() {
        let t = "cpu  100 5 50 1000 20 1 2 3 40 0\ncpu0 1 2 3 4\n";
        // busy = user + nice + system + irq + softirq + steal; guest is inside user.
        assert_eq!(parse_proc_stat(t), Some((161, 1020)));
        assert_eq!(parse_proc_stat("intr 1 2\n"), None);
    }

    #[test]
    fn delta_counts_only_processes_seen_twice() {
        let a = Sample {
            procs: HashMap::from([(1, (10, 4)), (2, (5, 0))]),
            busy: 100,
            idle: 100,
        };
        let b = Sample {
            procs: HashMap::from([(1, (13, 5)), (3, (50, 0))]),
            busy: 130,
            idle: 110,
        };
        let d = delta(&a, &b);
        assert!((d.hypervisor_ms - 2.0 * tick_ms()).abs() < 1e-9);
        assert!((d.guest_ms - tick_ms()).abs() < 1e-9);
        assert!((d.busy_pct - 75.0).abs() < 1e-9);
    }

    #[test]
    fn names_of_the_counted_processes() {
        assert!(is_hypervisor("libvirtd") && is_hypervisor("virtqemud"));
        assert!(is_hypervisor("qemu-system-x86"));
        assert!(!is_hypervisor("cgsnap") && !is_hypervisor("qemu-img"));
        assert!(is_vcpu_thread("CPU 0/TCG") && is_vcpu_thread("CPU 12/KVM"));
        assert!(!is_vcpu_thread("qemu-system-x86") && !is_vcpu_thread("IO mon_iothread"));
    }
}
