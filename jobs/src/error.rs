//! What can go wrong in a job driver. Every message names the object and says what to do;
//! [`JobError::is_retryable`] splits failures the driver retries (a dead peer, a throttling
//! store, a lost leader) from those that end the job (a damaged backup, a bad request).

use snapfleet_adapter::AdapterError;
use snapfleet_repository as repo;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("repository: {0}")]
    Repository(#[from] repo::Error),
    #[error("database: {0}")]
    Database(#[from] AdapterError),
    #[error("coordinator: {0}")]
    Coordinator(String),
    #[error("invalid {what}: {why}")]
    Invalid { what: String, why: String },
}

impl JobError {
    pub fn invalid(what: impl Into<String>, why: impl std::fmt::Display) -> Self {
        JobError::Invalid {
            what: what.into(),
            why: why.to_string(),
        }
    }

    /// Whether running the same step again could succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            JobError::Repository(e) => e.step_may_succeed_again(),
            JobError::Database(e) => e.is_retryable(),
            JobError::Coordinator(_) => true,
            JobError::Invalid { .. } => false,
        }
    }
}

impl From<snapfleet_api::IdError> for JobError {
    fn from(e: snapfleet_api::IdError) -> Self {
        JobError::invalid(e.what, &e)
    }
}

pub type Result<T, E = JobError> = std::result::Result<T, E>;
