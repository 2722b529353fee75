//! The leader-side documents of a job in the coordinator's log: job specs (what the operator
//! asked) and driver notes (what the leader decided), and what a backup's ROOT records. The
//! task payloads agents run are in `snapfleet_api::tasks`.

use serde::{Deserialize, Serialize};
use snapfleet_adapter::{RestorePlacement, RestoredTable};
use snapfleet_api::tasks::{ReplaySpec, TabletPages, TabletReplay};
use snapfleet_api::RestoreId;

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
    /// The database's own description of the snapshot (`SnapshotInfo::catalog`): what ROOT
    /// stores; `Adapter::decode_snapshot` reads it.
    pub snapshot: serde_json::Value,
}

/// What a backup's ROOT records besides the page list: enough to restore from the
/// repository alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootMeta {
    /// The adapter's snapshot kind (`Adapter::snapshot_kind`).
    pub kind: String,
    pub source_master: String,
    /// The database's own description of the snapshot (for tabletdb, the same JSON as
    /// before the adapter boundary: old ROOTs read unchanged).
    pub snapshot: serde_json::Value,
    /// For each source tablet, its pages in ROOT's page list: `[start, end)`.
    pub tablet_pages: Vec<TabletPages>,
    /// The schedule that made this backup (retention counts its backups only).
    #[serde(default)]
    pub schedule_id: Option<String>,
}

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
    pub replay_tablets: std::collections::BTreeMap<String, TabletReplay>,
    pub restore_id: RestoreId,
    pub database: String,
    pub restore_ht: u64,
    /// Hidden tables created on the target (dropped again if the restore fails).
    pub tables: Vec<RestoredTable>,
    /// Each source tablet, the target tablet it becomes and the node it is staged on.
    pub tablets: Vec<RestorePlacement>,
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
