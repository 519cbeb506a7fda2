//! The `<domainbackup>` and `<domaincheckpoint>` documents of one member's cut.
//!
//! Invariant: both list exactly the planned disks, so a disk added to the domain since the
//! plan is neither served nor checkpointed, and every listed disk gets a bitmap named like the
//! checkpoint (libvirt requires bitmap name = checkpoint name).

use crate::domxml::escape;

/// One disk of the member's job: its target and its scratch file.
pub struct JobDisk<'a> {
    /// The disk's target (`vda`), also its export name.
    pub target: &'a str,
    /// The copy-before-write file libvirt creates (qcow2).
    pub scratch: &'a str,
}

/// Pull-mode backup served on the unix socket `socket`, incremental since checkpoint `since`
/// when given.
pub fn backup_xml(socket: &str, since: Option<&str>, disks: &[JobDisk]) -> String {
    let mut x = String::from("<domainbackup mode='pull'>");
    if let Some(cp) = since {
        x.push_str(&format!("<incremental>{}</incremental>", escape(cp)));
    }
    x.push_str(&format!(
        "<server transport='unix' socket='{}'/><disks>",
        escape(socket)
    ));
    for d in disks {
        x.push_str(&format!(
            "<disk name='{}' backup='yes' type='file'><driver type='qcow2'/><scratch file='{}'/></disk>",
            escape(d.target),
            escape(d.scratch)
        ));
    }
    x.push_str("</disks></domainbackup>");
    x
}

/// A checkpoint `name` with a bitmap on each of `targets`.
pub fn checkpoint_xml(name: &str, targets: &[&str]) -> String {
    let mut x = format!("<domaincheckpoint><name>{}</name><disks>", escape(name));
    for t in targets {
        x.push_str(&format!("<disk name='{}' checkpoint='bitmap'/>", escape(t)));
    }
    x.push_str("</disks></domaincheckpoint>");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_incremental_jobs_list_every_disk_with_its_scratch() {
        let disks = [
            JobDisk {
                target: "vda",
                scratch: "/s/vda.scratch",
            },
            JobDisk {
                target: "vdb",
                scratch: "/s/a'b.scratch",
            },
        ];
        let full = backup_xml("/s/nbd.sock", None, &disks);
        assert!(!full.contains("<incremental>"));
        assert!(full.contains("<server transport='unix' socket='/s/nbd.sock'/>"));
        assert!(full.contains("<disk name='vda' backup='yes' type='file'><driver type='qcow2'/><scratch file='/s/vda.scratch'/></disk>"));
        assert!(
            full.contains("scratch file='/s/a&apos;b.scratch'"),
            "{full}"
        );
        let inc = backup_xml("/s/nbd.sock", Some("g-1"), &disks);
        assert!(inc.starts_with("<domainbackup mode='pull'><incremental>g-1</incremental>"));
        let cp = checkpoint_xml("g-2", &["vda", "vdb"]);
        assert_eq!(
            cp,
            "<domaincheckpoint><name>g-2</name><disks><disk name='vda' checkpoint='bitmap'/><disk name='vdb' checkpoint='bitmap'/></disks></domaincheckpoint>"
        );
    }
}
