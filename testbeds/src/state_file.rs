//! A testbed's state file (`STATE_DIR/state.json`): what `up` started, so that `status`,
//! `down` and the workload find it again; and the other files of that directory (the
//! workload's acknowledgement log, the verification profile).
//!
//! Invariants: written whole or not at all (temporary file, then rename); the directory's name
//! is the testbed's name, so errors can say which `cgsnap testbed up` to run.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("state.json")
}

/// The workload's acknowledgement log in a testbed's state directory.
pub fn ack_log(state_dir: &Path) -> PathBuf {
    state_dir.join("acks.jsonl")
}

/// The verification profile `up` writes into a testbed's state directory.
pub fn verify_profile(state_dir: &Path) -> PathBuf {
    state_dir.join("verify.toml")
}

/// Refuse to bring `testbed` up over a state that is still there.
pub fn ensure_absent(state_dir: &Path, testbed: &str) -> Result<(), String> {
    if path(state_dir).exists() {
        return Err(format!(
            "testbed {testbed} is already up (state in {}): run `cgsnap testbed down {testbed}` first",
            state_dir.display()
        ));
    }
    Ok(())
}

pub fn load<T: DeserializeOwned>(state_dir: &Path) -> Result<T, String> {
    let p = path(state_dir);
    let b = std::fs::read(&p).map_err(|e| {
        let name = state_dir
            .file_name()
            .map(|n| format!(" {}", n.to_string_lossy()))
            .unwrap_or_default();
        format!(
            "testbed{name} is not up ({}: {e}): run `cgsnap testbed up{name}`",
            p.display()
        )
    })?;
    serde_json::from_slice(&b).map_err(|e| format!("malformed {}: {e}", p.display()))
}

pub fn save<T: Serialize>(state_dir: &Path, s: &T) -> Result<(), String> {
    let p = path(state_dir);
    let body = serde_json::to_vec_pretty(s).map_err(|e| e.to_string())?;
    let tmp = p.with_extension("json.tmp");
    std::fs::write(&tmp, body).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &p).map_err(|e| format!("{}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors_name_the_testbed() {
        let d = tempfile::tempdir().expect("dir");
        let sd = d.path().join("postgres-pair");
        std::fs::create_dir(&sd).expect("state dir");
        let e = load::<Vec<u32>>(&sd).expect_err("nothing saved yet");
        assert!(e.contains("run `cgsnap testbed up postgres-pair`"), "{e}");
        ensure_absent(&sd, "postgres-pair").expect("not up yet");
        save(&sd, &vec![1u32, 2]).expect("save");
        let e = ensure_absent(&sd, "postgres-pair").expect_err("up");
        assert!(e.contains("cgsnap testbed down postgres-pair"), "{e}");
        assert_eq!(load::<Vec<u32>>(&sd).expect("load"), [1, 2]);
        std::fs::write(path(&sd), b"{").expect("truncate");
        assert!(
            load::<Vec<u32>>(&sd)
                .expect_err("malformed")
                .starts_with("malformed")
        );
    }
}
