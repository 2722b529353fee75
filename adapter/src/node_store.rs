//! [`NodeStore`]: the node side of a database, used by the agent on the host it serves:
//! the files of a tablet snapshot, where a restore stages a tablet, the node's tablets and
//! their change logs; and [`StagedReplay`], which rolls a staged tablet copy forward with
//! archived change-log records (restore to a time).
//!
//! A node store reads the node's files in place and writes only under a staging directory
//! it named. It must never touch a live tablet's files, and never hand out a path outside
//! the node's data directory.

use crate::{
    DatabaseId, HiddenRange, HybridTime, LogChunk, LogCursor, NodeName, NodeScan, RestoreId,
    Result, SnapshotFile, TabletId, TabletSnapshotRef,
};
use std::path::{Path, PathBuf};

/// One database node, on this host.
#[async_trait::async_trait]
pub trait NodeStore: Send + Sync {
    /// The node's name, as `Database::nodes` and placements name it.
    fn node(&self) -> &NodeName;

    /// The files of one tablet snapshot on this node, sorted by name; `NotFound` if the
    /// snapshot is not here (deleted, or the tablet is on another node).
    async fn snapshot_files(&self, s: &TabletSnapshotRef) -> Result<Vec<SnapshotFile>>;

    /// Where a restore stages `source_tablet` on this node (on the data's filesystem). The
    /// agent owns everything under it until activation.
    fn staging_dir(&self, restore: &RestoreId, source_tablet: &TabletId) -> PathBuf;

    /// The directory holding every restore staged on this node, one entry per restore
    /// (`staging_dir(restore, _)` is under `staging_root()/<restore id>/`): the agent's
    /// janitor removes the entries of ended restores.
    fn staging_root(&self) -> PathBuf;

    /// Opens a staged tablet copy for change-log replay.
    async fn open_replay(&self, staged: &Path) -> Result<Box<dyn StagedReplay>>;

    /// This node's tablets of `database`. `at` is read before listing: a tablet not listed
    /// was created after `at`.
    async fn scan_tablets(&self, database: &DatabaseId) -> Result<NodeScan>;

    /// Change-log records of `tablet` with `after < ht <= covered` (covered is at most the
    /// tablet's safe time), about `max_bytes` of them. `NotFound` if the tablet is not here.
    async fn read_change_log(
        &self,
        tablet: &TabletId,
        after: HybridTime,
        cursor: LogCursor,
        max_bytes: u32,
    ) -> Result<LogChunk>;
}

/// A staged tablet copy being rolled forward.
#[async_trait::async_trait]
pub trait StagedReplay: Send {
    /// The hybrid time of the snapshot the copy was made from (replay starts after it).
    fn snapshot_ht(&self) -> HybridTime;

    /// Applies the records (`LogChunk::records` format) with `from < ht <= upto`; returns
    /// how many. Idempotent (records keep their hybrid times); records of another tablet
    /// are `Invalid`.
    async fn apply(&mut self, records: Vec<u8>, from: HybridTime, upto: HybridTime) -> Result<u64>;

    /// Moves the copy's restore point to `upto`, adds `hidden`, closes it durably; returns
    /// the records applied in total.
    async fn finish(self: Box<Self>, upto: HybridTime, hidden: &[HiddenRange]) -> Result<u64>;
}
