//! Configuration of a private set of Bacula 9.6 daemons (director with an SQLite catalog,
//! storage daemon with a File device, file daemon, bconsole), all on 127.0.0.1 with
//! non-default ports, in one work directory; and how to run Debian's Bacula programs that
//! `testbeds/host-setup.sh` extracted into [`BACULA`]. Shared by the snippet's parse check
//! (`tests/offline/hook_bareos.rs`) and the real backup test (`tests/vm/bacula.rs`), so the
//! snippet is parsed in the very director configuration the backup runs with.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const BACULA: &str = "/var/cache/cgsnap/bacula";
/// Loopback ports of the private daemons (Bacula's defaults are 9101-9103).
pub const DIR_PORT: u16 = 29101;
pub const FD_PORT: u16 = 29102;
pub const SD_PORT: u16 = 29103;

/// An extracted Bacula program with its libraries.
pub fn program(name: &str) -> Command {
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

/// Director, storage and file daemon configurations plus bconsole's, in `d`; the director
/// includes the files `includes` (Bacula's `@file`) and has a restore job for the FileSet
/// `cgsnap-GROUP` of the shipped snippet.
pub fn write_configs(d: &Path, group: &str, includes: &[PathBuf]) {
    let b = BACULA;
    let w = d.display();
    let includes: String = includes
        .iter()
        .map(|p| format!("@{}\n", p.display()))
        .collect();
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
  FileSet = "cgsnap-{group}"
  Storage = "File"
  Pool = "Full"
  Messages = "Standard"
  Where = "{w}/restore"
}}
{includes}"#
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
    // fd.log: the file daemon's own copy of its job messages (see the module doc).
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
  append = "{w}/fd.log" = all, !skipped
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

/// The director's SQLite catalog `d/bacula.db`, from the schema Debian ships for it.
pub fn create_catalog(d: &Path) {
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
}
