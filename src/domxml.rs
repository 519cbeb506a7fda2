//! Reading libvirt domain XML and writing snapshot XML (pure functions).
//!
//! Invariants: parsing never guesses. A disk whose source cannot be read is reported as such
//! (kind "network", no source, ...) and preflight decides; the snapshot XML lists every disk of
//! the domain exactly once, either `external` with an overlay path or `no`.

use std::fmt::Write as _;

#[derive(Debug, thiserror::Error)]
#[error("domain XML of {domain} is not valid XML: {source}")]
/// A domain's XML that cannot be parsed.
pub struct XmlError {
    /// The domain whose XML it is.
    pub domain: String,
    /// What the parser said.
    #[source]
    pub source: roxmltree::Error,
}

impl crate::model::exit::Classify for XmlError {
    fn exit_code(&self) -> crate::model::exit::ExitCode {
        crate::model::exit::ExitCode::Malformed
    }
}

/// One `<disk>` element of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// The disk's target in the domain (`vda`).
    pub target: String,
    /// `disk`, `cdrom`, `floppy`, `lun`.
    pub device: String,
    /// `file`, `block`, `network`, `volume`, ...
    pub kind: String,
    /// Driver format (`qcow2`, `raw`), when given.
    pub format: Option<String>,
    /// The file or block device the guest currently writes to.
    pub source: Option<String>,
    /// The disk is `<readonly/>`.
    pub readonly: bool,
    /// The disk is `<shareable/>` (several domains may write to it).
    pub shareable: bool,
    /// The domain's own per-disk snapshot mode (`<disk snapshot='no'>`), when set.
    pub snapshot_mode: Option<String>,
    /// A block job (copy, commit) is mirroring this disk.
    pub mirror: bool,
    /// That job's kind (`active-commit`, `copy`), when libvirt names it.
    pub mirror_job: Option<String>,
    /// Backing files below the top image, nearest first, as libvirt reports them.
    pub backing: Vec<String>,
    /// Type (`file`, `block`, ...) of the nearest backing file, when the chain is given.
    pub backing_kind: Option<String>,
}

impl DiskInfo {
    /// Read-only and shareable disks are not snapshotted: their content cannot diverge through
    /// this guest alone, and QEMU refuses external snapshots of some of them. Nor is a disk
    /// the domain itself excludes from snapshots (`snapshot='no'`, or `'manual'`: managed by
    /// hand), libvirt's own way to mark swap or scratch disks.
    pub fn is_snapshotted(&self) -> bool {
        self.device == "disk"
            && !self.readonly
            && !self.shareable
            && !matches!(self.snapshot_mode.as_deref(), Some("no" | "manual"))
    }
}

fn source_path(node: roxmltree::Node) -> Option<String> {
    let src = node.children().find(|c| c.has_tag_name("source"))?;
    src.attribute("file")
        .or_else(|| src.attribute("dev"))
        .map(str::to_string)
}

fn backing_chain(disk: roxmltree::Node) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = disk.children().find(|c| c.has_tag_name("backingStore"));
    while let Some(b) = cur {
        if let Some(p) = source_path(b) {
            out.push(p);
        }
        cur = b.children().find(|c| c.has_tag_name("backingStore"));
    }
    out
}

/// All `<disk>` elements under `<devices>`.
pub fn disks(domain: &str, xml: &str) -> Result<Vec<DiskInfo>, XmlError> {
    let doc = parse(domain, xml)?;
    let devices = doc.descendants().find(|n| n.has_tag_name("devices"));
    let Some(devices) = devices else {
        return Ok(Vec::new());
    };
    Ok(devices
        .children()
        .filter(|n| n.has_tag_name("disk"))
        .map(|d| DiskInfo {
            target: d
                .children()
                .find(|c| c.has_tag_name("target"))
                .and_then(|t| t.attribute("dev"))
                .unwrap_or_default()
                .to_string(),
            device: d.attribute("device").unwrap_or("disk").to_string(),
            kind: d.attribute("type").unwrap_or("file").to_string(),
            format: d
                .children()
                .find(|c| c.has_tag_name("driver"))
                .and_then(|t| t.attribute("type"))
                .map(str::to_string),
            source: source_path(d),
            readonly: d.children().any(|c| c.has_tag_name("readonly")),
            shareable: d.children().any(|c| c.has_tag_name("shareable")),
            snapshot_mode: d.attribute("snapshot").map(str::to_string),
            mirror: d.children().any(|c| c.has_tag_name("mirror")),
            mirror_job: d
                .children()
                .find(|c| c.has_tag_name("mirror"))
                .and_then(|m| m.attribute("job"))
                .map(str::to_string),
            backing: backing_chain(d),
            backing_kind: d
                .children()
                .find(|c| c.has_tag_name("backingStore"))
                .and_then(|b| b.attribute("type"))
                .map(str::to_string),
        })
        .collect())
}

fn parse<'a>(domain: &str, xml: &'a str) -> Result<roxmltree::Document<'a>, XmlError> {
    roxmltree::Document::parse(xml).map_err(|source| XmlError {
        domain: domain.to_string(),
        source,
    })
}

fn find_disk<'a, 'i>(
    doc: &'a roxmltree::Document<'i>,
    target: &str,
) -> Option<roxmltree::Node<'a, 'i>> {
    doc.descendants().find(|n| {
        n.has_tag_name("disk")
            && n.children()
                .any(|c| c.has_tag_name("target") && c.attribute("dev") == Some(target))
    })
}

/// The `<disk>` element of `target` exactly as written in `xml`, if there is one.
pub fn disk_element(domain: &str, xml: &str, target: &str) -> Result<Option<String>, XmlError> {
    let doc = parse(domain, xml)?;
    Ok(find_disk(&doc, target).map(|d| xml[d.range()].to_string()))
}

/// The `<disk>` element of `target`, as written in `xml`, with its source file replaced by
/// `file` and its `<backingStore>` removed: the disk definition that puts a file disk back on
/// `file` (libvirt reads the backing chain from the image itself). `None` when the domain has
/// no such file disk. Everything else in the element (driver, address, boot order, ...) is
/// kept byte for byte.
pub fn disk_on_file(
    domain: &str,
    xml: &str,
    target: &str,
    file: &str,
) -> Result<Option<String>, XmlError> {
    let doc = parse(domain, xml)?;
    let Some(disk) = find_disk(&doc, target).filter(|d| d.attribute("type") == Some("file")) else {
        return Ok(None);
    };
    let source = disk
        .children()
        .find(|c| c.has_tag_name("source"))
        .and_then(|s| s.attributes().find(|a| a.name() == "file"));
    let Some(source) = source else {
        return Ok(None);
    };
    // Edits as (byte range, replacement), applied back to front so ranges stay valid.
    let mut edits = vec![(source.range_value(), escape(file))];
    edits.extend(
        disk.children()
            .filter(|c| c.has_tag_name("backingStore"))
            .map(|b| (b.range(), String::new())),
    );
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let base = disk.range().start;
    let mut out = xml[disk.range()].to_string();
    for (r, text) in edits {
        out.replace_range(r.start - base..r.end - base, &text);
    }
    Ok(Some(out))
}

/// Escape text for use inside an XML attribute value.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Snapshot XML: `(target, Some(overlay))` disks get an external qcow2 overlay, `(target,
/// None)` disks are left out of the snapshot explicitly (`snapshot='no'`).
pub fn snapshot_xml(name: &str, disks: &[(String, Option<String>)]) -> String {
    let mut x = String::new();
    let _ = write!(
        x,
        "<domainsnapshot><name>{}</name><description>cgsnap group snapshot</description><disks>",
        escape(name)
    );
    for (target, overlay) in disks {
        match overlay {
            Some(path) => {
                let _ = write!(
                    x,
                    "<disk name='{}' snapshot='external' type='file'><driver type='qcow2'/><source file='{}'/></disk>",
                    escape(target),
                    escape(path)
                );
            }
            None => {
                let _ = write!(x, "<disk name='{}' snapshot='no'/>", escape(target));
            }
        }
    }
    x.push_str("</disks></domainsnapshot>");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<domain type='qemu'><name>a</name><devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
        <source file='/img/a.ovl'/>
        <backingStore type='file'><format type='qcow2'/><source file='/img/a.qcow2'/><backingStore/></backingStore>
        <target dev='vda' bus='virtio'/></disk>
      <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/sdb'/>
        <target dev='vdb' bus='virtio'/><mirror type='file' job='active-commit'/></disk>
      <disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='hdc'/><readonly/></disk>
      <disk type='network' device='disk'><source protocol='rbd' name='p/i'/><target dev='vdc'/></disk>
      <disk type='file' device='disk' snapshot='no'><driver name='qemu' type='raw'/>
        <source file='/img/swap.raw'/><target dev='vdd' bus='virtio'/></disk>
      <disk type='file' device='disk'><source file='/img/shared.raw'/><target dev='vde'/><shareable/></disk>
    </devices></domain>"#;

    #[test]
    fn parses_disks_and_chain() {
        let d = disks("a", XML).expect("parse");
        assert_eq!(d.len(), 6);
        assert_eq!(d[0].target, "vda");
        assert_eq!(d[0].source.as_deref(), Some("/img/a.ovl"));
        assert_eq!(d[0].backing, vec!["/img/a.qcow2".to_string()]);
        assert_eq!(d[0].format.as_deref(), Some("qcow2"));
        assert!(d[0].is_snapshotted());
        assert_eq!(d[1].kind, "block");
        assert_eq!(d[1].source.as_deref(), Some("/dev/sdb"));
        assert!(d[1].mirror);
        assert_eq!(d[1].mirror_job.as_deref(), Some("active-commit"));
        assert_eq!(d[0].mirror_job, None);
        assert!(!d[2].is_snapshotted());
        assert_eq!(d[3].kind, "network");
        assert_eq!(d[3].source, None);
        // The domain's own exclusion, and a shared disk: left out.
        assert_eq!(d[4].snapshot_mode.as_deref(), Some("no"));
        assert!(!d[4].is_snapshotted());
        assert!(!d[5].is_snapshotted() && d[5].shareable);
    }

    #[test]
    fn disk_on_file_points_the_disk_back_at_its_image_and_keeps_the_rest() {
        let x = disk_on_file("a", XML, "vda", "/img/a&b.qcow2")
            .expect("parse")
            .expect("vda is a file disk");
        let doc = roxmltree::Document::parse(&x).expect("valid xml");
        let d = disks("a", &format!("<domain><devices>{x}</devices></domain>")).expect("parse");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].target, "vda");
        assert_eq!(d[0].source.as_deref(), Some("/img/a&b.qcow2"));
        assert!(d[0].backing.is_empty(), "{x}");
        assert!(!x.contains("backingStore"), "{x}");
        assert_eq!(d[0].format.as_deref(), Some("qcow2"));
        assert!(doc.root_element().has_tag_name("disk"));
        let original = disk_element("a", XML, "vda").expect("parse").expect("vda");
        assert!(original.starts_with("<disk type='file'") && original.contains("backingStore"));
        // Not a file disk, or no such target: nothing to rewrite.
        assert_eq!(disk_on_file("a", XML, "vdb", "/x").expect("parse"), None);
        assert_eq!(disk_on_file("a", XML, "vdz", "/x").expect("parse"), None);
    }

    #[test]
    fn malformed_xml_names_domain() {
        let e = disks("web1", "<domain>").unwrap_err();
        assert!(e.to_string().contains("web1"));
    }

    #[test]
    fn snapshot_xml_escapes_and_lists_every_disk() {
        let x = snapshot_xml(
            "g'1",
            &[
                ("vda".into(), Some("/a&b.ovl".into())),
                ("hdc".into(), None),
            ],
        );
        let doc = roxmltree::Document::parse(&x).expect("valid xml");
        let names: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("disk"))
            .map(|n| (n.attribute("name"), n.attribute("snapshot")))
            .collect();
        assert_eq!(
            names,
            vec![(Some("vda"), Some("external")), (Some("hdc"), Some("no"))]
        );
        assert!(x.contains("/a&amp;b.ovl"));
        assert!(x.contains("g&apos;1"));
    }
}
