//! Sandbox restore of one member: throwaway overlays on the frozen (or restored) images and a
//! transient domain made from the member's saved XML, renamed, without host-specific devices.
//!
//! Invariants:
//! - Frozen and backup images are only ever backing files opened read-only: every write of the
//!   sandbox goes to its own overlay in the sandbox directory.
//! - The sandbox has a new name and no UUID (libvirt assigns one), nothing it could share with
//!   the running original or the host ([`crate::isolate`]: NICs, host devices, shared
//!   directories and memory, vsock, TPM, leases, sockets; a copy of the NVRAM); its only network
//!   is QEMU user mode with `restrict=on` and one port forward bound to 127.0.0.1. Its NIC sits
//!   at slot 0x1f of `pci.0` on i440fx (`pc`) machines, a slot libvirt leaves free; other
//!   machines (q35 has no `pci.0`, and its slot 0x1f is the ICH9 bridge) let QEMU pick a free
//!   slot. The guest finds its NIC by driver, not by slot.
//! - A disk the guest can write that the snapshot left out (shareable, `snapshot='no'`) never
//!   reaches the sandbox: it gets a blank stand-in ([`crate::stand_in`]), and `sandbox_xml`
//!   refuses a writable disk it was given no file for.
//! - Dropping a [`Sandbox`] destroys the domain and deletes the directory, also on panic, and so
//!   does an interrupt (SIGINT/SIGTERM/SIGHUP) once `cgsnap_testbeds::interrupt` is installed,
//!   and so does its [`Sandbox::stopper`] (run from another thread, e.g. the free-space
//!   [`crate::space::Watch`]); once stopped, waiting for it ends at once with [`Wait::Stopped`].
//! - Its directory holds an owner marker ([`crate::stale::MARKER`]: pid and process start
//!   time), written right after the directory is created, so a later run can tell a directory
//!   left by a killed run from one in use ([`crate::stale`]).

mod rewrite;

pub use rewrite::{parse, sandbox_xml};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use virt::connect::Connect;

/// Why a sandbox could not be made or started; each names the image, disk or domain.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// No connection to the libvirt daemon the sandbox runs on.
    #[error("connect {uri}: {source}")]
    Connect {
        /// The daemon.
        uri: String,
        /// libvirt's reason.
        #[source]
        source: virt::error::Error,
    },
    /// The sandbox directory could not be created.
    #[error("{}: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// The owner marker could not be written.
    #[error(transparent)]
    Mark(#[from] crate::stale::MarkError),
    /// `qemu-img` could not be run.
    #[error("qemu-img: {0}")]
    QemuImg(#[source] std::io::Error),
    /// An overlay on a frozen (or copied) image could not be created.
    #[error("overlay on {}: {stderr}", image.display())]
    Overlay {
        /// The image it was to be based on.
        image: PathBuf,
        /// What qemu-img said.
        stderr: String,
    },
    /// The saved domain XML does not parse.
    #[error("saved domain XML: {0}")]
    Xml(#[source] xmltree::ParseError),
    /// The saved domain XML has no devices.
    #[error("saved domain XML has no <devices>")]
    NoDevices,
    /// A writable disk outside the snapshot has no stand-in.
    #[error(
        "disk {target} is writable and not in the snapshot: the sandbox must not get the original"
    )]
    WritableLeftOut {
        /// The disk.
        target: String,
    },
    /// Not every snapshotted disk is in the saved XML.
    #[error("saved domain XML has {mapped} of the {total} snapshotted disks")]
    DisksMissing {
        /// Disks found.
        mapped: usize,
        /// Disks snapshotted.
        total: usize,
    },
    /// The rewritten XML could not be written out.
    #[error("{0}")]
    Emit(#[source] xmltree::Error),
    /// The rewritten XML is not UTF-8.
    #[error("{0}")]
    Utf8(#[source] std::string::FromUtf8Error),
    /// A blank stand-in could not be made.
    #[error(transparent)]
    StandIn(#[from] crate::stand_in::StandInError),
    /// The sandbox could not be isolated (NVRAM).
    #[error(transparent)]
    Isolate(#[from] crate::isolate::IsolateError),
    /// libvirt refused to start the sandbox domain.
    #[error("start sandbox {name}: {source}")]
    Start {
        /// The sandbox domain.
        name: String,
        /// libvirt's reason.
        #[source]
        source: virt::error::Error,
    },
}

/// A restored member: its overlays and running transient domain.
pub struct Sandbox {
    /// The sandbox domain's name.
    pub name: String,
    /// The libvirt daemon it runs on.
    pub uri: String,
    /// Its directory (overlays, console log, marker).
    pub dir: PathBuf,
    /// Its serial console log.
    pub console: PathBuf,
    /// Loopback port forwarded to its database.
    pub host_port: u16,
    /// When its domain was started.
    pub started: Instant,
    /// One line per disk given a blank stand-in, for the report.
    pub stand_ins: Vec<String>,
    conn: Connect,
    /// Set once a [`Sandbox::stopper`] ran: the domain is gone, waiting for it is pointless.
    stopped: Arc<AtomicBool>,
    /// Removes the sandbox if the process is interrupted.
    _interrupt: cgsnap_testbeds::interrupt::Registration,
}

impl Sandbox {
    /// Create overlays on `images` (target, image to read) and start the sandbox domain.
    pub fn start(
        uri: &str,
        saved_xml: &str,
        name: &str,
        images: &[(String, PathBuf)],
        dir: &Path,
        forward: (u16, u16),
    ) -> Result<Sandbox, SandboxError> {
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri)).map_err(|source| SandboxError::Connect {
            uri: uri.to_string(),
            source,
        })?;
        let reg = cgsnap_testbeds::guest::remove_on_interrupt("sandbox", uri, name, dir);
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|source| SandboxError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        crate::stale::mark(dir)?;
        let console = dir.join("console.log");
        let mut sb = Sandbox {
            name: name.to_string(),
            uri: uri.to_string(),
            dir: dir.to_path_buf(),
            console: console.clone(),
            host_port: forward.0,
            started: Instant::now(),
            stand_ins: Vec::new(),
            conn,
            stopped: Arc::new(AtomicBool::new(false)),
            _interrupt: reg,
        };
        let mut overlays = Vec::new();
        for (target, image) in images {
            let ovl = dir.join(format!("{target}.sandbox.qcow2"));
            let out = Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(image)
                .arg(&ovl)
                .output()
                .map_err(SandboxError::QemuImg)?;
            if !out.status.success() {
                return Err(SandboxError::Overlay {
                    image: image.clone(),
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            overlays.push((target.clone(), ovl));
        }
        let mut root = parse(saved_xml)?;
        let snapshotted: Vec<String> = images.iter().map(|(t, _)| t.clone()).collect();
        for d in crate::stand_in::left_out(&root, &snapshotted) {
            let (blank, line) = crate::stand_in::create(&d, dir)?;
            overlays.push((d.target.clone(), blank));
            sb.stand_ins.push(line);
        }
        // UEFI variables: a private copy, named in the XML before it is rewritten.
        crate::isolate::copy_nvram(&mut root, dir)?;
        let xml = sandbox_xml(root, name, &overlays, &console, forward)?;
        if let Ok(old) = sb.conn.lookup_domain_by_name(name) {
            let _ = old.destroy();
        }
        // Auto-destroy: if verify is killed (even by SIGKILL), libvirt stops the sandbox when
        // this connection closes, so it never keeps the frozen images open behind it.
        cgsnap_testbeds::interrupt::guarded(|| {
            sb.conn
                .create_domain_xml(&xml, virt::sys::VIR_DOMAIN_START_AUTODESTROY)
                .map(|_| ())
        })
        .map_err(|source| SandboxError::Start {
            name: name.to_string(),
            source,
        })?;
        sb.started = Instant::now();
        Ok(sb)
    }

    /// Stops the sandbox from any thread: destroys the domain (its writes end), then deletes
    /// its directory (the room comes back). Dropping the sandbox later is harmless.
    pub fn stopper(&self) -> crate::space::Stop {
        let (uri, name, dir) = (self.uri.clone(), self.name.clone(), self.dir.clone());
        let stopped = Arc::clone(&self.stopped);
        Box::new(move || {
            stopped.store(true, Ordering::SeqCst);
            cgsnap_testbeds::guest::remove(&uri, &name, &dir);
        })
    }

    /// Whether a [`Sandbox::stopper`] ran.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// The console log so far (empty if unreadable).
    pub fn console_text(&self) -> String {
        std::fs::read(&self.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The first console line holding `marker`, from the marker on (the guest's own report,
    /// e.g. `CGSNAP-CASS: error: <the server's line>`).
    pub fn marker_line(&self, marker: &str) -> Option<String> {
        cgsnap_testbeds::guest::console::marker_line(&self.console_text(), marker).map(|m| m.line)
    }

    /// Wait for `ready` (or `failure`) on the console; times are since boot.
    pub fn wait_marker(&self, ready: &str, failure: Option<&str>, timeout: Duration) -> Wait {
        loop {
            if self.is_stopped() {
                return Wait::Stopped;
            }
            let text = self.console_text();
            if text.contains(ready) {
                return Wait::Ready(self.started.elapsed());
            }
            if failure.is_some_and(|f| text.contains(f)) {
                return Wait::Failed(self.started.elapsed());
            }
            if self.started.elapsed() > timeout {
                return Wait::TimedOut;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// How waiting for a member's ready marker ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wait {
    /// Ready this long after boot.
    Ready(Duration),
    /// The failure marker appeared this long after boot.
    Failed(Duration),
    /// Neither within the timeout.
    TimedOut,
    /// The sandbox was stopped from outside (see [`Sandbox::stopper`]).
    Stopped,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Ok(d) = self.conn.lookup_domain_by_name(&self.name) {
            let _ = d.destroy();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
