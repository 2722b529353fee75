//! The domain types of the adapter boundary: what a database tells snapfleet (nodes, schema,
//! placement, snapshots, change-log chunks) and what snapfleet asks of it (snapshot, restore,
//! clone requests), in terms every adapter can provide.
//!
//! Every id is a validated `snapfleet_api` type, so it is safe as a path component or key.
//! These types must never carry a database's protocol types: a database-specific description
//! travels only as the opaque [`SnapshotInfo::catalog`] JSON (what a backup's ROOT stores).

use crate::time::HybridTime;
use serde::{Deserialize, Serialize};
use snapfleet_api::{DatabaseId, NodeName, RestoreId, SnapshotId, TableId, TabletId};
use std::path::PathBuf;

/// A node of the database cluster, as its control plane knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: NodeName,
    pub live: bool,
}

/// A database: its id and tables (hidden ones included, flagged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseInfo {
    pub id: DatabaseId,
    pub name: String,
    /// Sorted by name.
    pub tables: Vec<TableInfo>,
}

/// A table and where its tablets are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    pub id: TableId,
    pub name: String,
    /// Not visible to clients (a restore in progress).
    pub hidden: bool,
    pub tablets: Vec<TabletPlacement>,
}

/// A tablet and the node holding its leader replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TabletPlacement {
    pub id: TabletId,
    pub node: NodeName,
}

/// A request for a distributed snapshot.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotRequest<'a> {
    pub database: &'a str,
    /// The cut; `None` = now.
    pub at: Option<HybridTime>,
    /// Who owns the snapshot (e.g. a PITR schedule); `None` = ad hoc.
    pub label: Option<&'a str>,
    /// How often a snapshot raced by a schema change is retried before `Fenced`.
    pub ddl_retries: u32,
}

/// A distributed snapshot: a consistent cut of a database at `hybrid_time`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub id: SnapshotId,
    pub database_id: DatabaseId,
    pub database_name: String,
    pub hybrid_time: HybridTime,
    pub created_unix_ms: i64,
    /// Empty for ad-hoc snapshots.
    pub label: String,
    /// The tables as of `hybrid_time`, with their placement at that time.
    pub tables: Vec<TableInfo>,
    /// The database's own description of the snapshot (what a backup's ROOT stores);
    /// `Adapter::decode_snapshot` turns it back into this type.
    pub catalog: serde_json::Value,
}

impl SnapshotInfo {
    /// The table and placement of tablet `id` in this snapshot.
    pub fn tablet(&self, id: &TabletId) -> Option<(&TableInfo, &TabletPlacement)> {
        self.tables
            .iter()
            .find_map(|t| t.tablets.iter().find(|p| &p.id == id).map(|p| (t, p)))
    }

    /// What a node store needs to find tablet `tablet`'s files of this snapshot.
    pub fn tablet_ref(&self, table: &TableInfo, tablet: &TabletPlacement) -> TabletSnapshotRef {
        TabletSnapshotRef {
            snapshot: self.id.clone(),
            database: self.database_id.clone(),
            table: table.id.clone(),
            tablet: tablet.id.clone(),
        }
    }
}

/// One entry of `Database::list_snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSummary {
    pub id: SnapshotId,
    pub label: String,
    pub hybrid_time: HybridTime,
    pub created_unix_ms: i64,
}

/// A restore of (some tables of) a snapshot into a database.
#[derive(Debug, Clone, Copy)]
pub struct RestoreRequest<'a> {
    /// Names this restore's staging area on every target node.
    pub restore_id: &'a RestoreId,
    /// The target database (created if missing).
    pub database: &'a str,
    pub snapshot: &'a SnapshotInfo,
    /// Table names to restore; empty = all of the snapshot's.
    pub tables: &'a [String],
}

/// What `Database::prepare_restore` created: hidden tables, and for each source tablet the
/// target tablet and the node it must be staged on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedRestore {
    pub tables: Vec<RestoredTable>,
    pub tablets: Vec<RestorePlacement>,
}

/// A table created (hidden) by a restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredTable {
    #[serde(rename = "table_id")]
    pub id: TableId,
    pub name: String,
}

/// Where one source tablet goes: staged on `node` as `target_tablet`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePlacement {
    pub source_tablet: TabletId,
    pub target_tablet: TabletId,
    pub node: NodeName,
}

/// The activation of a prepared restore whose tablets are all staged.
#[derive(Debug, Clone, Copy)]
pub struct Activation<'a> {
    pub restore_id: &'a RestoreId,
    pub database: &'a str,
    /// Versions newer than this stay hidden for ever.
    pub restore_ht: HybridTime,
    pub tables: &'a [RestoredTable],
    pub tablets: &'a [RestorePlacement],
}

/// What a clone made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneReport {
    pub hybrid_time: HybridTime,
    pub tables: u32,
    pub tablets: u32,
    pub files: u64,
    pub bytes: u64,
}

/// What an in-place restore to a time did (or, dry run, would do), by table name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InPlaceRestoreReport {
    pub hybrid_time: HybridTime,
    pub restored: Vec<String>,
    /// Created after the time: dropped.
    pub removed: Vec<String>,
    /// Dropped after the time: back (also in `restored`).
    pub revived: Vec<String>,
    /// A dry run only: each table that would be brought back (not revived), with its rows
    /// now and at the time.
    #[serde(default)]
    pub rows: Vec<TableRows>,
}

/// A table's row count now and at the time of an in-place restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRows {
    pub table: String,
    pub now: u64,
    pub at_time: u64,
}

/// One tablet's part of a snapshot (the fields of an upload task).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TabletSnapshotRef {
    pub snapshot: SnapshotId,
    pub database: DatabaseId,
    pub table: TableId,
    pub tablet: TabletId,
}

/// A file of a tablet snapshot on the node's filesystem.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    /// Relative to the snapshot's directory (may hold `/` for nested layouts).
    pub name: String,
    pub path: PathBuf,
    pub metadata: std::fs::Metadata,
}

/// Versions with `after < ht <= until` are hidden (left by in-place restores).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HiddenRange {
    pub after: HybridTime,
    pub until: HybridTime,
}

/// A node's tablets of one database, listed after reading the node's time `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeScan {
    pub at: HybridTime,
    pub tablets: Vec<LocalTablet>,
}

/// A tablet on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTablet {
    pub tablet: TabletId,
    pub table: TableId,
    pub hidden: Vec<HiddenRange>,
}

/// Where a change-log read stopped; an adapter-defined hint (default = from the start).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCursor(pub u64, pub u64);

/// One answer of `NodeStore::read_change_log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// Opaque records (only the adapter decodes them, in `StagedReplay::apply`).
    pub records: Vec<u8>,
    pub count: u32,
    /// Every record with `after < ht <= covered` is in `records`.
    pub covered: HybridTime,
    /// Stopped at the size limit: ask again after `covered`.
    pub more: bool,
    pub cursor: LogCursor,
    /// Records after `after` were deleted by history retention before being read, up to and
    /// including this time: the archive has a gap.
    pub gap: Option<HybridTime>,
}
