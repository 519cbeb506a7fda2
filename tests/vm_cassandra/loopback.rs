//! The network rule, checked on a real verify: the host never connects to a guest's user-mode
//! address. The Cassandra driver learns the node's address (`10.0.2.15`) from `system.local`
//! and `system.peers`; every connection must still go to the loopback forward. `strace` records
//! each `connect()` of verify and of every process it starts.

use crate::common::{Lab, URI};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The address of an `AF_INET`/`AF_INET6` `connect()` line of strace, `None` for other families.
fn inet_address(line: &str) -> Option<&str> {
    let key = if line.contains("AF_INET6") {
        "inet_pton(AF_INET6, \""
    } else if line.contains("AF_INET") {
        "inet_addr(\""
    } else {
        return None;
    };
    let rest = &line[line.find(key)? + key.len()..];
    rest.split('"').next()
}

fn loopback(a: &str) -> bool {
    a.starts_with("127.") || a == "::1" || a.starts_with("::ffff:127.")
}

/// Verify `bed` under strace, then release it: the report, the exit code, and how many inet
/// connections went to loopback. Fails if any went elsewhere.
pub fn traced_verify(lab: &Lab, bed: &str, profile: &Path) -> (serde_json::Value, i32, usize) {
    let trace = lab.catalog.path().join("connect.strace");
    let out = Command::new("strace")
        // Only connect() stops the tracees (seccomp filter), so verify runs at its own pace.
        .args(["-f", "-qq", "--seccomp-bpf", "-e", "trace=connect", "-o"])
        .arg(&trace)
        .arg(assert_cmd::cargo::cargo_bin("cgsnap"))
        .args(["--connect", URI, "--catalog"])
        .arg(lab.catalog.path())
        .args(["verify", "--group", bed, "--json", "--base-port", "40400"])
        .arg("--profile")
        .arg(profile)
        .output()
        .expect("strace (testbeds/host-setup.sh installs it)");
    lab.cgsnap()
        .args(["hook", "post", "--group", bed])
        .timeout(Duration::from_secs(300))
        .assert()
        .success();
    let code = out.status.code().unwrap_or(-1);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "report json ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let text = std::fs::read_to_string(&trace).expect("strace output");
    let addrs: Vec<&str> = text.lines().filter_map(inet_address).collect();
    let elsewhere: Vec<&&str> = addrs.iter().filter(|a| !loopback(a)).collect();
    assert!(
        elsewhere.is_empty(),
        "verify connected outside loopback: {elsewhere:?}"
    );
    (r, code, addrs.len())
}

#[test]
fn strace_lines_are_read_by_family() {
    let v4 = r#"123 connect(9, {sa_family=AF_INET, sin_port=htons(40400), sin_addr=inet_addr("127.0.0.1")}, 16) = -1 EINPROGRESS"#;
    let far = r#"123 connect(9, {sa_family=AF_INET, sin_port=htons(9042), sin_addr=inet_addr("10.0.2.15")}, 16) = 0"#;
    let v6 = r#"9 connect(4, {sa_family=AF_INET6, sin6_port=htons(5432), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0"#;
    let unix =
        r#"9 connect(3, {sa_family=AF_UNIX, sun_path="/var/run/libvirt/libvirt-sock"}, 110) = 0"#;
    assert_eq!(inet_address(v4), Some("127.0.0.1"));
    assert_eq!(inet_address(far), Some("10.0.2.15"));
    assert_eq!(inet_address(v6), Some("::1"));
    assert_eq!(inet_address(unix), None);
    assert!(loopback("127.0.0.1") && loopback("::1") && !loopback("10.0.2.15"));
}
