//! The rewrite of a member's saved domain XML into the sandbox's: renamed, without identity,
//! runtime or host-specific parts, its disks on the sandbox's files, its only network a
//! restricted QEMU user-mode NIC with one loopback port forward.
//!
//! Invariant: a writable disk it was given no file for is refused
//! ([`SandboxError::WritableLeftOut`]), never passed through to the original.

use super::SandboxError;
use std::path::{Path, PathBuf};
use xmltree::{Element, XMLNode};

const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

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
