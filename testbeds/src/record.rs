//! Reading the guest writer's records back from a disk image.
//!
//! The guest writes, at byte 0 of each disk, `CGSNAP seq=<n> disk=<target>\n` padded to 512
//! bytes, disk by disk in target order, each write durable before the next. So in any image
//! set captured at one instant, `seq(vda) >= seq(vdb) >= ...` and neighbours differ by at most
//! one: anything else means the disks were not captured at the same instant.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Reading a record back, or the records of one guest contradicting each other.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// `qemu-img` could not be run.
    #[error("qemu-img dd: {0}")]
    Spawn(#[source] std::io::Error),
    /// `qemu-img dd` failed on the image.
    #[error("qemu-img dd {}: {stderr}", image.display())]
    Dd {
        /// The image read.
        image: PathBuf,
        /// What qemu-img said.
        stderr: String,
    },
    /// The block copied out could not be read back.
    #[error("{}: {source}", path.display())]
    Read {
        /// The temporary copy.
        path: PathBuf,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// Two neighbouring disks' records break the cross-disk invariant.
    #[error(
        "{first} has seq {first_seq} but {second} has seq {second_seq}: disks not captured at one instant"
    )]
    Order {
        /// The earlier disk in target order.
        first: String,
        /// Its sequence number.
        first_seq: u64,
        /// The next disk.
        second: String,
        /// Its sequence number.
        second_seq: u64,
    },
}

/// One disk's record: the writer's sequence number and the disk it says it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number of the round that wrote it.
    pub seq: u64,
    /// Target (`vda`, ...) the guest wrote it to.
    pub disk: String,
}

/// The record in a disk's first block, if it holds one.
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
pub fn read(image: &Path) -> Result<Option<Record>, RecordError> {
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
        .map_err(RecordError::Spawn)?;
    if !out.status.success() {
        return Err(RecordError::Dd {
            image: image.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let block = std::fs::read(&tmp).map_err(|source| RecordError::Read {
        path: tmp.clone(),
        source,
    })?;
    let _ = std::fs::remove_file(&tmp);
    Ok(parse(&block))
}

/// Check the cross-disk invariant over the records of one guest's disks, in target order.
pub fn check_order(records: &[Record]) -> Result<(), RecordError> {
    for w in records.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if a.seq < b.seq || a.seq - b.seq > 1 {
            return Err(RecordError::Order {
                first: a.disk.clone(),
                first_seq: a.seq,
                second: b.disk.clone(),
                second_seq: b.seq,
            });
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
