//! Reading the guest writer's records back from a disk image.
//!
//! The guest writes, at byte 0 of each disk, `CGSNAP seq=<n> disk=<target>\n` padded to 512
//! bytes, disk by disk in target order, each write durable before the next. So in any image
//! set captured at one instant, `seq(vda) >= seq(vdb) >= ...` and neighbours differ by at most
//! one: anything else means the disks were not captured at the same instant.

use std::path::Path;
use std::process::Command;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub disk: String,
}

pub fn parse(block: &[u8]) -> Option<Record> {
    let text = String::from_utf8_lossy(block);
    let line = text.lines().next()?;
    let rest = line.strip_prefix("CGSNAP seq=")?;
    let (seq, disk) = rest.split_once(" disk=")?;
    Some(Record {
        seq: seq.parse().ok()?,
        disk: disk.trim_end_matches('\0').to_string(),
    })
}

/// Read the record of an image (qcow2 with its backing chain), even while QEMU has it open.
pub fn read(image: &Path) -> Result<Option<Record>, String> {
    let tmp = std::env::temp_dir().join(format!(
        "cgsnap-rec-{}-{}.raw",
        std::process::id(),
        image
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default()
    ));
    let _ = std::fs::remove_file(&tmp);
    let out = Command::new("qemu-img")
        .args(["dd", "-U", "-f", "qcow2", "-O", "raw", "bs=512", "count=1"])
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", tmp.display()))
        .output()
        .map_err(|e| format!("qemu-img dd: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "qemu-img dd {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let block = std::fs::read(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let _ = std::fs::remove_file(&tmp);
    Ok(parse(&block))
}

/// Check the cross-disk invariant over the records of one guest's disks, in target order.
pub fn check_order(records: &[Record]) -> Result<(), String> {
    for w in records.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if a.seq < b.seq || a.seq - b.seq > 1 {
            return Err(format!(
                "{} has seq {} but {} has seq {}: disks not captured at one instant",
                a.disk, a.seq, b.disk, b.seq
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, disk: &str) -> Record {
        Record {
            seq,
            disk: disk.into(),
        }
    }

    #[test]
    fn parses_padded_block() {
        let mut b = b"CGSNAP seq=42 disk=vdb\n".to_vec();
        b.resize(512, 0);
        assert_eq!(parse(&b), Some(rec(42, "vdb")));
        assert_eq!(parse(&[0u8; 512]), None);
    }

    #[test]
    fn order_check() {
        assert!(check_order(&[rec(5, "vda"), rec(5, "vdb")]).is_ok());
        assert!(check_order(&[rec(6, "vda"), rec(5, "vdb")]).is_ok());
        assert!(check_order(&[rec(5, "vda"), rec(6, "vdb")]).is_err());
        assert!(check_order(&[rec(9, "vda"), rec(5, "vdb")]).is_err());
    }
}
