//! The shipped Bareos/Bacula snippet (`hooks/bareos/cgsnap-job.conf`), without a backup daemon:
//! - its RunScript blocks are exactly the hook contract: pre before the job with
//!   FailJobOnError, post after it on success and on failure, both on the client (the libvirt
//!   host), and its only `Command = "..."` lines are `cgsnap hook pre|post --group GROUP
//!   --token jobid-%i` (the JobId: one token per job, shared by its pre and post);
//! - those command lines run as written against the real `cgsnap` binary (`test:///default`,
//!   empty catalog, `%i` as a JobId): post says there is nothing of its job to release, pre
//!   finds no such group;
//! - the FileSet reads the image directory and excludes `*.cgsnap-overlay` and cgsnap's
//!   scratch directories there (`cgsnap-verify`, `cgsnap-restore`);
//! - Debian's Bacula director parses it (`bacula-dir -t`, extracted by `testbeds/host-setup.sh`
//!   into /var/cache/cgsnap/bacula), and rejects a copy with a misspelled directive, which shows
//!   the check reads the snippet. Debian 12 has no Bareos package; Bareos shares these directives.

use crate::common::bacula::conf as bacula_conf;
use std::process::Command;

const SNIPPET: &str = include_str!("../../hooks/bareos/cgsnap-job.conf");
const PRE: &str = "cgsnap hook pre --group GROUP --token jobid-%i";
const POST: &str = "cgsnap hook post --group GROUP --token jobid-%i";

/// The snippet without comments.
fn code() -> String {
    SNIPPET
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The bodies of every `NAME { ... }` block (outermost matching braces) in `text`.
fn blocks(text: &str, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(name) {
        let after = &rest[i + name.len()..];
        let Some(open) = after.find('{') else { break };
        if !after[..open].trim().is_empty() {
            rest = after;
            continue;
        }
        let mut depth = 0;
        let mut end = None;
        for (j, ch) in after[open..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(open + j);
                        break;
                    }
                }
                _ => {}
            }
        }
        let end = end.expect("balanced braces");
        out.push(after[open + 1..end].to_string());
        rest = &after[end..];
    }
    out
}

/// `key = value` pairs directly in a block body, keys normalised the way Bacula compares them
/// (case and spaces ignored), values unquoted.
fn directives(body: &str) -> Vec<(String, String)> {
    body.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.contains('{'))
        .map(|(k, v)| {
            (
                k.replace(' ', "").to_lowercase(),
                v.trim().trim_matches('"').to_string(),
            )
        })
        .collect()
}

fn get<'a>(d: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    d.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn runscripts_are_the_hook_contract() {
    let code = code();
    let scripts: Vec<Vec<(String, String)>> = blocks(&code, "RunScript")
        .iter()
        .map(|b| directives(b))
        .collect();
    assert_eq!(scripts.len(), 2, "one pre and one post RunScript");
    let pre = &scripts[0];
    let post = &scripts[1];
    assert_eq!(get(pre, "runswhen"), ["Before"]);
    assert_eq!(get(pre, "failjobonerror"), ["yes"]);
    assert_eq!(get(pre, "runsonclient"), ["yes"]);
    assert_eq!(get(pre, "command"), [PRE]);
    assert_eq!(get(post, "runswhen"), ["After"]);
    assert_eq!(get(post, "runsonsuccess"), ["yes"]);
    assert_eq!(get(post, "runsonfailure"), ["yes"]);
    assert_eq!(get(post, "runsonclient"), ["yes"]);
    assert_eq!(get(post, "command"), [POST]);

    // Every Command line of the file, wherever it is: exactly the two hook calls.
    let commands: Vec<&str> = code
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Command"))
        .filter_map(|r| r.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"'))
        .collect();
    assert_eq!(commands, [PRE, POST]);
}

#[test]
fn commands_run_as_written_against_the_cli() {
    let catalog = tempfile::tempdir().expect("catalog");
    let run = |cmd: &str| {
        let words: Vec<String> = cmd
            .replace("GROUP", "g1")
            .replace("%i", "42")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        assert_eq!(words[0], "cgsnap");
        Command::new(assert_cmd::cargo::cargo_bin("cgsnap"))
            .args(&words[1..])
            .env("CGSNAP_CATALOG", catalog.path())
            .env("LIBVIRT_DEFAULT_URI", "test:///default")
            .output()
            .expect("run cgsnap")
    };
    let post = run(POST);
    assert_eq!(post.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&post.stdout).trim(),
        "cgsnap: nothing to release for group g1 (token jobid-42)"
    );
    let pre = run(PRE);
    assert_eq!(
        pre.status.code(),
        Some(3),
        "unknown group, not a usage error: {}",
        String::from_utf8_lossy(&pre.stderr)
    );
}

#[test]
fn fileset_reads_images_and_excludes_overlays() {
    let code = code();
    let filesets = blocks(&code, "FileSet");
    assert_eq!(filesets.len(), 1);
    let include = blocks(&filesets[0], "Include");
    assert_eq!(include.len(), 1);
    assert_eq!(
        get(&directives(&include[0]), "file"),
        ["/var/lib/libvirt/images"]
    );
    let excluding: Vec<Vec<(String, String)>> = blocks(&include[0], "Options")
        .iter()
        .map(|b| directives(b))
        .filter(|d| get(d, "exclude") == ["yes"])
        .collect();
    assert_eq!(excluding.len(), 1, "one excluding Options block");
    assert_eq!(get(&excluding[0], "wildfile"), ["*.cgsnap-overlay"]);
    // cgsnap's scratch directories inside the image directory: verify's sandboxes and the
    // restores of the systemd units and the cron job.
    let exclude = blocks(&filesets[0], "Exclude");
    assert_eq!(exclude.len(), 1, "one Exclude block");
    assert_eq!(
        get(&directives(&exclude[0]), "file"),
        [
            "/var/lib/libvirt/images/cgsnap-verify",
            "/var/lib/libvirt/images/cgsnap-restore"
        ]
    );
    // The job backs up this FileSet.
    let job = directives(&blocks(&code, "Job")[0]);
    let fs = directives(&filesets[0]);
    assert_eq!(get(&job, "fileset"), get(&fs, "name"));
}

/// `bacula-dir -t` on the test director configuration (the one `tests/vm/bacula.rs` runs)
/// including `snippet`, in a fresh directory with its catalog.
fn parse_check(snippet: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let file = d.join("cgsnap-job.conf");
    std::fs::write(&file, snippet).expect("snippet");
    // The unfilled snippet's FileSet is `cgsnap-GROUP`.
    bacula_conf::write_configs(d, "GROUP", &[file]);
    bacula_conf::create_catalog(d);
    bacula_conf::program("bacula-dir")
        .arg("-t")
        .arg("-c")
        .arg(d.join("dir.conf"))
        .output()
        .expect("run bacula-dir")
}

#[test]
fn bacula_director_parses_the_snippet() {
    let out = parse_check(SNIPPET);
    assert!(
        out.status.success(),
        "bacula-dir -t: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Negative control: a misspelled directive in the snippet fails the same check.
    let out = parse_check(&SNIPPET.replace("RunsOnFailure = yes", "RunsOnFailur = yes"));
    assert!(!out.status.success(), "a broken snippet must not parse");
    let err =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RunsOnFailur"), "{err}");
}
