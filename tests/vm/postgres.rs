//! The multi-disk PostgreSQL testbed guest: boots from Debian-built images, serves on a
//! loopback port, keeps PGDATA and pg_wal on different virtio disks.

use crate::common;

use cgsnap_testbeds::postgres;
use common::*;
use std::process::Command;
use std::time::Duration;

fn psql(port: u16, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", postgres::PASSWORD)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn postgres_guest_serves_on_loopback_with_data_and_wal_on_separate_disks() {
    let mut lab = lab("cgt-pg", 0, 0);
    let images = postgres::ensure(&cgsnap_testbeds::assets::cache_dir()).expect("pg images");
    let port = 25432;
    lab.add_guest(postgres::spec("cgt-pg-1", port, &images));
    let g = lab.guest("cgt-pg-1");
    let t = g
        .wait_console("CGSNAP-PG: ready", Duration::from_secs(300))
        .expect("postgres ready");
    println!("boot to ready: {:.1} s", t.as_secs_f64());
    assert_eq!(psql(port, "SHOW data_directory"), "/pgdata/db");
    let disks = psql(
        port,
        "CREATE TEMP TABLE m(l text); COPY m FROM PROGRAM 'readlink -f /pgdata/db/pg_wal; df --output=source /pgdata/db /pgwal/wal | tail -n 2'; SELECT string_agg(l, ' ') FROM m",
    );
    assert_eq!(
        disks, "/pgwal/wal /dev/vdb /dev/vdc",
        "pg_wal -> WAL disk, PGDATA on data disk"
    );
}
