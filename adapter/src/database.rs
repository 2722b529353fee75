//! [`Database`]: the control side of a database cluster, used by the coordinator's job
//! drivers and the CLI: describe, snapshot, restore (prepare → activate, or abort), clone,
//! restore in place, history floors.
//!
//! Cancellation is dropping the future. Every method is idempotent or says what a retry
//! does. Implementations must never make the caller handle node paths or a database's own
//! protocol types: placement is by [`NodeName`](crate::NodeName), files stay on the nodes.

use crate::{
    Activation, CloneReport, DatabaseInfo, HybridTime, InPlaceRestoreReport, NodeInfo,
    PreparedRestore, RestoreId, RestoreRequest, RestoredTable, Result, SnapshotId, SnapshotInfo,
    SnapshotRequest, SnapshotSummary,
};
use std::time::Duration;

/// The control plane of one database cluster.
#[async_trait::async_trait]
pub trait Database: Send + Sync {
    /// The cluster's current hybrid time.
    async fn now(&self) -> Result<HybridTime>;

    /// Every registered node, live or not.
    async fn nodes(&self) -> Result<Vec<NodeInfo>>;

    /// Database `database` with all its tables (hidden ones flagged); `NotFound` if absent.
    async fn describe(&self, database: &str) -> Result<DatabaseInfo>;

    /// A consistent cut at `req.at` (None = now), fenced against DDL: a racing catalog
    /// change leaves nothing behind and is retried `ddl_retries` times, then `Fenced`.
    async fn create_snapshot(&self, req: SnapshotRequest<'_>) -> Result<SnapshotInfo>;

    /// The snapshots of a database.
    async fn list_snapshots(&self, database: &str) -> Result<Vec<SnapshotSummary>>;

    /// Deletes a snapshot on every node; one already gone is `Ok`.
    async fn delete_snapshot(&self, id: &SnapshotId) -> Result<()>;

    /// `holder` needs at least `min` of history on every node (`ZERO` withdraws its claim);
    /// returns the cluster's floor (the largest claim).
    async fn set_history_floor(&self, holder: &str, min: Duration) -> Result<Duration>;

    /// Creates the database if needed and the chosen tables hidden, with the snapshot's
    /// tablet count and ranges, placed over the target's live nodes. Replaces hidden tables
    /// of the same name left by an earlier attempt; an existing visible table is
    /// `AlreadyExists` (a restore never overwrites). On error, drops whatever it created.
    async fn prepare_restore(&self, req: RestoreRequest<'_>) -> Result<PreparedRestore>;

    /// Imports each staged tablet (`NodeStore::staging_dir` on its node), hiding versions
    /// newer than `restore_ht`, then makes every table visible in one catalog change.
    /// Idempotent: a retry after a partial or complete activation finishes it.
    async fn activate_restore(&self, a: Activation<'_>) -> Result<()>;

    /// Drops the hidden tables of a restore that still exist. Never drops a visible table.
    /// Idempotent. (Staged files are the agents' to remove, on their own hosts.)
    async fn abort_restore(
        &self,
        restore_id: &RestoreId,
        database: &str,
        tables: &[RestoredTable],
    ) -> Result<()>;

    /// A new database `target`: a consistent copy of `source` at `at` (None = now).
    async fn clone_database(
        &self,
        source: &str,
        target: &str,
        at: Option<HybridTime>,
        ddl_retries: u32,
    ) -> Result<CloneReport>;

    /// Brings `database` back to `at` in place (inside the history window); `dry_run`
    /// changes nothing and reports what would change.
    async fn restore_to_time(
        &self,
        database: &str,
        at: HybridTime,
        dry_run: bool,
    ) -> Result<InPlaceRestoreReport>;
}
