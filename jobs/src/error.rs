//! The drivers' errors: for now the agent's error type (the same repository, database,
//! coordinator and validation failures, with the same retryable/permanent split).
pub use snapfleet_agent::error::{AgentError, Result};
