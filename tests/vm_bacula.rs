//! End to end with real Bacula daemons (Debian 12's Bacula 9.6; Debian has no Bareos package):
//! a private director (SQLite catalog), storage daemon (File device) and file daemon, all on
//! 127.0.0.1 with non-default ports and in a temporary directory, run the shipped
//! `hooks/bareos/cgsnap-job.conf` unchanged except for its placeholders (group, the guests'
//! image directories as `File` lines, and `cgsnap hook` given as the built binary with this
//! lab's `--connect` and `--catalog`). Against two running writer guests (two qcow2 disks each)
//! it proves:
//! - the backup job terminates OK (JobStatus `T`, no errors) and its log holds the output of
//!   both RunScripts run by the file daemon: pre took the group snapshot, post released it;
//! - afterwards the snapshot is `released`, no `*.cgsnap-overlay` file is left and the guests
//!   run on their own images;
//! - the job's file list holds every image and no overlay (the overlays existed while it read);
//! - a Bacula restore job of that backup yields images without overlays that pass
//!   `qemu-img check` and whose writer records show one instant per guest
//!   (`cgsnap_testbeds::record`).
//!
//! The daemons come from `testbeds/host-setup.sh` (extracted into /var/cache/cgsnap/bacula);
//! without them the test fails and says so. They are killed when the test ends.

mod common;

use common::*;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SNIPPET: &str = include_str!("../hooks/bareos/cgsnap-job.conf");
const BACULA: &str = "/var/cache/cgsnap/bacula";
const GROUP: &str = "cgt-bacula";
/// Loopback ports of the private daemons (Bacula's defaults are 9101-9103).
const DIR_PORT: u16 = 29101;
const FD_PORT: u16 = 29102;
const SD_PORT: u16 = 29103;

/// An extracted Bacula program with its libraries.
fn program(name: &str) -> Command {
    let root = Path::new(BACULA);
    let bin = root.join("usr/sbin").join(name);
    assert!(
        bin.exists(),
        "{} missing: run testbeds/host-setup.sh (extracts Debian's Bacula daemons)",
        bin.display()
    );
    let libs = [
        "usr/lib/bacula",
        "lib/x86_64-linux-gnu",
        "usr/lib/x86_64-linux-gnu",
    ]
    .map(|l| root.join(l).display().to_string())
    .join(":");
    let mut c = Command::new(bin);
    c.env("LD_LIBRARY_PATH", libs);
    c
}

/// The shipped snippet with its placeholders filled in for this lab.
fn snippet(lab: &Lab) -> String {
    let cgsnap = format!(
        "{} --connect {URI} --catalog {} hook",
        assert_cmd::cargo::cargo_bin("cgsnap").display(),
        lab.catalog.path().display()
    );
    let files: Vec<String> = lab
        .guests
        .iter()
        .map(|g| format!("File = \"{}\"", g.dir.display()))
        .collect();
    let s = SNIPPET
        .replace("GROUP", GROUP)
        .replace("cgsnap hook", &cgsnap)
        .replace("File = \"/var/lib/libvirt/images\"", &files.join("\n    "));
    for phase in ["pre", "post"] {
        let cmd = format!("Command = \"{cgsnap} {phase} --group {GROUP}\"");
        assert!(s.contains(&cmd), "snippet substitution: {cmd} missing");
    }
    assert!(
        !s.contains("File = \"/var/lib/libvirt/images\"") && s.contains(&files.join("\n    ")),
        "image directory substituted"
    );
    s
}

/// Director, storage and file daemon configurations plus bconsole's, in `d`.
fn write_configs(d: &Path, snippet: &Path) {
    let b = BACULA;
    let w = d.display();
    let dir = format!(
        r#"Director {{
  Name = cgsnap-test-dir
  DirAddress = 127.0.0.1
  DirPort = {DIR_PORT}
  Password = "dir-pw"
  QueryFile = "{b}/etc/bacula/scripts/query.sql"
  WorkingDirectory = "{w}"
  PidDirectory = "{w}"
  Messages = "Daemon"
}}
Catalog {{
  Name = "Catalog"
  dbname = "bacula"; dbuser = "bacula"; dbpassword = ""
}}
Messages {{
  Name = "Standard"
  catalog = all, !skipped
  append = "{w}/jobs.log" = all, !skipped
}}
Messages {{
  Name = "Daemon"
  append = "{w}/daemon.log" = all, !skipped
}}
Storage {{
  Name = "File"
  Address = 127.0.0.1
  SDPort = {SD_PORT}
  Password = "sd-pw"
  Device = "FileStorage"
  Media Type = File
}}
Pool {{
  Name = "Full"
  Pool Type = Backup
  Label Format = "cgsnap-"
}}
Client {{
  Name = "hypervisor-fd"
  Address = 127.0.0.1
  FDPort = {FD_PORT}
  Password = "fd-pw"
  Catalog = "Catalog"
}}
Job {{
  Name = "cgsnap-restore"
  Type = Restore
  Client = "hypervisor-fd"
  FileSet = "cgsnap-{GROUP}"
  Storage = "File"
  Pool = "Full"
  Messages = "Standard"
  Where = "{w}/restore"
}}
@{}
"#,
        snippet.display()
    );
    let sd = format!(
        r#"Storage {{
  Name = cgsnap-test-sd
  SDAddress = 127.0.0.1
  SDPort = {SD_PORT}
  WorkingDirectory = "{w}"
  PidDirectory = "{w}"
}}
Director {{
  Name = cgsnap-test-dir
  Password = "sd-pw"
}}
Device {{
  Name = "FileStorage"
  Media Type = File
  Archive Device = "{w}/volumes"
  LabelMedia = yes
  Random Access = yes
  AutomaticMount = yes
  RemovableMedia = no
  AlwaysOpen = no
}}
Messages {{
  Name = Standard
  director = cgsnap-test-dir = all
}}
"#
    );
    let fd = format!(
        r#"FileDaemon {{
  Name = hypervisor-fd
  FDAddress = 127.0.0.1
  FDPort = {FD_PORT}
  WorkingDirectory = "{w}"
  PidDirectory = "{w}"
}}
Director {{
  Name = cgsnap-test-dir
  Password = "fd-pw"
}}
Messages {{
  Name = Standard
  director = cgsnap-test-dir = all, !skipped
}}
"#
    );
    let console = format!(
        "Director {{\n  Name = cgsnap-test-dir\n  Address = 127.0.0.1\n  DIRPort = {DIR_PORT}\n  Password = \"dir-pw\"\n}}\n"
    );
    for (name, text) in [
        ("dir.conf", dir),
        ("sd.conf", sd),
        ("fd.conf", fd),
        ("bconsole.conf", console),
    ] {
        std::fs::write(d.join(name), text).expect("write Bacula configuration");
    }
    std::fs::create_dir_all(d.join("volumes")).expect("volume directory");
}

/// The three daemons in the foreground, killed on drop (and when the test process dies).
struct Bacula {
    work: tempfile::TempDir,
    daemons: Vec<Child>,
}

impl Bacula {
    fn start(snippet_text: &str) -> Self {
        for port in [DIR_PORT, FD_PORT, SD_PORT] {
            assert!(
                TcpStream::connect(("127.0.0.1", port)).is_err(),
                "127.0.0.1:{port} is already in use: a leftover Bacula daemon?"
            );
        }
        let work = tempfile::tempdir().expect("Bacula work dir");
        let d = work.path();
        let snippet = d.join("cgsnap-job.conf");
        std::fs::write(&snippet, snippet_text).expect("write snippet");
        write_configs(d, &snippet);
        // The SQLite catalog, from the schema Debian ships for the director.
        let schema = std::fs::File::open(
            Path::new(BACULA)
                .join("usr/share/dbconfig-common/data/bacula-director-sqlite3/install/sqlite3"),
        )
        .expect("catalog schema: run testbeds/host-setup.sh");
        let made = Command::new("sqlite3")
            .arg(d.join("bacula.db"))
            .stdin(schema)
            .status()
            .expect("sqlite3 (installed by testbeds/host-setup.sh)");
        assert!(made.success(), "creating the catalog failed");

        let mut b = Bacula {
            work,
            daemons: Vec::new(),
        };
        for (prog, conf, port) in [
            ("bacula-sd", "sd.conf", SD_PORT),
            ("bacula-fd", "fd.conf", FD_PORT),
            ("bacula-dir", "dir.conf", DIR_PORT),
        ] {
            let d = b.work.path();
            let log = std::fs::File::create(d.join(format!("{prog}.out"))).expect("log");
            let mut cmd = program(prog);
            cmd.arg("-f")
                .arg("-c")
                .arg(d.join(conf))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log);
            // SAFETY: prctl(2) only, between fork and exec: the daemon dies with this thread.
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            b.daemons.push(cmd.spawn().expect("start Bacula daemon"));
            let start = Instant::now();
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                let exited = b
                    .daemons
                    .last_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                assert!(
                    exited.is_none() && start.elapsed() < Duration::from_secs(20),
                    "{prog} not listening on 127.0.0.1:{port} ({exited:?}): {}",
                    b.read(&format!("{prog}.out"))
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        b
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.work.path().join(name)).unwrap_or_default()
    }

    /// Run bconsole commands (stdin), with a deadline; returns its output.
    fn console(&self, commands: &str, timeout: Duration) -> String {
        let d = self.work.path();
        let input = d.join("console.in");
        let output = d.join("console.out");
        std::fs::write(&input, format!("{commands}\nquit\n")).expect("console input");
        let out = std::fs::File::create(&output).expect("console output");
        let mut child = program("bconsole")
            .arg("-c")
            .arg(d.join("bconsole.conf"))
            .stdin(std::fs::File::open(&input).expect("console input"))
            .stdout(out.try_clone().expect("console output"))
            .stderr(out)
            .spawn()
            .expect("start bconsole");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait bconsole") {
                let text = self.read("console.out");
                assert!(status.success(), "bconsole {commands:?}: {text}");
                return text;
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "bconsole {commands:?} still running after {timeout:?}: {}\njob log:\n{}",
                    self.read("console.out"),
                    self.read("jobs.log")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Queue a job with `command` (a `run` or `restore`), wait for it, assert that it
    /// terminated OK without errors; returns its JobId.
    fn run_job(&self, command: &str) -> String {
        let out = self.console(command, Duration::from_secs(30));
        let id = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("Job queued. JobId="))
            .unwrap_or_else(|| panic!("no job queued by {command:?}: {out}"))
            .to_string();
        self.console(&format!("wait jobid={id}"), Duration::from_secs(180));
        let info = self.console(&format!("llist jobid={id}"), Duration::from_secs(30));
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {name} for job {id}: {info}"))
        };
        let status = field("JobStatus:");
        let errors = field("JobErrors:");
        eprintln!("Bacula job {id} ({command}): JobStatus {status}, JobErrors {errors}");
        assert_eq!(
            (status.as_str(), errors.as_str()),
            ("T", "0"),
            "job {id} did not terminate OK; job log:\n{}",
            self.read("jobs.log")
        );
        id
    }
}

impl Drop for Bacula {
    fn drop(&mut self) {
        for c in self.daemons.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn bacula_job_with_the_shipped_snippet_backs_up_and_restores_a_consistent_cut() {
    let lab = lab(GROUP, 2, 2);
    lab.group_add(GROUP, &lab.names());
    let start = Instant::now();
    let bacula = Bacula::start(&snippet(&lab));
    eprintln!("daemons up in {:.1} s", start.elapsed().as_secs_f64());

    let t = Instant::now();
    let backup = bacula.run_job(&format!("run job=cgsnap-{GROUP} yes"));
    eprintln!("backup job {backup}: {:.1} s", t.elapsed().as_secs_f64());

    // pre and post ran, through the file daemon: one snapshot, released, nothing left over.
    let listed = list_json(&lab);
    let snaps = listed.as_array().expect("list is an array");
    assert_eq!(snaps.len(), 1, "one snapshot: {listed}");
    assert_eq!(snaps[0]["state"], "released", "{}", snaps[0]);
    let id = snaps[0]["id"].as_str().expect("snapshot id");
    let log = bacula.read("jobs.log");
    for expected in [
        format!(
            "ClientBeforeJob: cgsnap: snapshot {id} of group {GROUP} taken: 2 members, 4 disks"
        ),
        format!("ClientAfterJob: cgsnap: released {id} of group {GROUP}"),
    ] {
        assert!(
            log.contains(&expected),
            "{expected:?} not in the job log:\n{log}"
        );
    }
    assert!(
        lab.overlays_on_disk().is_empty(),
        "{:?}",
        lab.overlays_on_disk()
    );
    wait_running(&lab.names(), Duration::from_secs(5)).expect("members running");
    for g in &lab.guests {
        assert_own_images(g);
    }

    // What the job read: every image, no overlay.
    let files = bacula.console(
        &format!("list files jobid={backup}"),
        Duration::from_secs(30),
    );
    for g in &lab.guests {
        for d in &g.disks {
            assert!(
                files.contains(&*d.to_string_lossy()),
                "{} backed up: {files}",
                d.display()
            );
        }
    }
    assert!(
        !files.contains(".cgsnap-overlay"),
        "overlay backed up: {files}"
    );

    // Restore into a fresh directory.
    let restored = tempfile::tempdir().expect("restore dir");
    let t = Instant::now();
    bacula.run_job(&format!(
        "restore jobid={backup} client=hypervisor-fd where={} all done yes",
        restored.path().display()
    ));
    eprintln!("restore job: {:.1} s", t.elapsed().as_secs_f64());
    assert!(
        files_under(restored.path(), ".cgsnap-overlay").is_empty(),
        "overlays excluded from the backup"
    );
    let mut checked = 0;
    for g in &lab.guests {
        let images: Vec<String> = g
            .disks
            .iter()
            .map(|d| {
                let p = restored
                    .path()
                    .join(d.strip_prefix("/").expect("absolute image path"));
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
        // One instant per guest: vda's record equal to vdb's or exactly one ahead of it.
        let recs = records(&images);
        eprintln!("{}: restored records {recs:?}", g.name());
        assert!(recs[0].seq > 0, "the guest had written before the snapshot");
    }
    assert_eq!(checked, 4, "two guests with two disks each");
    eprintln!("total {:.1} s", start.elapsed().as_secs_f64());
}
