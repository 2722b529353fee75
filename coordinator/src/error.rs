//! The coordinator's one error type. Each variant says which object failed and what to do
//! next, and `is_retryable` tells callers whether trying again (possibly elsewhere) can help.
//! This file must never log or decide policy; it only describes failures.

use crate::command::Rejection;
use crate::ids::ReplicaId;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("not leader; leader is {} at {}", .leader.0, .address)]
    NotLeader { leader: ReplicaId, address: String },

    #[error("no leader known to this replica (an election is in progress, or this replica cannot reach a majority of the group): retry in a moment or ask another replica")]
    NoLeader,

    #[error("replica {0} is not a voting member of the coordinator group (removed, or waiting to be added with `snapfleet cluster add-replica`): ask another replica")]
    NotMember(u64),

    #[error("membership change refused: {0}")]
    Membership(#[from] MembershipRefusal),

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
                | CoordinatorError::NotMember(_)
        )
    }

    pub(crate) fn corrupt(what: &'static str, detail: impl std::fmt::Display) -> Self {
        CoordinatorError::Corrupt {
            what,
            detail: detail.to_string(),
        }
    }
}

/// Why the leader refused a membership change (`cluster add-replica` / `remove-replica`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipRefusal {
    #[error("replica id must be non-zero")]
    InvalidId,

    #[error("replica address {0:?} is not HOST:PORT")]
    InvalidAddress(String),

    #[error("replica {id} is already a member (at {address}); remove it first to re-add it")]
    AlreadyMember { id: u64, address: String },

    #[error("address {address} is already used by replica {id}")]
    AddressInUse { address: String, id: u64 },

    #[error("replica {0} is not a member; see `snapfleet cluster status`")]
    NotMember(u64),

    #[error("replica {0} is the last voter: a group cannot lose its last member")]
    LastVoter(u64),

    #[error("another membership change (log index {index}) has not been applied yet: wait until it commits (a majority of the current members must be up), then retry")]
    Pending { index: u64 },

    #[error("the leader cannot remove itself; hand leadership over first")]
    RemoveLeader,
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
