//! Verification profiles: which member runs which database and what must hold after restore.
//!
//! Invariants: parsing is strict (`deny_unknown_fields`, a format version, and per-kind fields
//! checked after parsing: a Cassandra member states its commit log sync mode, from which its
//! loss bound follows; a PostgreSQL member has credentials and no sync mode); a profile names
//! members by domain, and every member of the snapshot must have an entry (checked at run time).
//! A member's lost-commit check is configured whole or not at all: `ack_db`, `ack_kind` and
//! `ack_table` together, and then the profile names its `ack_log` (a partial configuration
//! would silently check nothing).

use cgsnap_testbeds::cassandra::SyncMode;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The only profile format this version reads.
pub const FORMAT_VERSION: u32 = 1;

/// A verification profile (`--profile FILE`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Must be [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Largest acceptable data loss (consistency point minus newest recovered beacon).
    pub rpo_seconds: f64,
    /// Acknowledgement log of the workload (JSON lines), for the lost-commit check.
    #[serde(default)]
    pub ack_log: Option<PathBuf>,
    /// Longest time a member may take to reach ready after boot.
    #[serde(default = "default_ready")]
    pub ready_timeout_seconds: u64,
    /// Longest a single check query may run on a restored PostgreSQL member (its
    /// `statement_timeout`); a query that hits it fails its check.
    #[serde(default = "default_statement_timeout")]
    pub statement_timeout_seconds: u64,
    /// One entry per member domain (`[[member]]`), in beacon write order.
    #[serde(rename = "member")]
    pub members: Vec<MemberProfile>,
    /// Cross-member invariants: `behind` must not exceed `ahead` (each a one-value query).
    #[serde(default, rename = "cross")]
    pub cross: Vec<Cross>,
}

/// A cross-member rule: the behind member's value must not exceed the ahead member's.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Cross {
    /// Name of the check in the report.
    pub name: String,
    /// Member written first (e.g. the orders database).
    pub ahead_domain: String,
    /// Query on it returning one integer.
    pub ahead_sql: String,
    /// Member written after it (e.g. the payments database).
    pub behind_domain: String,
    /// Query on it returning one integer.
    pub behind_sql: String,
}

fn default_ready() -> u64 {
    300
}

fn default_statement_timeout() -> u64 {
    600
}

/// Database a member runs.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// PostgreSQL.
    Postgres,
    /// Cassandra.
    Cassandra,
}

/// `commitlog_sync` of a Cassandra member.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CommitlogSync {
    /// Acknowledged once synced.
    Batch,
    /// Synced every `commitlog_sync_period_ms`.
    Periodic,
}

/// How to check one member (`[[member]]`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemberProfile {
    /// The member's domain name.
    pub domain: String,
    /// Database it runs.
    pub kind: Kind,
    /// Database port inside the guest (forwarded to a loopback port in the sandbox).
    pub port: u16,
    /// PostgreSQL credentials (required there; Cassandra members connect without).
    #[serde(default)]
    pub user: String,
    /// PostgreSQL password of `user`.
    #[serde(default)]
    pub password: String,
    /// PostgreSQL database to connect to (default `postgres`).
    #[serde(default = "default_db")]
    pub dbname: String,
    /// Console line the guest prints once the database accepts connections. PostgreSQL: when
    /// absent, ready is the first successful connection through the forward (no guest change
    /// needed; the server refuses connections until crash recovery is done). Cassandra: required.
    #[serde(default)]
    pub ready_marker: Option<String>,
    /// Console line the guest prints when the database cannot start (e.g. recovery failed):
    /// the member fails at once instead of waiting out the ready timeout.
    #[serde(default)]
    pub failure_marker: Option<String>,
    /// PostgreSQL: SQL queries returning one boolean each; all must be true. Cassandra: CQL
    /// queries returning one row whose columns (integers, null as 0) must all be equal, or
    /// with one column, non-zero (CQL has no comparison expressions to return a boolean).
    #[serde(default)]
    pub invariants: Vec<String>,
    /// Cassandra: `batch` (acknowledged = synced) or `periodic` (synced every period).
    #[serde(default)]
    pub commitlog_sync: Option<CommitlogSync>,
    /// Cassandra, periodic mode: `commitlog_sync_period` in milliseconds.
    #[serde(default)]
    pub commitlog_sync_period_ms: Option<u64>,
    /// Table with `(seq bigint, ts timestamptz)` beacons, if the group runs `cgsnap beacon`
    /// (Cassandra: `keyspace.table` with `(seq bigint, ts timestamp)`).
    #[serde(default)]
    pub beacon_table: Option<String>,
    /// Name of this database in the acknowledgement log (`db` field), if any.
    #[serde(default)]
    pub ack_db: Option<String>,
    /// `table.column` holding the acknowledged ids of `ack_kind` rows, for the lost-commit check.
    #[serde(default)]
    pub ack_kind: Option<String>,
    /// `table` holding the acknowledged ids (`id` column) of `ack_kind` rows.
    #[serde(default)]
    pub ack_table: Option<String>,
}

fn default_db() -> String {
    "postgres".into()
}

/// A rule of one `[[member]]` that serde cannot express, broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberRuleError {
    /// A period given with batch sync.
    #[error("commitlog_sync_period_ms is only for commitlog_sync = \"periodic\"")]
    PeriodWithoutPeriodic,
    /// Periodic sync without a positive period.
    #[error("commitlog_sync = \"periodic\" needs commitlog_sync_period_ms > 0")]
    PeriodicWithoutPeriod,
    /// A Cassandra member without a sync mode.
    #[error("a cassandra member needs commitlog_sync = \"batch\" or \"periodic\"")]
    NoSyncMode,
    /// Some but not all of `ack_db`, `ack_kind`, `ack_table`.
    #[error("ack_db, ack_kind and ack_table go together: set all three (with ack_log) or none")]
    PartialAcks,
    /// A Cassandra member without a ready marker.
    #[error("a cassandra member needs a ready_marker (its console line once CQL is up)")]
    NoReadyMarker,
    /// A PostgreSQL member without credentials.
    #[error("a postgres member needs user and password")]
    NoCredentials,
    /// A sync mode on a PostgreSQL member.
    #[error("commitlog_sync is only for cassandra members")]
    SyncOnPostgres,
    /// A lost-commit check without the profile's `ack_log`.
    #[error(
        "ack_db, ack_kind and ack_table need ack_log (the workload's acknowledgement log) at the top of the profile"
    )]
    NoAckLog,
}

impl MemberProfile {
    /// The sync mode of a Cassandra member, or why the profile does not define one.
    pub fn sync_mode(&self) -> Result<SyncMode, MemberRuleError> {
        match (self.commitlog_sync, self.commitlog_sync_period_ms) {
            (Some(CommitlogSync::Batch), None) => Ok(SyncMode::Batch),
            (Some(CommitlogSync::Batch), Some(_)) => Err(MemberRuleError::PeriodWithoutPeriodic),
            (Some(CommitlogSync::Periodic), Some(p)) if p > 0 => {
                Ok(SyncMode::Periodic { period_ms: p })
            }
            (Some(CommitlogSync::Periodic), _) => Err(MemberRuleError::PeriodicWithoutPeriod),
            (None, _) => Err(MemberRuleError::NoSyncMode),
        }
    }

    /// Whether this member has a lost-commit check (`ack_db`, `ack_kind`, `ack_table`).
    pub fn checks_acks(&self) -> bool {
        self.ack_db.is_some()
    }

    /// Rules serde cannot express.
    fn validate(&self) -> Result<(), MemberRuleError> {
        let set = [&self.ack_db, &self.ack_kind, &self.ack_table]
            .iter()
            .filter(|x| x.is_some())
            .count();
        if set != 0 && set != 3 {
            return Err(MemberRuleError::PartialAcks);
        }
        match self.kind {
            Kind::Cassandra if self.ready_marker.is_none() => Err(MemberRuleError::NoReadyMarker),
            Kind::Cassandra => self.sync_mode().map(|_| ()),
            Kind::Postgres if self.user.is_empty() || self.password.is_empty() => {
                Err(MemberRuleError::NoCredentials)
            }
            Kind::Postgres
                if self.commitlog_sync.is_some() || self.commitlog_sync_period_ms.is_some() =>
            {
                Err(MemberRuleError::SyncOnPostgres)
            }
            Kind::Postgres => Ok(()),
        }
    }
}

/// Why a profile cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("cannot read profile {path}: {source}")]
    Io {
        /// The profile file.
        path: PathBuf,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    #[error("malformed profile {path}: {detail}")]
    /// The text is not a valid profile.
    Malformed {
        /// The profile file.
        path: PathBuf,
        /// What is wrong (one line).
        detail: String,
    },
}

/// Parse and validate a profile's text (`path` only names it in errors).
pub fn parse(path: &Path, text: &str) -> Result<Profile, ProfileError> {
    let p: Profile = toml::from_str(text).map_err(|e| ProfileError::Malformed {
        path: path.to_path_buf(),
        detail: e.to_string().replace('\n', " "),
    })?;
    if p.format_version != FORMAT_VERSION {
        return Err(ProfileError::Malformed {
            path: path.to_path_buf(),
            detail: format!(
                "format_version {} is not supported (expected {FORMAT_VERSION})",
                p.format_version
            ),
        });
    }
    for m in &p.members {
        m.validate()
            .and_then(|()| match (m.checks_acks(), &p.ack_log) {
                (true, None) => Err(MemberRuleError::NoAckLog),
                _ => Ok(()),
            })
            .map_err(|e| ProfileError::Malformed {
                path: path.to_path_buf(),
                detail: format!("member {}: {e}", m.domain),
            })?;
    }
    if p.statement_timeout_seconds == 0 {
        return Err(ProfileError::Malformed {
            path: path.to_path_buf(),
            detail: "statement_timeout_seconds must be > 0 (0 would disable the limit)".into(),
        });
    }
    Ok(p)
}

/// Read, parse and validate the profile at `path`.
pub fn load(path: &Path) -> Result<Profile, ProfileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
format_version = 1
rpo_seconds = 5
[[member]]
domain = "a"
kind = "postgres"
port = 5432
user = "postgres"
password = "x"
ready_marker = "READY"
invariants = ["SELECT true"]
beacon_table = "cgsnap_beacon"
"#;

    #[test]
    fn parses_and_rejects_unknown_fields_and_versions() {
        let p = parse(Path::new("p.toml"), OK).expect("parse");
        assert_eq!(p.members[0].dbname, "postgres");
        assert_eq!(p.ready_timeout_seconds, 300);
        let bad = OK.replace("port = 5432", "port = 5432\nprot = 1");
        let e = parse(Path::new("p.toml"), &bad).unwrap_err();
        assert!(
            e.to_string().contains("p.toml") && e.to_string().contains("prot"),
            "{e}"
        );
        let e = parse(
            Path::new("p.toml"),
            &OK.replace("format_version = 1", "format_version = 2"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("format_version 2"));
        assert!(parse(Path::new("p.toml"), "rpo_seconds = ").is_err());
        let e = parse(Path::new("p.toml"), &OK.replace("password = \"x\"\n", "")).unwrap_err();
        assert!(
            e.to_string()
                .contains("member a: a postgres member needs user and password")
        );
        let e = parse(
            Path::new("p.toml"),
            &OK.replace("port = 5432", "port = 5432\ncommitlog_sync = \"batch\""),
        )
        .unwrap_err();
        assert!(e.to_string().contains("only for cassandra"), "{e}");
    }

    const CASS: &str = r#"
format_version = 1
rpo_seconds = 7
[[member]]
domain = "c"
kind = "cassandra"
port = 9042
ready_marker = "CGSNAP-CASS: ready"
commitlog_sync = "periodic"
commitlog_sync_period_ms = 2000
beacon_table = "cgsnap.cgsnap_beacon"
invariants = ["SELECT count(*), max(id) FROM cgsnap.events"]
"#;

    /// The profiles `cgsnap testbed up` writes for the Cassandra testbeds parse here.
    #[test]
    fn postgres_ready_marker_is_optional() {
        let p = parse(
            Path::new("p.toml"),
            &OK.replace("ready_marker = \"READY\"\n", ""),
        )
        .expect("parse");
        assert_eq!(p.members[0].ready_marker, None);
        assert_eq!(
            parse(Path::new("p.toml"), OK).expect("parse").members[0]
                .ready_marker
                .as_deref(),
            Some("READY")
        );
    }

    #[test]
    fn testbed_profiles_parse() {
        use cgsnap_testbeds::cass_bed::{self, State, Vm};
        for (bed, sync) in [
            (cass_bed::SINGLE, SyncMode::Periodic { period_ms: 2000 }),
            (cass_bed::MIXED, SyncMode::Batch),
        ] {
            let vms = cass_bed::plan(bed)
                .into_iter()
                .map(|(n, e)| Vm {
                    name: n.into(),
                    engine: e,
                    port: 1,
                    dir: PathBuf::from("/x"),
                    boot_to_ready_s: 0.0,
                })
                .collect();
            let st = State {
                testbed: bed.into(),
                uri: "qemu:///system".into(),
                images_dir: PathBuf::from("/x"),
                sync,
                cassandra_version: "5.0.2".into(),
                vms,
                workload_pid: None,
                started_at: chrono::Utc::now(),
            };
            let text = cgsnap_testbeds::cass_profile::text(&st, Path::new("/s/acks.jsonl"));
            let p = parse(Path::new("t.toml"), &text).expect(&text);
            let cass: Vec<&MemberProfile> = p
                .members
                .iter()
                .filter(|m| m.kind == Kind::Cassandra)
                .collect();
            assert_eq!(cass.len(), 1);
            assert_eq!(cass[0].sync_mode(), Ok(sync));
            assert_eq!(p.ready_timeout_seconds, 900);
            let mixed = bed == cass_bed::MIXED;
            assert_eq!(p.cross.len(), usize::from(mixed));
            if mixed {
                assert_eq!(
                    p.members[0].kind,
                    Kind::Postgres,
                    "beacon order: PostgreSQL first"
                );
                assert_eq!(
                    p.members
                        .iter()
                        .filter(|m| m.kind == Kind::Postgres)
                        .count(),
                    1
                );
            }
        }
    }

    #[test]
    fn the_postgres_pair_profile_parses() {
        let text = cgsnap_testbeds::pair::profile_text(Path::new("/s"));
        let p = parse(Path::new("t.toml"), &text).expect(&text);
        assert_eq!(p.members.len(), 2);
        assert!(
            p.members
                .iter()
                .all(|m| m.kind == Kind::Postgres && m.invariants.len() == 3),
            "{text}"
        );
        assert_eq!(p.cross.len(), 1);
    }

    #[test]
    fn the_lost_commit_check_is_configured_whole_or_not_at_all() {
        let acks = "ack_db = \"orders\"\nack_kind = \"order\"\nack_table = \"orders\"\n";
        let with = |extra: &str, log: bool| {
            let top = if log {
                "rpo_seconds = 5\nack_log = \"/s/acks.jsonl\""
            } else {
                "rpo_seconds = 5"
            };
            parse(
                Path::new("p.toml"),
                &OK.replace("rpo_seconds = 5", top)
                    .replace("port = 5432\n", &format!("port = 5432\n{extra}")),
            )
        };
        let p = with(acks, true).expect("all three with a log");
        assert!(p.members[0].checks_acks());
        assert!(!with("", false).expect("none").members[0].checks_acks());
        for partial in [
            "ack_db = \"orders\"\n",
            "ack_kind = \"order\"\nack_table = \"orders\"\n",
            "ack_table = \"orders\"\n",
        ] {
            let e = with(partial, true).expect_err(partial);
            assert!(
                e.to_string()
                    .contains("member a: ack_db, ack_kind and ack_table go together"),
                "{e}"
            );
        }
        let e = with(acks, false).expect_err("no log");
        assert!(e.to_string().contains("need ack_log"), "{e}");
    }

    #[test]
    fn statement_timeout_defaults_and_must_be_positive() {
        let p = parse(Path::new("p.toml"), OK).expect("parse");
        assert_eq!(p.statement_timeout_seconds, 600);
        let e = parse(
            Path::new("p.toml"),
            &OK.replace(
                "rpo_seconds = 5",
                "rpo_seconds = 5\nstatement_timeout_seconds = 0",
            ),
        )
        .unwrap_err();
        assert!(e.to_string().contains("statement_timeout_seconds"), "{e}");
    }

    #[test]
    fn cassandra_members_state_a_valid_sync_mode() {
        let p = parse(Path::new("c.toml"), CASS).expect("parse");
        assert_eq!(p.members[0].kind, Kind::Cassandra);
        assert_eq!(
            p.members[0].sync_mode(),
            Ok(SyncMode::Periodic { period_ms: 2000 })
        );
        let batch = CASS
            .replace("\"periodic\"", "\"batch\"")
            .replace("commitlog_sync_period_ms = 2000\n", "");
        let p = parse(Path::new("c.toml"), &batch).expect("batch");
        assert_eq!(p.members[0].sync_mode(), Ok(SyncMode::Batch));
        for (bad, why) in [
            (
                CASS.replace("commitlog_sync_period_ms = 2000\n", ""),
                "needs commitlog_sync_period_ms",
            ),
            (
                CASS.replace("= 2000", "= 0"),
                "needs commitlog_sync_period_ms",
            ),
            (
                CASS.replace("\"periodic\"", "\"batch\""),
                "only for commitlog_sync = \"periodic\"",
            ),
            (
                CASS.replace("commitlog_sync = \"periodic\"\n", ""),
                "needs commitlog_sync =",
            ),
            (CASS.replace("\"periodic\"", "\"group\""), "group"),
            (
                CASS.replace("ready_marker = \"CGSNAP-CASS: ready\"\n", ""),
                "needs a ready_marker",
            ),
        ] {
            let e = parse(Path::new("c.toml"), &bad).expect_err(why);
            assert!(e.to_string().contains(why), "{why}: {e}");
        }
    }
}
