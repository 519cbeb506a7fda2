//! Shared helpers of the integration tests, declared once by each test binary (`tests/vm`,
//! `tests/offline`, `tests/vm_cassandra.rs`): the real-VM lab (real libvirtd on qemu:///system,
//! real TCG guests), the far host and the Bacula daemons, and fake scripts. Every helper
//! cleans up on drop and waits with deadlines, never bare sleeps.
//!
//! Invariant: every test that starts a guest, a libvirt daemon, a sandbox or anything else
//! host-wide holds [`serial`] for its whole run ([`lab`] takes it). Tests of one module (one
//! area: `snapshot`, `release`, ...) may run together, as they were written to; tests of two
//! modules never do, so no test shares the host with another area's guests, daemons or fixed
//! paths. `CGSNAP_TEST_ONE_AT_A_TIME=1` runs every such test alone.
#![allow(dead_code)]

pub mod bacula;
pub mod far;

use cgsnap_testbeds::{assets, guest, record};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

pub const URI: &str = "qemu:///system";
pub const BASE: &str = "/var/lib/libvirt/images/cgsnap-tests";

/// Headless Chromium as these tests run it, as root on a closed network: without the
/// background-networking flags it keeps trying hosts it cannot reach.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// Who holds the host: a module's tests (by module name) and how many of them.
struct Room {
    holder: Option<String>,
    count: usize,
}

static ROOM: Mutex<Room> = Mutex::new(Room {
    holder: None,
    count: 0,
});
static FREED: Condvar = Condvar::new();

/// Held for a whole test (see the module docs); dropping it lets the next module in.
pub struct Serial(());

impl Drop for Serial {
    fn drop(&mut self) {
        let mut r = ROOM.lock().unwrap_or_else(|p| p.into_inner());
        r.count -= 1;
        if r.count == 0 {
            r.holder = None;
        }
        FREED.notify_all();
    }
}

/// Wait until no test of another module holds the host, then hold it with this test's module
/// (libtest names a test's thread `module::test`). A test that failed while holding it does
/// not stop the others: its guard is dropped while unwinding, and a poisoned lock is taken over.
pub fn serial() -> Serial {
    let all_alone = std::env::var_os("CGSNAP_TEST_ONE_AT_A_TIME").is_some_and(|v| v == "1");
    match std::thread::current().name() {
        Some(n) if !all_alone => enter(n.split("::").next().unwrap_or(n).to_string()),
        _ => alone(),
    }
}

/// Hold the host alone, even against the other tests of its module (tests that share daemons,
/// job names or guest name prefixes with their neighbours).
pub fn alone() -> Serial {
    enter(format!("{:?}", std::thread::current().id()))
}

fn enter(room: String) -> Serial {
    let mut r = ROOM.lock().unwrap_or_else(|p| p.into_inner());
    while r.holder.as_ref().is_some_and(|h| *h != room) {
        r = FREED.wait(r).unwrap_or_else(|p| p.into_inner());
    }
    r.holder = Some(room);
    r.count += 1;
    Serial(())
}

/// Write an executable shell script (a fake of a tool, a stand-in backup) at `path`.
pub fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, body).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod script");
}

pub struct Lab {
    pub name: String,
    pub catalog: tempfile::TempDir,
    pub guests: Vec<guest::Guest>,
    pub assets: assets::Assets,
    _serial: Serial,
}

/// A lab with `n` running writer guests of `disks` disks each, named `<name>-<i>`.
pub fn lab(name: &str, n: usize, disks: usize) -> Lab {
    lab_in(serial(), name, n, disks)
}

/// [`lab`], holding the host alone (see [`alone`]).
pub fn lab_alone(name: &str, n: usize, disks: usize) -> Lab {
    lab_in(alone(), name, n, disks)
}

fn lab_in(serial: Serial, name: &str, n: usize, disks: usize) -> Lab {
    let out = Command::new("virsh")
        .args(["-c", URI, "version"])
        .output()
        .expect("virsh must be installed");
    assert!(
        out.status.success(),
        "libvirtd is not reachable on {URI}: start it (`virtlogd -d; libvirtd -d`); VM tests do not skip"
    );
    let assets = assets::ensure(&assets::cache_dir()).expect("guest assets");
    let mut l = Lab {
        name: name.to_string(),
        catalog: tempfile::tempdir().expect("catalog dir"),
        guests: Vec::new(),
        assets,
        _serial: serial,
    };
    for i in 1..=n {
        l.add_guest(guest::Spec::writer(&format!("{name}-{i}"), disks));
    }
    for g in &l.guests {
        g.wait_console("seq ", Duration::from_secs(120))
            .expect("guest boots and writes");
    }
    l
}

impl Lab {
    pub fn add_guest(&mut self, spec: guest::Spec) -> &guest::Guest {
        let g = guest::Guest::start(URI, Path::new(BASE), spec, &self.assets).expect("start guest");
        self.guests.push(g);
        self.guests.last().expect("just pushed")
    }

    pub fn define_stopped(&mut self, spec: guest::Spec) {
        let g =
            guest::Guest::define(URI, Path::new(BASE), spec, &self.assets).expect("define guest");
        self.guests.push(g);
    }

    /// A persistent domain (as production VMs are), defined and started from its definition;
    /// returns once the guest writes.
    pub fn add_persistent_guest(&mut self, spec: guest::Spec) -> &guest::Guest {
        let g = guest::Guest::start_persistent(URI, Path::new(BASE), spec, &self.assets)
            .expect("start persistent guest");
        g.wait_console("seq ", Duration::from_secs(120))
            .expect("guest boots and writes");
        self.guests.push(g);
        self.guests.last().expect("just pushed")
    }

    pub fn names(&self) -> Vec<String> {
        self.guests.iter().map(|g| g.name().to_string()).collect()
    }

    /// `cgsnap --connect qemu:///system --catalog <lab catalog> ...`
    pub fn cgsnap(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::cargo_bin("cgsnap").expect("binary");
        c.arg("--connect")
            .arg(URI)
            .arg("--catalog")
            .arg(self.catalog.path());
        c.timeout(Duration::from_secs(300));
        c
    }

    pub fn std_cgsnap(&self) -> Command {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("cgsnap"));
        c.arg("--connect")
            .arg(URI)
            .arg("--catalog")
            .arg(self.catalog.path());
        c
    }

    pub fn group_add(&self, group: &str, members: &[String]) {
        self.cgsnap()
            .args(["group", "add", group])
            .args(members)
            .assert()
            .success();
    }

    /// `cgsnap snapshot GROUP --json EXTRA...`, which must succeed: (ID, manifest).
    pub fn snapshot_json(&self, group: &str, extra: &[&str]) -> (String, serde_json::Value) {
        let out = self
            .cgsnap()
            .args(["snapshot", group, "--json"])
            .args(extra)
            .assert()
            .success();
        let m: serde_json::Value =
            serde_json::from_slice(&out.get_output().stdout).expect("manifest json");
        let id = m["id"].as_str().expect("id").to_string();
        (id, m)
    }

    /// `cgsnap verify --group GROUP --json` (sandbox forwards from `base_port`), which must
    /// run (pass, 0, or find a violation, 11), then `hook post` releases the snapshot.
    /// Returns the report and the exit code.
    pub fn verify_and_release(
        &self,
        group: &str,
        profile: &Path,
        base_port: u16,
    ) -> (serde_json::Value, i32) {
        let out = self
            .cgsnap()
            .args(["verify", "--group", group, "--json", "--base-port"])
            .arg(base_port.to_string())
            .arg("--profile")
            .arg(profile)
            .timeout(Duration::from_secs(900))
            .output()
            .expect("verify");
        let code = out.status.code().unwrap_or(-1);
        assert!(
            code == 0 || code == 11,
            "verify could not run ({code}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report json");
        self.cgsnap()
            .args(["hook", "post", "--group", group])
            .assert()
            .success();
        (r, code)
    }

    /// The value of one series (name and labels as rendered, e.g.
    /// `cgsnap_snapshots{group="g",state="taken"}`) in `CATALOG/metrics/cgsnap.prom`, which
    /// cgsnap re-renders after every snapshot, release, hook and verify.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let path = self.catalog.path().join("metrics/cgsnap.prom");
        let text = std::fs::read_to_string(path).ok()?;
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    pub fn guest(&self, name: &str) -> &guest::Guest {
        self.guests
            .iter()
            .find(|g| g.name() == name)
            .expect("guest of this lab")
    }

    pub fn manifest_files(&self) -> Vec<PathBuf> {
        let dir = self.catalog.path().join("snapshots");
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Every overlay file left in any guest directory.
    pub fn overlays_on_disk(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for g in &self.guests {
            if let Ok(rd) = std::fs::read_dir(&g.dir) {
                out.extend(
                    rd.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.to_string_lossy().ends_with(".cgsnap-overlay")),
                );
            }
        }
        out
    }

    /// No overlay file is left in any guest directory, and every guest named in `names` has its
    /// disks on its own images again.
    pub fn assert_no_overlays(&self, names: &[String]) {
        let left = self.overlays_on_disk();
        assert!(left.is_empty(), "overlays left: {left:?}");
        for g in self
            .guests
            .iter()
            .filter(|g| names.iter().any(|n| n == g.name()))
        {
            assert_own_images(g);
        }
    }
}

/// One field (`image`, `overlay`, `target`) of every disk of member `i` of a manifest.
pub fn disk_fields(m: &serde_json::Value, i: usize, key: &str) -> Vec<String> {
    m["members"][i]["disks"]
        .as_array()
        .expect("disks")
        .iter()
        .map(|d| d[key].as_str().expect(key).to_string())
        .collect()
}

/// Regular files below `dir` whose name ends in `suffix` (e.g. overlays in a backup or restore).
pub fn files_under(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let out = Command::new("find")
        .arg(dir)
        .args(["-type", "f", "-name"])
        .arg(format!("*{suffix}"))
        .output()
        .expect("find");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect()
}

pub fn domstate(dom: &str) -> String {
    domstate_on(URI, dom)
}

/// (target, source) pairs from `virsh domblklist` (the running domain).
pub fn domblklist(dom: &str) -> Vec<(String, String)> {
    blklist(URI, dom, false)
}

/// Disk sources of the domain's persistent definition (`virsh domblklist --inactive`).
pub fn inactive_sources(dom: &str) -> Vec<String> {
    blklist(URI, dom, true)
        .into_iter()
        .map(|(_, s)| s)
        .collect()
}

/// `virsh -c qemu:///system ARGS...`, which must succeed.
pub fn virsh_ok(args: &[&str]) {
    virsh_on(URI, args)
}

/// `virsh -c URI ARGS...`, which must succeed.
pub fn virsh_on(uri: &str, args: &[&str]) {
    let out = Command::new("virsh")
        .args(["-c", uri])
        .args(args)
        .output()
        .expect("virsh");
    assert!(
        out.status.success(),
        "virsh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `virsh domblklist` on `uri` as (target, source) pairs; none when the domain is absent.
fn blklist(uri: &str, dom: &str, inactive: bool) -> Vec<(String, String)> {
    let mut args = vec!["-c", uri, "domblklist", dom];
    if inactive {
        args.push("--inactive");
    }
    let out = Command::new("virsh").args(&args).output().expect("virsh");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(2)
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.to_string()))
        })
        .collect()
}

/// The guest's disks are on its own images again (no overlay in use).
pub fn assert_own_images(g: &guest::Guest) {
    let live: Vec<String> = domblklist(g.name()).into_iter().map(|(_, s)| s).collect();
    let own: Vec<String> = g
        .disks
        .iter()
        .map(|d| d.to_string_lossy().to_string())
        .collect();
    assert_eq!(live, own, "{} on its own images", g.name());
}

/// Spawn `cmd` with stderr piped and wait (up to 60 s) until a stderr line contains
/// `pattern`; stderr keeps being drained afterwards so the child never blocks on it.
pub fn spawn_until(cmd: &mut Command, pattern: &str) -> std::process::Child {
    let (child, rx) = spawn_watched(cmd, pattern);
    std::thread::spawn(move || for _ in rx {});
    child
}

/// [`spawn_until`], handing back the stderr lines after the one with `pattern`.
pub fn spawn_watched(
    cmd: &mut Command,
    pattern: &str,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn cgsnap");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("never saw {pattern:?}; stderr: {seen:?}"));
        let done = line.contains(pattern);
        seen.push(line);
        if done {
            break;
        }
    }
    (child, rx)
}

/// Wait until every domain is running; returns how long that took.
pub fn wait_running(doms: &[String], timeout: Duration) -> Result<Duration, String> {
    let on: Vec<(&str, &str)> = doms.iter().map(|d| (URI, d.as_str())).collect();
    wait_running_on(&on, timeout)
}

/// [`wait_running`] for (URI, domain) pairs on any daemons.
pub fn wait_running_on(doms: &[(&str, &str)], timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let states: Vec<String> = doms.iter().map(|(u, d)| domstate_on(u, d)).collect();
        if states.iter().all(|s| s == "running") {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(format!("not all running after {timeout:?}: {states:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Records of a list of images, checked to form one instant.
pub fn records(images: &[String]) -> Vec<record::Record> {
    let recs: Vec<record::Record> = images
        .iter()
        .map(|i| {
            record::read(Path::new(i))
                .expect("read image")
                .expect("record present")
        })
        .collect();
    record::check_order(&recs).expect("disks captured at one instant");
    recs
}

/// Unprivileged user whose own libvirt session daemon plays a second libvirt host.
pub const PEER_USER: &str = "cgsnap-peer";

pub struct Peer {
    pub uri: String,
    pub uid: u32,
    pub gid: u32,
    pub base: PathBuf,
}

fn id_of(flag: &str) -> Option<u32> {
    let o = Command::new("id").args([flag, PEER_USER]).output().ok()?;
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

/// Whether a libvirt daemon answers on `uri`.
pub fn answers(uri: &str) -> bool {
    Command::new("virsh")
        .args(["-c", uri, "version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Wait (up to 20 s) until a daemon just started answers on `uri`.
pub fn wait_answering(uri: &str) {
    let start = Instant::now();
    while !answers(uri) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "libvirt daemon not answering on {uri}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A second libvirt daemon on this machine: the session daemon of [`PEER_USER`] (created if
/// missing), reached by root through its socket. Its guests run as that user.
pub fn peer() -> Peer {
    if id_of("-u").is_none() {
        let ok = Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", PEER_USER])
            .status()
            .expect("useradd");
        assert!(ok.success(), "cannot create user {PEER_USER}");
    }
    let (uid, gid) = (id_of("-u").expect("uid"), id_of("-g").expect("gid"));
    let home = PathBuf::from(format!("/home/{PEER_USER}"));
    let uri = format!(
        "qemu+unix:///session?socket={}/.cache/libvirt/libvirt-sock",
        home.display()
    );
    if !answers(&uri) {
        let ok = Command::new("su")
            .args([
                "-s",
                "/bin/sh",
                "-c",
                "env -u XDG_RUNTIME_DIR /usr/sbin/libvirtd --daemon",
                PEER_USER,
            ])
            .status()
            .expect("su");
        assert!(
            ok.success(),
            "cannot start the session daemon of {PEER_USER}"
        );
        wait_answering(&uri);
    }
    let base = home.join("cgsnap-tests");
    std::fs::create_dir_all(&base).expect("peer base dir");
    std::os::unix::fs::chown(&base, Some(uid), Some(gid)).expect("chown peer base");
    Peer {
        uri,
        uid,
        gid,
        base,
    }
}

pub fn domstate_on(uri: &str, dom: &str) -> String {
    let out = Command::new("virsh")
        .args(["-c", uri, "domstate", dom])
        .output()
        .expect("virsh");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn domblklist_on(uri: &str, dom: &str) -> Vec<String> {
    blklist(uri, dom, false)
        .into_iter()
        .map(|(_, s)| s)
        .collect()
}

/// A backup of the lab's guests restored under `restored` (each image at `restored/<its
/// absolute path>`): no overlay in it, every image passes `qemu-img check`, and each guest's
/// images hold one instant of it (see [`records`]) written before the snapshot. Returns how
/// many images were checked.
pub fn assert_restored_backup(lab: &Lab, restored: &Path) -> usize {
    assert!(
        files_under(restored, ".cgsnap-overlay").is_empty(),
        "overlays excluded from the backup"
    );
    let mut checked = 0;
    for g in &lab.guests {
        let images: Vec<String> = g
            .disks
            .iter()
            .map(|d| {
                let p = restored.join(d.strip_prefix("/").expect("absolute image path"));
                assert!(p.exists(), "{} restored", p.display());
                let check = Command::new("qemu-img")
                    .args(["check", "-f", "qcow2"])
                    .arg(&p)
                    .output()
                    .expect("qemu-img");
                assert!(
                    check.status.success(),
                    "qemu-img check {}: {}{}",
                    p.display(),
                    String::from_utf8_lossy(&check.stdout),
                    String::from_utf8_lossy(&check.stderr)
                );
                checked += 1;
                p.to_string_lossy().into_owned()
            })
            .collect();
        let recs = records(&images);
        eprintln!("{}: restored records {recs:?}", g.name());
        assert!(recs[0].seq > 0, "the guest had written before the snapshot");
    }
    checked
}

/// `cgsnap list --json` of the lab's catalog.
/// Hold `image` open for writing, with QEMU's image locks, as a running VM would: a
/// `qemu-nbd` serving it on the socket `sock`, started and waited for. Kill it to let go.
pub fn hold_open(image: &str, sock: &Path) -> std::process::Child {
    let child = Command::new("qemu-nbd")
        .args(["-f", "qcow2", "-k"])
        .arg(sock)
        .arg(image)
        .spawn()
        .expect("qemu-nbd");
    let t = Instant::now();
    while !sock.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "qemu-nbd did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

pub fn list_json(lab: &Lab) -> serde_json::Value {
    let out = lab.cgsnap().args(["list", "--json"]).assert().success();
    serde_json::from_slice(&out.get_output().stdout).expect("list --json")
}

/// The post hook ran: every snapshot in the lab's catalog released (`count` of them when given,
/// at least one otherwise), no overlay left, the guests running on their own images. Returns
/// the listing.
pub fn assert_all_released(lab: &Lab, count: Option<usize>) -> serde_json::Value {
    let listed = list_json(lab);
    let snaps = listed.as_array().expect("list is an array");
    match count {
        Some(n) => assert_eq!(snaps.len(), n, "{listed}"),
        None => assert!(!snaps.is_empty(), "pre took a snapshot"),
    }
    assert!(
        snaps.iter().all(|s| s["state"] == "released"),
        "every snapshot released: {listed}"
    );
    wait_running(&lab.names(), Duration::from_secs(5)).expect("members running");
    lab.assert_no_overlays(&lab.names());
    listed
}

/// Tears a `cgsnap testbed` down (VMs, workload, directories) even when an assertion fails.
pub struct TestbedDown<'a> {
    lab: &'a Lab,
    dirs: Vec<PathBuf>,
}

impl<'a> TestbedDown<'a> {
    pub fn new(lab: &'a Lab, dirs: &[&str]) -> Self {
        Self {
            lab,
            dirs: dirs.iter().map(PathBuf::from).collect(),
        }
    }
}

impl Drop for TestbedDown<'_> {
    fn drop(&mut self) {
        let _ = self.lab.std_cgsnap().args(["testbed", "down"]).output();
        for n in ["cgsnap-orders", "cgsnap-payments"] {
            guest::destroy_by_name(URI, n);
        }
        if std::env::var_os("CGSNAP_TEST_KEEP_DIRS").is_none() {
            for d in &self.dirs {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
}

/// Run `cmd` to success and return its standard output; a failure shows both streams.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every failed check of a verify report (members' and cross-member), as `NAME: EVIDENCE`.
pub fn failed_checks(r: &serde_json::Value) -> Vec<String> {
    r["members"]
        .as_array()
        .expect("members")
        .iter()
        .flat_map(|m| m["checks"].as_array().cloned().unwrap_or_default())
        .chain(r["cross_checks"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["ok"] == false)
        .map(|c| format!("{}: {}", c["name"], c["evidence"]))
        .collect()
}
