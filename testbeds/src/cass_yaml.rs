//! `cassandra.yaml` edits (`cassandra/yaml.sh`), shared by the image build on the host and the
//! guest's init at every boot; tested here by running the script on sample files shaped like
//! the shipped configurations of 2.2, 3.x, 4.0 and 4.1+, with the edits
//! [`crate::cass_config`] decides for each version, as build.sh and the init apply them.
//!
//! Invariants: an edit replaces the *active* definition of a top-level key with its whole
//! indented block and leaves everything else alone; applying an edit twice gives the same lines
//! as applying it once (top-level key order means nothing); the commit log sync keys are spelled
//! the way the shipped file spells them, which is the way [`crate::cass_config::period_key`]
//! says the version spells them.

/// The shell functions (`yaml_set`, `yaml_set_list`, `yaml_unset`, `yaml_apply`,
/// `edits_value`, `cass_sync`).
pub const SCRIPT: &str = include_str!("../cassandra/yaml.sh");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cass_config;
    use std::process::Command;

    /// Shaped like 3.x: `*_in_ms` keys, an active period, batch window commented out.
    const V3: &str = "cluster_name: 'Test Cluster'
# commitlog_sync_batch_window_in_ms: 2
commitlog_sync: periodic
commitlog_sync_period_in_ms: 10000
data_file_directories:
    - /var/lib/cassandra/data
    - /srv/more
commitlog_directory: /var/lib/cassandra/commitlog
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: \"127.0.0.1\"
listen_address: localhost
";

    /// Shaped like 4.1/5.0: unit-suffixed keys, directories commented out.
    const V41: &str = "cluster_name: 'Test Cluster'
# data_file_directories:
#     - /var/lib/cassandra/data
commitlog_sync: periodic
commitlog_sync_period: 10000ms
# commitlog_sync_group_window: 1000ms
listen_address: localhost
";

    /// Shaped like 2.2: no hints or cdc directories at all, Thrift keys, 3.x-style sync keys.
    const V22: &str = "cluster_name: 'Test Cluster'
data_file_directories:
    - /var/lib/cassandra/data
commitlog_directory: /var/lib/cassandra/commitlog
saved_caches_directory: /var/lib/cassandra/saved_caches
commitlog_sync: periodic
commitlog_sync_period_in_ms: 10000
# commitlog_sync: batch
# commitlog_sync_batch_window_in_ms: 2
start_native_transport: true
native_transport_port: 9042
start_rpc: true
rpc_address: localhost
rpc_port: 9160
listen_address: localhost
";

    /// Shaped like 4.0: `*_in_ms` keys, group window commented out, no Thrift.
    const V40: &str = "cluster_name: 'Test Cluster'
# hints_directory: /var/lib/cassandra/hints
# cdc_raw_directory: /var/lib/cassandra/cdc_raw
commitlog_sync: periodic
commitlog_sync_period_in_ms: 10000
# commitlog_sync_group_window_in_ms: 1000
rpc_address: localhost
listen_address: localhost
";

    /// Run `body` (shell using the functions) on a copy of `yaml`; returns the edited file.
    fn edit(yaml: &str, body: &str) -> String {
        edit_with(yaml, "", body)
    }

    /// [`edit`] with `$e` naming an edits file holding `edits`.
    fn edit_with(yaml: &str, edits: &str, body: &str) -> String {
        let dir = tempfile_dir();
        let f = dir.join("cassandra.yaml");
        let e = dir.join("edits");
        std::fs::write(&f, yaml).expect("write yaml");
        std::fs::write(&e, edits).expect("write edits");
        let script = format!(
            "set -eu\n{SCRIPT}\nf={}\ne={}\n{body}\n",
            f.display(),
            e.display()
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&f).expect("read yaml");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        text
    }

    fn tempfile_dir() -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "cgsnap-yaml-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    fn active(text: &str, key: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{key}:")))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn batch_on_3x_drops_the_period_and_sets_a_window() {
        let t = edit(V3, "cass_sync \"$f\" 2 batch 10000");
        assert_eq!(active(&t, "commitlog_sync"), ["commitlog_sync: batch"]);
        assert!(active(&t, "commitlog_sync_period_in_ms").is_empty(), "{t}");
        assert_eq!(
            active(&t, "commitlog_sync_batch_window_in_ms"),
            ["commitlog_sync_batch_window_in_ms: 2"]
        );
    }

    #[test]
    fn batch_on_4x_sets_no_window_and_periodic_uses_the_shipped_spelling() {
        let t = edit(V41, "cass_sync \"$f\" \"\" batch 10000");
        assert_eq!(active(&t, "commitlog_sync"), ["commitlog_sync: batch"]);
        assert!(!t.contains("window_in_ms: 2") && active(&t, "commitlog_sync_period").is_empty());
        let t = edit(V41, "cass_sync \"$f\" \"\" periodic 2000");
        assert_eq!(
            active(&t, "commitlog_sync_period"),
            ["commitlog_sync_period: 2000ms"]
        );
        assert!(!t.contains("_in_ms: 2000"), "{t}");
        // A boot in batch mode must not lose the spelling for a later periodic boot.
        let t = edit(
            V41,
            "cass_sync \"$f\" \"\" batch 1\ncass_sync \"$f\" \"\" periodic 3000",
        );
        assert_eq!(
            active(&t, "commitlog_sync_period"),
            ["commitlog_sync_period: 3000ms"]
        );
        assert!(!t.contains("_in_ms:"), "{t}");
        let t = edit(V3, "cass_sync \"$f\" 2 periodic 2000");
        assert_eq!(
            active(&t, "commitlog_sync_period_in_ms"),
            ["commitlog_sync_period_in_ms: 2000"]
        );
    }

    #[test]
    fn lists_and_nested_blocks_are_replaced_whole_and_edits_are_idempotent() {
        let body = "yaml_set_list \"$f\" data_file_directories /cassdata/data
yaml_unset \"$f\" seed_provider
yaml_set \"$f\" listen_address 10.0.2.15
cass_sync \"$f\" 2 periodic 1000";
        let once = edit(V3, body);
        assert!(!once.contains("/srv/more") && !once.contains("/var/lib/cassandra/data"));
        assert!(once.contains("data_file_directories:\n    - /cassdata/data\n"));
        assert!(!once.contains("seeds:") && !once.contains("class_name"));
        assert!(once.contains("commitlog_directory: /var/lib/cassandra/commitlog"));
        assert_eq!(
            active(&once, "listen_address"),
            ["listen_address: 10.0.2.15"]
        );
        // Top-level key order means nothing to Cassandra; the lines must be the same.
        let lines = |t: &str| {
            let mut v: Vec<String> = t.lines().map(str::to_string).collect();
            v.sort();
            v
        };
        assert_eq!(
            lines(&edit(&once, body)),
            lines(&once),
            "second application changes nothing"
        );
        let c = edit(V41, "yaml_set_list \"$f\" data_file_directories /d");
        assert!(c.contains("# data_file_directories:\n#     - /var/lib/cassandra/data"));
        assert_eq!(c.matches("\ndata_file_directories:").count(), 1);
    }

    /// The image build's static edits and one boot's sync mode, as build.sh and the init
    /// apply them, for `version` from its edits file.
    fn image_and_boot(yaml: &str, version: &str, mode: &str, period_ms: u64) -> String {
        let v = cass_config::supported(version).expect("supported");
        let body = format!(
            "yaml_apply \"$f\" \"$e\"\n\
             cass_sync \"$f\" \"$(edits_value \"$e\" batch_window_ms)\" {mode} {period_ms}"
        );
        edit_with(yaml, &cass_config::edits_file(version, v), &body)
    }

    #[test]
    fn a_2_2_file_gets_no_hints_or_cdc_and_a_batch_window() {
        let t = image_and_boot(V22, "2.2.18", "batch", 10_000);
        assert!(active(&t, "hints_directory").is_empty(), "{t}");
        assert!(active(&t, "cdc_raw_directory").is_empty(), "{t}");
        assert_eq!(
            active(&t, "commitlog_sync_batch_window_in_ms"),
            ["commitlog_sync_batch_window_in_ms: 2"]
        );
        assert!(active(&t, "commitlog_sync_period_in_ms").is_empty(), "{t}");
        assert_eq!(active(&t, "start_rpc"), ["start_rpc: false"]);
        assert_eq!(
            active(&t, "commitlog_directory"),
            ["commitlog_directory: /casscommit/commitlog"]
        );
        assert!(
            t.contains("data_file_directories:\n    - /cassdata/data\n"),
            "{t}"
        );
        assert_eq!(active(&t, "rpc_address"), ["rpc_address: 10.0.2.15"]);
    }

    /// Every version's file carries exactly the keys its edits set, and the period in the
    /// spelling [`cass_config::period_key`] gives it: the shell's detection agrees with it.
    #[test]
    fn each_version_gets_its_keys_and_the_spelling_the_rust_side_expects() {
        let cases = [
            (V22, "2.2.18"),
            (V3, "3.0.29"),
            (V3, "3.11.16"),
            (V40, "4.0.13"),
            (V41, "4.1.5"),
            (V41, "5.0.2"),
        ];
        for (yaml, version) in cases {
            let v = cass_config::supported(version).expect("supported");
            let t = image_and_boot(yaml, version, "periodic", 2000);
            let key = cass_config::period_key(v);
            let want = format!("{key}: {}", cass_config::period_value(v, 2000));
            assert_eq!(active(&t, key), [want], "{version}: {t}");
            for e in cass_config::yaml_edits(v) {
                let n = active(&t, e.key()).len();
                match e {
                    cass_config::Edit::Unset(_) => assert_eq!(n, 0, "{version} {e:?}"),
                    _ => assert_eq!(n, 1, "{version} {e:?}: {t}"),
                }
            }
            let set: Vec<&str> = cass_config::yaml_edits(v).iter().map(|e| e.key()).collect();
            for k in ["hints_directory", "cdc_raw_directory", "start_rpc"] {
                let present = !active(&t, k).is_empty();
                let shipped = !active(yaml, k).is_empty();
                assert_eq!(present, set.contains(&k) || shipped, "{version} {k}: {t}");
            }
            let b = image_and_boot(yaml, version, "batch", 2000);
            let window = !active(&b, "commitlog_sync_batch_window_in_ms").is_empty();
            assert_eq!(
                window,
                cass_config::batch_window_ms(v).is_some(),
                "{version}"
            );
            assert!(active(&b, key).is_empty(), "{version}: {b}");
        }
    }
}
