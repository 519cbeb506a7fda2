//! Cross-member checks: the beacon order across members ([`crate::beacon::order`]) and the
//! profile's `[[cross]]` queries, each comparing one integer of an "ahead" member with one of a
//! "behind" member over their restored databases.
//!
//! Invariants: a cross check whose query cannot run (member missing, not up, query failed)
//! fails with the reason as evidence, it never passes; none runs once the free-space watch has
//! stopped the sandboxes (their databases are gone).

use crate::pg;
use crate::profile::Profile;
use crate::report::{Check, MemberReport};
use crate::space::Watch;
use cgsnap_testbeds::cql::Cql;

/// A connection to a restored member, for the cross-member checks.
pub enum Conn {
    // Boxed: both are hundreds of bytes, and of very different sizes.
    /// A PostgreSQL member.
    Pg(Box<pg::Session>),
    /// A Cassandra member.
    Cql(Box<Cql>),
}

/// Why one side of a cross check has no value; the text is the check's evidence.
#[derive(Debug, thiserror::Error)]
pub enum CrossError {
    /// The profile names a domain that is not a member of the snapshot.
    #[error("no member {0}")]
    NoMember(String),
    /// The member's database never came up.
    #[error("{0} did not come up")]
    Down(String),
    /// The PostgreSQL query failed.
    #[error(transparent)]
    Pg(#[from] pg::QueryError),
    /// The CQL query failed.
    #[error(transparent)]
    Cql(#[from] cgsnap_testbeds::cql::CqlError),
}

impl Conn {
    /// One integer from a one-row query (SQL or CQL, by the member's kind).
    pub fn scalar(&mut self, query: &str) -> Result<i64, CrossError> {
        Ok(match self {
            Conn::Pg(c) => pg::scalar(c, query)?,
            Conn::Cql(c) => c.scalar(query)?,
        })
    }
}

/// The value of `query` on member `domain` (`clients` in the order of `members`).
fn value(
    members: &[MemberReport],
    clients: &mut [Option<Conn>],
    domain: &str,
    query: &str,
) -> Result<i64, CrossError> {
    let i = members
        .iter()
        .position(|m| m.domain == domain)
        .ok_or_else(|| CrossError::NoMember(domain.to_string()))?;
    clients[i]
        .as_mut()
        .ok_or_else(|| CrossError::Down(domain.to_string()))?
        .scalar(query)
}

/// Every cross-member check of the profile over the checked `members` (with their
/// connections, `None` where the database never came up), and a note on what the beacon
/// order could not cover.
pub fn checks(
    profile: &Profile,
    members: &[MemberReport],
    clients: &mut [Option<Conn>],
    watch: &Watch,
) -> (Vec<Check>, Option<String>) {
    // Profile order: the order beacons are written in.
    let beacons: Vec<(&str, Option<i64>)> = profile
        .members
        .iter()
        .filter_map(|p| members.iter().find(|m| m.domain == p.domain))
        .map(|m| (m.domain.as_str(), m.newest_beacon_seq))
        .collect();
    let (mut out, note) = crate::beacon::order(&beacons);
    for x in profile.cross.iter() {
        if watch.tripped().is_some() {
            break;
        }
        let res = value(members, clients, &x.ahead_domain, &x.ahead_sql)
            .and_then(|a| value(members, clients, &x.behind_domain, &x.behind_sql).map(|b| (a, b)));
        out.push(match res {
            Ok((a, b)) => Check {
                name: x.name.clone(),
                ok: b <= a,
                evidence: format!("{}: {b}, {}: {a}", x.behind_domain, x.ahead_domain),
            },
            Err(e) => Check {
                name: x.name.clone(),
                ok: false,
                evidence: e.to_string(),
            },
        });
    }
    (out, note)
}
