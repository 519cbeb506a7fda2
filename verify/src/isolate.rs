//! What a sandbox must not share with the running original or with the host, applied to the
//! member's saved domain XML. The original keeps running while its restore is verified, so
//! anything both could open is live state of production.
//!
//! Invariants:
//! - Devices that reach host resources or the original's peers are dropped: NICs, host and USB
//!   passthrough, shared host directories (`filesystem`), shared memory (`shmem`), `vsock`
//!   (its CID is the original's), TPMs, lock-manager leases, channels (guest agent sockets),
//!   parallel ports, graphics, video and smartcards; and memory devices backed by a host file
//!   (`<memory model='nvdimm'|'virtio-pmem'>` with `<source><path>`): the sandbox would map
//!   the original's file, usually shared, and write to it.
//! - Serial port 0 and the console that mirrors it write to the sandbox's console file (the
//!   verifier reads its markers there, whatever the original used: pty, socket, TCP); every
//!   other serial port or console is `null`, so no socket, TCP port or host device is opened.
//! - UEFI variables: the sandbox gets a copy of the original's NVRAM file (or of its template),
//!   never the file itself, whether the XML names it as text (`<nvram>PATH</nvram>`) or as a
//!   source (`<nvram type='file'><source file='PATH'/></nvram>`); an NVRAM of another type
//!   (network, block) cannot be copied and is refused.
//! - Host placement of the original is not inherited (`memoryBacking`: hugepages reserved for
//!   production; `cputune`, `numatune`: pinning onto its cores and nodes).
//! - Sandboxes on this host start only if their guest memory fits in 90 % of what the host has
//!   available: a restore test must never push the running originals into the OOM killer.

use std::path::{Path, PathBuf};
use xmltree::{Element, XMLNode};

/// Top-level elements of the domain that place the original on this host.
pub const DROPPED_TOP: [&str; 3] = ["memoryBacking", "cputune", "numatune"];

const DROPPED: [&str; 13] = [
    "interface",
    "hostdev",
    "graphics",
    "redirdev",
    "smartcard",
    "video",
    "channel",
    "filesystem",
    "shmem",
    "vsock",
    "tpm",
    "lease",
    "parallel",
];

fn elements<'a>(e: &'a mut Element, name: &'a str) -> impl Iterator<Item = &'a mut Element> + 'a {
    e.children.iter_mut().filter_map(move |c| match c {
        XMLNode::Element(x) if x.name == name => Some(x),
        _ => None,
    })
}

/// Point a character device at `path` (a file), or at nothing (`None`: type `null`).
fn chardev(e: &mut Element, path: Option<&Path>) {
    e.children.retain(|c| {
        !matches!(c, XMLNode::Element(x) if ["source", "protocol", "log"].contains(&x.name.as_str()))
    });
    match path {
        Some(p) => {
            e.attributes.insert("type".into(), "file".into());
            let mut s = Element::new("source");
            s.attributes
                .insert("path".into(), p.to_string_lossy().into_owned());
            e.children.insert(0, XMLNode::Element(s));
        }
        None => {
            e.attributes.insert("type".into(), "null".into());
        }
    }
}

/// A `<memory>` device backed by a host file (nvdimm, virtio-pmem: `<source><path>`).
fn file_backed_memory(e: &Element) -> bool {
    e.name == "memory"
        && e.get_child("source")
            .is_some_and(|s| s.get_child("path").is_some())
}

/// Drop shared devices and rewire character devices of `<devices>` (see the module invariants).
pub fn devices(devices: &mut Element, console: &Path) {
    devices.children.retain(|c| {
        !matches!(c, XMLNode::Element(x) if DROPPED.contains(&x.name.as_str()) || file_backed_memory(x))
    });
    for (i, s) in elements(devices, "serial").enumerate() {
        chardev(s, (i == 0).then_some(console));
    }
    for c in elements(devices, "console") {
        let target = c
            .get_child("target")
            .and_then(|t| t.attributes.get("type").cloned());
        let mirrors_serial = target.as_deref().is_none_or(|t| t == "serial");
        chardev(c, mirrors_serial.then_some(console));
    }
}

/// What keeps a sandbox from being isolated from the original or the host.
#[derive(Debug, thiserror::Error)]
pub enum IsolateError {
    /// An NVRAM that is not a file cannot be given a private copy.
    #[error(
        "NVRAM of type {0:?} cannot be copied for the sandbox: give the domain a file NVRAM (<nvram type='file'>)"
    )]
    NvramType(String),
    /// Neither the NVRAM nor a template to copy is on this host.
    #[error(
        "NVRAM {} is not here and the domain names no template: copy it next to the images",
        .0.display()
    )]
    NvramMissing(PathBuf),
    /// Copying the NVRAM into the sandbox directory failed.
    #[error("copy NVRAM {}: {source}", from.display())]
    NvramCopy {
        /// The NVRAM (or template) copied.
        from: PathBuf,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// The saved domain XML does not parse.
    #[error("domain XML: {0}")]
    Xml(#[source] xmltree::ParseError),
    /// The domain XML states no memory size.
    #[error("domain XML has no <memory>")]
    NoMemory,
    /// The memory size is not a number.
    #[error("domain XML: <memory> is not a number")]
    MemoryNotNumber,
    /// The memory size has a unit libvirt does not define.
    #[error("domain XML: unknown memory unit {0:?}")]
    MemoryUnit(String),
    /// This host's free memory could not be read.
    #[error("/proc/meminfo: {0}")]
    Meminfo(#[source] std::io::Error),
    /// This host's `/proc/meminfo` lacks the line needed.
    #[error("/proc/meminfo has no MemAvailable")]
    NoMemAvailable,
    /// The sandboxes would take the running originals' memory.
    #[error(
        "the sandboxes need {} MiB of guest memory and this host has {} MiB available (90 % may be used): \
         free memory, or verify from copies (--images) on a host with room",
        need_kib >> 10,
        available_kib >> 10
    )]
    NoRoom {
        /// Guest memory of all sandboxes, KiB.
        need_kib: u64,
        /// `MemAvailable` of this host, KiB.
        available_kib: u64,
    },
}

/// The NVRAM file of the saved XML and its template, if it names one: as text
/// (`<os><nvram>PATH</nvram>`) or as a file source (`<nvram type='file'><source file='PATH'/>`).
/// Another type (network, block) is an error: it cannot be copied.
pub fn nvram(root: &Element) -> Result<Option<(PathBuf, Option<PathBuf>)>, IsolateError> {
    let Some(n) = root.get_child("os").and_then(|os| os.get_child("nvram")) else {
        return Ok(None);
    };
    let template = n.attributes.get("template").map(PathBuf::from);
    let path = match n.attributes.get("type").map(String::as_str) {
        None => n.get_text().map(|t| t.trim().to_string()),
        Some("file") => n
            .get_child("source")
            .and_then(|s| s.attributes.get("file").cloned()),
        Some(other) => return Err(IsolateError::NvramType(other.to_string())),
    };
    Ok(path
        .filter(|p| !p.is_empty())
        .map(|p| (PathBuf::from(p), template)))
}

/// Give the sandbox its own copy of the NVRAM (the original's, else its template) in `dir`;
/// the XML then names the copy. Without an NVRAM in the XML, nothing to do.
pub fn copy_nvram(root: &mut Element, dir: &Path) -> Result<Option<PathBuf>, IsolateError> {
    let Some((orig, template)) = nvram(root)? else {
        return Ok(None);
    };
    let copy = dir.join("nvram.fd");
    let from = if orig.exists() {
        orig.clone()
    } else {
        template.ok_or_else(|| IsolateError::NvramMissing(orig.clone()))?
    };
    std::fs::copy(&from, &copy).map_err(|source| IsolateError::NvramCopy {
        from: from.clone(),
        source,
    })?;
    if let Some(n) = root
        .get_mut_child("os")
        .and_then(|os| os.get_mut_child("nvram"))
    {
        let copy = copy.to_string_lossy().into_owned();
        // `nvram` accepted only the text form and `type='file'` with a source.
        let source_form = n.attributes.contains_key("type");
        match n.get_mut_child("source") {
            Some(s) if source_form => {
                s.attributes.insert("file".into(), copy);
            }
            _ => n.children = vec![XMLNode::Text(copy)],
        }
    }
    Ok(Some(copy))
}

/// Guest memory of a domain XML in KiB (`<memory unit='...'>`, KiB when no unit is given).
pub fn memory_kib(xml: &str) -> Result<u64, IsolateError> {
    let root = Element::parse(xml.as_bytes()).map_err(IsolateError::Xml)?;
    let m = root.get_child("memory").ok_or(IsolateError::NoMemory)?;
    let v: u64 = m
        .get_text()
        .and_then(|t| t.trim().parse().ok())
        .ok_or(IsolateError::MemoryNotNumber)?;
    let unit = m.attributes.get("unit").map_or("KiB", String::as_str);
    let bytes_per: u64 = match unit {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        other => return Err(IsolateError::MemoryUnit(other.to_string())),
    };
    Ok(v.saturating_mul(bytes_per) / 1024)
}

/// `MemAvailable` of this host in KiB.
pub fn available_kib() -> Result<u64, IsolateError> {
    let text = std::fs::read_to_string("/proc/meminfo").map_err(IsolateError::Meminfo)?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or(IsolateError::NoMemAvailable)
}

/// Refuse sandboxes whose guest memory (`need_kib`, all of them) exceeds 90 % of `available_kib`.
pub fn check_memory(need_kib: u64, available_kib: u64) -> Result<(), IsolateError> {
    if need_kib <= available_kib / 10 * 9 {
        return Ok(());
    }
    Err(IsolateError::NoRoom {
        need_kib,
        available_kib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(x: &str) -> Element {
        Element::parse(x.as_bytes()).expect("xml")
    }

    fn text(e: &Element) -> String {
        let mut out = Vec::new();
        e.write(&mut out).expect("write");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn shared_devices_go_and_chardevs_stay_local() {
        let mut d = parse(
            "<devices>\
             <filesystem type='mount'><source dir='/srv/share'/><target dir='share'/></filesystem>\
             <shmem name='ivshmem0'/><vsock model='virtio'><cid auto='no' address='42'/></vsock>\
             <tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>\
             <lease><lockspace>s</lockspace><key>k</key><target path='/leases'/></lease>\
             <serial type='pty'><source path='/dev/pts/3'/><target port='0'/></serial>\
             <serial type='tcp'><source mode='bind' host='0.0.0.0' service='4555'/><protocol type='telnet'/><target port='1'/></serial>\
             <console type='pty'><target type='serial' port='0'/></console>\
             <console type='unix'><source mode='bind' path='/run/c.sock'/><target type='virtio' port='1'/></console>\
             <disk type='file' device='disk'><source file='/sb/vda.qcow2'/><target dev='vda'/></disk>\
             </devices>",
        );
        devices(&mut d, Path::new("/sb/console.log"));
        let x = text(&d);
        for gone in [
            "filesystem",
            "/srv/share",
            "shmem",
            "vsock",
            "tpm",
            "lease",
            "/dev/pts/3",
            "4555",
            "telnet",
            "/run/c.sock",
        ] {
            assert!(!x.contains(gone), "{gone} left in {x}");
        }
        assert_eq!(x.matches("/sb/console.log").count(), 2, "{x}");
        assert_eq!(x.matches("type=\"null\"").count(), 2, "{x}");
        assert!(x.contains("/sb/vda.qcow2"), "disks are not this module's");
    }

    #[test]
    fn file_backed_memory_devices_go() {
        let mut d = parse(
            "<devices>\
             <memory model='nvdimm' access='shared'><source><path>/srv/pmem0</path></source>\
               <target><size unit='KiB'>524288</size><node>0</node><label><size unit='KiB'>128</size></label></target></memory>\
             <memory model='virtio-pmem' access='shared'><source><path>/srv/pmem1</path></source>\
               <target><size unit='KiB'>524288</size></target></memory>\
             <memory model='dimm'><target><size unit='KiB'>524288</size><node>0</node></target></memory>\
             </devices>",
        );
        devices(&mut d, Path::new("/sb/console.log"));
        let x = text(&d);
        assert!(
            !x.contains("/srv/pmem0") && !x.contains("/srv/pmem1"),
            "{x}"
        );
        assert!(!x.contains("nvdimm") && !x.contains("virtio-pmem"), "{x}");
        assert!(x.contains("model=\"dimm\""), "plain RAM stays: {x}");
    }

    #[test]
    fn nvram_as_a_file_source_is_copied_and_other_types_refused() {
        let t = tempfile::tempdir().expect("tmp");
        let orig = t.path().join("vm_VARS.fd");
        std::fs::write(&orig, b"vars").expect("write");
        let mut root = parse(&format!(
            "<domain><os><nvram type='file'><source file='{}'/></nvram></os></domain>",
            orig.display()
        ));
        let copy = copy_nvram(&mut root, t.path())
            .expect("copy")
            .expect("an nvram");
        assert_eq!(std::fs::read(&copy).expect("read"), b"vars");
        let x = text(&root);
        assert!(
            x.contains(&format!("file=\"{}\"", copy.display())) && !x.contains("vm_VARS.fd"),
            "{x}"
        );
        let mut net = parse(
            "<domain><os><nvram type='network'><source protocol='iscsi' name='iqn/0'><host name='h'/></source></nvram></os></domain>",
        );
        let e = copy_nvram(&mut net, t.path()).unwrap_err().to_string();
        assert!(e.contains("\"network\" cannot be copied"), "{e}");
    }

    #[test]
    fn memory_units_and_the_guard() {
        let m = |v: &str, unit: &str| {
            memory_kib(&format!(
                "<domain><memory unit='{unit}'>{v}</memory></domain>"
            ))
            .ok()
        };
        assert_eq!(m("512", "MiB"), Some(512 * 1024));
        assert_eq!(m("2", "GiB"), Some(2 * 1024 * 1024));
        assert_eq!(m("1048576", "KiB"), Some(1024 * 1024));
        assert_eq!(m("1000000", "KB"), Some(976_562));
        assert!(m("2", "parsecs").is_none());
        assert_eq!(
            memory_kib("<domain><memory>4096</memory></domain>").ok(),
            Some(4096)
        );
        assert!(check_memory(900, 1000).is_ok());
        let e = check_memory(2 << 20, 1 << 20).unwrap_err().to_string();
        assert!(
            e.contains("2048 MiB") && e.contains("1024 MiB available"),
            "{e}"
        );
        assert!(available_kib().expect("this host's meminfo") > 0);
    }

    #[test]
    fn nvram_is_copied_never_shared() {
        let t = tempfile::tempdir().expect("tmp");
        let orig = t.path().join("vm_VARS.fd");
        std::fs::write(&orig, b"vars").expect("write");
        let sb = t.path().join("sb");
        std::fs::create_dir_all(&sb).expect("mkdir");
        let mut root = parse(&format!(
            "<domain><os><loader readonly='yes' type='pflash'>/code.fd</loader><nvram>{}</nvram></os></domain>",
            orig.display()
        ));
        let copy = copy_nvram(&mut root, &sb).expect("copy").expect("an nvram");
        assert_eq!(std::fs::read(&copy).expect("read"), b"vars");
        let x = text(&root);
        assert!(
            x.contains(&*copy.to_string_lossy()) && !x.contains("vm_VARS.fd"),
            "{x}"
        );
        // Not here, no template: could not run, naming the file.
        let mut root = parse("<domain><os><nvram>/nowhere/VARS.fd</nvram></os></domain>");
        let e = copy_nvram(&mut root, &sb).unwrap_err().to_string();
        assert!(e.contains("/nowhere/VARS.fd"), "{e}");
        // Not here, with a template: a fresh copy of the template.
        let mut root = parse(&format!(
            "<domain><os><nvram template='{}'>/nowhere/VARS.fd</nvram></os></domain>",
            orig.display()
        ));
        assert!(copy_nvram(&mut root, &sb).expect("template").is_some());
        let mut bios = parse("<domain><os><type>hvm</type></os></domain>");
        assert_eq!(copy_nvram(&mut bios, &sb).expect("none"), None);
    }
}
