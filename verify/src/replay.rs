//! Reading Cassandra's commit log replay from its log (the restored guest's console).
//!
//! Cassandra 2.2 to 5.0 log, at INFO, one line per replayed segment (`Replaying
//! /path/CommitLog-7-1700000000000.log (CL version 7, messaging version 12, compression null)`)
//! and a summary (`Log replay complete, 42 replayed mutations`, with more words after it in some
//! versions), or `No commitlog files found; skipping replay`. Matching is case-insensitive and on
//! those phrases only, so prefixes (thread names, timestamps, levels) and wording around them
//! may vary.
//!
//! Invariant: replay counts as observed only if the summary line was seen. A node restored from
//! an image of a running node always finds commit log segments (a live node keeps at least its
//! active one), so "no commitlog files found" means the commit log disk is not from that image.

use crate::report::Check;

/// What the restored node's log says about commit log replay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replay {
    /// Commit log segments named in "Replaying ..." lines.
    pub segments: usize,
    /// Whether the log says replay finished.
    pub complete: bool,
    /// From the summary line, when it states a number.
    pub mutations: Option<u64>,
    /// Cassandra found no commit log at all.
    pub no_files: bool,
}

/// The integer right before `phrase` in `line` (`..., 42 replayed mutations`).
fn number_before(line: &str, phrase: &str) -> Option<u64> {
    let head = &line[..line.find(phrase)?];
    let digits: String = head
        .trim_end()
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.chars().rev().collect::<String>().parse().ok()
}

/// Read the replay lines of a node's console log.
pub fn parse(log: &str) -> Replay {
    let mut r = Replay::default();
    for line in log.lines() {
        let l = line.to_ascii_lowercase();
        if l.contains("replaying ") && l.contains("commitlog-") {
            r.segments += 1;
        }
        if l.contains("log replay complete") {
            r.complete = true;
            r.mutations = number_before(&l, "replayed mutations").or(r.mutations);
        }
        if l.contains("no commitlog files found") {
            r.no_files = true;
        }
    }
    r
}

/// The replay check: replay must be seen to finish.
pub fn check(r: &Replay) -> Check {
    let (ok, evidence) = if r.complete {
        (
            true,
            format!(
                "commit log replayed: {} segment(s), {} mutation(s)",
                r.segments,
                r.mutations
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "?".into())
            ),
        )
    } else if r.no_files {
        (
            false,
            "Cassandra found no commit log: the commit log disk is not from the snapshot of a running node".into(),
        )
    } else {
        (
            false,
            "no \"Log replay complete\" line in the server log".into(),
        )
    };
    Check {
        name: "commit log replay".into(),
        ok,
        evidence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_lines_of_several_versions_are_recognised() {
        let log = "\
INFO  [main] 2024-01-01 10:00:00,000 CommitLog.java:169 - Replaying /casscommit/commitlog/CommitLog-7-1700000000001.log, /casscommit/commitlog/CommitLog-7-1700000000002.log
INFO  [main] 2024-01-01 10:00:01,000 CommitLogReplayer.java:300 - Replaying /casscommit/commitlog/CommitLog-7-1700000000001.log (CL version 7, messaging version 12, compression null)
INFO  [main] 2024-01-01 10:00:02,000 CommitLogReplayer.java:300 - Replaying /casscommit/commitlog/CommitLog-7-1700000000002.log (CL version 7, messaging version 12, compression null)
INFO  [main] 2024-01-01 10:00:03,000 CommitLog.java:200 - Log replay complete, 1234 replayed mutations
";
        let r = parse(log);
        assert!(r.complete && !r.no_files);
        assert_eq!(r.mutations, Some(1234));
        assert_eq!(r.segments, 3);
        let c = check(&r);
        assert!(c.ok && c.evidence.contains("1234 mutation"), "{c:?}");
        // Other casing and trailing words.
        let r = parse("info main - LOG REPLAY COMPLETE, 7 replayed mutations in 12 ms\n");
        assert_eq!(r.mutations, Some(7));
        assert!(check(&r).ok);
    }

    #[test]
    fn missing_or_skipped_replay_fails() {
        let r =
            parse("INFO [main] CommitLog.java:150 - No commitlog files found; skipping replay\n");
        assert!(r.no_files && !r.complete);
        let c = check(&r);
        assert!(!c.ok && c.evidence.contains("no commit log"), "{c:?}");
        let c = check(&parse("INFO Starting listening for CQL clients\n"));
        assert!(!c.ok && c.evidence.contains("Log replay complete"));
        assert_eq!(
            number_before("x, replayed mutations", "replayed mutations"),
            None
        );
    }
}
