//! What can go wrong in an agent or a job driver. Every message names the object and says
//! what to do.

use snapfleet_adapter::AdapterError;
use snapfleet_repository as repo;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("repository: {0}")]
    Repository(#[from] repo::Error),
    #[error("database: {0}")]
    Database(#[from] AdapterError),
    #[error("coordinator: {0}")]
    Coordinator(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {what}: {why}")]
    Invalid { what: String, why: String },
    #[error("task cancelled: {0}")]
    Cancelled(String),
}

impl AgentError {
    pub fn invalid(what: impl Into<String>, why: impl std::fmt::Display) -> Self {
        AgentError::Invalid {
            what: what.into(),
            why: why.to_string(),
        }
    }

    /// Whether retrying the same task could succeed (a dead peer, a throttling store), as
    /// opposed to a damaged repository or a bad request.
    pub fn is_retryable(&self) -> bool {
        match self {
            AgentError::Repository(e) => e.step_may_succeed_again(),
            AgentError::Database(e) => e.is_retryable(),
            AgentError::Coordinator(_) | AgentError::Io { .. } | AgentError::Cancelled(_) => true,
            AgentError::Invalid { .. } => false,
        }
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

impl From<snapfleet_api::IdError> for AgentError {
    fn from(e: snapfleet_api::IdError) -> Self {
        AgentError::invalid(e.what, &e)
    }
}
