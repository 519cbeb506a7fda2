//! Property tests (proptest) of every parser that reads input a person or a crash may have
//! mangled: manifests (truncated by a crash, bit-flipped on disk), verification profiles,
//! durations, domain XML and group metadata. None may panic; malformed input must come back as
//! an error that names the file, and what parses must be exactly what was written.

use cgsnap::catalog::{Catalog, CatalogError, FORMAT_VERSION};
use proptest::prelude::*;
use std::path::Path;

fn manifest_json() -> String {
    serde_json::json!({
        "format_version": FORMAT_VERSION,
        "id": "g-20261126T000000000Z",
        "group": "g",
        "state": "taken",
        "created_at": "2026-11-26T00:00:00Z",
        "consistency_point": "2026-11-26T00:00:00.010Z",
        "freeze_window_ms": 12.5,
        "phases": {"preflight_ms": 1.0, "pause_ms": 2.0, "snapshot_ms": 3.0, "resume_ms": 4.0},
        "members": [{
            "domain": "vm1", "uri": "qemu:///system",
            "freeze_ms": 12.0, "pause_ms": 2.0, "snapshot_ms": 3.0, "resume_ms": 4.0,
            "domain_xml": "<domain type='qemu'><name>vm1</name></domain>",
            "disks": [{"target": "vda", "image": "/i/vda.qcow2",
                       "overlay": "/i/vda.qcow2.g.cgsnap-overlay", "format": "qcow2",
                       "virtual_size": 1073741824u64}]
        }],
        "error": null,
        "released_at": null
    })
    .to_string()
}

const PROFILE: &str = r#"
format_version = 1
rpo_seconds = 5
ack_log = "/var/lib/cgsnap/acks.jsonl"
[[member]]
domain = "a"
kind = "postgres"
port = 5432
user = "postgres"
password = "x"
ready_marker = "READY"
failure_marker = "ERROR"
invariants = ["SELECT true", "SELECT 1 = 1"]
beacon_table = "cgsnap_beacon"
[[cross]]
name = "order"
ahead_domain = "a"
ahead_sql = "SELECT 1"
behind_domain = "a"
behind_sql = "SELECT 0"
"#;

#[test]
fn the_reference_inputs_are_valid() {
    Catalog::parse(Path::new("m.json"), manifest_json().as_bytes()).expect("valid manifest");
    cgsnap_verify::profile::parse(Path::new("p.toml"), PROFILE).expect("valid profile");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A manifest cut short (crash during a write that bypassed the fsync+rename) is rejected
    /// as malformed, naming the file, never half-read.
    #[test]
    fn truncated_manifests_are_malformed(cut in 0usize..10_000) {
        let full = manifest_json();
        let cut = cut % full.len();
        let r = Catalog::parse(Path::new("/cat/snapshots/x.json"), &full.as_bytes()[..cut]);
        match r {
            Err(CatalogError::Malformed { path, .. }) => {
                prop_assert_eq!(path, Path::new("/cat/snapshots/x.json"));
            }
            other => prop_assert!(false, "prefix of {} bytes gave {:?}", cut, other.map(|m| m.id)),
        }
    }

    /// Flipped bytes never panic; whatever still parses serializes back to valid JSON that
    /// parses to the same manifest.
    #[test]
    fn corrupted_manifests_never_panic(pos in 0usize..10_000, byte in any::<u8>()) {
        let mut body = manifest_json().into_bytes();
        let pos = pos % body.len();
        body[pos] = byte;
        if let Ok(m) = Catalog::parse(Path::new("m.json"), &body) {
            let again = serde_json::to_vec(&m).expect("serialize");
            let back = Catalog::parse(Path::new("m.json"), &again).expect("round trip");
            prop_assert_eq!(back, m);
        }
    }

    #[test]
    fn arbitrary_bytes_are_not_a_manifest(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(Catalog::parse(Path::new("m.json"), &body).is_err());
    }

    /// Truncated or corrupted profiles never panic; an error names the file.
    #[test]
    fn mangled_profiles_never_panic(cut in 0usize..10_000, pos in 0usize..10_000, byte in 0x20u8..0x7f) {
        let cut = cut % PROFILE.len();
        let mut text = PROFILE.as_bytes()[..cut].to_vec();
        if !text.is_empty() {
            let p = pos % text.len();
            text[p] = byte;
        }
        let text = String::from_utf8_lossy(&text).to_string();
        if let Err(e) = cgsnap_verify::profile::parse(Path::new("/etc/cgsnap/g.toml"), &text) {
            prop_assert!(e.to_string().contains("/etc/cgsnap/g.toml"), "{}", e);
            prop_assert_eq!(e.to_string().lines().count(), 1, "one line: {}", e);
        }
    }

    #[test]
    fn durations_never_panic(s in "\\PC{0,24}") {
        let _ = cgsnap::duration::parse(&s);
    }

    #[test]
    fn numeric_durations_parse_exactly(n in 1u64..10_000_000, unit in prop::sample::select(vec!["ms", "s", "m", "h"])) {
        let d = cgsnap::duration::parse(&format!("{n}{unit}")).expect("valid duration");
        let ms = match unit { "ms" => n, "s" => n * 1000, "m" => n * 60_000, _ => n * 3_600_000 };
        prop_assert_eq!(d.as_millis(), u128::from(ms));
    }

    #[test]
    fn huge_durations_are_errors_not_panics(digits in "[1-9][0-9]{24,40}", unit in prop::sample::select(vec!["ms", "s", "m", "h"])) {
        let text = format!("{digits}{unit}");
        prop_assert!(cgsnap::duration::parse(&text).is_err(), "{} parsed", text);
    }

    #[test]
    fn domain_xml_and_metadata_never_panic(s in "\\PC{0,200}") {
        let _ = cgsnap::domxml::disks("d", &s);
        let _ = cgsnap::group::parse_membership(&s);
        let wrapped = format!("<domain><devices><disk type='file' device='disk'>{s}</disk></devices></domain>");
        let _ = cgsnap::domxml::disks("d", &wrapped);
    }
}
