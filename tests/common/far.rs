//! A libvirt host elsewhere, on this machine: the session daemon of [`USER`], started in a
//! mount namespace of its own and reached over TCP on loopback (a URI with a host part, so
//! cgsnap treats it as remote). Its guests' directory is [`STORE`] here but [`DIR`] for the
//! daemon, and [`DIR`] is an empty directory here: a path the daemon uses names nothing this
//! process can see, as on another host.
//!
//! The daemon accepts TCP connections without authentication, on 127.0.0.1 only, as an
//! unprivileged user of its own; it is killed (with its namespace and any guest left) when the
//! [`Far`] is dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const USER: &str = "cgsnap-far";
pub const PORT: u16 = 16599;
/// The guests' directory as the far daemon sees it.
pub const DIR: &str = "/srv/cgsnap-far";
/// The same directory as this process sees it.
pub const STORE: &str = "/var/lib/cgsnap-tests-far";

pub struct Far {
    pub uri: String,
    pub uid: u32,
    pub gid: u32,
}

impl Far {
    /// Where this process sees a file the far daemon names `path` (under [`DIR`]).
    pub fn here(&self, path: &str) -> PathBuf {
        let rel = Path::new(path).strip_prefix(DIR).expect("a path under DIR");
        Path::new(STORE).join(rel)
    }
}

fn id(flag: &str) -> Option<u32> {
    let o = Command::new("id").args([flag, USER]).output().ok()?;
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

fn kill_all() {
    let _ = Command::new("pkill").args(["-KILL", "-u", USER]).status();
    let start = Instant::now();
    while Command::new("pgrep")
        .args(["-u", USER])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run(cmd: &mut Command) {
    let st = cmd.status().expect("spawn");
    assert!(st.success(), "{cmd:?} failed");
}

/// Start the far daemon afresh (anything left of an earlier run is killed first).
pub fn far() -> Far {
    if id("-u").is_none() {
        run(Command::new("useradd").args(["-m", "-s", "/bin/sh", USER]));
    }
    let (uid, gid) = (id("-u").expect("uid"), id("-g").expect("gid"));
    kill_all();
    let conf = PathBuf::from(format!("/home/{USER}/.config/libvirt"));
    std::fs::create_dir_all(&conf).expect("config dir");
    std::fs::write(
        conf.join("libvirtd.conf"),
        format!(
            "listen_tls = 0\nlisten_tcp = 1\nlisten_addr = \"127.0.0.1\"\ntcp_port = \"{PORT}\"\nauth_tcp = \"none\"\n"
        ),
    )
    .expect("libvirtd.conf");
    run(Command::new("chown")
        .args(["-R", &format!("{uid}:{gid}")])
        .arg(format!("/home/{USER}/.config")));
    std::fs::create_dir_all(STORE).expect("store");
    std::os::unix::fs::chown(STORE, Some(uid), Some(gid)).expect("chown store");
    std::fs::create_dir_all(DIR).expect("mount point");
    let inner = format!(
        "mount --bind {STORE} {DIR} && exec su -s /bin/sh -c 'env -u XDG_RUNTIME_DIR /usr/sbin/libvirtd --listen --daemon' {USER}"
    );
    run(Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &inner]));
    let uri = format!("qemu+tcp://127.0.0.1:{PORT}/session");
    super::wait_answering(&uri);
    assert!(
        std::fs::read_dir(DIR)
            .expect("mount point")
            .next()
            .is_none(),
        "{DIR} is empty here"
    );
    Far { uri, uid, gid }
}

impl Drop for Far {
    fn drop(&mut self) {
        kill_all();
    }
}
