//! [`Adapter`]: one kind of database (tabletdb, later YugabyteDB) as snapfleet sees it: the
//! `kind` its backups are written under, the decoder of its native snapshot descriptions, and
//! the factory of its control-side [`Database`] and node-side [`NodeStore`] handles.
//!
//! The binary picks the adapter and hands `Arc<dyn Adapter>` to the job drivers and the
//! agent. This trait must never grow database-specific methods: a caller that needs one is
//! reaching past the boundary.

use crate::{Database, NodeStore, Result, SnapshotInfo};
use std::sync::Arc;

/// A database kind: decodes its snapshot descriptions and opens its handles.
#[async_trait::async_trait]
pub trait Adapter: Send + Sync + 'static {
    /// The ROOT `kind` written and accepted (e.g. `"tabletdb-snapshot/v1"`).
    fn snapshot_kind(&self) -> &'static str;

    /// The domain view of a snapshot's native description (ROOT meta, job notes). Pure.
    fn decode_snapshot(&self, native: &serde_json::Value) -> Result<SnapshotInfo>;

    /// The control side of the cluster at `cluster` (the specs' `master`). May cache per
    /// address; an unreachable cluster is `Unavailable`.
    async fn connect(&self, cluster: &str) -> Result<Arc<dyn Database>>;

    /// The node side of the node at `node` (an agent's `--db-node`), on this host.
    async fn open_node(&self, node: &str) -> Result<Arc<dyn NodeStore>>;
}
