//! Task payloads and results: the small JSON documents the leader's job drivers put into a
//! task and the agents send back. Every id in them is a validated type, so a payload that
//! would name a path outside the agent's data directory does not decode. They are small by
//! construction: per tablet (or per node), never per file.

use crate::ids::{DatabaseId, RestoreId, SnapshotId, TableId, TabletId};
use serde::{Deserialize, Serialize};

/// One tablet to upload, run by the agent beside the node that holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadTask {
    pub repo: String,
    pub backup_id: String,
    pub snapshot_id: SnapshotId,
    pub database_id: DatabaseId,
    pub table_id: TableId,
    pub tablet_id: TabletId,
    pub compression: i32,
    /// This node's initial share of the job's bandwidth budget (bytes/s, 0 = unlimited);
    /// progress reports bring the current share as other nodes finish.
    #[serde(default)]
    pub rate_limit: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadResult {
    /// The repository's `PartSummary` (pages and stats) as JSON: the repository's own type,
    /// which this contract does not depend on; the job driver decodes it.
    pub part: serde_json::Value,
    pub files: u64,
    /// Bytes of the tablet's files (read now, or recorded from the journal).
    #[serde(default)]
    pub bytes: u64,
    /// Bytes this attempt read from disk.
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
    /// Files an earlier, interrupted attempt had finished, recorded from the agent's journal
    /// without being read again.
    #[serde(default)]
    pub journal_files: u64,
    #[serde(default)]
    pub journal_bytes: u64,
    #[serde(default, flatten)]
    pub throttle: ThrottleStats,
}

impl UploadResult {
    /// The tablet's bytes (results of older agents only have `bytes_read`).
    pub fn tablet_bytes(&self) -> u64 {
        if self.bytes > 0 {
            self.bytes
        } else {
            self.bytes_read
        }
    }
}

/// What the agent saw of object-store throttling while a task ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleStats {
    /// Throttling answers (503 SlowDown, 429, timeouts) the agent got and retried.
    #[serde(default)]
    pub throttled: u64,
    /// The lowest rate the agent went down to (bytes/s; 0 = never lowered).
    #[serde(default)]
    pub throttled_lowest_rate: u64,
}

impl ThrottleStats {
    /// Combines the stats of several tasks.
    pub fn add(&mut self, o: &ThrottleStats) {
        self.throttled += o.throttled;
        self.throttled_lowest_rate = match (self.throttled_lowest_rate, o.throttled_lowest_rate) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TabletPages {
    pub tablet_id: TabletId,
    pub start: usize,
    pub end: usize,
    /// Bytes of the tablet's files (for progress).
    #[serde(default)]
    pub bytes: u64,
}

/// One tablet to download and verify into the staging directory of its target node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DownloadTask {
    pub repo: String,
    pub backup_id: String,
    pub restore_id: RestoreId,
    pub source_tablet: TabletId,
    pub pages: TabletPages,
    #[serde(default)]
    pub rate_limit: u64,
    #[serde(default)]
    pub replay: Option<ReplaySpec>,
}

/// Replay the archive's records of the source tablet after the backup's time up to `to_ht`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplaySpec {
    /// The archive (source database id).
    pub database_id: String,
    pub from_ht: u64,
    pub to_ht: u64,
    /// This task's tablet (filled per task from the notes' plan).
    #[serde(default)]
    pub tablet: TabletReplay,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DownloadResult {
    pub files: u64,
    pub bytes: u64,
    /// Change-log records replayed (restore to a time).
    #[serde(default)]
    pub replayed: u64,
    /// Files an earlier, interrupted attempt had staged, verified and kept (not downloaded).
    #[serde(default)]
    pub resumed_files: u64,
    #[serde(default)]
    pub resumed_bytes: u64,
    #[serde(default, flatten)]
    pub throttle: ThrottleStats,
}

/// Where a download task stages a tablet under its node's data directory. The id is
/// validated, so the result is always a directory inside `node_data_dir/staging`.
pub fn staging_dir(node_data_dir: &std::path::Path, restore_id: &RestoreId) -> std::path::PathBuf {
    staging_root(node_data_dir).join(restore_id)
}

/// Where every staged restore of a node lives (the agent's janitor empties it of ended jobs).
pub fn staging_root(node_data_dir: &std::path::Path) -> std::path::PathBuf {
    node_data_dir.join("staging")
}

/// One node's archiving, run by the agent beside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchiveTask {
    pub repo: String,
    /// tabletdb master (to name the tables of new tablets).
    pub master: String,
    pub database: String,
    pub database_id: String,
    pub node: String,
    pub start_ht: u64,
    pub interval_ms: u64,
    pub compression: i32,
    pub retention_secs: u64,
}

/// What one tablet's replay must find and apply.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TabletReplay {
    /// The archive's pieces must reach at least this time from the base backup's (the
    /// planner saw them do so; fewer now means pieces were deleted meanwhile).
    pub chain_to: u64,
    /// Ranges the source hid by in-place restores between the base backup and the target
    /// time: hidden in the restored tablet too.
    pub hidden: Vec<(u64, u64)>,
}
