//! A private set of Bacula 9.6 daemons for `tests/vm/bacula.rs`: director (SQLite catalog),
//! storage daemon (File device) and file daemon, all on 127.0.0.1 with non-default ports and in
//! a temporary directory, configured with the shipped `hooks/bareos/cgsnap-job.conf` whose
//! placeholders are filled in for a [`Lab`].
//!
//! Besides the shipped Job and FileSet the director knows [`FAILING_FILESET`]: the shipped
//! FileSet with a FIFO (`ReadFifo = yes`) read before the images. While the test holds the
//! FIFO's write end open ([`Bacula::hold_fifo`]) the file daemon waits in `read` on it, so a job
//! run with that FileSet stays in the middle of reading, after the pre hook, until the test
//! makes it fail. The file daemon also appends its own job messages to `fd.log`: for a cancelled
//! job the director stops listening before the file daemon runs its After scripts, so their
//! output only reaches that log.
//!
//! The daemons come from `testbeds/host-setup.sh` (extracted into /var/cache/cgsnap/bacula);
//! without them the test fails and says so. They are killed on drop.

pub mod conf;

use crate::common::*;
use conf::*;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SNIPPET: &str = include_str!("../../../hooks/bareos/cgsnap-job.conf");
pub const GROUP: &str = "cgt-bacula";
/// The shipped FileSet plus a FIFO read first: jobs with it stay mid-read while the FIFO is held.
pub const FAILING_FILESET: &str = "cgsnap-cgt-bacula-blocked";

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
        let cmd = format!("Command = \"{cgsnap} {phase} --group {GROUP} --token jobid-%i\"");
        assert!(s.contains(&cmd), "snippet substitution: {cmd} missing");
    }
    assert!(
        !s.contains("File = \"/var/lib/libvirt/images\"") && s.contains(&files.join("\n    ")),
        "image directory substituted"
    );
    s
}

/// [`FAILING_FILESET`]: the filled-in snippet's FileSet, renamed, reading FIFOs, with `fifo`
/// as its first File so the file daemon blocks on it before it reads any image.
fn failing_fileset(snippet: &str, fifo: &Path) -> String {
    let start = snippet.find("\nFileSet {").expect("snippet has a FileSet");
    let shipped = &snippet[start..];
    let edits = [
        (
            format!("Name = \"cgsnap-{GROUP}\""),
            format!("Name = \"{FAILING_FILESET}\""),
        ),
        (
            "Sparse = yes".to_string(),
            "Sparse = yes\n      ReadFifo = yes".to_string(),
        ),
        (
            "\n    File = \"".to_string(),
            format!("\n    File = \"{}\"\n    File = \"", fifo.display()),
        ),
    ];
    let mut out = shipped.to_string();
    for (from, to) in edits {
        assert!(out.contains(&from), "{from:?} not in the shipped FileSet");
        out = out.replacen(&from, &to, 1);
    }
    out
}

/// The three daemons in the foreground, killed on drop (and when the test process dies).
/// It borrows the lab: the lab holds the lock that runs this binary's VM tests one at a time,
/// so two tests never start daemons on the same ports at once, and the daemons (and a post
/// hook they may still be running) end before the lab removes its guests.
pub struct Bacula<'a> {
    _lab: &'a Lab,
    work: tempfile::TempDir,
    /// (program, child) in start order: storage daemon, file daemon, director.
    daemons: Vec<(&'static str, Child)>,
}

impl<'a> Bacula<'a> {
    pub fn start(lab: &'a Lab) -> Self {
        for port in [DIR_PORT, FD_PORT, SD_PORT] {
            assert!(
                TcpStream::connect(("127.0.0.1", port)).is_err(),
                "127.0.0.1:{port} is already in use: a leftover Bacula daemon?"
            );
        }
        let work = tempfile::tempdir().expect("Bacula work dir");
        let d = work.path();
        let text = snippet(lab);
        let snippet = d.join("cgsnap-job.conf");
        std::fs::write(&snippet, &text).expect("write snippet");
        let fifo = d.join("blocker.fifo");
        let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
        assert!(made.success(), "mkfifo {}", fifo.display());
        let failing = d.join("failing-fileset.conf");
        std::fs::write(&failing, failing_fileset(&text, &fifo)).expect("write FileSet");
        write_configs(d, GROUP, &[snippet, failing]);
        create_catalog(d);

        let mut b = Bacula {
            _lab: lab,
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
            b.daemons
                .push((prog, cmd.spawn().expect("start Bacula daemon")));
            let start = Instant::now();
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                let exited = b
                    .daemons
                    .last_mut()
                    .and_then(|(_, c)| c.try_wait().ok().flatten());
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

    /// A file of the work directory: `jobs.log` (the director's job log), `fd.log`, ...
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.work.path().join(name)).unwrap_or_default()
    }

    /// Run bconsole commands (stdin), with a deadline; returns its output.
    pub fn console(&self, commands: &str, timeout: Duration) -> String {
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

    /// Queue a job with `command` (a `run` or `restore`); returns its JobId.
    pub fn queue(&self, command: &str) -> String {
        let out = self.console(command, Duration::from_secs(30));
        out.lines()
            .find_map(|l| l.trim().strip_prefix("Job queued. JobId="))
            .unwrap_or_else(|| panic!("no job queued by {command:?}: {out}"))
            .to_string()
    }

    /// Wait until the director has finished job `id`; returns its (JobStatus, JobErrors).
    pub fn wait(&self, id: &str, timeout: Duration) -> (String, String) {
        self.console(&format!("wait jobid={id}"), timeout);
        let info = self.console(&format!("llist jobid={id}"), Duration::from_secs(30));
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {name} for job {id}: {info}"))
        };
        (field("JobStatus:"), field("JobErrors:"))
    }

    /// Queue a job with `command` (a `run` or `restore`), wait for it, assert that it
    /// terminated OK without errors; returns its JobId.
    pub fn run_job(&self, command: &str) -> String {
        let id = self.queue(command);
        let (status, errors) = self.wait(&id, Duration::from_secs(180));
        eprintln!("Bacula job {id} ({command}): JobStatus {status}, JobErrors {errors}");
        assert_eq!(
            (status.as_str(), errors.as_str()),
            ("T", "0"),
            "job {id} did not terminate OK; job log:\n{}",
            self.read("jobs.log")
        );
        id
    }

    /// Open the FIFO of [`FAILING_FILESET`] for writing (read-write: does not wait for a
    /// reader). While the handle lives, the file daemon's read of the FIFO waits for data; when
    /// it is dropped, that read ends (EOF) and the job goes on to the images.
    pub fn hold_fifo(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.work.path().join("blocker.fifo"))
            .expect("open the FIFO")
    }

    /// Wait until the file daemon reports job `id` running and reading the FIFO.
    pub fn wait_reading_fifo(&self, id: &str, timeout: Duration) {
        let fifo = self.work.path().join("blocker.fifo");
        let reading = format!("Processing file: {}", fifo.display());
        let start = Instant::now();
        loop {
            let status = self.console("status client=hypervisor-fd", Duration::from_secs(30));
            if status.contains(&format!("JobId {id} ")) && status.contains(&reading) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "job {id} not reading the FIFO after {timeout:?}: {status}\njob log:\n{}",
                self.read("jobs.log")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Break the file daemon's connection to the storage daemon, as a network failure would:
    /// the kernel aborts the file daemon's TCP socket (`ss -K`, sock_diag destroy), which resets
    /// the storage daemon's end; the director's own connection to the storage daemon stays up.
    pub fn reset_storage_connection(&self) {
        let fd_pid = self
            .daemons
            .iter()
            .find(|(p, _)| *p == "bacula-fd")
            .map(|(_, c)| c.id())
            .expect("file daemon started");
        let filter = format!("( dport = :{SD_PORT} )");
        let list = || {
            let out = Command::new("ss")
                .args([
                    "-4",
                    "-t",
                    "-n",
                    "-p",
                    "-H",
                    "state",
                    "established",
                    &filter,
                ])
                .output()
                .expect("ss (iproute2)");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        // Lines: Recv-Q Send-Q Local Peer Process; the file daemon's local port picks its socket.
        let sockets = list();
        let ports: Vec<String> = sockets
            .lines()
            .filter(|l| l.contains(&format!("pid={fd_pid},")))
            .filter_map(|l| l.split_whitespace().nth(2)?.rsplit(':').next())
            .map(str::to_string)
            .collect();
        assert_eq!(
            ports.len(),
            1,
            "one file daemon socket to the SD: {sockets}"
        );
        let killed = Command::new("ss")
            .args(["-4", "-t", "-K", "state", "established"])
            .arg(format!("( sport = :{} and dport = :{SD_PORT} )", ports[0]))
            .output()
            .expect("ss -K");
        let after = list();
        assert!(
            killed.status.success() && !after.contains(&format!("pid={fd_pid},")),
            "ss -K: {}{}; still: {after}",
            String::from_utf8_lossy(&killed.stdout),
            String::from_utf8_lossy(&killed.stderr)
        );
    }
}

impl Drop for Bacula<'_> {
    fn drop(&mut self) {
        for (_, c) in self.daemons.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
