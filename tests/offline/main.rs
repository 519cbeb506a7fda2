//! The integration tests that need no real guest, one test binary (`cargo test --test
//! offline`): the libvirt adapter on libvirt's in-process test driver, the catalog and its
//! parsers, the verify guards, backup copies through libnbd and qemu-nbd, and the shipped
//! hooks run with their real tools (promtool, systemd-analyze, borgmatic, bacula-dir -t) and
//! fakes. One module per area, so
//! `cargo test --test offline hook_` runs the hook tests.
//!
//! These tests run in parallel: each works in a temporary directory of its own, on a private
//! test-driver host or `test:///default` inside the `cgsnap` process it starts, and on ports
//! the system picked.

#[path = "../common/mod.rs"]
mod common;

mod adapter_libvirt;
mod catalog_list;
mod catalog_prune;
// proptest reads (and writes) its failure seeds in tests/proptest-regressions/fuzz_parsers.txt:
// next to the directory holding this main.rs, named after the module's file.
mod fuzz_parsers;
mod hook_bareos;
mod hook_prometheus;
mod hook_schedulers;
mod hook_scripts;
mod layers;
mod nbd_copy;
mod report_page;
mod verify_guard;
