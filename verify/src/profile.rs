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
mod tests;
