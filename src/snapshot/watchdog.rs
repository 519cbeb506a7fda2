//! The out-of-process watchdog: guarantees that no member stays paused.
//!
//! The coordinator starts `cgsnap __watchdog` (same binary) in its own session, sends it the
//! member list and the freeze budget on stdin and waits for `ready` (the watchdog has opened
//! its own libvirt connections). It then writes `arm` just before the first pause and `disarm`
//! after the last resume. The watchdog resumes every member that is paused-by-user when:
//! - its stdin reaches EOF while armed (the coordinator died, even by SIGKILL: the kernel
//!   closes the pipe; then it keeps checking for a while, for a pause still in flight), or
//! - the freeze budget expires while armed (the coordinator hangs in a libvirt call). It then
//!   prints `fired` so a surviving coordinator knows the cut may be broken and rolls back.
//!
//! Invariants: the watchdog never pauses anything, and it only resumes domains in the
//! `paused (user)` state, so a VM paused for an I/O error is left for the admin. It runs in its
//! own session (`setsid`) so a signal to the coordinator's process group does not kill it.
//! This module prints nothing: [`main`] hands every line it has to say to its caller as a
//! [`Said`], which the `__watchdog` command writes to stdout (for the coordinator) or stderr.

use crate::hypervisor::libvirt::LibvirtHost;
use crate::hypervisor::{DomState, Host, HvErrorKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A member the watchdog resumes if need be.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchMember {
    /// Its host.
    pub uri: String,
    /// Its domain.
    pub domain: String,
}

/// The snapshot a watchdog guards, so that after its coordinator died it can tell whether the
/// members are still that snapshot's to rescue (see `sweep`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scope {
    /// The catalog directory holding its manifest.
    pub catalog: std::path::PathBuf,
    /// Its group.
    pub group: String,
    /// Its ID.
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Config {
    budget_ms: u64,
    members: Vec<WatchMember>,
    #[serde(default)]
    scope: Option<Scope>,
}

/// Why the watchdog could not guard a snapshot; it is then not started.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// It could not be started, talked to, or become ready.
    #[error("watchdog: {0}; the snapshot was not started")]
    Failed(String),
    #[error(
        "member {domain} ({uri}) is held by another cgsnap run right now (its watchdog, pid {pid}; a run with another catalog?): wait for it to finish and try again; the snapshot was not started"
    )]
    /// Another run's watchdog holds a member's host-wide lock.
    MemberBusy {
        /// The member's domain.
        domain: String,
        /// Its host.
        uri: String,
        /// The process holding the lock.
        pid: String,
    },
}

/// A line of the watchdog process: for its coordinator (stdout; the words [`Watchdog::spawn`]
/// and [`Watchdog::disarm`] read: `ready`, `busy\t...`, `fired`) or for the log (stderr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    /// A word for the coordinator (stdout).
    Coordinator(String),
    /// A line for the log (stderr).
    Log(String),
}

/// Where [`main`] hands its lines.
pub type Say<'a> = &'a (dyn Fn(Said) + Sync);

fn log(say: Say, line: String) {
    say(Said::Log(format!("cgsnap watchdog: {line}")));
}

/// Coordinator side of the watchdog.
pub struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Watchdog {
    /// Start the watchdog and wait until it holds its own connections.
    pub fn spawn(
        exe: &Path,
        members: &[WatchMember],
        budget: Duration,
        scope: Option<Scope>,
    ) -> Result<Self, WatchdogError> {
        let mut cmd = Command::new(exe);
        cmd.arg("__watchdog")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| WatchdogError::Failed(format!("cannot start {}: {e}", exe.display())))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| WatchdogError::Failed("no stdout".into()))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut w = Watchdog {
            stdin: child.stdin.take(),
            child,
            lines: rx,
        };
        let cfg = Config {
            budget_ms: budget.as_millis() as u64,
            members: members.to_vec(),
            scope,
        };
        let line = serde_json::to_string(&cfg).map_err(|e| WatchdogError::Failed(e.to_string()))?;
        w.send(&line)?;
        match w.lines.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l == "ready" => Ok(w),
            Ok(l) if l.starts_with("busy\t") => {
                let f: Vec<&str> = l.splitn(4, '\t').collect();
                let field = |i: usize| f.get(i).copied().unwrap_or_default().to_string();
                Err(WatchdogError::MemberBusy {
                    domain: field(1),
                    uri: field(2),
                    pid: field(3),
                })
            }
            Ok(l) => Err(WatchdogError::Failed(format!("unexpected reply {l:?}"))),
            Err(_) => Err(WatchdogError::Failed(
                "did not become ready within 30 s (could it connect to libvirt?)".into(),
            )),
        }
    }

    fn send(&mut self, line: &str) -> Result<(), WatchdogError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| WatchdogError::Failed("already disarmed".into()))?;
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .map_err(|e| WatchdogError::Failed(format!("pipe closed: {e}")))
    }

    /// Start the freeze budget.
    pub fn arm(&mut self) -> Result<(), WatchdogError> {
        self.send("arm")
    }

    /// Stop watching; returns true when the budget had expired and the watchdog resumed members.
    pub fn disarm(mut self) -> bool {
        let _ = self.send("disarm");
        self.finish()
    }

    /// Hand over to the watchdog: close its pipe while armed, so it resumes every member still
    /// paused, and wait until it has. Used when the coordinator could not resume everyone.
    pub fn abandon(mut self) -> bool {
        let _ = self.send("abandon");
        self.finish()
    }

    fn finish(mut self) -> bool {
        self.stdin = None;
        let _ = self.child.wait();
        self.lines.try_iter().any(|l| l == "fired")
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Closing stdin is the "coordinator gone" signal; an armed watchdog resumes members.
        // Said first: the coordinator is alive, so no call of its can still land afterwards.
        let _ = self.send("abandon");
        self.stdin = None;
    }
}

/// How long a watchdog whose coordinator died keeps resuming members that turn up paused: a
/// pause the coordinator sent just before it died can still be carried out by libvirtd after
/// the first rescue.
const SWEEP: Duration = Duration::from_secs(5);

/// How long a watchdog whose coordinator died keeps trying members it cannot check (their
/// libvirtd restarting or unreachable).
const PERSIST: Duration = Duration::from_secs(120);

/// What one rescue pass did.
#[derive(Default)]
struct Rescued {
    resumed: Vec<String>,
    /// Members whose state could not be read or that could not be resumed.
    unsure: usize,
}

/// Resume every member that is paused by a user/API call.
fn rescue(hosts: &BTreeMap<String, Arc<dyn Host>>, members: &[WatchMember], say: Say) -> Rescued {
    std::thread::scope(|s| {
        let handles: Vec<_> = members
            .iter()
            .filter_map(|m| hosts.get(&m.uri).map(|h| (h.clone(), m)))
            .map(|(h, m)| {
                s.spawn(move || {
                    // ~10 s of attempts: long enough for a restarting libvirtd to come back.
                    for attempt in 0..20u64 {
                        match h.state(&m.domain) {
                            Ok(DomState::PausedByUser) => {
                                if h.resume(&m.domain).is_ok() {
                                    return Ok(Some(m.domain.clone()));
                                }
                            }
                            Ok(_) => return Ok(None),
                            // Gone (destroyed, undefined): nothing left to resume.
                            Err(e) if e.kind == HvErrorKind::NoDomain => return Ok(None),
                            // The connection may be dead (libvirtd restarted): open a new one.
                            Err(_) => {
                                let _ = h.reconnect();
                            }
                        }
                        std::thread::sleep(
                            Duration::from_millis(50 * (attempt + 1)).min(Duration::from_secs(1)),
                        );
                    }
                    log(say, format!("could not resume {} on {}", m.domain, m.uri));
                    Err(())
                })
            })
            .collect();
        let mut out = Rescued::default();
        for h in handles {
            match h.join() {
                Ok(Ok(Some(d))) => out.resumed.push(d),
                Ok(Ok(None)) => {}
                _ => out.unsure += 1,
            }
        }
        out
    })
}

/// After the coordinator died: a rescue pass at once, then more for at least [`SWEEP`], and on
/// while some member cannot be checked (its libvirtd down), up to [`PERSIST`]. Returns what was
/// resumed.
///
/// A later pass must never resume a member that another run paused on purpose, so each one
/// holds the catalog's planning lock and first checks that the dead run's snapshot is still
/// unreleased: while it is, no snapshot (of this group or another) that could pause these
/// members gets past its planning, and one that got past it after the release meets a
/// stopped sweep. (Not the group lock: a `release` right after the death must not find the
/// group busy.) Without a scope only the first pass is made.
fn sweep(
    hosts: &BTreeMap<String, Arc<dyn Host>>,
    members: &[WatchMember],
    scope: Option<&Scope>,
    say: Say,
) -> Vec<String> {
    let start = Instant::now();
    let first = rescue(hosts, members, say);
    let mut resumed = first.resumed;
    let mut unsure = first.unsure;
    let Some(scope) = scope else {
        return resumed;
    };
    loop {
        let t = start.elapsed();
        if t >= PERSIST || (t >= SWEEP && unsure == 0) {
            return resumed;
        }
        std::thread::sleep(Duration::from_millis(250));
        match still_ours(scope) {
            Ok(Some(_lock)) => {
                let r = rescue(hosts, members, say);
                resumed.extend(r.resumed);
                unsure = r.unsure;
            }
            // The planning lock stayed busy: try again next time.
            Ok(None) => {}
            // Released, aborted, or the catalog unreadable: done.
            Err(()) => return resumed,
        }
    }
}

/// The planning lock, when the scope's snapshot is still unreleased (`Ok(None)` when the lock
/// stayed busy, `Err` when the snapshot was released or aborted or cannot be read).
fn still_ours(scope: &Scope) -> Result<Option<crate::catalog::lock::GroupLock>, ()> {
    let cat = crate::catalog::Catalog::open(&scope.catalog).map_err(|_| ())?;
    let Ok(lock) = cat.lock_planning() else {
        return Ok(None);
    };
    match cat.load(&scope.id) {
        Ok(m) if m.group == scope.group && m.state.outstanding() => Ok(Some(lock)),
        _ => Err(()),
    }
}

/// Entry point of `cgsnap __watchdog`; every line it has to say goes to `say`. Returns the
/// process exit code.
pub fn main(say: Say) -> i32 {
    let rx = stdin_lines();
    let Ok(first) = rx.recv() else { return 1 };
    let cfg: Config = match serde_json::from_str(&first) {
        Ok(c) => c,
        Err(e) => {
            log(say, format!("bad config: {e}"));
            return 1;
        }
    };
    let Some(hosts) = open_hosts(&cfg.members, say) else {
        return 1;
    };
    // Hold every member's host-wide lock for as long as this watchdog may resume it.
    let Some(_held) = lock_members(&hosts, &cfg.members, say) else {
        return 1;
    };
    say(Said::Coordinator("ready".into()));
    watch(&rx, &hosts, &cfg, say)
}

/// The coordinator's lines, read on a thread of their own; the channel closes at EOF.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// This watchdog's own connection to every member's host; `None` (said) when one fails.
fn open_hosts(members: &[WatchMember], say: Say) -> Option<BTreeMap<String, Arc<dyn Host>>> {
    let mut hosts: BTreeMap<String, Arc<dyn Host>> = BTreeMap::new();
    for m in members {
        if hosts.contains_key(&m.uri) {
            continue;
        }
        match LibvirtHost::open(&m.uri) {
            Ok(h) => {
                hosts.insert(m.uri.clone(), Arc::new(h));
            }
            Err(e) => {
                log(say, e.to_string());
                return None;
            }
        }
    }
    Some(hosts)
}

/// Every member's host-wide lock, held while the result lives; `None` when another run holds
/// one (said to the coordinator as `busy`).
fn lock_members(
    hosts: &BTreeMap<String, Arc<dyn Host>>,
    members: &[WatchMember],
    say: Say,
) -> Option<Vec<crate::catalog::lock::GroupLock>> {
    let mut held = Vec::new();
    let mut uuids = std::collections::BTreeSet::new();
    for m in members {
        let Some(host) = hosts.get(&m.uri) else {
            continue;
        };
        // A member gone already fails the snapshot anyway; nothing of it to hold.
        let Ok(uuid) = host.uuid(&m.domain) else {
            continue;
        };
        // Two members on two hosts may share a UUID (one defined from the other's XML): one
        // lock covers both, and a second flock of it here would wait for this very process.
        if !uuids.insert(uuid.clone()) {
            continue;
        }
        match crate::catalog::lock::lock_member(&uuid) {
            Ok(l) => held.push(l),
            Err(Some(pid)) => {
                say(Said::Coordinator(format!(
                    "busy\t{}\t{}\t{pid}",
                    m.domain, m.uri
                )));
                return None;
            }
            Err(None) => log(
                say,
                format!(
                    "warning: cannot make the lock of {} in {}; runs of other catalogs are not kept off it",
                    m.domain,
                    crate::catalog::lock::member_lock_dir().display()
                ),
            ),
        }
    }
    Some(held)
}

/// Follow the coordinator's `arm`/`disarm`/`abandon` until it disarms or its pipe closes,
/// resuming members when the budget expires or it is gone while armed. Returns the exit code.
fn watch(
    rx: &mpsc::Receiver<String>,
    hosts: &BTreeMap<String, Arc<dyn Host>>,
    cfg: &Config,
    say: Say,
) -> i32 {
    let budget = Duration::from_millis(cfg.budget_ms);
    let mut deadline: Option<Instant> = None;
    let mut fired = false;
    let mut abandoned = false;
    loop {
        let msg = match deadline {
            Some(d) if !fired => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
            _ => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match msg {
            Ok(l) if l == "arm" => deadline = Some(Instant::now() + budget),
            Ok(l) if l == "disarm" => return 0,
            Ok(l) if l == "abandon" => abandoned = true,
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let r = rescue(hosts, &cfg.members, say).resumed;
                log(
                    say,
                    format!(
                        "freeze budget of {} ms expired; resumed {r:?}",
                        cfg.budget_ms
                    ),
                );
                say(Said::Coordinator("fired".into()));
                fired = true;
            }
            // Armed: also after the budget fired, since a pause still in flight then may have
            // landed since.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if deadline.is_some() {
                    let r = if abandoned {
                        rescue(hosts, &cfg.members, say).resumed
                    } else {
                        sweep(hosts, &cfg.members, cfg.scope.as_ref(), say)
                    };
                    log(
                        say,
                        format!("coordinator gone while members were frozen; resumed {r:?}"),
                    );
                }
                return 0;
            }
        }
    }
}

impl crate::model::exit::Classify for WatchdogError {
    fn exit_code(&self) -> crate::model::exit::ExitCode {
        match self {
            WatchdogError::Failed(_) => crate::model::exit::ExitCode::Hypervisor,
            WatchdogError::MemberBusy { .. } => crate::model::exit::ExitCode::Busy,
        }
    }
}

#[cfg(test)]
#[path = "watchdog_tests.rs"]
mod tests;
