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

    pub(crate) fn rpc(peer: impl Into<String>, status: tonic::Status) -> Self {
        Error::Rpc {
            peer: peer.into(),
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

/// Turns a status received from a peer back into our error, keeping its code.
pub fn from_status(peer: &str, status: tonic::Status) -> Error {
    match status.code() {
        tonic::Code::InvalidArgument => Error::InvalidArgument(status.message().to_string()),
        tonic::Code::NotFound => Error::NotFound(status.message().to_string()),
        tonic::Code::AlreadyExists => Error::AlreadyExists(status.message().to_string()),
        tonic::Code::FailedPrecondition => Error::FailedPrecondition(status.message().to_string()),
        tonic::Code::Aborted => Error::Aborted(status.message().to_string()),
        _ => Error::rpc(peer, status),
    }
}
