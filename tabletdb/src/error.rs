//! The tabletdb error type. Each variant says whether a retry can help, and maps onto a gRPC
//! status code at the edge, so a client can tell "try again" from "fix your request".

use std::path::PathBuf;

/// Result alias for tabletdb.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong inside tabletdb.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or names something inconsistent with the schema.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A named object (database, table, tablet, snapshot) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The object already exists.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The caller's view is stale (catalog version) or the state does not allow this now.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A concurrent change (e.g. DDL during a snapshot) aborted the operation; retry it.
    #[error("aborted (retryable): {0}")]
    Aborted(String),
    /// A peer (node, master) cannot be reached; retry later.
    #[error("unavailable (retryable): {0}")]
    Unavailable(String),
    /// RocksDB reported an error on a tablet.
    #[error("storage error in {path}: {message}")]
    Storage { path: PathBuf, message: String },
    /// A local file could not be read or written.
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A stored file is damaged (metadata, change-log segment).
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: String, detail: String },
    /// An RPC to another process failed.
    #[error("rpc to {peer} failed: {status}")]
    Rpc {
        peer: String,
        status: Box<tonic::Status>,
    },
}

impl Error {
    /// True when the same call may succeed if simply retried.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Aborted(_) | Error::Unavailable(_) => true,
            Error::Rpc { status, .. } => matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Aborted | tonic::Code::DeadlineExceeded
            ),
            _ => false,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn storage(path: impl Into<PathBuf>, e: rocksdb::Error) -> Self {
        Error::Storage {
            path: path.into(),
            message: e.into_string(),
        }
    }

    /// A failed call to `peer`. When no answer came because the connection broke (the
    /// peer died mid-call), it is `Unavailable`: retryable, here and in every status the
    /// master passes on (a node killed during a clone or a restore to a time).
    pub(crate) fn rpc(peer: impl Into<String>, status: tonic::Status) -> Self {
        let peer = peer.into();
        if let Some(cause) = broken_connection(&status) {
            return Error::Unavailable(format!("{peer}: no answer, the connection broke: {cause}"));
        }
        Error::Rpc {
            peer,
            status: Box::new(status),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            Error::NotFound(_) => tonic::Status::not_found(msg),
            Error::AlreadyExists(_) => tonic::Status::already_exists(msg),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            Error::Aborted(_) => tonic::Status::aborted(msg),
            Error::Unavailable(_) => tonic::Status::unavailable(msg),
            Error::Rpc { status, .. } => tonic::Status::new(status.code(), msg),
            Error::Storage { .. } | Error::Io { .. } | Error::Corrupt { .. } => {
                tonic::Status::internal(msg)
            }
        }
    }
}

/// Turns a status received from a peer back into our error, keeping its code. The peer's
/// message already starts with its own error's prefix ("not found: …"), which is not
/// repeated.
pub fn from_status(peer: &str, status: tonic::Status) -> Error {
    let msg = |prefix: &str| {
        let m = status.message();
        m.strip_prefix(prefix).unwrap_or(m).to_string()
    };
    match status.code() {
        tonic::Code::InvalidArgument => Error::InvalidArgument(msg("invalid argument: ")),
        tonic::Code::NotFound => Error::NotFound(msg("not found: ")),
        tonic::Code::AlreadyExists => Error::AlreadyExists(msg("already exists: ")),
        tonic::Code::FailedPrecondition => Error::FailedPrecondition(msg("failed precondition: ")),
        tonic::Code::Aborted => Error::Aborted(msg("aborted (retryable): ")),
        _ => Error::rpc(peer, status),
    }
}

/// The cause when `s` was made by this process's own client because the connection broke
/// before an answer came (the peer was killed mid-call, a pooled connection was dead):
/// tonic reports that as `Unknown` "transport error" (or `Cancelled`) with the transport or
/// I/O error as its source. A status the peer sent has no source.
pub fn broken_connection(s: &tonic::Status) -> Option<String> {
    let chain: Vec<&(dyn std::error::Error + 'static)> =
        std::iter::successors(std::error::Error::source(s), |e| e.source()).collect();
    chain
        .iter()
        .any(|e| e.is::<tonic::transport::Error>() || e.is::<std::io::Error>())
        .then(|| {
            chain
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(": ")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_message_keeps_one_prefix() {
        let e = from_status(
            "master",
            tonic::Status::failed_precondition("failed precondition: outside the window"),
        );
        assert_eq!(e.to_string(), "failed precondition: outside the window");
    }

    #[test]
    fn a_broken_connection_is_unavailable_and_an_answer_is_not() {
        let broken = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "connection closed",
        )));
        let e = Error::rpc("node 2", broken);
        assert!(e.is_retryable(), "{e}");
        assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
        let answered = Error::rpc("node 2", tonic::Status::unknown("transport error"));
        assert!(!answered.is_retryable(), "{answered}");
        // Through the master's answer the class survives: Unavailable, not Unknown.
        let status: tonic::Status = e.into();
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }
}
