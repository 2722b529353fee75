//! The edge between tabletdb's protocol types and errors and the adapter's domain types:
//! every `pb::*` → domain conversion and every `snapfleet_tabletdb::Error` → `AdapterError`
//! mapping happens here and nowhere else.
//!
//! tabletdb's messages already say what to do next, so they are kept unchanged in the
//! error's detail. This module must never do I/O.

use snapfleet_adapter::{
    AdapterError, DatabaseId, HiddenRange, HybridTime, NodeName, Result, SnapshotId, SnapshotInfo,
    SnapshotSummary, TableId, TableInfo, TabletId, TabletPlacement,
};
use snapfleet_tabletdb::{pb, Error};

/// Maps a tabletdb error met while doing `what` (e.g. `snapshot of database "d"`).
///
/// | tabletdb | adapter | retry |
/// |---|---|---|
/// | `InvalidArgument` | `Invalid` | no |
/// | `NotFound` | `NotFound` | no |
/// | `AlreadyExists` | `AlreadyExists` | no |
/// | `FailedPrecondition` | `Precondition` | no |
/// | `Aborted` | `Fenced` | yes |
/// | `Unavailable`, `Rpc{Unavailable, DeadlineExceeded}` | `Unavailable` | yes |
/// | `Rpc{Aborted}` | `Fenced` | yes |
/// | `Rpc{other}` that got no answer: the connection broke (a local transport error) | `Unavailable` | yes |
/// | `Rpc{other}` (an answer), `Storage` | `Internal` | no |
/// | `Io` | `Io` | yes (a retried task starts its file work clean) |
/// | `Corrupt` | `Corrupt` | no |
pub fn error(what: impl Into<String>, e: Error) -> AdapterError {
    let what = what.into();
    match e {
        Error::InvalidArgument(why) => AdapterError::Invalid { what, why },
        Error::NotFound(detail) => AdapterError::NotFound { what, detail },
        Error::AlreadyExists(detail) => AdapterError::AlreadyExists { what, detail },
        Error::FailedPrecondition(why) => AdapterError::Precondition { what, why },
        Error::Aborted(detail) => AdapterError::Fenced {
            what,
            attempts: 1,
            detail,
        },
        Error::Unavailable(detail) => AdapterError::Unavailable { what, detail },
        Error::Rpc { peer, status } => {
            let detail = format!("rpc to {peer}: {}", status.message());
            match status.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                    AdapterError::Unavailable { what, detail }
                }
                tonic::Code::Aborted => AdapterError::Fenced {
                    what,
                    attempts: 1,
                    detail,
                },
                // A status tabletdb's own `Error::rpc` did not see (made elsewhere) can still
                // be one the connection broke under.
                _ => match snapfleet_tabletdb::error::broken_connection(&status) {
                    Some(cause) => AdapterError::Unavailable {
                        what,
                        detail: format!("{detail} (no answer, the connection broke: {cause})"),
                    },
                    None => AdapterError::Internal { what, detail },
                },
            }
        }
        Error::Storage { path, message } => AdapterError::Internal {
            what: format!("{what} (storage {})", path.display()),
            detail: message,
        },
        Error::Io { path, source } => AdapterError::Io {
            what: format!("{what} ({})", path.display()),
            source,
        },
        Error::Corrupt { what: w, detail } => AdapterError::Corrupt {
            what: format!("{w} ({what})"),
            detail,
        },
    }
}

/// Maps a gRPC status from `peer` (as tabletdb's own client does, keeping the code).
pub fn status(what: impl Into<String>, peer: &str, s: tonic::Status) -> AdapterError {
    error(what, snapfleet_tabletdb::error::from_status(peer, s))
}

/// tabletdb names nodes by number; the boundary by name.
pub fn node_name(id: u32) -> NodeName {
    NodeName::new(id.to_string()).expect("a number is a valid node name")
}

/// The tabletdb node id behind a node name.
pub fn node_id(name: &NodeName) -> Result<u32> {
    name.parse().map_err(|_| {
        AdapterError::invalid(format!("node {name}"), "tabletdb names its nodes by number")
    })
}

/// The node holding the leader replica of a tablet.
pub fn leader(t: &pb::TabletInfo) -> Result<NodeName> {
    t.replicas.first().map(|&n| node_name(n)).ok_or_else(|| {
        AdapterError::corrupt(
            format!("tablet {}", t.tablet_id),
            "it has no replica in the catalog",
        )
    })
}

/// A catalog table as the boundary shows it.
pub fn table(t: &pb::TableInfo) -> Result<TableInfo> {
    Ok(TableInfo {
        id: TableId::new(t.table_id.clone())?,
        name: t.name.clone(),
        hidden: t.state == pb::TableState::Restoring as i32,
        tablets: t
            .tablets
            .iter()
            .map(|tb| {
                Ok(TabletPlacement {
                    id: TabletId::new(tb.tablet_id.clone())?,
                    node: leader(tb)?,
                })
            })
            .collect::<Result<_>>()?,
    })
}

/// A tabletdb snapshot; `native` is its JSON (kept as it is: it is what ROOT stores).
pub fn snapshot(s: &pb::SnapshotInfo, native: serde_json::Value) -> Result<SnapshotInfo> {
    Ok(SnapshotInfo {
        id: SnapshotId::new(s.snapshot_id.clone())?,
        database_id: DatabaseId::new(s.database_id.clone())?,
        database_name: s.database_name.clone(),
        hybrid_time: HybridTime(s.hybrid_time),
        created_unix_ms: s.created_unix_ms,
        label: s.label.clone(),
        tables: s.tables.iter().map(table).collect::<Result<_>>()?,
        catalog: native,
    })
}

/// A snapshot as `list_snapshots` shows it.
pub fn summary(s: &pb::SnapshotInfo) -> Result<SnapshotSummary> {
    Ok(SnapshotSummary {
        id: SnapshotId::new(s.snapshot_id.clone())?,
        label: s.label.clone(),
        hybrid_time: HybridTime(s.hybrid_time),
        created_unix_ms: s.created_unix_ms,
    })
}

pub fn hidden(h: &pb::HiddenRange) -> HiddenRange {
    HiddenRange {
        after: HybridTime(h.after_ht),
        until: HybridTime(h.until_ht),
    }
}

/// The native description of a domain snapshot (from its `catalog` JSON).
pub fn native_snapshot(s: &SnapshotInfo) -> Result<pb::SnapshotInfo> {
    serde_json::from_value(s.catalog.clone()).map_err(|e| {
        AdapterError::corrupt(
            format!("description of snapshot {}", s.id),
            format!("not a tabletdb snapshot ({e})"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_retry_class() {
        let retry = [
            Error::Aborted("ddl".into()),
            Error::Unavailable("down".into()),
            Error::Rpc {
                peer: "n1".into(),
                status: Box::new(tonic::Status::unavailable("x")),
            },
            Error::Rpc {
                peer: "n1".into(),
                status: Box::new(tonic::Status::deadline_exceeded("x")),
            },
            Error::io("/x", std::io::Error::other("disk")),
            // The connection broke before an answer (the peer was killed mid-call).
            Error::Rpc {
                peer: "master".into(),
                status: Box::new(tonic::Status::from_error(Box::new(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "connection closed",
                )))),
            },
        ];
        for e in retry {
            let d = e.to_string();
            assert!(error("op", e).is_retryable(), "{d}");
        }
        let permanent = [
            Error::InvalidArgument("x".into()),
            Error::NotFound("x".into()),
            Error::AlreadyExists("x".into()),
            Error::FailedPrecondition("x".into()),
            Error::Rpc {
                peer: "n1".into(),
                status: Box::new(tonic::Status::internal("rocksdb")),
            },
            // An answer with code Unknown (no local cause): the peer failed.
            Error::Rpc {
                peer: "n1".into(),
                status: Box::new(tonic::Status::unknown("transport error")),
            },
            Error::Corrupt {
                what: "x".into(),
                detail: "y".into(),
            },
        ];
        for e in permanent {
            let d = e.to_string();
            assert!(!error("op", e).is_retryable(), "{d}");
        }
        assert!(matches!(
            status("op", "master", tonic::Status::aborted("ddl")),
            AdapterError::Fenced { .. }
        ));
    }

    #[test]
    fn node_names_round_trip() {
        assert_eq!(node_id(&node_name(7)).unwrap(), 7);
        assert!(node_id(&NodeName::new("n-a").unwrap()).is_err());
    }
}
