//! `cassandra.yaml` edits (`cassandra/yaml.sh`), shared by the image build on the host and the
//! guest's init at every boot; tested here by running the script on sample files shaped like
//! the shipped configurations of the 3.x and 4.1+ families.
//!
//! Invariants: an edit replaces the *active* definition of a top-level key with its whole
//! indented block and leaves everything else alone; applying an edit twice gives the same lines
//! as applying it once (top-level key order means nothing); the commit log sync keys are spelled the way the shipped file spells them.

/// The shell functions (`yaml_set`, `yaml_set_list`, `yaml_unset`, `cass_sync`).
pub const SCRIPT: &str = include_str!("../cassandra/yaml.sh");

#[cfg(test)]
mod tests {
    use super::*;
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

    /// Run `body` (shell using the functions) on a copy of `yaml`; returns the edited file.
    fn edit(yaml: &str, body: &str) -> String {
        let dir = tempfile_dir();
        let f = dir.join("cassandra.yaml");
        std::fs::write(&f, yaml).expect("write yaml");
        let script = format!("set -eu\n{SCRIPT}\nf={}\n{body}\n", f.display());
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
        let t = edit(V3, "cass_sync \"$f\" 3 batch 10000");
        assert_eq!(active(&t, "commitlog_sync"), ["commitlog_sync: batch"]);
        assert!(active(&t, "commitlog_sync_period_in_ms").is_empty(), "{t}");
        assert_eq!(
            active(&t, "commitlog_sync_batch_window_in_ms"),
            ["commitlog_sync_batch_window_in_ms: 2"]
        );
    }

    #[test]
    fn batch_on_4x_sets_no_window_and_periodic_uses_the_shipped_spelling() {
        let t = edit(V41, "cass_sync \"$f\" 5 batch 10000");
        assert_eq!(active(&t, "commitlog_sync"), ["commitlog_sync: batch"]);
        assert!(!t.contains("window_in_ms: 2") && active(&t, "commitlog_sync_period").is_empty());
        let t = edit(V41, "cass_sync \"$f\" 4 periodic 2000");
        assert_eq!(
            active(&t, "commitlog_sync_period"),
            ["commitlog_sync_period: 2000ms"]
        );
        assert!(!t.contains("_in_ms: 2000"), "{t}");
        // A boot in batch mode must not lose the spelling for a later periodic boot.
        let t = edit(
            V41,
            "cass_sync \"$f\" 5 batch 1\ncass_sync \"$f\" 5 periodic 3000",
        );
        assert_eq!(
            active(&t, "commitlog_sync_period"),
            ["commitlog_sync_period: 3000ms"]
        );
        assert!(!t.contains("_in_ms:"), "{t}");
        let t = edit(V3, "cass_sync \"$f\" 3 periodic 2000");
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
cass_sync \"$f\" 3 periodic 1000";
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
}
