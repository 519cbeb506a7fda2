//! A PostgreSQL session whose every query runs under a client-side deadline, and why a query
//! gave no answer.
//!
//! Invariant: a query with no answer by its deadline ([`deadline`]: the statement timeout plus
//! [`DEADLINE_MARGIN`]) fails, and the session is lost for good: every later query on it fails
//! naming the one that hung, since the connection may still deliver that late answer.

use postgres::Client;
use std::sync::mpsc;
use std::time::Duration;

/// Why a check query gave no answer; the text is the check's evidence.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The server (or the client library) reported an error.
    #[error("{0}")]
    Server(#[from] postgres::Error),
    /// A cross-member query failed on the server.
    #[error("{sql}: {source}")]
    Scalar {
        /// The query.
        sql: String,
        /// The server's reason.
        #[source]
        source: postgres::Error,
    },
    /// The session was lost earlier (the text says how); the query was not sent.
    #[error("{0}")]
    Lost(String),
    /// No thread could be started to run the query under its deadline.
    #[error("{what}: no thread for the query: {source}")]
    NoThread {
        /// The query.
        what: String,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// No answer by the client-side deadline.
    #[error(
        "{what}: no answer within {secs} s (client-side deadline: statement timeout + {} s); \
         the guest stopped answering, the connection was abandoned",
        DEADLINE_MARGIN.as_secs()
    )]
    NoAnswer {
        /// The query.
        what: String,
        /// The deadline in seconds.
        secs: u64,
    },
    /// The thread running the query died (panicked).
    #[error("{what}: the query's thread died")]
    ThreadDied {
        /// The query.
        what: String,
    },
    /// A count the server returned does not fit (negative).
    #[error("{0}")]
    Count(#[from] std::num::TryFromIntError),
}

/// What the client allows beyond the server's statement timeout: the server's own error for a
/// query it cancelled must arrive first, over a TCG guest that may be slow.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(15);

/// The client-side deadline of one query.
pub fn deadline(statement_timeout: Duration) -> Duration {
    statement_timeout.saturating_add(DEADLINE_MARGIN)
}

/// A connection (any `C`: a [`Client`] in use) whose every query runs under a client-side
/// deadline. The query runs on its own thread with the connection; if no answer comes in time
/// the thread keeps the connection (it ends when the sandbox is destroyed and the socket
/// closes) and the session is lost.
pub struct Deadlined<C> {
    conn: Option<C>,
    limit: Duration,
    /// Why the connection is gone, once it is.
    lost: Option<String>,
}

/// A PostgreSQL connection with per-query deadlines.
pub type Session = Deadlined<Client>;

impl<C: Send + 'static> Deadlined<C> {
    /// Wrap `conn`; every query on it gets `limit` to answer.
    pub fn new(conn: C, limit: Duration) -> Self {
        Self {
            conn: Some(conn),
            limit,
            lost: None,
        }
    }

    /// Run `f` (one query, described by `what`) on the connection, waiting at most the limit.
    pub fn run<T: Send + 'static>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut C) -> Result<T, QueryError> + Send + 'static,
    ) -> Result<T, QueryError> {
        let Some(mut conn) = self.conn.take() else {
            return Err(QueryError::Lost(
                self.lost
                    .clone()
                    .unwrap_or_else(|| "the connection is gone".into()),
            ));
        };
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("pg-query".into())
            .spawn(move || {
                let r = f(&mut conn);
                // The receiver is gone once the deadline passed: the late answer is dropped.
                let _ = tx.send((conn, r));
            });
        if let Err(e) = spawned {
            self.lost = Some(format!("not run: no thread for a query ({e})"));
            return Err(QueryError::NoThread {
                what: what.to_string(),
                source: e,
            });
        }
        match rx.recv_timeout(self.limit) {
            Ok((conn, r)) => {
                self.conn = Some(conn);
                r
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let e = QueryError::NoAnswer {
                    what: what.to_string(),
                    secs: self.limit.as_secs(),
                };
                self.lost = Some(format!("not run: an earlier query hung ({e})"));
                Err(e)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.lost = Some("not run: an earlier query's thread died".into());
                Err(QueryError::ThreadDied {
                    what: what.to_string(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_without_an_answer_by_its_deadline_fails_and_ends_the_session() {
        assert_eq!(deadline(Duration::from_secs(600)), Duration::from_secs(615));
        let mut s = Deadlined::new(0u32, Duration::from_millis(200));
        let counted = s.run("count", |n| {
            *n += 1;
            Ok(*n)
        });
        assert_eq!(counted.ok(), Some(1));
        // The connection comes back after each answered query, errors included.
        let bad = s.run("bad", |_| Err::<(), _>(QueryError::Lost("syntax".into())));
        assert_eq!(bad.unwrap_err().to_string(), "syntax");
        assert_eq!(s.run("count", |n| Ok(*n)).ok(), Some(1));
        let e = s
            .run("amcheck", |_| {
                std::thread::sleep(Duration::from_secs(2));
                Ok(())
            })
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("amcheck: no answer within 0 s") && e.contains("abandoned"),
            "{e}"
        );
        let e = s.run("count", |n| Ok(*n)).unwrap_err().to_string();
        assert!(
            e.contains("an earlier query hung") && e.contains("amcheck"),
            "{e}"
        );
        // A query whose thread dies fails too, never passes.
        let mut s = Deadlined::new(0u32, Duration::from_secs(5));
        let e = s
            .run("boom", |_| -> Result<(), QueryError> {
                panic!("query thread")
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("thread died"), "{e}");
        assert!(s.run("count", |n| Ok(*n)).is_err());
    }
}
