//! The errors of the CQL client ([`crate::cql`]): each names the statement or the node.

/// What a CQL operation against a node failed on; each names the statement or the node.
#[derive(Debug, thiserror::Error)]
pub enum CqlError {
    /// The async runtime the blocking client drives the driver with could not be built.
    #[error("tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// No session could be opened to `addr`.
    #[error("CQL connect {addr}: {source}")]
    Connect {
        /// The node (`127.0.0.1:PORT`).
        addr: String,
        /// The driver's reason.
        #[source]
        source: Box<scylla::errors::NewSessionError>,
    },
    /// The node did not accept a connection and a query within the wait.
    #[error("not CQL-ready within {secs} s: {source}")]
    NotReady {
        /// How long it was given.
        secs: u64,
        /// The last attempt's failure.
        #[source]
        source: Box<CqlError>,
    },
    /// A statement failed on the server or on the way to it.
    #[error("{cql}: {source}")]
    Query {
        /// The statement, as sent.
        cql: String,
        /// The driver's reason.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A statement could not be prepared.
    #[error("prepare {cql}: {source}")]
    Prepare {
        /// The statement.
        cql: String,
        /// The driver's reason.
        #[source]
        source: Box<scylla::errors::PrepareError>,
    },
    /// A query expected to return one row returned another number.
    #[error("{cql}: {rows} rows instead of one")]
    RowCount {
        /// The query.
        cql: String,
        /// Rows it returned.
        rows: usize,
    },
    /// A column expected to be an integer is not.
    #[error("not an integer: {0}")]
    NotInteger(String),
    /// A value of a query's row is not an integer.
    #[error("{cql}: {source}")]
    Column {
        /// The query.
        cql: String,
        /// What the value was.
        #[source]
        source: Box<CqlError>,
    },
    /// The client's own deadline passed before the driver answered (a node that accepts a
    /// connection and then says nothing, a stream that never ends).
    #[error("{what}: no answer within the client deadline of {secs} s")]
    Deadline {
        /// The statement or connection.
        what: String,
        /// The deadline.
        secs: u64,
    },
    /// The address is not `IP:PORT` on loopback: the host only ever reaches a guest through
    /// its loopback forward.
    #[error("CQL address {0}: only a loopback IP:PORT forward may be used")]
    NotLoopback(String),
    /// A one-row query returned a row without columns.
    #[error("{cql}: no column")]
    NoColumn {
        /// The query.
        cql: String,
    },
    /// `system.local` lacks the server version.
    #[error("system.local has no release_version")]
    NoReleaseVersion,
    /// The server version is not `MAJOR[.MINOR[.PATCH]]...`.
    #[error("unparsable release_version {0:?}")]
    BadReleaseVersion(String),
    /// Neither schema table family answered.
    #[error("no schema tables found: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    NoSchemaTables(Vec<CqlError>),
    /// A beacon row has a null or unreadable timestamp.
    #[error("{table}: beacon {seq} has no timestamp")]
    NoTimestamp {
        /// The beacon table.
        table: String,
        /// The beacon.
        seq: i64,
    },
}
