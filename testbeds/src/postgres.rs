//! Multi-disk PostgreSQL 15 guests: root, data (PGDATA) and WAL (`pg_wal`) on three virtio
//! disks, reachable from the host only through a loopback port forward.
//!
//! Invariants: images come from Debian packages only (`postgres/build.sh`, embedded, cached);
//! each guest gets a private copy of the data/WAL templates and an overlay on the shared root,
//! so guests never share a writable image.

use crate::assets::AssetError;
use crate::guest::{DiskSource, Spec};
use std::path::{Path, PathBuf};

/// The PostgreSQL image build script.
pub const BUILD_SCRIPT: &str = include_str!("../postgres/build.sh");
/// Password of the `postgres` role in the testbed images (scram-sha-256 over TCP).
pub const PASSWORD: &str = "cgsnap";
/// PostgreSQL's port inside the guest.
pub const GUEST_PORT: u16 = 5432;
/// What the guest's init prints on the console once the server accepts connections.
pub const READY_MARKER: &str = "CGSNAP-PG: ready";
/// What the guest's init prints on the console, with the reason, when the server cannot start.
pub const ERROR_MARKER: &str = "CGSNAP-PG: error";
/// Longest wait for a testbed guest's server, first boot included.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// The PostgreSQL guest's images.
#[derive(Debug, Clone)]
pub struct Images {
    /// Root file system (shared, used through overlays).
    pub root: PathBuf,
    /// PGDATA disk template.
    pub data: PathBuf,
    /// `pg_wal` disk template.
    pub wal: PathBuf,
}

/// Build (or reuse) the PostgreSQL images in `dir` (several minutes the first time).
pub fn ensure(dir: &Path) -> Result<Images, AssetError> {
    crate::assets::run_image_script(dir, "postgres-build.sh", BUILD_SCRIPT, &[])?;
    Ok(Images {
        root: dir.join("pg-root.qcow2"),
        data: dir.join("pg-data.qcow2"),
        wal: dir.join("pg-wal.qcow2"),
    })
}

/// A PostgreSQL guest forwarding `127.0.0.1:port` to its server.
pub fn spec(name: &str, port: u16, images: &Images) -> Spec {
    let mut s = Spec::writer(name, 3);
    s.mode = "idle";
    s.memory_mib = 512;
    s.sources = vec![
        DiskSource::Overlay(images.root.clone()),
        DiskSource::Copy(images.data.clone()),
        DiskSource::Copy(images.wal.clone()),
    ];
    s.cmdline = "cgsnap.root=/dev/vda cgsnap.init=/sbin/cgsnap-pg-init".into();
    s.forward = Some((port, GUEST_PORT));
    s
}

/// libpq connection string for a guest's forwarded port.
pub fn conninfo(port: u16) -> String {
    format!(
        "host=127.0.0.1 port={port} user=postgres password={PASSWORD} dbname=postgres connect_timeout=5"
    )
}

/// Wait until a testbed guest's server is ready, then create the workload schema of `role`.
/// Returns the boot-to-ready time in seconds.
pub fn ready_with_schema(
    g: &crate::guest::Guest,
    port: u16,
    role: crate::workload::Role,
) -> Result<f64, crate::error::TestbedError> {
    let t = g.wait_console_or(READY_MARKER, Some(ERROR_MARKER), READY_TIMEOUT)?;
    let mut c = crate::workload::connect(&conninfo(port))?;
    crate::workload::init_schema(&mut c, role)?;
    Ok(t.as_secs_f64())
}
