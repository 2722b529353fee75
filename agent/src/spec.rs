//! The small JSON documents that travel through the coordinator's log: job specs (what the
//! operator asked), driver notes (what the leader decided), task payloads and results. They
//! are small by construction: per-tablet, never per-file.

use serde::{Deserialize, Serialize};
use snapfleet_api::{DatabaseId, RestoreId, SnapshotId, TableId, TabletId};
use snapfleet_proto::tabletdb as pb;
use snapfleet_repository::PartSummary;

/// `snapfleet backup create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupSpec {
    /// tabletdb master of the source cluster.
    pub master: String,
    pub database: String,
    pub repo: String,
    /// Empty in a schedule's template: see [`BackupSpec::id`].
    #[serde(default)]
    pub backup_id: String,
    /// Snapshot attempts after the first when a DDL races it.
    #[serde(default = "default_ddl_retries")]
    pub ddl_retries: u32,
    /// Keep the tablet snapshots on the nodes afterwards (fast local restore).
    #[serde(default)]
    pub keep_snapshot: bool,
    /// Cluster-wide budget in bytes/s (0 = unlimited), split among agents with work left.
    #[serde(default)]
    pub rate_limit: u64,
    /// zstd level for chunks (0 = off).
    #[serde(default = "default_compression")]
    pub compression: i32,
    /// Set when a schedule fired this backup (by the coordinator).
    #[serde(default)]
    pub schedule_id: Option<String>,
    #[serde(default)]
    pub due_ms: Option<u64>,
    /// Backups of the schedule to keep in the repository (0 = all).
    #[serde(default)]
    pub retention: u32,
}

impl BackupSpec {
    /// The backup id: given, or derived from the schedule and the firing's due time (the
    /// same on every leader, so a failover never makes two backups of one firing).
    pub fn id(&self) -> String {
        match (&self.schedule_id, self.due_ms) {
            (Some(s), Some(due)) if self.backup_id.is_empty() => format!("{s}-{due}"),
            _ => self.backup_id.clone(),
        }
    }
}

fn default_ddl_retries() -> u32 {
    5
}
fn default_compression() -> i32 {
    3
}

/// The backup driver's notes, logged once the snapshot exists.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupNotes {
    pub snapshot: pb::SnapshotInfo,
}

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
    pub part: PartSummary,
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

    /// A line for operators, or None when there was no throttling.
    pub fn note(&self) -> Option<String> {
        (self.throttled > 0).then(|| {
            let lowered = if self.throttled_lowest_rate > 0 {
                format!(
                    "; agents lowered their rate, down to {} at the lowest",
                    crate::aimd::fmt_rate(self.throttled_lowest_rate)
                )
            } else {
                String::new()
            };
            format!(
                "the object store throttled {} requests (retried){lowered}",
                self.throttled
            )
        })
    }
}

/// What a backup's ROOT records besides the page list: enough to restore from the
/// repository alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootMeta {
    pub kind: String,
    pub source_master: String,
    pub snapshot: pb::SnapshotInfo,
    /// For each source tablet, its pages in ROOT's page list: `[start, end)`.
    pub tablet_pages: Vec<TabletPages>,
    /// The schedule that made this backup (retention counts its backups only).
    #[serde(default)]
    pub schedule_id: Option<String>,
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

pub const ROOT_KIND: &str = "tabletdb-snapshot/v1";

/// `snapfleet restore`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreSpec {
    pub repo: String,
    pub backup_id: String,
    /// tabletdb master of the target cluster.
    pub master: String,
    /// Target database name; empty = the source's name.
    #[serde(default)]
    pub database: String,
    /// Only these tables (empty = all).
    #[serde(default)]
    pub tables: Vec<String>,
    #[serde(default)]
    pub rate_limit: u64,
    /// Restore to this hybrid time (off-cluster PITR): the newest base backup at or before
    /// it (of `source_database`, when `backup_id` is empty) plus the archived change log.
    #[serde(default)]
    pub to_ht: u64,
    #[serde(default)]
    pub source_database: String,
}

/// The restore driver's notes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreNotes {
    /// The backup restored (chosen by the driver for a restore to a time).
    #[serde(default)]
    pub backup_id: String,
    /// Tables of the backup not restored: dropped before the target time.
    #[serde(default)]
    pub skip_tables: Vec<String>,
    /// Archived change log to replay on each staged tablet.
    #[serde(default)]
    pub replay: Option<ReplaySpec>,
    /// Per source tablet, what its replay must find (restore to a time).
    #[serde(default)]
    pub replay_tablets: std::collections::BTreeMap<String, crate::archive::TabletReplay>,
    pub restore_id: RestoreId,
    pub database: String,
    pub restore_ht: u64,
    /// Hidden tables created on the target (dropped again if the restore fails).
    pub tables: Vec<pb::TableInfo>,
    pub tablets: Vec<Placement>,
}

/// A source tablet and where it goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Placement {
    pub source_tablet: TabletId,
    pub target: pb::TabletMeta,
    pub node: u32,
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
    pub tablet: crate::archive::TabletReplay,
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
    node_data_dir.join("staging").join(restore_id)
}

/// `snapfleet pitr schedule create`: a snapshot every `interval_ms`, kept (with the MVCC
/// history between them) for `window_ms`, so the database can go back to any time inside
/// the window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PitrSpec {
    pub master: String,
    pub database: String,
    pub interval_ms: u64,
    /// The PITR window (`--retention`).
    pub window_ms: u64,
    /// Set by the coordinator when the schedule fires.
    #[serde(default)]
    pub schedule_id: String,
    #[serde(default)]
    pub due_ms: u64,
}

impl PitrSpec {
    /// The label of this schedule's snapshots and its history-floor claim.
    pub fn label(&self) -> String {
        pitr_label(&self.schedule_id)
    }

    /// History every node must keep: the window plus one interval, so the oldest point of
    /// the window stays reachable until the next snapshot replaces it.
    pub fn history_secs(&self) -> u64 {
        (self.window_ms + self.interval_ms).div_ceil(1000)
    }
}

pub fn pitr_label(schedule_id: &str) -> String {
    format!("pitr:{schedule_id}")
}
