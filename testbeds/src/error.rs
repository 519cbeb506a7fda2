//! What bringing a testbed up, running its workload or taking it down failed on.
//!
//! Invariant: the message of every variant is the text the `cgsnap testbed` commands print;
//! wrapped errors keep theirs unchanged (transparent) and stay reachable as the source.

use std::path::PathBuf;

/// An error of a testbed's `up`, workload or `down`.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// Reading or writing the state directory's `state.json`.
    #[error(transparent)]
    State(#[from] crate::state_file::StateError),
    /// Creating, writing or removing a file or directory of the testbed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// No usable Cassandra distribution.
    #[error(transparent)]
    Distribution(#[from] crate::cassandra::DistError),
    /// The distribution's version or the image's Java is not supported.
    #[error(transparent)]
    CassandraConfig(#[from] crate::cass_config::ConfigError),
    /// Building the guest kernel or an image failed.
    #[error(transparent)]
    Assets(#[from] crate::assets::AssetError),
    /// Starting or waiting for a guest failed.
    #[error(transparent)]
    Guest(#[from] crate::guest::GuestError),
    /// The workload (or a schema it needs) failed.
    #[error(transparent)]
    Workload(#[from] crate::workload::WorkloadError),
    /// A CQL operation failed.
    #[error(transparent)]
    Cql(#[from] crate::cql::CqlError),
    /// The number of `--port`s given does not match the testbed's VMs.
    #[error("testbed {testbed} needs {need} port(s), got {got}")]
    Ports {
        /// The testbed.
        testbed: String,
        /// Ports it needs, one per VM.
        need: usize,
        /// Ports given.
        got: usize,
    },
    /// A PostgreSQL VM is planned but its images were not built.
    #[error("no PostgreSQL images")]
    NoPostgresImages,
    /// The saved state has no VM of an engine the workload needs.
    #[error("testbed state lacks the {0} VM")]
    MissingVm(&'static str),
}

impl TestbedError {
    /// An I/O error on `path`.
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TestbedError + '_ {
        move |source| TestbedError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
