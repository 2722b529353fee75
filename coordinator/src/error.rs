//! The coordinator's one error type. Each variant says which object failed and what to do
//! next, and `is_retryable` tells callers whether trying again (possibly elsewhere) can help.
//! This file must never log or decide policy; it only describes failures.

use crate::command::Rejection;
use crate::ids::ReplicaId;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("not leader; leader is {} at {}", .leader.0, .address)]
    NotLeader { leader: ReplicaId, address: String },

    #[error("no leader elected yet (election in progress): retry in a moment")]
    NoLeader,

    #[error("proposal outcome unknown ({0}): read the object back before retrying a non-idempotent request")]
    ProposalDropped(String),

    #[error("timed out after {0:?} waiting for the Raft group: is a majority of replicas up?")]
    Timeout(std::time::Duration),

    #[error("coordinator replica is shutting down: retry against another replica")]
    Stopped,

    #[error("refused: {0}")]
    Rejected(#[from] Rejection),

    #[error(
        "sled storage at {path}: {source}; check the disk and permissions of the data directory"
    )]
    Storage {
        path: String,
        #[source]
        source: sled::Error,
    },

    #[error("raft: {0}")]
    Raft(#[from] raft::Error),

    #[error("corrupt {what}: {detail}; the replica's data directory is damaged: remove it and let the replica catch up from the others")]
    Corrupt { what: &'static str, detail: String },

    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("i/o on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot reach replica {peer} at {address}: {detail}")]
    Unreachable {
        peer: u64,
        address: String,
        detail: String,
    },
}

impl CoordinatorError {
    /// True when the same request may succeed later or on another replica.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CoordinatorError::NotLeader { .. }
                | CoordinatorError::NoLeader
                | CoordinatorError::ProposalDropped(_)
                | CoordinatorError::Timeout(_)
                | CoordinatorError::Stopped
                | CoordinatorError::Unreachable { .. }
        )
    }

    pub(crate) fn corrupt(what: &'static str, detail: impl std::fmt::Display) -> Self {
        CoordinatorError::Corrupt {
            what,
            detail: detail.to_string(),
        }
    }
}

pub type Result<T, E = CoordinatorError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_split() {
        let nl = CoordinatorError::NotLeader {
            leader: ReplicaId(2),
            address: "127.0.0.1:7001".into(),
        };
        assert!(nl.is_retryable());
        assert_eq!(nl.to_string(), "not leader; leader is 2 at 127.0.0.1:7001");
        assert!(!CoordinatorError::Rejected(Rejection::Invalid("x".into())).is_retryable());
        assert!(!CoordinatorError::corrupt("entry", "bad").is_retryable());
    }
}
