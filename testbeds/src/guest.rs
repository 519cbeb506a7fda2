//! A small TCG guest: transient libvirt domain, N qcow2 disks, serial console to a file.
//!
//! Invariants:
//! - Guests are `type='qemu'` (TCG; no KVM needed) and have no network device at all, so they
//!   cannot send traffic anywhere.
//! - Everything a [`Guest`] creates (domain, disk images, overlays named after them, console
//!   log) lives under its own directory and is destroyed on drop unless [`Guest::keep`] is set,
//!   and also when the process is interrupted where [`crate::interrupt::install`] was called.

pub mod console;
mod xml;

pub use console::{Outcome, console_outcome};

use crate::assets::Assets;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use virt::connect::Connect;
use xml::domain_xml;

/// Why a guest could not be made, started or waited for.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// An operation on the guest failed.
    #[error("guest {name}: {op}: {detail}")]
    Op {
        /// The guest's domain name.
        name: String,
        /// The operation (`connect`, `disk`, `define`, ...).
        op: &'static str,
        /// What failed.
        detail: String,
    },
    /// The console did not show what was waited for in time.
    #[error("guest {name} did not print {pattern:?} within {secs} s; console tail: {tail}")]
    Timeout {
        /// The guest's domain name.
        name: String,
        /// The console text waited for.
        pattern: String,
        /// How long it was given.
        secs: u64,
        /// The console's last lines.
        tail: String,
    },
    /// The guest printed its error marker before the ready one: the line says why.
    #[error("guest {name}: {line}")]
    Reported {
        /// The guest's domain name.
        name: String,
        /// The console line with the error marker.
        line: String,
    },
}

/// What guest to make.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Domain name (also the name of its directory).
    pub name: String,
    /// Number of disks (`vda`, `vdb`, ...).
    pub disks: usize,
    /// Virtual size of each disk in bytes (sparse).
    pub disk_size: u64,
    /// Guest memory.
    pub memory_mib: u32,
    /// `writer` (sequence records on every disk) or `idle`.
    pub mode: &'static str,
    /// Pause between the writer's rounds.
    pub interval_ms: u32,
    /// Image format of every disk: `qcow2` (default) or `raw`.
    pub format: &'static str,
    /// Bytes written into every disk before boot (allocated, non-zero data).
    pub prefill: u64,
    /// Owner (uid, gid) of the guest's directory and images, for unprivileged session daemons.
    pub owner: Option<(u32, u32)>,
    /// Where each disk's content comes from; empty: `disks` blank disks of `disk_size`.
    pub sources: Vec<DiskSource>,
    /// Extra kernel command line (e.g. `cgsnap.root=/dev/vda`).
    pub cmdline: String,
    /// Forward `127.0.0.1:host` to the guest's TCP `guest` port (QEMU user-mode networking).
    pub forward: Option<(u16, u16)>,
    /// One more disk after the others: raw, `disk_size`, marked `snapshot='no'` in the domain
    /// (swap or scratch space that no snapshot should take).
    pub scratch: bool,
    /// More `<devices>` children, as XML (tests of what a sandbox must not share).
    pub extra_devices: String,
    /// The path under which the daemon sees the guests' base directory, when it runs in a mount
    /// namespace of its own (standing in for another host): the domain names its files there.
    pub daemon_dir: Option<PathBuf>,
}

/// Content of one disk of a guest.
#[derive(Debug, Clone)]
pub enum DiskSource {
    /// A qcow2 overlay on a shared, read-only base image.
    Overlay(PathBuf),
    /// A private copy of a template image.
    Copy(PathBuf),
}

impl Spec {
    /// A writer guest with `disks` blank qcow2 disks and the defaults of the tests.
    pub fn writer(name: &str, disks: usize) -> Self {
        Self {
            name: name.to_string(),
            disks,
            disk_size: 64 << 20,
            memory_mib: 192,
            mode: "writer",
            interval_ms: 20,
            format: "qcow2",
            prefill: 0,
            owner: None,
            sources: Vec::new(),
            cmdline: String::new(),
            forward: None,
            scratch: false,
            extra_devices: String::new(),
            daemon_dir: None,
        }
    }
}

/// A running guest; removed with everything it created on drop unless kept.
pub struct Guest {
    /// What it was made from.
    pub spec: Spec,
    /// libvirt daemon it runs on.
    pub uri: String,
    /// Its directory (disks, console log).
    pub dir: PathBuf,
    /// Its disk images, in target order.
    pub disks: Vec<PathBuf>,
    /// Its serial console log.
    pub console: PathBuf,
    /// Whether dropping it leaves the domain and directory in place.
    pub keep: bool,
    /// Defined (persistent) but not started: see [`Guest::define`].
    pub persistent: bool,
    /// When the domain was started: boot-time measurements count from here.
    pub started: Instant,
    conn: Connect,
    /// Removes the guest if the process is interrupted (see [`crate::interrupt`]).
    _interrupt: crate::interrupt::Registration,
}

/// Disk target names: vda, vdb, ...
pub fn target(i: usize) -> String {
    format!("vd{}", (b'a' + i as u8) as char)
}

/// Why a disk of a guest could not be made; the guest's [`GuestError::Op`] carries its text.
#[derive(Debug, thiserror::Error)]
enum DiskError {
    #[error("{0}")]
    Spawn(#[source] std::io::Error),
    #[error("qemu-io: {0}")]
    SpawnQemuIo(#[source] std::io::Error),
    #[error("{}: {stderr}", path.display())]
    Tool { path: PathBuf, stderr: String },
    #[error("{0}")]
    Write(String),
}

fn materialize(src: &DiskSource, dst: &Path) -> Result<(), DiskError> {
    let out = match src {
        DiskSource::Overlay(base) => Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(base)
            .arg(dst)
            .output(),
        DiskSource::Copy(t) => Command::new("cp")
            .arg("--sparse=always")
            .arg(t)
            .arg(dst)
            .output(),
    }
    .map_err(DiskError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DiskError::Tool {
            path: dst.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Write `bytes` of a non-zero pattern from offset 0, in chunks (qemu-io buffers a request).
fn prefill(image: &Path, format: &str, bytes: u64) -> Result<(), DiskError> {
    const CHUNK: u64 = 256 << 20;
    let mut off = 0;
    while off < bytes {
        let len = CHUNK.min(bytes - off);
        let out = Command::new("qemu-io")
            .args(["-f", format, "-c"])
            .arg(format!("write -q -P 0x5a {off} {len}"))
            .arg(image)
            .output()
            .map_err(DiskError::SpawnQemuIo)?;
        if !out.status.success() {
            return Err(DiskError::Write(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        off += len;
    }
    Ok(())
}

/// Destroy (and undefine) a domain by name, if it exists.
pub fn destroy_by_name(uri: &str, name: &str) {
    virt::error::clear_error_callback();
    if let Ok(d) = Connect::open(Some(uri)).and_then(|c| c.lookup_domain_by_name(name)) {
        let _ = d.destroy();
        undefine(&d);
    }
}

/// Undefine a domain with whatever metadata libvirt would refuse to leave behind: the
/// checkpoints of backup cuts (and snapshot metadata), which make a plain undefine fail.
fn undefine(d: &virt::domain::Domain) {
    let flags = virt::sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
        | virt::sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA;
    if d.undefine_flags(flags).is_err() {
        let _ = d.undefine();
    }
}

/// Remove a throwaway VM: its domain (if any) and its directory.
pub fn remove(uri: &str, name: &str, dir: &Path) {
    destroy_by_name(uri, name);
    let _ = std::fs::remove_dir_all(dir);
}

/// Have [`remove`] run for this VM if the process is interrupted (see [`crate::interrupt`]);
/// `what` says what kind of VM it is in the message printed then.
pub fn remove_on_interrupt(
    what: &str,
    uri: &str,
    name: &str,
    dir: &Path,
) -> crate::interrupt::Registration {
    let (uri, name, dir) = (uri.to_string(), name.to_string(), dir.to_path_buf());
    crate::interrupt::register(&format!("{what} {name}"), move || remove(&uri, &name, &dir))
}

impl Guest {
    /// Create the disks and start the domain (transient) under `base_dir/<name>/`.
    pub fn start(
        uri: &str,
        base_dir: &Path,
        spec: Spec,
        assets: &Assets,
    ) -> Result<Guest, GuestError> {
        Self::make(uri, base_dir, spec, assets, false)
    }

    /// Create the disks, define a persistent domain (as production VMs are) and start it.
    pub fn start_persistent(
        uri: &str,
        base_dir: &Path,
        spec: Spec,
        assets: &Assets,
    ) -> Result<Guest, GuestError> {
        let g = Self::make(uri, base_dir, spec, assets, true)?;
        let err = |detail: String| GuestError::Op {
            name: g.spec.name.clone(),
            op: "start domain",
            detail,
        };
        let d = g
            .conn
            .lookup_domain_by_name(&g.spec.name)
            .map_err(|e| err(e.to_string()))?;
        d.create().map_err(|e| err(e.to_string()))?;
        Ok(g)
    }

    /// Create the disks and define a persistent domain without starting it (a stopped VM).
    pub fn define(
        uri: &str,
        base_dir: &Path,
        spec: Spec,
        assets: &Assets,
    ) -> Result<Guest, GuestError> {
        Self::make(uri, base_dir, spec, assets, true)
    }

    fn make(
        uri: &str,
        base_dir: &Path,
        spec: Spec,
        assets: &Assets,
        persistent: bool,
    ) -> Result<Guest, GuestError> {
        let name = spec.name.clone();
        let err = |op, detail: String| GuestError::Op {
            name: name.clone(),
            op,
            detail,
        };
        // Lookups of absent domains are expected here; do not let libvirt print them.
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri)).map_err(|e| err("connect", e.to_string()))?;
        let dir = base_dir.join(&spec.name);
        let reg = remove_on_interrupt("guest", uri, &spec.name, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| err("mkdir", e.to_string()))?;
        let mut disks = Vec::new();
        for (i, src) in spec.sources.iter().enumerate() {
            let p = dir.join(format!("{}.qcow2", target(i)));
            materialize(src, &p).map_err(|e| err("disk", e.to_string()))?;
            disks.push(p);
        }
        for i in (0..spec.disks).filter(|_| spec.sources.is_empty()) {
            let p = dir.join(format!("{}.{}", target(i), spec.format));
            let out = Command::new("qemu-img")
                .args(["create", "-q", "-f", spec.format])
                .arg(&p)
                .arg(spec.disk_size.to_string())
                .output()
                .map_err(|e| err("qemu-img", e.to_string()))?;
            if !out.status.success() {
                return Err(err(
                    "qemu-img create",
                    String::from_utf8_lossy(&out.stderr).into(),
                ));
            }
            prefill(&p, spec.format, spec.prefill).map_err(|e| err("prefill", e.to_string()))?;
            disks.push(p);
        }
        if spec.scratch {
            let p = dir.join(format!("{}.scratch.raw", target(disks.len())));
            let f = std::fs::File::create(&p).map_err(|e| err("scratch disk", e.to_string()))?;
            f.set_len(spec.disk_size)
                .map_err(|e| err("scratch disk", e.to_string()))?;
            disks.push(p);
        }
        if let Some((uid, gid)) = spec.owner {
            for p in std::iter::once(&dir).chain(disks.iter()) {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .map_err(|e| err("chown", format!("{}: {e}", p.display())))?;
            }
        }
        let console = dir.join("console.log");
        // As the daemon sees them.
        let seen = |p: &Path| match (&spec.daemon_dir, p.strip_prefix(base_dir)) {
            (Some(d), Ok(rel)) => d.join(rel),
            _ => p.to_path_buf(),
        };
        let seen_disks: Vec<PathBuf> = disks.iter().map(|p| seen(p)).collect();
        let xml = domain_xml(&spec, assets, &seen_disks, &seen(&console));
        let g = Guest {
            spec,
            uri: uri.to_string(),
            dir,
            disks,
            console,
            keep: false,
            persistent,
            started: Instant::now(),
            conn,
            _interrupt: reg,
        };
        // A leftover domain of the same name (from a killed run) would make create fail.
        g.destroy_domain();
        let (op, made) = crate::interrupt::guarded(|| {
            if persistent {
                ("define domain", g.conn.define_domain_xml(&xml).map(|_| ()))
            } else {
                (
                    "create domain",
                    g.conn.create_domain_xml(&xml, 0).map(|_| ()),
                )
            }
        });
        made.map_err(|e| err(op, e.to_string()))?;
        Ok(g)
    }

    /// The domain name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The console log so far (empty if unreadable).
    pub fn console_text(&self) -> String {
        std::fs::read(&self.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Wait until the console shows `pattern` (polling with a deadline); returns the time
    /// since the domain was started.
    pub fn wait_console(&self, pattern: &str, timeout: Duration) -> Result<Duration, GuestError> {
        self.wait_console_or(pattern, None, timeout)
    }

    /// [`Guest::wait_console`] that also fails at once, with the line, when the console shows
    /// `error` (the guest's error marker, e.g. `CGSNAP-CASS: error`) before `pattern`.
    pub fn wait_console_or(
        &self,
        pattern: &str,
        error: Option<&str>,
        timeout: Duration,
    ) -> Result<Duration, GuestError> {
        let start = Instant::now();
        loop {
            let text = self.console_text();
            let outcome = match error {
                Some(e) => console_outcome(&text, pattern, e),
                None => text.contains(pattern).then_some(Outcome::Ready),
            };
            match outcome {
                Some(Outcome::Ready) => return Ok(self.started.elapsed()),
                Some(Outcome::Failed(line)) => {
                    return Err(GuestError::Reported {
                        name: self.spec.name.clone(),
                        line,
                    });
                }
                None => {}
            }
            if start.elapsed() > timeout {
                let text = self.console_text();
                let tail: String = text.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                return Err(GuestError::Timeout {
                    name: self.spec.name.clone(),
                    pattern: pattern.to_string(),
                    secs: timeout.as_secs(),
                    tail,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Highest `seq N` the guest printed on its console so far.
    pub fn console_seq(&self) -> u64 {
        self.console_text()
            .lines()
            .filter_map(|l| l.split("seq ").nth(1))
            .filter_map(|s| s.trim().parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    }

    /// Wait until the console shows progress past `seq`.
    pub fn wait_progress(&self, seq: u64, timeout: Duration) -> Result<u64, GuestError> {
        let start = Instant::now();
        loop {
            let now = self.console_seq();
            if now > seq {
                return Ok(now);
            }
            if start.elapsed() > timeout {
                return Err(GuestError::Timeout {
                    name: self.spec.name.clone(),
                    pattern: format!("seq > {seq}"),
                    secs: timeout.as_secs(),
                    tail: self
                        .console_text()
                        .lines()
                        .rev()
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" | "),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the domain (power cut) and forget its definition, if it exists. Falls back to a
    /// fresh connection: ours is dead if libvirtd restarted meanwhile.
    pub fn destroy_domain(&self) {
        match self.conn.lookup_domain_by_name(&self.spec.name) {
            Ok(d) => {
                let _ = d.destroy();
                undefine(&d);
            }
            Err(_) => destroy_by_name(&self.uri, &self.spec.name),
        }
    }

    /// Leave the guest running and its files in place when this value is dropped.
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        self.destroy_domain();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
