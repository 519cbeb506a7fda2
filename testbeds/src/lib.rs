//! Testbeds: small, reproducible TCG guests built from Debian packages, for the demo, the
//! integration tests and the benchmark.
//!
//! - [`assets`]: kernel + initramfs, built by `guest/build.sh` (embedded) and cached;
//! - [`guest`]: a transient libvirt domain with several qcow2 disks whose `/init` writes a
//!   sequence record to every disk in order, removed with everything it created on drop;
//! - [`record`]: reading those records back from an image (frozen, overlay or released).

pub mod assets;
pub mod guest;
pub mod pair;
pub mod postgres;
pub mod record;
pub mod workload;
