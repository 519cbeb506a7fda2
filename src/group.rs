//! Consistency groups, defined at the hypervisor layer.
//!
//! Membership is stored in each domain's libvirt `<metadata>` under our own namespace
//! ([`NS`]), as `<membership><group name="G"/>...</membership>`, so it travels with the VM
//! (migration, `virsh dumpxml`/`define`) and is resolved live at snapshot time: a group is
//! whatever domains on the given hosts say they belong to it at that moment.
//!
//! Invariants: a group name is a short token safe in file names; a domain name given on the
//! command line must match exactly one domain across all connected hosts.

use crate::hypervisor::{DomState, Host, HvError, HvErrorKind};
use crate::model::exit::{Classify, ExitCode};
use std::collections::BTreeMap;
use std::sync::Arc;

/// XML namespace of cgsnap's element in a domain's `<metadata>`.
pub const NS: &str = "https://cgsnap.dev/xmlns/membership/1";
/// Prefix libvirt writes that element with.
pub const NS_KEY: &str = "cgsnap";

/// Why a group could not be resolved or changed.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The group name is not a short token safe in file names.
    #[error(
        "invalid group name {0:?}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    )]
    InvalidName(String),
    #[error(
        "unknown domain {domain:?} on {uris}: check the name with `virsh list --all` or add --connect URI for its host"
    )]
    /// No connected host has a domain of that name.
    UnknownDomain {
        /// The name given.
        domain: String,
        /// The hosts searched, comma-separated.
        uris: String,
    },
    #[error(
        "domain name {domain:?} exists on several hosts ({uris}): connect only to the host that should own the member"
    )]
    /// Several connected hosts have a domain of that name.
    AmbiguousDomain {
        /// The name given.
        domain: String,
        /// The hosts that have it, comma-separated.
        uris: String,
    },
    #[error(
        "unknown group {group:?}: no domain on {uris} is a member; create it with `cgsnap group add {group} DOMAIN...`"
    )]
    /// No domain on the connected hosts is a member of the group.
    UnknownGroup {
        /// The group given.
        group: String,
        /// The hosts searched, comma-separated.
        uris: String,
    },
    #[error(
        "domain {domain} has malformed cgsnap metadata ({detail}): fix it with `virsh metadata {domain} {ns} --remove` and re-add the domain"
    )]
    /// A domain's membership element is not valid XML.
    BadMetadata {
        /// The domain.
        domain: String,
        /// Its namespace ([`NS`]).
        ns: &'static str,
        /// What the XML parser said.
        detail: String,
    },
    /// A libvirt call failed.
    #[error(transparent)]
    Hv(#[from] HvError),
}

impl Classify for GroupError {
    fn exit_code(&self) -> ExitCode {
        match self {
            GroupError::InvalidName(_) => ExitCode::Usage,
            GroupError::UnknownDomain { .. } | GroupError::UnknownGroup { .. } => {
                ExitCode::NotFound
            }
            GroupError::AmbiguousDomain { .. } => ExitCode::Usage,
            GroupError::BadMetadata { .. } => ExitCode::Malformed,
            GroupError::Hv(e) => e.exit_code(),
        }
    }
}

/// One member of a group, as resolved right now.
#[derive(Debug, Clone)]
pub struct Member {
    /// The host it is defined on.
    pub host: Arc<dyn Host>,
    /// Its domain name there.
    pub domain: String,
    /// Its run state when resolved.
    pub state: DomState,
}

impl std::fmt::Debug for dyn Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Host({})", self.uri())
    }
}

/// Accept `name` only if it is 1-64 letters, digits, `.`, `_` or `-`, starting with a letter
/// or digit.
pub(crate) fn validate_name(name: &str) -> Result<(), GroupError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(GroupError::InvalidName(name.to_string()))
    }
}

/// Group names in a membership element (libvirt may return it with or without a prefix).
pub fn parse_membership(xml: &str) -> Result<Vec<String>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let mut out: Vec<String> = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "group")
        .filter_map(|n| n.attribute("name").map(str::to_string))
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// The membership element listing `groups` (escaped), to store under [`NS`].
pub fn membership_xml(groups: &[String]) -> String {
    let mut x = String::from("<membership>");
    for g in groups {
        x.push_str(&format!("<group name=\"{}\"/>", crate::domxml::escape(g)));
    }
    x.push_str("</membership>");
    x
}

fn uris(hosts: &[Arc<dyn Host>]) -> String {
    hosts
        .iter()
        .map(|h| h.uri().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn groups_of(host: &dyn Host, domain: &str) -> Result<Vec<String>, GroupError> {
    match host.metadata(domain, NS)? {
        None => Ok(Vec::new()),
        Some(x) => parse_membership(&x).map_err(|detail| GroupError::BadMetadata {
            domain: domain.to_string(),
            ns: NS,
            detail,
        }),
    }
}

/// Find the single host that has a domain of this name.
fn locate(hosts: &[Arc<dyn Host>], domain: &str) -> Result<Arc<dyn Host>, GroupError> {
    let mut found = Vec::new();
    for h in hosts {
        if h.list_domains()?.iter().any(|d| d.name == domain) {
            found.push(h.clone());
        }
    }
    match found.len() {
        0 => Err(GroupError::UnknownDomain {
            domain: domain.to_string(),
            uris: uris(hosts),
        }),
        1 => Ok(found.remove(0)),
        _ => Err(GroupError::AmbiguousDomain {
            domain: domain.to_string(),
            uris: uris(&found),
        }),
    }
}

/// Add domains to a group. All domains are located before any metadata is written, so an
/// unknown name changes nothing.
pub fn add(hosts: &[Arc<dyn Host>], group: &str, domains: &[String]) -> Result<(), GroupError> {
    validate_name(group)?;
    let located = domains
        .iter()
        .map(|d| locate(hosts, d).map(|h| (h, d)))
        .collect::<Result<Vec<_>, _>>()?;
    for (h, d) in located {
        let mut gs = groups_of(h.as_ref(), d)?;
        if !gs.iter().any(|g| g == group) {
            gs.push(group.to_string());
            gs.sort();
            h.set_metadata(d, NS, NS_KEY, Some(&membership_xml(&gs)))?;
        }
    }
    Ok(())
}

/// Remove domains from a group (all members when `domains` is empty).
pub fn remove(
    hosts: &[Arc<dyn Host>],
    group: &str,
    domains: &[String],
) -> Result<usize, GroupError> {
    validate_name(group)?;
    let targets: Vec<(Arc<dyn Host>, String)> = if domains.is_empty() {
        resolve(hosts, group)?
            .into_iter()
            .map(|m| (m.host, m.domain))
            .collect()
    } else {
        domains
            .iter()
            .map(|d| locate(hosts, d).map(|h| (h, d.clone())))
            .collect::<Result<_, _>>()?
    };
    let mut n = 0;
    for (h, d) in targets {
        let mut gs = groups_of(h.as_ref(), &d)?;
        let before = gs.len();
        gs.retain(|g| g != group);
        if gs.len() != before {
            n += 1;
            let xml = (!gs.is_empty()).then(|| membership_xml(&gs));
            h.set_metadata(&d, NS, NS_KEY, xml.as_deref())?;
        }
    }
    Ok(n)
}

/// Every group on the given hosts with its members, sorted by group then host then domain.
pub fn list(hosts: &[Arc<dyn Host>]) -> Result<BTreeMap<String, Vec<Member>>, GroupError> {
    let mut out: BTreeMap<String, Vec<Member>> = BTreeMap::new();
    for h in hosts {
        for d in h.list_domains()? {
            let groups = match groups_of(h.as_ref(), &d.name) {
                // Destroyed between the listing and this lookup (a transient domain going
                // away): it is a member of nothing now, and no reason to fail every group.
                Err(GroupError::Hv(e)) if e.kind == HvErrorKind::NoDomain => continue,
                r => r?,
            };
            for g in groups {
                out.entry(g).or_default().push(Member {
                    host: h.clone(),
                    domain: d.name.clone(),
                    state: d.state,
                });
            }
        }
    }
    Ok(out)
}

/// The members of one group right now; an empty group is an error.
pub fn resolve(hosts: &[Arc<dyn Host>], group: &str) -> Result<Vec<Member>, GroupError> {
    validate_name(group)?;
    let mut all = list(hosts)?;
    all.remove(group)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| GroupError::UnknownGroup {
            group: group.to_string(),
            uris: uris(hosts),
        })
}

#[cfg(test)]
/// Unit tests: a local fake host with domain `db` (one disk in `dir`) in each of `groups`, as the hosts
/// list the commands take.
pub(crate) fn db_in_groups(
    dir: &std::path::Path,
    groups: &[&str],
) -> Vec<std::sync::Arc<dyn crate::hypervisor::Host>> {
    let h = crate::hypervisor::fake::FakeHost::new("qemu:///system");
    h.add(
        "db",
        &crate::hypervisor::fake::one_disk(&format!("{}/db.qcow2", dir.display()), ""),
    );
    let hosts: Vec<std::sync::Arc<dyn crate::hypervisor::Host>> = vec![std::sync::Arc::new(h)];
    for g in groups {
        add(&hosts, g, &["db".to_string()]).expect("group add");
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::fake::FakeHost;

    fn hosts() -> (Arc<FakeHost>, Arc<FakeHost>, Vec<Arc<dyn Host>>) {
        let a = Arc::new(FakeHost::new("fake://a"));
        let b = Arc::new(FakeHost::new("fake://b"));
        a.add("db1", "<domain/>");
        a.add("web", "<domain/>");
        b.add("db2", "<domain/>");
        b.add("web", "<domain/>");
        let hs: Vec<Arc<dyn Host>> = vec![a.clone(), b.clone()];
        (a, b, hs)
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("prod-db_1.x").is_ok());
        for bad in ["", "-x", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn add_resolve_remove_across_hosts() {
        let (_a, _b, hs) = hosts();
        add(&hs, "g", &["db1".into(), "db2".into()]).expect("add");
        add(&hs, "other", &["db1".into()]).expect("add");
        let m = resolve(&hs, "g").expect("resolve");
        let names: Vec<_> = m
            .iter()
            .map(|m| (m.host.uri().to_string(), m.domain.clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("fake://a".into(), "db1".into()),
                ("fake://b".into(), "db2".into())
            ]
        );
        assert_eq!(remove(&hs, "g", &[]).expect("remove"), 2);
        assert!(matches!(
            resolve(&hs, "g"),
            Err(GroupError::UnknownGroup { .. })
        ));
        assert_eq!(resolve(&hs, "other").expect("still there").len(), 1);
    }

    #[test]
    fn a_domain_gone_between_listing_and_lookup_is_in_no_group() {
        let (a, _b, hs) = hosts();
        add(&hs, "g", &["db1".to_string()]).expect("add");
        a.fail_on("vanish", "web");
        let m = resolve(&hs, "g").expect("resolves despite the vanished domain");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].domain, "db1");
    }

    #[test]
    fn unknown_domain_changes_nothing() {
        let (a, _b, hs) = hosts();
        let e = add(&hs, "g", &["db1".into(), "nope".into()]).unwrap_err();
        assert!(e.to_string().contains("\"nope\""));
        assert_eq!(e.exit_code(), ExitCode::NotFound);
        assert!(!a.calls().iter().any(|c| c.starts_with("set_metadata")));
    }

    #[test]
    fn ambiguous_domain_is_refused() {
        let (_a, _b, hs) = hosts();
        let e = add(&hs, "g", &["web".into()]).unwrap_err();
        assert!(matches!(e, GroupError::AmbiguousDomain { .. }));
    }

    #[test]
    fn membership_roundtrip_with_prefix() {
        let x = membership_xml(&["a".into(), "b".into()]);
        assert_eq!(parse_membership(&x).expect("parse"), vec!["a", "b"]);
        let prefixed = format!(
            "<cgsnap:membership xmlns:cgsnap=\"{NS}\"><cgsnap:group name=\"z\"/></cgsnap:membership>"
        );
        assert_eq!(parse_membership(&prefixed).expect("parse"), vec!["z"]);
    }
}
