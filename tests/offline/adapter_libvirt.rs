//! The libvirt adapter against libvirt's own in-process test driver, below the real-VM tests:
//! states and their reasons, XML, metadata written and read back through real libvirt, group
//! membership stored there, and errors that name the domain, the operation and the URI with
//! the kind the callers branch on. Needs no daemon.
//!
//! Each test opens `test:///FILE` on its own node file (one running, persistent domain
//! `test`): a private host, where `test:///default` would be one state shared by every
//! connection of the process, i.e. by tests running in parallel.

use cgsnap::group;
use cgsnap::hypervisor::libvirt::LibvirtHost;
use cgsnap::hypervisor::{DomState, Host, HvErrorKind};
use std::sync::Arc;

/// A private test-driver host and its URI (the node file must outlive the connection).
struct TestHost {
    host: Arc<LibvirtHost>,
    uri: String,
    _dir: tempfile::TempDir,
}

fn host() -> TestHost {
    let dir = tempfile::tempdir().expect("tmp");
    let node = dir.path().join("node.xml");
    std::fs::write(
        &node,
        "<node><domain type='test'><name>test</name><memory>8192</memory>\
         <os><type>hvm</type></os></domain></node>",
    )
    .expect("node file");
    let uri = format!("test://{}", node.display());
    TestHost {
        host: Arc::new(LibvirtHost::open(&uri).expect("libvirt's test driver")),
        uri,
        _dir: dir,
    }
}

#[test]
fn lists_and_reports_states_with_their_reason() {
    let t = host();
    let h = &t.host;
    let doms = h.list_domains().expect("list");
    let dom = doms
        .iter()
        .find(|d| d.name == "test")
        .expect("the driver's domain");
    assert_eq!(dom.state, DomState::Running);
    assert!(dom.persistent && h.persistent("test").expect("persistent"));
    assert!(h.xml("test").expect("xml").contains("<name>test</name>"));

    h.suspend("test").expect("suspend");
    // Paused by an API call: the only kind of pause the watchdog may undo.
    assert_eq!(h.state("test").expect("state"), DomState::PausedByUser);
    h.resume("test").expect("resume");
    assert_eq!(h.state("test").expect("state"), DomState::Running);
}

#[test]
fn metadata_round_trips_and_absent_metadata_is_none() {
    let t = host();
    let h = &t.host;
    let ns = group::NS;
    assert_eq!(h.metadata("test", ns).expect("read"), None);
    let xml = group::membership_xml(&["a".to_string(), "b".to_string()]);
    h.set_metadata("test", ns, group::NS_KEY, Some(&xml))
        .expect("write");
    let back = h.metadata("test", ns).expect("read").expect("present");
    assert_eq!(
        group::parse_membership(&back).expect("parses"),
        ["a", "b"],
        "{back}"
    );
    // Stored in the domain's XML, under its own namespace.
    assert!(h.xml("test").expect("xml").contains(ns));
    h.set_metadata("test", ns, group::NS_KEY, None)
        .expect("remove");
    assert_eq!(h.metadata("test", ns).expect("read"), None);
}

#[test]
fn groups_live_in_the_domains_metadata() {
    let t = host();
    let h = &t.host;
    let hosts: Vec<Arc<dyn Host>> = vec![h.clone()];
    group::add(&hosts, "g1", &["test".to_string()]).expect("add");
    group::add(&hosts, "g2", &["test".to_string()]).expect("add to a second group");
    let members = group::resolve(&hosts, "g1").expect("resolve");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].domain, "test");
    assert_eq!(members[0].host.uri(), t.uri);
    assert_eq!(members[0].state, DomState::Running);

    // Both memberships, as libvirt stores them.
    let raw = h
        .metadata("test", group::NS)
        .expect("read")
        .expect("present");
    assert_eq!(group::parse_membership(&raw).expect("parses"), ["g1", "g2"]);

    assert_eq!(
        group::remove(&hosts, "g1", &[]).expect("remove all of g1"),
        1
    );
    let e = group::resolve(&hosts, "g1").expect_err("g1 is empty now");
    assert!(e.to_string().contains("g1"), "{e}");
    assert_eq!(group::resolve(&hosts, "g2").expect("g2 kept").len(), 1);
    let e = group::add(&hosts, "g3", &["nope".to_string()]).expect_err("unknown domain");
    assert!(e.to_string().contains("nope"), "{e}");
    assert_eq!(group::resolve(&hosts, "g2").expect("unchanged").len(), 1);
}

#[test]
fn errors_name_the_domain_the_operation_and_the_uri() {
    let t = host();
    let h = &t.host;
    let e = h.state("nope").expect_err("no such domain");
    assert_eq!(e.kind, HvErrorKind::NoDomain);
    let msg = e.to_string();
    assert!(
        msg.contains("nope") && msg.contains(&t.uri) && msg.contains("lookup domain"),
        "{msg}"
    );
    assert_eq!(
        h.suspend("nope").expect_err("no such domain").kind,
        HvErrorKind::NoDomain
    );

    // Resuming a running domain is refused by libvirt, and reported as such (not as a
    // missing domain, which callers treat as "vanished").
    let e = h.resume("test").expect_err("not paused");
    assert_eq!(e.kind, HvErrorKind::Other);
    assert!(e.to_string().contains("resume on test"), "{e}");

    let far = "qemu+unix:///system?socket=/nonexistent/cgsnap-adapter.sock";
    let e = LibvirtHost::open(far).err().expect("unreachable");
    assert_eq!(e.kind, HvErrorKind::Connection);
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("cannot connect to libvirt at {far}:"))
            && msg.contains("--connect"),
        "{msg}"
    );
}
