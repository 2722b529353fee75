//! The one error type of the repository crate, and the line between retryable and permanent
//! failures that every caller (retry layer, agents, CLI) matches on.
//!
//! Messages name the object involved and the next step an operator should take. This module
//! must never print secrets (passphrases, keys) and never turn a permanent failure (corrupt
//! object, wrong passphrase, unsafe path) into a retryable one.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure the repository can report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object store failed; `is_retryable` tells whether trying again may help.
    #[error("object store {op} of `{path}` failed: {source}")]
    Store {
        op: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },

    /// A referenced object does not exist.
    #[error(
        "object `{key}` is missing from the repository; run `snapfleet repo verify` to list \
         every missing object and the backups it breaks"
    )]
    MissingObject { key: String },

    /// An object exists but does not decrypt, decompress or hash to its id.
    #[error(
        "object `{key}` is corrupt ({detail}); run `snapfleet repo verify --deep` to list every \
         damaged object and the backups it breaks"
    )]
    CorruptObject { key: String, detail: String },

    /// No `snapfleet-repo.json` at the location.
    #[error(
        "no snapfleet repository at `{location}` (no snapfleet-repo.json); create one with \
         `snapfleet repo init`"
    )]
    NotARepository { location: String },

    /// `init` on a location that already holds a repository.
    #[error("a snapfleet repository already exists at `{location}`; refusing to overwrite it")]
    AlreadyInitialized { location: String },

    /// No key slot opens with the given passphrase.
    #[error(
        "wrong passphrase: no key slot of this repository opens with it; check \
         --password-file / SNAPFLEET_PASSWORD_FILE / SNAPFLEET_PASSWORD"
    )]
    WrongPassphrase,

    /// An encrypted repository was opened without a passphrase.
    #[error(
        "repository `{location}` is encrypted: give --password-file FILE or set \
         SNAPFLEET_PASSWORD_FILE or SNAPFLEET_PASSWORD"
    )]
    PassphraseRequired { location: String },

    /// A passphrase was given for a repository that is not encrypted.
    #[error(
        "repository `{location}` is not encrypted (created with --encryption none) but a \
         passphrase was given: refusing to store data in the clear where encryption was \
         expected; if this repository is meant to be unencrypted, unset the passphrase \
         (--password-file, SNAPFLEET_PASSWORD_FILE, SNAPFLEET_PASSWORD)"
    )]
    UnexpectedlyUnencrypted { location: String },

    /// Key management on a repository created with `--encryption none`.
    #[error(
        "repository `{location}` is not encrypted (created with --encryption none): it has no \
         keys; copy it into an encrypted repository with `repo copy --to URL` instead"
    )]
    NotEncrypted { location: String },

    /// The repository was written by a format version this build cannot read.
    #[error(
        "repository format version {found} is not supported by this build (supports up to {supported}); \
         upgrade snapfleet"
    )]
    UnsupportedFormat { found: u64, supported: u64 },

    /// A manifest entry whose path would land outside the restore target.
    #[error(
        "refusing manifest entry `{path}`: absolute, contains `..`, or would escape the target \
         directory (possibly through a symlink); nothing was written for it"
    )]
    UnsafePath { path: String },

    /// The named backup has no ROOT (never committed, or does not exist).
    #[error(
        "backup `{id}` not found (no committed ROOT); list backups with `snapfleet repo list`"
    )]
    BackupNotFound { id: String },

    /// A backup with this id is already committed.
    #[error("backup `{id}` is already committed; pick a new backup id")]
    BackupExists { id: String },

    /// A key slot id that is not in the repository.
    #[error("key `{id}` not found; list keys with `snapfleet repo key list`")]
    KeyNotFound { id: String },

    /// Refusing to remove the only key slot: the repository would be unreadable.
    #[error("refusing to remove key `{id}`: it is the last key and the repository would become unreadable; add another key first")]
    LastKey { id: String },

    /// GC found writers holding live leases and refused to sweep (see `lease.rs`).
    #[error(
        "gc refused: {count} backup writer(s) hold a live lease ({leases}); nothing was deleted. \
         Run gc again once they have committed, or after their lease expires if the writer died"
    )]
    GcBlocked { count: usize, leases: String },

    /// A lease this process holds was not renewed in time: someone may have acted as if it
    /// had expired (a gc may have swept chunks this writer relies on).
    #[error(
        "lease `{key}` was not renewed for {secs} s (TTL {ttl} s); a concurrent gc may have \
         removed chunks this backup reuses, so it was not committed: run the backup again"
    )]
    LeaseLost { key: String, secs: u64, ttl: u64 },

    /// GC could not read a committed backup, so it cannot know which chunks are live.
    #[error(
        "gc stopped before deleting anything: cannot read `{key}` of committed backup \
         `{backup}` ({detail}); run `snapfleet repo verify` and restore or forget that backup first"
    )]
    GcMarkFailed {
        backup: String,
        key: String,
        detail: String,
    },

    /// Local file-system failure (source tree or restore target).
    #[error("local file `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A repository URL we cannot use.
    #[error("invalid repository URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// Caller passed a value that cannot work (chunk sizes, ids, options).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// No passphrase configured for an encrypted repository.
    #[error(
        "no passphrase for repository {url}: set SNAPFLEET_PASSWORD_FILE (or SNAPFLEET_PASSWORD) \
         or pass --password-file"
    )]
    NoPassphrase { url: String },

    /// A background task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Task(String),

    /// The caller's cancellation token fired (a cancelled job, a lost task lease, a
    /// shutdown): the operation stopped and its requests in flight were dropped.
    #[error("{what} cancelled")]
    Cancelled { what: String },
}

/// Runs `fut` unless `cancel` fires first; then `Error::Cancelled` naming `what`, and `fut`
/// is dropped with its requests in flight (a retry backing off from a throttling store
/// included).
pub(crate) async fn or_cancelled<T>(
    cancel: &tokio_util::sync::CancellationToken,
    what: impl FnOnce() -> String,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Error::Cancelled { what: what() }),
        r = fut => r,
    }
}

impl Error {
    /// Whether retrying the same operation may succeed (network trouble, throttling, 5xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store { source, .. } => store_error_is_retryable(source),
            Error::Io { source, .. } => io_error_is_retryable(source),
            _ => false,
        }
    }

    /// Whether running the same *step* again (a task re-leased, a job step repeated) could
    /// succeed: any failed store call or local I/O (the next attempt may reach another
    /// endpoint or disk state), a background task that died, or a cancellation. Broader
    /// than [`is_retryable`](Self::is_retryable), which is about repeating one request.
    pub fn step_may_succeed_again(&self) -> bool {
        matches!(
            self,
            Error::Store { .. } | Error::Io { .. } | Error::Task(_) | Error::Cancelled { .. }
        )
    }

    pub(crate) fn store(
        op: &'static str,
        path: impl std::fmt::Display,
        source: object_store::Error,
    ) -> Self {
        match source {
            object_store::Error::NotFound { .. } => Error::MissingObject {
                key: path.to_string(),
            },
            source => Error::Store {
                op,
                path: path.to_string(),
                source,
            },
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(key: impl std::fmt::Display, detail: impl Into<String>) -> Self {
        Error::CorruptObject {
            key: key.to_string(),
            detail: detail.into(),
        }
    }
}

/// Classifies an object_store error: transient (connection trouble, timeouts, throttling,
/// server errors) or permanent (not found, denied, precondition, invalid input).
pub fn store_error_is_retryable(err: &object_store::Error) -> bool {
    use object_store::Error as E;
    match err {
        E::NotFound { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::NotModified { .. }
        | E::NotImplemented { .. }
        | E::NotSupported { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::InvalidPath { .. }
        | E::UnknownConfigurationKey { .. } => false,
        _ => chain_is_retryable(err),
    }
}

/// Whether a failed store call means "the store is overloaded: send less" — 503 / SlowDown,
/// 429 / Too Many Requests, request timeouts — as opposed to other transient failures (a
/// refused or reset connection) or permanent ones. Every throttling error is retryable; the
/// agent's adaptive rate (AIMD) lowers its send rate on these.
pub fn store_error_is_throttling(err: &object_store::Error) -> bool {
    use object_store::client::HttpErrorKind as K;
    if !store_error_is_retryable(err) {
        return false;
    }
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(h) = e.downcast_ref::<object_store::client::HttpError>() {
            if h.kind() == K::Timeout {
                return true;
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        if message_is_throttling(&e.to_string()) {
            return true;
        }
        current = e.source();
    }
    false
}

fn message_is_throttling(msg: &str) -> bool {
    const CODES: [&str; 8] = [
        "SlowDown",
        "Slow Down",
        "RequestTimeout",
        "ServiceUnavailable",
        "Service Unavailable",
        "Too Many Requests",
        "TooManyRequests",
        "RequestLimitExceeded",
    ];
    if CODES.iter().any(|c| msg.contains(c)) {
        return true;
    }
    if let Some(pos) = msg.find("status code: ") {
        let code = &msg[pos + "status code: ".len()..];
        let digits: String = code.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Ok(status) = digits.parse::<u16>() {
            return status == 503 || status == 429 || status == 408;
        }
    }
    false
}

fn chain_is_retryable(err: &(dyn std::error::Error + 'static)) -> bool {
    use object_store::client::HttpErrorKind as K;
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(h) = e.downcast_ref::<object_store::client::HttpError>() {
            return matches!(
                h.kind(),
                K::Connect | K::Request | K::Timeout | K::Interrupted
            );
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io_error_is_retryable(io) {
                return true;
            }
        }
        if message_is_retryable(&e.to_string()) {
            return true;
        }
        current = e.source();
    }
    false
}

fn io_error_is_retryable(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionReset
            | K::ConnectionAborted
            | K::ConnectionRefused
            | K::NotConnected
            | K::BrokenPipe
            | K::TimedOut
            | K::Interrupted
            | K::WouldBlock
            | K::UnexpectedEof
    )
}

/// object_store does not export its HTTP status error type, so a status is recognised from
/// its message ("Server returned non-2xx status code: 503 Service Unavailable: …") and from the
/// S3 error codes that mean "slow down / try again".
pub(crate) fn message_is_retryable(msg: &str) -> bool {
    const CODES: [&str; 6] = [
        "SlowDown",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "connection reset",
        "Connection reset",
    ];
    if CODES.iter().any(|c| msg.contains(c)) {
        return true;
    }
    if let Some(pos) = msg.find("status code: ") {
        let code = &msg[pos + "status code: ".len()..];
        let digits: String = code.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Ok(status) = digits.parse::<u16>() {
            return status >= 500 || status == 429 || status == 408;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_are_classified() {
        assert!(message_is_retryable(
            "Server returned non-2xx status code: 503 Service Unavailable: <Code>SlowDown</Code>"
        ));
        assert!(message_is_retryable(
            "Server returned non-2xx status code: 500 Internal Server Error: "
        ));
        assert!(message_is_retryable(
            "Server returned non-2xx status code: 429 Too Many Requests"
        ));
        assert!(!message_is_retryable(
            "Server returned non-2xx status code: 400 Bad Request: nope"
        ));
        assert!(!message_is_retryable("access denied"));
    }

    #[test]
    fn throttling_is_told_from_other_transient_failures() {
        let generic =
            |source: Box<dyn std::error::Error + Send + Sync>| object_store::Error::Generic {
                store: "S3",
                source,
            };
        let slow = generic(
            "Server returned non-2xx status code: 503 Service Unavailable: <Code>SlowDown</Code>"
                .into(),
        );
        assert!(store_error_is_throttling(&slow));
        let many = generic("Server returned non-2xx status code: 429 Too Many Requests".into());
        assert!(store_error_is_throttling(&many));
        let timeout = generic(Box::new(object_store::client::HttpError::new(
            object_store::client::HttpErrorKind::Timeout,
            std::io::Error::other("request timed out"),
        )));
        assert!(store_error_is_throttling(&timeout));
        // Transient but not "send less": a refused connection, a 500.
        let refused = generic(Box::new(object_store::client::HttpError::new(
            object_store::client::HttpErrorKind::Connect,
            std::io::Error::other("connection refused"),
        )));
        assert!(store_error_is_retryable(&refused));
        assert!(!store_error_is_throttling(&refused));
        let internal =
            generic("Server returned non-2xx status code: 500 Internal Server Error".into());
        assert!(!store_error_is_throttling(&internal));
        let missing = object_store::Error::NotFound {
            path: "x".into(),
            source: "SlowDown".into(),
        };
        assert!(!store_error_is_throttling(&missing));
    }

    #[test]
    fn permanent_errors_are_not_retryable() {
        let e = object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into(),
        };
        assert!(!store_error_is_retryable(&e));
        assert!(!Error::WrongPassphrase.is_retryable());
        assert!(!Error::corrupt("chunks/aa/bb", "bad tag").is_retryable());
    }

    #[test]
    fn transport_errors_are_retryable() {
        let http = object_store::client::HttpError::new(
            object_store::client::HttpErrorKind::Connect,
            std::io::Error::other("connection refused"),
        );
        let e = object_store::Error::Generic {
            store: "S3",
            source: Box::new(http),
        };
        assert!(store_error_is_retryable(&e));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let e = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(io),
        };
        assert!(store_error_is_retryable(&e));
        let decode = object_store::client::HttpError::new(
            object_store::client::HttpErrorKind::Decode,
            std::io::Error::other("bad xml"),
        );
        let e = object_store::Error::Generic {
            store: "S3",
            source: Box::new(decode),
        };
        assert!(!store_error_is_retryable(&e));
    }
}
