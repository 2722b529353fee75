//! [`AdapterError`]: every failure an adapter reports, split into the kinds a caller retries
//! (the database is busy, unreachable or raced a schema change) and the kinds it must not
//! (fix the request or the data). Callers match on [`AdapterError::is_retryable`] or on a
//! kind, never on message text.
//!
//! Messages name the object and, where the database said so, the next step. This module must
//! never hold database-specific conversions: those live in each adapter's `convert.rs`.

/// Result alias of the adapter boundary.
pub type Result<T, E = AdapterError> = std::result::Result<T, E>;

/// A failure of an adapter call.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    // ---- retryable: the same call may succeed later
    /// A node or the control plane cannot be reached, or is not live.
    #[error("{what} is unavailable: {detail}")]
    Unavailable { what: String, detail: String },
    /// A schema change raced the operation (the catalog version is fenced); nothing of the
    /// attempt is left behind.
    #[error("{what} raced a schema change ({attempts} attempt(s)): {detail}")]
    Fenced {
        what: String,
        attempts: u32,
        detail: String,
    },
    /// A local file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    // ---- permanent: fix the request or the data
    /// The named object does not exist.
    #[error("{what} not found{}", suffix(.detail))]
    NotFound { what: String, detail: String },
    /// The object exists already (a restore never overwrites).
    #[error("{what} already exists{}", suffix(.detail))]
    AlreadyExists { what: String, detail: String },
    /// The request is malformed or inconsistent with the database.
    #[error("invalid {what}: {why}")]
    Invalid { what: String, why: String },
    /// The database's state does not allow this (e.g. outside the history window).
    #[error("{what}: {why}")]
    Precondition { what: String, why: String },
    /// Stored data or a native description is damaged.
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: String, detail: String },
    /// The database failed in a way a retry will not fix (a storage error on a node).
    #[error("{what} failed: {detail}")]
    Internal { what: String, detail: String },
}

fn suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl AdapterError {
    /// True when the same call may succeed if simply retried.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable { .. } | Self::Fenced { .. } | Self::Io { .. }
        )
    }

    pub fn not_found(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::NotFound {
            what: what.into(),
            detail: detail.into(),
        }
    }

    pub fn invalid(what: impl Into<String>, why: impl std::fmt::Display) -> Self {
        Self::Invalid {
            what: what.into(),
            why: why.to_string(),
        }
    }

    pub fn corrupt(what: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Self::Corrupt {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}

/// An id the database handed over that is not safe as a path component or key.
impl From<snapfleet_api::IdError> for AdapterError {
    fn from(e: snapfleet_api::IdError) -> Self {
        Self::Corrupt {
            what: e.what.to_string(),
            detail: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_and_permanent_kinds() {
        let s = || String::from("x");
        let retry = [
            AdapterError::Unavailable {
                what: s(),
                detail: s(),
            },
            AdapterError::Fenced {
                what: s(),
                attempts: 2,
                detail: s(),
            },
            AdapterError::Io {
                what: s(),
                source: std::io::Error::other("disk"),
            },
        ];
        assert!(retry.iter().all(AdapterError::is_retryable));
        let permanent = [
            AdapterError::not_found("snapshot s1", ""),
            AdapterError::AlreadyExists {
                what: s(),
                detail: s(),
            },
            AdapterError::invalid("time", "in the future"),
            AdapterError::Precondition {
                what: s(),
                why: s(),
            },
            AdapterError::corrupt("records", "cut short"),
            AdapterError::Internal {
                what: s(),
                detail: s(),
            },
        ];
        assert!(!permanent.iter().any(AdapterError::is_retryable));
        assert_eq!(permanent[0].to_string(), "snapshot s1 not found");
    }
}
