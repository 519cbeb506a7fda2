//! `cgsnap report` and `cgsnap group policy` on a catalog holding four weeks of generated
//! history, through the real binary: the JSON validates against the documented schema
//! (`docs/report.schema.json`, with Debian's python3-jsonschema), the text names each group's
//! status, and the HTML page renders in headless Chromium with no console or load error, no
//! horizontal scroll at the narrowest window Chromium opens, every chart drawn, and prints to
//! PDF. The screenshot and the PDF are kept under `target/artifacts/report/`.
//!
//! Each checker is first shown to fail on a page or a document made to fail.

use cgsnap::catalog::{Catalog, Manifest, MemberRecord, SnapState};
use chrono::{DateTime, Duration, Utc};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/report.schema.json");

fn cgsnap(cat: &Path, args: &[&str]) -> Output {
    Command::new(assert_cmd::cargo::cargo_bin("cgsnap"))
        .arg("--catalog")
        .arg(cat)
        .args(args)
        .output()
        .expect("cgsnap")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `cgsnap group policy GROUP --max-age MAX_AGE --rpo 5s --rto 2m`; its output.
fn set_policy(cat: &Path, group: &str, max_age: &str) -> String {
    ok(&cgsnap(
        cat,
        &[
            "group",
            "policy",
            group,
            "--max-age",
            max_age,
            "--rpo",
            "5s",
            "--rto",
            "2m",
        ],
    ))
}

fn snap(cat: &Catalog, group: &str, at: DateTime<Utc>, state: SnapState) -> Manifest {
    let m = Manifest {
        consistency_point: Some(at + Duration::milliseconds(300)),
        freeze_window_ms: Some(35.0 + (at.timestamp() % 17) as f64),
        members: ["cgsnap-orders", "cgsnap-payments"]
            .map(|d| MemberRecord::new(d, "qemu:///system", String::new(), vec![]))
            .to_vec(),
        error: (state == SnapState::Aborted).then(|| "member cgsnap-orders is shut off".into()),
        ..Manifest::new(&cgsnap::catalog::new_id(group, at), group, state, at)
    };
    cat.write(&m).expect("write");
    m
}

fn verified(cat: &Catalog, m: &Manifest, pass: bool, k: f64) {
    let dir = cat.report_dir(&m.id);
    std::fs::create_dir_all(&dir).expect("dir");
    let member = |d: &str, rto: f64| {
        serde_json::json!({"domain": d, "recovery_seconds": rto, "data_loss_seconds": 0.2 + k / 10.0,
            "checks": [{"name": "invariants", "ok": pass, "evidence": "orders without payment: 3"}]})
    };
    let r = serde_json::json!({
        "verdict": if pass { "pass" } else { "fail" },
        "finished_at": m.created_at + Duration::minutes(9), "rpo_seconds": 5.0,
        "members": [member("cgsnap-orders", 40.0 + k), member("cgsnap-payments", 30.0 + 2.0 * k)],
    });
    std::fs::write(dir.join("report.json"), r.to_string()).expect("report.json");
    std::fs::write(dir.join("report.html"), "<!doctype html><title>run</title>").expect("html");
}

/// `pg`: four weeks of nightly snapshots, verified, one failed verification, one aborted run
/// and a staggered negative control every week; `stale`: its only restore point is 3 days old.
fn history(dir: &Path) -> Catalog {
    let cat = Catalog::open(dir).expect("catalog");
    let now = Utc::now();
    for night in (0..28).rev() {
        let at = now - Duration::days(night) - Duration::hours(2);
        if night == 6 {
            snap(&cat, "pg", at, SnapState::Aborted);
            continue;
        }
        let m = snap(&cat, "pg", at, SnapState::Released);
        verified(&cat, &m, night != 12, (28 - night) as f64);
        if night % 7 == 2 {
            let mut c = snap(&cat, "pg", at + Duration::minutes(30), SnapState::Released);
            c.unsafe_stagger_ms = Some(1000);
            c.freeze_window_ms = None;
            cat.write(&c).expect("write");
            verified(&cat, &c, false, 1.0);
        }
    }
    let m = snap(&cat, "stale", now - Duration::days(3), SnapState::Released);
    verified(&cat, &m, true, 1.0);
    cat
}

/// Errors of `doc` against the documented schema, one per line (none: valid).
fn schema_errors(doc: &serde_json::Value) -> String {
    let script = "import json,sys,jsonschema\n\
        s=json.load(open(sys.argv[1]));d=json.load(sys.stdin)\n\
        v=jsonschema.Draft202012Validator(s,format_checker=jsonschema.FormatChecker())\n\
        v.check_schema(s)\n\
        [print(e.json_path, e.message) for e in v.iter_errors(d)]";
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script, SCHEMA])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (python3-jsonschema, installed by testbeds/host-setup.sh)");
    std::io::Write::write_all(
        child.stdin.as_mut().expect("stdin"),
        doc.to_string().as_bytes(),
    )
    .expect("write");
    let out = child.wait_with_output().expect("python3");
    assert!(
        out.status.success(),
        "validator: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn policy_report_json_and_text_on_weeks_of_history() {
    let d = tempfile::tempdir().expect("tempdir");
    let cat = d.path();
    history(cat);
    let set = set_policy(cat, "pg", "26h");
    assert!(set.contains("at most 1d 2h old, RPO 5s, RTO 2m"), "{set}");
    set_policy(cat, "stale", "1d");
    let shown = ok(&cgsnap(cat, &["group", "policy", "pg", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&shown).expect("json");
    assert_eq!(v["max_restore_point_age_seconds"], 93600.0);
    // A first policy must be complete; a group nobody knows gets none.
    ok(&cgsnap(cat, &["group", "policy", "stale", "--clear"]));
    let o = cgsnap(cat, &["group", "policy", "stale", "--rpo", "5s"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    set_policy(cat, "stale", "1d");
    let o = cgsnap(
        cat,
        &[
            "--connect",
            "test:///default",
            "group",
            "policy",
            "nosuch",
            "--max-age",
            "1d",
            "--rpo",
            "1s",
            "--rto",
            "1s",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("nosuch"));

    let json = ok(&cgsnap(cat, &["report", "--json"]));
    let r: serde_json::Value = serde_json::from_str(&json).expect("report json");
    let errors = schema_errors(&r);
    assert!(errors.is_empty(), "schema violations:\n{errors}");
    // The validator is not vacuous: an undocumented field and an unknown status fail it.
    let mut bad = r.clone();
    bad["groups"][0]["status"] = "fine".into();
    bad["groups"][0]["surprise"] = 1.into();
    let errors = schema_errors(&bad);
    assert!(
        errors.contains("fine") && errors.contains("surprise"),
        "{errors}"
    );

    let g = |name: &str| {
        r["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .find(|g| g["group"] == name)
            .cloned()
            .expect(name)
    };
    let pg = g("pg");
    assert_eq!(pg["status"], "compliant", "{}", pg["reasons"]);
    assert_eq!(pg["counts"]["negative_controls_caught"], 4);
    assert_eq!(pg["counts"]["verifications_failed"], 1);
    assert_eq!(pg["failures"].as_array().expect("failures").len(), 2);
    assert_eq!(g("stale")["status"], "violated");

    let text = ok(&cgsnap(cat, &["report", "--since", "7d"]));
    assert!(
        text.contains("pg: COMPLIANT - verified restore point pg-"),
        "{text}"
    );
    assert!(
        text.contains("stale: VIOLATED - newest verified restore point stale-"),
        "{text}"
    );
    assert!(
        text.contains("aborted") || text.contains("snapshot: member cgsnap-orders is shut off"),
        "{text}"
    );

    // A typo in a policy file is an error naming it, not a silently missing target.
    std::fs::write(cat.join("policies/pg.toml"), "max_age = \"1d\"\n").expect("write");
    let o = cgsnap(cat, &["report"]);
    assert_eq!(o.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&o.stderr).contains("pg.toml"));
}

/// The artifact directory under the target directory (`target/artifacts/report`).
fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    // target/debug/deps/offline-HASH
    let target = exe.ancestors().nth(3).expect("target dir");
    let d = target.join("artifacts").join("report");
    std::fs::create_dir_all(&d).expect("artifacts");
    d
}

fn chromium(profile: &Path, args: &[&str], url: &str) -> Output {
    Command::new("chromium")
        .args(crate::common::CHROMIUM_FLAGS)
        .args([
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium (installed by testbeds/host-setup.sh)")
}

/// What the page did in the browser, measured by a probe script put into a copy of it: load
/// and script errors, console lines, layout width, the drawn size of every chart.
#[derive(Debug)]
struct Probe {
    errors: Vec<String>,
    console: Vec<String>,
    scroll_width: f64,
    inner_width: f64,
    svgs: Vec<(f64, f64)>,
    resources: u64,
    text: String,
}

const PROBE: &str = "<script>window.__e=[];addEventListener('error',function(e){__e.push(e.message||\
    (e.target&&(e.target.src||e.target.href))||'error')},true);addEventListener('load',function(){\
    var p=document.createElement('pre');p.id='cgsnap-probe';p.textContent=JSON.stringify({errors:__e,\
    scroll:document.documentElement.scrollWidth,inner:innerWidth,svgs:[].map.call(document.querySelectorAll\
    ('svg'),function(s){var b=s.getBoundingClientRect();return [b.width,b.height]}),resources:\
    performance.getEntriesByType('resource').length,text:document.body.innerText.slice(0,4000)});\
    document.body.appendChild(p)})</script>";

fn probe(page: &Path, profile: &Path) -> Probe {
    let html = std::fs::read_to_string(page).expect("page");
    let copy = page.with_file_name("probe.html");
    std::fs::write(&copy, html.replacen("<head>", &format!("<head>{PROBE}"), 1)).expect("copy");
    let out = chromium(
        profile,
        &["--window-size=390,844", "--dump-dom"],
        &format!("file://{}", copy.display()),
    );
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    let start = dom.find("<pre id=\"cgsnap-probe\">").expect("probe ran") + 23;
    let end = start + dom[start..].find("</pre>").expect("probe end");
    let raw = dom[start..end]
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    let v: serde_json::Value = serde_json::from_str(&raw).expect("probe json");
    let console = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    Probe {
        errors: v["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|e| e.to_string())
            .collect(),
        console,
        scroll_width: v["scroll"].as_f64().expect("scroll"),
        inner_width: v["inner"].as_f64().expect("inner"),
        svgs: v["svgs"]
            .as_array()
            .expect("svgs")
            .iter()
            .map(|s| (s[0].as_f64().unwrap_or(0.0), s[1].as_f64().unwrap_or(0.0)))
            .collect(),
        resources: v["resources"].as_u64().expect("resources"),
        text: v["text"].as_str().unwrap_or_default().to_string(),
    }
}

#[test]
fn the_report_page_renders_in_chromium_on_a_phone_and_prints() {
    let d = tempfile::tempdir().expect("tempdir");
    let cat = d.path().join("catalog");
    history(&cat);
    set_policy(&cat, "pg", "26h");
    set_policy(&cat, "stale", "1d");
    ok(&cgsnap(&cat, &["report"]));
    let page = cat.join("reports/index.html");
    let profile = d.path().join("chromium");

    // The checker catches what it must: a script error, a console line, a missing image and
    // a page wider than the window.
    let broken = d.path().join("broken.html");
    std::fs::write(
        &broken,
        "<!doctype html><html><head></head><body><p style='width:2000px'>x</p><img src='gone.png'>\
         <script>console.error('boom');undefinedFunction()</script></body></html>",
    )
    .expect("broken page");
    let b = probe(&broken, &profile);
    assert!(b.errors.len() >= 2, "{b:?}");
    assert!(!b.console.is_empty(), "{b:?}");
    assert!(b.scroll_width > b.inner_width, "{b:?}");

    let p = probe(&page, &profile);
    assert!(p.errors.is_empty(), "page errors: {:?}", p.errors);
    assert!(p.console.is_empty(), "console: {:?}", p.console);
    assert_eq!(p.resources, 0, "self-contained: nothing loaded");
    assert!(
        p.scroll_width <= p.inner_width,
        "no horizontal scroll at {} px: page is {} px wide",
        p.inner_width,
        p.scroll_width
    );
    assert_eq!(p.svgs.len(), 6, "three charts per group");
    for (w, h) in &p.svgs {
        assert!(*w > 200.0 && *h > 60.0, "chart drawn at {w}x{h}");
    }
    assert!(
        p.text.contains("COMPLIANT") && p.text.contains("VIOLATED"),
        "{}",
        p.text
    );

    let art = artifacts();
    let shot = art.join("report.png");
    let pdf = art.join("report.pdf");
    let url = format!("file://{}", page.display());
    let s = chromium(
        &profile,
        &[
            "--window-size=1200,2400",
            &format!("--screenshot={}", shot.display()),
        ],
        &url,
    );
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    let png = std::fs::read(&shot).expect("screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    let s = chromium(
        &profile,
        &[
            "--no-pdf-header-footer",
            &format!("--print-to-pdf={}", pdf.display()),
        ],
        &url,
    );
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    let doc = std::fs::read(&pdf).expect("pdf");
    assert!(doc.starts_with(b"%PDF"), "a PDF");
    let pages = String::from_utf8_lossy(&doc)
        .matches("/Type /Page\n")
        .count()
        + String::from_utf8_lossy(&doc)
            .matches("/Type /Page/")
            .count()
        + String::from_utf8_lossy(&doc)
            .matches("/Type /Page ")
            .count();
    println!(
        "report page: {} bytes; screenshot {} ({} bytes); PDF {} ({} bytes, {pages} page objects)",
        std::fs::metadata(&page).map(|m| m.len()).unwrap_or(0),
        shot.display(),
        png.len(),
        pdf.display(),
        doc.len()
    );
}
