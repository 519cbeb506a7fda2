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

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use virt::connect::Connect;
use xmltree::{Element, XMLNode};

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

const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

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

fn children_named<'a>(
    e: &'a mut Element,
    name: &'a str,
) -> impl Iterator<Item = &'a mut Element> + 'a {
    e.children.iter_mut().filter_map(move |c| match c {
        XMLNode::Element(x) if x.name == name => Some(x),
        _ => None,
    })
}

fn strip(e: &mut Element, names: &[&str]) {
    e.children
        .retain(|c| !matches!(c, XMLNode::Element(x) if names.contains(&x.name.as_str())));
    for c in e.children.iter_mut() {
        if let XMLNode::Element(x) = c {
            strip(x, names);
        }
    }
}

fn set_source(e: &mut Element, attr: &str, value: &str) {
    for s in children_named(e, "source") {
        s.attributes.insert(attr.to_string(), value.to_string());
    }
}

/// Parse a saved domain XML (once per sandbox: stand-ins, NVRAM and rewrite share it).
pub fn parse(saved: &str) -> Result<Element, SandboxError> {
    Element::parse(saved.as_bytes()).map_err(SandboxError::Xml)
}

/// Rewrite a (parsed) saved domain XML for the sandbox. `disks` maps target → sandbox file.
pub fn sandbox_xml(
    mut root: Element,
    name: &str,
    disks: &[(String, PathBuf)],
    console: &Path,
    forward: (u16, u16),
) -> Result<String, SandboxError> {
    let root = &mut root;
    for n in children_named(root, "name") {
        n.children = vec![XMLNode::Text(name.to_string())];
    }
    // Drop identity, runtime and host-specific parts; libvirt assigns what it needs. The
    // metadata too: with cgsnap's group membership in it the sandbox would be resolved as a
    // member of the group (and other tools' entries could take it for the original).
    root.children.retain(|c| {
        !matches!(c, XMLNode::Element(x) if ["uuid", "seclabel", "commandline", "metadata"].contains(&x.name.as_str())
            || crate::isolate::DROPPED_TOP.contains(&x.name.as_str()))
    });
    strip(root, &["alias", "backingStore", "mirror"]);
    root.attributes.remove("id");
    let devices = root
        .get_mut_child("devices")
        .ok_or(SandboxError::NoDevices)?;
    crate::isolate::devices(devices, console);
    let mut mapped = 0;
    for d in children_named(devices, "disk") {
        let target = d
            .get_child("target")
            .and_then(|t| t.attributes.get("dev").cloned())
            .unwrap_or_default();
        if let Some((_, ovl)) = disks.iter().find(|(t, _)| *t == target) {
            d.attributes.insert("type".into(), "file".into());
            set_source(d, "file", &ovl.to_string_lossy());
            if let Some(s) = d.get_mut_child("source") {
                s.attributes.remove("dev");
                s.attributes.remove("index");
            }
            if let Some(drv) = d.get_mut_child("driver") {
                drv.attributes.insert("type".into(), "qcow2".into());
            }
            // The sandbox's file is private: nothing to share, and libvirt may snapshot it.
            d.attributes.remove("snapshot");
            strip(d, &["shareable"]);
            mapped += 1;
        } else if crate::stand_in::is_writable(d) {
            return Err(SandboxError::WritableLeftOut { target });
        }
    }
    if mapped != disks.len() {
        return Err(SandboxError::DisksMissing {
            mapped,
            total: disks.len(),
        });
    }
    let mut cl = Element::new("commandline");
    cl.prefix = Some("qemu".into());
    for v in [
        "-netdev".to_string(),
        format!(
            "user,id=cgsandbox,restrict=on,hostfwd=tcp:127.0.0.1:{}-:{}",
            forward.0, forward.1
        ),
        "-device".to_string(),
        nic_device(root),
    ] {
        let mut a = Element::new("arg");
        a.prefix = Some("qemu".into());
        a.attributes.insert("value".into(), v);
        cl.children.push(XMLNode::Element(a));
    }
    root.children.push(XMLNode::Element(cl));
    let mut ns = root
        .namespaces
        .clone()
        .unwrap_or_else(xmltree::Namespace::empty);
    ns.put("qemu", QEMU_NS);
    root.namespaces = Some(ns);
    let mut out = Vec::new();
    root.write(&mut out).map_err(SandboxError::Emit)?;
    String::from_utf8(out).map_err(SandboxError::Utf8)
}

/// Whether the domain's machine type is i440fx (`pc`, `pc-i440fx-*`, the old `pc-X.Y`); a
/// domain that names none gets QEMU's x86 default, which is that too.
fn is_i440fx(root: &Element) -> bool {
    let machine = root
        .get_child("os")
        .and_then(|os| os.get_child("type"))
        .and_then(|t| t.attributes.get("machine"));
    machine.is_none_or(|m| m == "pc" || (m.starts_with("pc-") && !m.starts_with("pc-q35")))
}

/// The `-device` value of the sandbox NIC (see the module invariants for its slot).
fn nic_device(root: &Element) -> String {
    if is_i440fx(root) {
        "virtio-net-pci,netdev=cgsandbox,bus=pci.0,addr=0x1f".into()
    } else {
        "virtio-net-pci,netdev=cgsandbox".into()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_identity_disks_nics_and_console() {
        let saved = r#"<domain type='qemu' id='7' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
          <name>orders</name><uuid>1234</uuid><seclabel type='dynamic'/>
          <metadata><cg:membership xmlns:cg='https://cgsnap.dev/xmlns/membership/1'><group name='pair'/></cg:membership></metadata>
          <devices>
            <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/img/vda.ovl' index='3'/>
              <backingStore type='file'><source file='/img/vda.qcow2'/></backingStore><target dev='vda' bus='virtio'/><alias name='virtio-disk0'/></disk>
            <interface type='network'><source network='default'/></interface>
            <serial type='file'><source path='/img/console.log'/><target port='0'/></serial>
            <console type='file'><source path='/img/console.log'/><target type='serial' port='0'/></console>
            <hostdev mode='subsystem' type='pci'/>
          </devices>
          <qemu:commandline><qemu:arg value='-netdev'/><qemu:arg value='user,hostfwd=tcp:127.0.0.1:25501-:5432'/></qemu:commandline>
        </domain>"#;
        let x = sandbox_xml(
            parse(saved).expect("xml"),
            "orders-verify",
            &[("vda".into(), PathBuf::from("/sb/vda.sandbox.qcow2"))],
            Path::new("/sb/console.log"),
            (40001, 5432),
        )
        .expect("rewrite");
        let doc = roxmltree_like(&x);
        assert!(doc.contains("<name>orders-verify</name>"), "{x}");
        for gone in [
            "<uuid>",
            "seclabel",
            "interface",
            "hostdev",
            "backingStore",
            "/img/",
            "25501",
            "alias",
            "id=\"7\"",
            "metadata",
            "membership",
        ] {
            assert!(!doc.contains(gone), "{gone} left in {x}");
        }
        assert!(doc.contains("/sb/vda.sandbox.qcow2") && doc.contains("/sb/console.log"));
        assert!(doc.contains("hostfwd=tcp:127.0.0.1:40001-:5432") && doc.contains("restrict=on"));
        assert!(doc.contains("xmlns:qemu=\"http://libvirt.org/schemas/domain/qemu/1.0\""));
    }

    #[test]
    fn missing_disk_is_an_error() {
        let e = sandbox_xml(
            parse("<domain><name>a</name><devices/></domain>").expect("xml"),
            "b",
            &[("vda".into(), PathBuf::from("/x"))],
            Path::new("/c"),
            (1, 2),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("0 of the 1"));
    }

    #[test]
    fn writable_disks_outside_the_snapshot_never_reach_the_sandbox() {
        let saved = "<domain><name>a</name><devices>\
            <disk type='file' device='disk'><source file='/img/a.qcow2'/><target dev='vda'/></disk>\
            <disk type='block' device='disk' snapshot='no'><driver type='raw'/><source dev='/dev/sdz'/><target dev='vdb'/><shareable/></disk>\
            <disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='hdc'/><readonly/></disk>\
            </devices></domain>";
        let vda = ("vda".to_string(), PathBuf::from("/sb/vda.sandbox.qcow2"));
        // Without a stand-in for vdb: refused, naming it.
        let e = sandbox_xml(
            parse(saved).expect("xml"),
            "b",
            std::slice::from_ref(&vda),
            Path::new("/c"),
            (1, 2),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("disk vdb is writable and not in the snapshot"),
            "{e}"
        );
        // With one: the original is gone, the stand-in is a private qcow2; the ISO stays.
        let blank = ("vdb".to_string(), PathBuf::from("/sb/vdb.blank.qcow2"));
        let x = sandbox_xml(
            parse(saved).expect("xml"),
            "b",
            &[vda, blank],
            Path::new("/c"),
            (1, 2),
        )
        .expect("xml");
        assert!(!x.contains("/dev/sdz") && !x.contains("shareable"), "{x}");
        assert!(!x.contains("snapshot="), "{x}");
        assert!(
            x.contains("/sb/vdb.blank.qcow2") && x.contains("/iso/x.iso"),
            "{x}"
        );
    }

    #[test]
    fn the_nic_slot_follows_the_machine_type() {
        let nic = |machine: &str| {
            let os = if machine.is_empty() {
                "<os><type>hvm</type></os>".to_string()
            } else {
                format!("<os><type arch='x86_64' machine='{machine}'>hvm</type></os>")
            };
            let x = sandbox_xml(
                parse(&format!("<domain><name>a</name>{os}<devices/></domain>")).expect("xml"),
                "b",
                &[],
                Path::new("/c"),
                (1, 2),
            )
            .expect("xml");
            let start = x.find("virtio-net-pci").expect("a NIC");
            x[start..start + x[start..].find('"').expect("end")].to_string()
        };
        let pinned = "virtio-net-pci,netdev=cgsandbox,bus=pci.0,addr=0x1f";
        for m in ["pc", "pc-i440fx-8.2", "pc-1.3", ""] {
            assert_eq!(nic(m), pinned, "{m}");
        }
        for m in ["q35", "pc-q35-8.2", "virt"] {
            assert_eq!(nic(m), "virtio-net-pci,netdev=cgsandbox", "{m}");
        }
    }

    fn roxmltree_like(x: &str) -> String {
        x.replace('\'', "\"")
    }
}
