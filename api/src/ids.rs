//! Validated ids: the only way a string from the wire, the log or the bucket becomes part of
//! a path or an object key.
//!
//! An id is 1–128 characters of `[A-Za-z0-9_.-]` and starts with a letter, a digit or `_`.
//! So it is one path component that is never empty, `.`, `..`, hidden, absolute, or
//! carrying a separator. Deserialising checks too (`serde(try_from = "String")`): a task
//! payload with a hostile id fails to decode, and nothing downstream sees it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest id accepted (bytes).
pub const MAX_ID_LEN: usize = 128;

/// An id that is not safe to use as a path component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} {value:?} is not a valid id: use 1-{MAX_ID_LEN} characters of [A-Za-z0-9_.-] \
     starting with a letter, digit or _"
)]
pub struct IdError {
    pub what: &'static str,
    /// The rejected value, cut to a readable length.
    pub value: String,
}

/// Checks that `s` is a safe single path component (see the module doc).
pub fn check(what: &'static str, s: &str) -> Result<(), IdError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        let value: String = s.chars().take(80).collect();
        Err(IdError { what, value })
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `s`.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check($what, &s)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<std::path::Path> for $name {
            fn as_ref(&self) -> &std::path::Path {
                std::path::Path::new(&self.0)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, o: &str) -> bool {
                self.0 == o
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, o: &&str) -> bool {
                self.0 == *o
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, o: &String) -> bool {
                &self.0 == o
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A tablet, named by the database (a directory `tablet-<id>` on its node).
    TabletId,
    "tablet id"
);
id_type!(
    /// A table, named by the database.
    TableId,
    "table id"
);
id_type!(
    /// A database, named by the database (a directory on every node).
    DatabaseId,
    "database id"
);
id_type!(
    /// A distributed snapshot (a directory under every tablet's `.snapshots`).
    SnapshotId,
    "snapshot id"
);
id_type!(
    /// One restore's staging area on each target node (`staging/<id>`).
    RestoreId,
    "restore id"
);
id_type!(
    /// A database node, as the coordinator and the agents name it.
    NodeName,
    "node name"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_everything_that_is_not_one_plain_component() {
        for bad in [
            "", ".", "..", "../x", "a/b", "/abs", "a\\b", ".hidden", "-flag", "a b", "a\0b",
            "tablet\n", "é",
        ] {
            assert!(TabletId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(RestoreId::new("x".repeat(MAX_ID_LEN + 1)).is_err());
        for good in [
            "t1",
            "restore-17",
            "b-20261207T170000Z-ab12cd34",
            "_x",
            "a.b",
            "0f3e",
        ] {
            assert!(RestoreId::new(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn deserialising_checks() {
        let ok: TabletId = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(ok, "abc");
        let err = serde_json::from_str::<TabletId>("\"../../etc\"").unwrap_err();
        assert!(err.to_string().contains("not a valid id"), "{err}");
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"abc\"");
    }
}
