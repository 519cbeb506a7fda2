//! A testbed's state file (`STATE_DIR/state.json`): what `up` started, so that `status`,
//! `down` and the workload find it again; and the other files of that directory (the
//! workload's acknowledgement log, the verification profile).
//!
//! Invariants: written whole or not at all (temporary file, then rename); the directory's name
//! is the testbed's name, so errors can say which `cgsnap testbed up` to run.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// What reading or writing a testbed's state failed on; each says which command fixes it.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// `up` over a testbed that is still up.
    #[error("testbed {testbed} is already up (state in {}): run `cgsnap testbed down {testbed}` first", dir.display())]
    AlreadyUp {
        /// The testbed.
        testbed: String,
        /// Its state directory.
        dir: PathBuf,
    },
    /// No state file: the testbed is not up (`name` is ` NAME` or empty).
    #[error("testbed{name} is not up ({}: {source}): run `cgsnap testbed up{name}`", path.display())]
    NotUp {
        /// The testbed's name with a leading space, empty when the directory has none.
        name: String,
        /// The state file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The state file is not the JSON of a state.
    #[error("malformed {}: {source}", path.display())]
    Malformed {
        /// The state file.
        path: PathBuf,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The state could not be encoded.
    #[error("{0}")]
    Encode(#[source] serde_json::Error),
    /// Writing or renaming a state file (or another file of the directory) failed.
    #[error("{}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
}

/// The state file of the testbed whose state directory is `state_dir`.
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
pub fn ensure_absent(state_dir: &Path, testbed: &str) -> Result<(), StateError> {
    if path(state_dir).exists() {
        return Err(StateError::AlreadyUp {
            testbed: testbed.to_string(),
            dir: state_dir.to_path_buf(),
        });
    }
    Ok(())
}

/// Read the state `up` saved.
pub fn load<T: DeserializeOwned>(state_dir: &Path) -> Result<T, StateError> {
    let p = path(state_dir);
    let b = std::fs::read(&p).map_err(|source| StateError::NotUp {
        name: state_dir
            .file_name()
            .map(|n| format!(" {}", n.to_string_lossy()))
            .unwrap_or_default(),
        path: p.clone(),
        source,
    })?;
    serde_json::from_slice(&b).map_err(|source| StateError::Malformed { path: p, source })
}

/// Write the state whole (temporary file, then rename).
pub fn save<T: Serialize>(state_dir: &Path, s: &T) -> Result<(), StateError> {
    let p = path(state_dir);
    let body = serde_json::to_vec_pretty(s).map_err(StateError::Encode)?;
    let tmp = p.with_extension("json.tmp");
    std::fs::write(&tmp, body).map_err(|source| StateError::Write {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, &p).map_err(|source| StateError::Write { path: p, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors_name_the_testbed() {
        let d = tempfile::tempdir().expect("dir");
        let sd = d.path().join("postgres-pair");
        std::fs::create_dir(&sd).expect("state dir");
        let e = load::<Vec<u32>>(&sd)
            .expect_err("nothing saved yet")
            .to_string();
        assert!(e.contains("run `cgsnap testbed up postgres-pair`"), "{e}");
        ensure_absent(&sd, "postgres-pair").expect("not up yet");
        save(&sd, &vec![1u32, 2]).expect("save");
        let e = ensure_absent(&sd, "postgres-pair")
            .expect_err("up")
            .to_string();
        assert!(e.contains("cgsnap testbed down postgres-pair"), "{e}");
        assert_eq!(load::<Vec<u32>>(&sd).expect("load"), [1, 2]);
        std::fs::write(path(&sd), b"{").expect("truncate");
        assert!(
            load::<Vec<u32>>(&sd)
                .expect_err("malformed")
                .to_string()
                .starts_with("malformed")
        );
    }
}
