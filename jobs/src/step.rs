//! What every driver step shares: the outcome of one pass ([`Step`]) and decoding a job's
//! spec and notes from the log. A leaf module: it must not import the drivers.

use crate::error::{JobError, Result};
use snapfleet_coordinator::model::Job;

/// What one pass of a driver decided.
pub(crate) enum Step {
    /// Look again now (the phase moved on).
    Again,
    /// Nothing to do until the job changes.
    Wait,
    Done,
}

/// The job's spec (what the operator asked).
pub(crate) fn spec<T: serde::de::DeserializeOwned>(job: &Job) -> Result<T> {
    serde_json::from_value(job.spec.clone()).map_err(|e| JobError::invalid("job spec", e))
}

/// The driver's notes (what the leader decided so far).
pub(crate) fn notes<T: serde::de::DeserializeOwned>(job: &Job) -> Result<T> {
    serde_json::from_value(job.data.clone()).map_err(|e| JobError::invalid("job notes", e))
}

pub(crate) fn coord(e: snapfleet_coordinator::CoordinatorError) -> JobError {
    JobError::Coordinator(e.to_string())
}
