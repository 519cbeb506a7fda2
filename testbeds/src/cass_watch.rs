//! The Cassandra guest's start-up watch (`cassandra/watch.sh`): while the init waits for the
//! CQL port it watches the server's PID and output, so a server that exits or logs a fatal
//! start-up error is reported as `CGSNAP-CASS: error: <its own line>` within a second or two.
//! Tested here by running the real functions with stand-in servers.
//!
//! Invariants: the outcome is printed once, `ready` only when the port accepts a connection;
//! a fatal line is preferred to "exited" and to the timeout, and is the server's line verbatim
//! (carriage returns dropped, at most 400 characters).

/// The shell functions (`cass_wait`, `cass_fatal`, `cass_alive`, `cass_last`).
pub const SCRIPT: &str = include_str!("../cassandra/watch.sh");

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// Run `body` with the functions and `$log` set to a fresh file; (stdout, elapsed).
    fn run(body: &str) -> (String, Duration) {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let log = std::env::temp_dir().join(format!(
            "cgsnap-watch-{}-{}.out",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let script = format!("{SCRIPT}\nlog={}\n: > \"$log\"\n{body}\n", log.display());
        let t = Instant::now();
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("sh");
        let _ = std::fs::remove_file(&log);
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            t.elapsed(),
        )
    }

    /// A closed port on loopback: nothing listens on a port just released.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }

    const INVALID_YAML: &str = "Exception (org.apache.cassandra.exceptions.ConfigurationException) encountered during startup: Invalid yaml. Please remove properties [cdc_raw_directory, hints_directory] from your cassandra.yaml";

    #[test]
    fn a_fatal_line_of_a_running_server_is_reported_at_once() {
        let port = closed_port();
        let body = format!(
            "printf 'INFO  [main] starting\\r\\n%s\\r\\n\\tat org.apache.Foo\\n' '{INVALID_YAML}' >> \"$log\"
sleep 30 >/dev/null 2>&1 &
srv=$!
cass_wait $srv \"$log\" 127.0.0.1 {port} 60; echo \"rc=$?\"
kill $srv"
        );
        let (out, took) = run(&body);
        assert_eq!(out, format!("error: {INVALID_YAML}\nrc=1\n"));
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn the_cause_logged_just_after_a_fatal_error_line_is_preferred() {
        let port = closed_port();
        let body = format!(
            "echo 'ERROR [main] CassandraDaemon.java:1 - Fatal configuration error' >> \"$log\"
sh -c 'sleep 0.3; echo \"org.apache.cassandra.exceptions.ConfigurationException: Invalid yaml. x\"; exec sleep 30' >> \"$log\" 2>/dev/null &
srv=$!
cass_wait $srv \"$log\" 127.0.0.1 {port} 60
kill $srv"
        );
        assert_eq!(
            run(&body).0,
            "error: org.apache.cassandra.exceptions.ConfigurationException: Invalid yaml. x\n"
        );
    }

    #[test]
    fn the_root_cause_of_a_startup_exception_is_named() {
        let port = closed_port();
        let body = format!(
            "printf '%s\\n' 'Exception (java.lang.ExceptionInInitializerError) encountered during startup: null' \
             'java.lang.ExceptionInInitializerError' '\tat org.apache.Foo' \
             'Caused by: java.lang.IllegalStateException: Failed to mkdirs /cassdata/x; unable to start server' >> \"$log\"
cass_wait 999999 \"$log\" 127.0.0.1 {port} 60"
        );
        assert_eq!(
            run(&body).0,
            "error: Exception (java.lang.ExceptionInInitializerError) encountered during startup: null; \
             caused by: java.lang.IllegalStateException: Failed to mkdirs /cassdata/x; unable to start server\n"
        );
    }

    #[test]
    fn a_commit_log_that_cannot_be_replayed_is_named_with_its_segment() {
        let port = closed_port();
        // As 2.2 logs it: the exit notice first, the exception with the segment after it.
        let body = format!(
            "printf '%s\\n' 'ERROR [main] 2026-12-03 JVMStabilityInspector.java:100 - Exiting due to error while processing commit log during initialization.' \
             'org.apache.cassandra.db.commitlog.CommitLogReplayer$CommitLogReplayException: Encountered bad header at position 1234 of commit log /casscommit/commitlog/CommitLog-5-1.log, with bad position but valid CRC' \
             '\tat org.apache.Foo' >> \"$log\"
sh -c 'exit 100' &
cass_wait $! \"$log\" 127.0.0.1 {port} 60"
        );
        let (out, took) = run(&body);
        assert_eq!(
            out,
            "error: org.apache.cassandra.db.commitlog.CommitLogReplayer$CommitLogReplayException: \
             Encountered bad header at position 1234 of commit log \
             /casscommit/commitlog/CommitLog-5-1.log, with bad position but valid CRC\n"
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn a_server_that_exits_is_reported_with_its_last_line() {
        let port = closed_port();
        let body = format!(
            "sh -c 'echo \"Error: JAVA_HOME is not set and no java found\"; exit 1' >> \"$log\" &
cass_wait $! \"$log\" 127.0.0.1 {port} 60"
        );
        let (out, took) = run(&body);
        assert_eq!(
            out,
            "error: the Cassandra server exited before its CQL port opened; its last line: \
             Error: JAVA_HOME is not set and no java found\n"
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
        // A fatal line wins over the last line, and over an error logged later.
        let body = format!(
            "echo 'ERROR [main] 2024-01-01 CassandraDaemon.java:1 - Fatal configuration error' >> \"$log\"
echo 'Cannot start node if snitch rack differs' >> \"$log\"
echo bye >> \"$log\"
sh -c 'exit 1' &
cass_wait $! \"$log\" 127.0.0.1 {port} 60"
        );
        assert_eq!(
            run(&body).0,
            "error: Cannot start node if snitch rack differs\n"
        );
    }

    #[test]
    fn an_open_port_is_ready_and_a_silent_server_times_out() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let body = format!(
            "sleep 30 >/dev/null 2>&1 &
srv=$!
cass_wait $srv \"$log\" 127.0.0.1 {port} 60; echo \"rc=$?\"
kill $srv"
        );
        assert_eq!(run(&body).0, "ready\nrc=0\n");
        drop(l);
        let port = closed_port();
        let body = format!(
            "echo 'INFO  [main] still replaying' >> \"$log\"
sleep 30 >/dev/null 2>&1 &
srv=$!
cass_wait $srv \"$log\" 127.0.0.1 {port} 1
kill $srv"
        );
        assert_eq!(
            run(&body).0,
            "error: CQL port not open after 1 s; the server's last line: INFO  [main] still replaying\n"
        );
    }

    #[test]
    fn liveness_ignores_zombies() {
        // The child exits at once; without reaping it stays a zombie of the shell.
        let (out, _) = run("sh -c 'exit 0' &
pid=$!
sleep 1
cass_alive $pid && echo alive || echo dead
sleep 5 &
cass_alive $! && echo alive || echo dead
kill $!");
        assert_eq!(out, "dead\nalive\n");
    }
}
