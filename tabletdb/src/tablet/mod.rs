//! One tablet: a RocksDB instance holding MVCC versions of the rows whose partition hash
//! falls in the tablet's range. Writes are atomic per batch and stamped by the node's HLC;
//! reads see the newest version at or before a hybrid time; a compaction filter enforces
//! history retention; snapshots are RocksDB checkpoints (hard links).
//!
//! Layout under a node's data directory:
//! ```text
//! <db-id>/table-<id>/tablet-<id>/              RocksDB files
//! <db-id>/table-<id>/tablet-<id>.meta          TabletMeta (protobuf)
//! <db-id>/table-<id>/tablet-<id>.changelog/    change-log segments
//! <db-id>/table-<id>/tablet-<id>.snapshots/<snapshot-id>/   checkpoint + SNAPSHOT_META.json
//! ```
//! This module must never hand out a version newer than the requested time, nor one in a
//! hidden range left by a restore.

use crate::changelog::ChangeLog;
use crate::encoding::{self, Version};
use crate::error::{Error, Result};
use crate::hlc::{Hlc, HybridTime};
use crate::types::{self, TabletId};
use prost::Message;
use rocksdb::compaction_filter::{CompactionFilter, Decision};
use rocksdb::compaction_filter_factory::{CompactionFilterContext, CompactionFilterFactory};
use snapfleet_proto::tabletdb as pb;
use std::ffi::CStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod history;
mod replay;

use history::HistoryFilterFactory;
pub use history::HistoryPolicy;
pub use replay::StagedReplay;

/// Name of the metadata file written into every tablet snapshot directory.
pub const SNAPSHOT_META_FILE: &str = "SNAPSHOT_META.json";

/// Where a tablet's files live.
#[derive(Debug, Clone)]
pub struct TabletPaths {
    pub dir: PathBuf,
    pub meta: PathBuf,
    pub changelog: PathBuf,
    pub snapshots: PathBuf,
}

impl TabletPaths {
    pub fn new(data_dir: &Path, meta: &pb::TabletMeta) -> Result<Self> {
        types::check_id("database", &meta.database_id)?;
        types::check_id("table", &meta.table_id)?;
        types::check_id("tablet", &meta.tablet_id)?;
        let table_dir = data_dir
            .join(&meta.database_id)
            .join(format!("table-{}", meta.table_id));
        let t = format!("tablet-{}", meta.tablet_id);
        Ok(Self {
            dir: table_dir.join(&t),
            meta: table_dir.join(format!("{t}.meta")),
            changelog: table_dir.join(format!("{t}.changelog")),
            snapshots: table_dir.join(format!("{t}.snapshots")),
        })
    }

    /// The directory of one snapshot of this tablet; refuses an id that is not one plain
    /// path component.
    pub fn snapshot_dir(&self, snapshot_id: &str) -> Result<PathBuf> {
        types::check_id("snapshot", snapshot_id)?;
        Ok(self.snapshots.join(snapshot_id))
    }
}

/// What a tablet snapshot directory carries besides the RocksDB files.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SnapshotMeta {
    pub snapshot_id: String,
    /// The snapshot's hybrid time: restores hide versions newer than this.
    pub hybrid_time: u64,
    /// An upper bound of every version in the checkpoint.
    pub max_ht: u64,
    pub tablet: pb::TabletMeta,
    // No catalog here: the whole database's description in every tablet's metadata made a
    // snapshot cost O(tablets²) bytes. The backup's ROOT holds it once.
}

fn hidden_ranges(meta: &pb::TabletMeta) -> Vec<(u64, u64)> {
    meta.hidden
        .iter()
        .map(|h| (h.after_ht, h.until_ht))
        .collect()
}

fn is_hidden(hidden: &[(u64, u64)], ht: HybridTime) -> bool {
    hidden.iter().any(|&(a, u)| ht.0 > a && ht.0 <= u)
}

/// Hidden version ranges of a tablet; grows when the tablet is restored in place.
type Hidden = Arc<std::sync::RwLock<Arc<Vec<(u64, u64)>>>>;

/// An open tablet.
pub struct Tablet {
    meta: pb::TabletMeta,
    paths: TabletPaths,
    db: rocksdb::DB,
    hidden: Hidden,
    /// Serialises writes (and so hybrid-time order); owns the change log.
    writer: Mutex<ChangeLog>,
    policy: HistoryPolicy,
}

/// Extracts and checks the key of an op (a delete may carry only the key columns).
fn op_key(schema: &pb::TableSchema, op: &pb::RowOp) -> Result<pb::Row> {
    let row = op
        .row
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("write op without a row".into()))?;
    let key = if op.delete && row.values.len() == schema.primary_key.len() {
        row.clone()
    } else {
        if !op.delete {
            types::check_row(schema, row)?;
        } else if row.values.len() != schema.columns.len() {
            return Err(Error::InvalidArgument(format!(
                "delete carries {} values; give the {} primary-key values or a full row",
                row.values.len(),
                schema.primary_key.len()
            )));
        }
        encoding::key_values(schema, row)
    };
    for (v, &i) in key.values.iter().zip(&schema.primary_key) {
        types::check_value(&schema.columns[i as usize], v, true)?;
    }
    Ok(key)
}

/// Makes a rename (or create) of `path` durable: fsync of its parent directory.
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

fn write_meta(path: &Path, meta: &pb::TabletMeta) -> Result<()> {
    let tmp = path.with_extension("meta.tmp");
    fs::write(&tmp, meta.encode_to_vec()).map_err(|e| Error::io(&tmp, e))?;
    let f = fs::File::open(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(path)
}

/// Reads a tablet's metadata file.
pub fn read_meta(path: &Path) -> Result<pb::TabletMeta> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    pb::TabletMeta::decode(bytes.as_slice()).map_err(|e| Error::Corrupt {
        what: format!("tablet metadata {}", path.display()),
        detail: e.to_string(),
    })
}

/// What every tablet of this process shares, so that a node's memory and disk grow with
/// its data, not with its tablet count: one block cache and one memtable budget (RocksDB
/// gives each database its own 8 MiB block cache, and each tablet could hold two 8 MiB
/// memtables: 10,000 tablets could pin gigabytes). When the memtables of all tablets
/// together pass the budget, the largest is flushed.
struct SharedStorage {
    cache: rocksdb::Cache,
    buffers: rocksdb::WriteBufferManager,
}

/// The node-wide block cache.
const BLOCK_CACHE_BYTES: usize = 64 << 20;
/// The node-wide memtable budget.
const MEMTABLE_BUDGET_BYTES: usize = 128 << 20;

fn shared_storage() -> &'static SharedStorage {
    static SHARED: std::sync::OnceLock<SharedStorage> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| SharedStorage {
        cache: rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES),
        buffers: rocksdb::WriteBufferManager::new_write_buffer_manager(
            MEMTABLE_BUDGET_BYTES,
            false,
        ),
    })
}

/// RocksDB options of a tablet (and of a staged copy being replayed into).
pub(crate) fn storage_options() -> rocksdb::Options {
    let shared = shared_storage();
    let mut opts = rocksdb::Options::default();
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(&shared.cache);
    opts.set_block_based_table_factory(&table);
    opts.set_write_buffer_manager(&shared.buffers);
    opts.set_write_buffer_size(8 << 20);
    // RocksDB preallocates 4 MiB for each MANIFEST: 4 MiB of disk per empty tablet (and
    // per restore staging copy). A tablet's manifest holds a few hundred bytes.
    opts.set_manifest_preallocation_size(64 << 10);
    // The WAL is preallocated in blocks of 1.1 × the memtable size (8.8 MiB) capped by
    // this: with thousands of tablets each taking a write, 8.8 MiB each filled the disk
    // (3,000 tablets: > 18 GiB). Memory is bounded by the shared budget above, not by it.
    opts.set_db_write_buffer_size(256 << 10);
    opts.set_max_open_files(64);
    opts.set_keep_log_file_num(2);
    opts.set_log_level(rocksdb::LogLevel::Warn);
    opts.set_max_background_jobs(2);
    opts
}

impl Tablet {
    /// Creates a new, empty tablet.
    pub fn create(data_dir: &Path, meta: pb::TabletMeta, policy: HistoryPolicy) -> Result<Self> {
        types::check_schema(meta.schema.as_ref().ok_or_else(|| {
            Error::InvalidArgument(format!("tablet {} has no schema", meta.tablet_id))
        })?)?;
        let paths = TabletPaths::new(data_dir, &meta)?;
        if paths.meta.exists() {
            return Err(Error::AlreadyExists(format!("tablet {}", meta.tablet_id)));
        }
        fs::create_dir_all(&paths.dir).map_err(|e| Error::io(&paths.dir, e))?;
        let t = Self::open_with(paths.clone(), meta.clone(), policy)?;
        write_meta(&paths.meta, &meta)?;
        Ok(t)
    }

    /// Opens an existing tablet from its metadata file.
    pub fn open(meta_path: &Path, data_dir: &Path, policy: HistoryPolicy) -> Result<Self> {
        let meta = read_meta(meta_path)?;
        let paths = TabletPaths::new(data_dir, &meta)?;
        Self::open_with(paths, meta, policy)
    }

    fn open_with(paths: TabletPaths, meta: pb::TabletMeta, policy: HistoryPolicy) -> Result<Self> {
        let hidden: Hidden = Arc::new(std::sync::RwLock::new(Arc::new(hidden_ranges(&meta))));
        let mut opts = storage_options();
        opts.create_if_missing(true);
        opts.set_compaction_filter_factory(HistoryFilterFactory {
            policy: policy.clone(),
            hidden: hidden.clone(),
        });
        let db = rocksdb::DB::open(&opts, &paths.dir).map_err(|e| Error::storage(&paths.dir, e))?;
        let writer = Mutex::new(ChangeLog::open(&paths.changelog)?);
        Ok(Self {
            meta,
            paths,
            db,
            hidden,
            writer,
            policy,
        })
    }

    pub fn id(&self) -> TabletId {
        TabletId(self.meta.tablet_id.clone())
    }

    pub fn meta(&self) -> &pb::TabletMeta {
        &self.meta
    }

    fn hidden_now(&self) -> Arc<Vec<(u64, u64)>> {
        self.hidden.read().expect("hidden lock").clone()
    }

    /// The metadata as it is now (with every hidden range).
    pub fn current_meta(&self) -> pb::TabletMeta {
        let mut m = self.meta.clone();
        m.hidden = self
            .hidden_now()
            .iter()
            .map(|&(after_ht, until_ht)| pb::HiddenRange { after_ht, until_ht })
            .collect();
        m
    }

    /// Restores the tablet in place to `t`: every version newer than `t` that exists now
    /// is hidden for ever (O(1): metadata only); later writes are visible as usual. `t` must
    /// be inside the history window, or versions it needs may already be gone.
    pub fn hide_after(&self, hlc: &Hlc, t: HybridTime) -> Result<HybridTime> {
        let cutoff = self.policy.window_start();
        if t < cutoff {
            return Err(Error::FailedPrecondition(format!(
                "time {t} ({}) is before tablet {}'s history window, which starts at {cutoff} ({})",
                t.to_rfc3339(),
                self.meta.tablet_id,
                cutoff.to_rfc3339()
            )));
        }
        let _writes = self.writer.lock().expect("tablet writer poisoned");
        let until = hlc.now();
        {
            let mut h = self.hidden.write().expect("hidden lock");
            let mut v = (**h).clone();
            v.push((t.0, until.0));
            *h = Arc::new(v);
        }
        write_meta(&self.paths.meta, &self.current_meta())?;
        Ok(until)
    }

    pub fn paths(&self) -> &TabletPaths {
        &self.paths
    }

    fn schema(&self) -> &pb::TableSchema {
        self.meta.schema.as_ref().expect("checked at create/open")
    }

    fn check_range(&self, encoded: &[u8]) -> Result<()> {
        let h = encoding::partition_hash(encoded);
        if h < self.meta.hash_start || h >= self.meta.hash_end {
            return Err(Error::InvalidArgument(format!(
                "key hashes to {h}, outside tablet {}'s range [{}, {}): the client routed with \
                 a stale catalog; refresh it and retry",
                self.meta.tablet_id, self.meta.hash_start, self.meta.hash_end
            )));
        }
        Ok(())
    }

    /// Extracts and checks the key of an op (a delete may carry only the key columns).
    fn op_key(&self, op: &pb::RowOp) -> Result<pb::Row> {
        op_key(self.schema(), op)
    }

    /// Applies a batch atomically; returns its hybrid time.
    pub fn write(&self, hlc: &Hlc, catalog_version: u64, ops: &[pb::RowOp]) -> Result<HybridTime> {
        if catalog_version < self.meta.schema_version {
            return Err(Error::FailedPrecondition(format!(
                "stale catalog: the write was routed with catalog version {catalog_version}, but \
                 table {} is at schema version {}; refresh the catalog and retry",
                self.meta.table_name, self.meta.schema_version
            )));
        }
        if ops.is_empty() {
            return Err(Error::InvalidArgument("empty write batch".into()));
        }
        let mut encoded = Vec::with_capacity(ops.len());
        for op in ops {
            let key = encoding::encode_key(&self.op_key(op)?);
            self.check_range(&key)?;
            let value = if op.delete {
                encoding::encode_delete()
            } else {
                encoding::encode_put(op.row.as_ref().expect("checked"))
            };
            encoded.push((key, value));
        }
        let mut log = self.writer.lock().expect("tablet writer poisoned");
        let ht = hlc.now();
        let mut batch = rocksdb::WriteBatch::default();
        for (k, v) in &encoded {
            batch.put(encoding::mvcc_key(k, ht), v);
        }
        self.db
            .write(batch)
            .map_err(|e| Error::storage(&self.paths.dir, e))?;
        log.append(ht, ops)?;
        Ok(ht)
    }

    /// Makes `t` safe to read: later writes get larger times and earlier ones are applied.
    pub fn wait_safe(&self, hlc: &Hlc, t: HybridTime) {
        hlc.update(t);
        drop(self.writer.lock().expect("tablet writer poisoned"));
    }

    /// The row with key `key` as of `at`.
    pub fn read(&self, key: &pb::Row, at: HybridTime) -> Result<Option<(pb::Row, HybridTime)>> {
        let schema = self.schema();
        if key.values.len() != schema.primary_key.len() {
            return Err(Error::InvalidArgument(format!(
                "key has {} values; table {} has {} primary-key columns",
                key.values.len(),
                self.meta.table_name,
                schema.primary_key.len()
            )));
        }
        for (v, &i) in key.values.iter().zip(&schema.primary_key) {
            types::check_value(&schema.columns[i as usize], v, true)?;
        }
        let enc = encoding::encode_key(key);
        self.check_range(&enc)?;
        let hidden = self.hidden_now();
        let mut it = self.db.raw_iterator();
        it.seek(encoding::mvcc_key(&enc, at));
        while it.valid() {
            let Some((k, ht)) = it.key().and_then(encoding::split_mvcc_key) else {
                break;
            };
            if k != enc.as_slice() {
                break;
            }
            if ht <= at && !is_hidden(&hidden, ht) {
                return match encoding::decode_value(it.value().unwrap_or_default())? {
                    Version::Put(row) => Ok(Some((row, ht))),
                    Version::Delete => Ok(None),
                };
            }
            it.next();
        }
        it.status()
            .map_err(|e| Error::storage(&self.paths.dir, e))?;
        Ok(None)
    }

    /// Calls `f` for every row visible at `at` (in key-byte order) until it returns false.
    pub fn scan(
        &self,
        at: HybridTime,
        mut f: impl FnMut(pb::Row, HybridTime) -> bool,
    ) -> Result<()> {
        let hidden = self.hidden_now();
        let mut it = self.db.raw_iterator();
        it.seek_to_first();
        let mut decided: Vec<u8> = Vec::new();
        let mut have_decided = false;
        while it.valid() {
            let Some((k, ht)) = it.key().and_then(encoding::split_mvcc_key) else {
                it.next();
                continue;
            };
            if have_decided && k == decided.as_slice() {
                it.next();
                continue;
            }
            if ht > at || is_hidden(&hidden, ht) {
                it.next();
                continue;
            }
            decided.clear();
            decided.extend_from_slice(k);
            have_decided = true;
            if let Version::Put(row) = encoding::decode_value(it.value().unwrap_or_default())? {
                if !f(row, ht) {
                    return Ok(());
                }
            }
            it.next();
        }
        it.status().map_err(|e| Error::storage(&self.paths.dir, e))
    }

    /// Takes a checkpoint of this tablet as of `t` into its snapshots directory.
    pub fn snapshot(
        &self,
        hlc: &Hlc,
        snapshot_id: &str,
        t: HybridTime,
    ) -> Result<pb::TabletSnapshot> {
        let dir = self.paths.snapshot_dir(snapshot_id)?;
        let meta_path = dir.join(SNAPSHOT_META_FILE);
        if !meta_path.exists() {
            if dir.exists() {
                // A half-made checkpoint from a crash: start over.
                fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            }
            fs::create_dir_all(&self.paths.snapshots)
                .map_err(|e| Error::io(&self.paths.snapshots, e))?;
            self.wait_safe(hlc, t);
            let cp = rocksdb::checkpoint::Checkpoint::new(&self.db)
                .map_err(|e| Error::storage(&self.paths.dir, e))?;
            cp.create_checkpoint(&dir)
                .map_err(|e| Error::storage(&dir, e))?;
            let meta = SnapshotMeta {
                snapshot_id: snapshot_id.to_string(),
                hybrid_time: t.0,
                max_ht: hlc.now().0,
                tablet: self.current_meta(),
            };
            let json = serde_json::to_vec_pretty(&meta).expect("serialisable");
            let tmp = dir.join(format!("{SNAPSHOT_META_FILE}.tmp"));
            fs::write(&tmp, json).map_err(|e| Error::io(&tmp, e))?;
            fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(&tmp, e))?;
            fs::rename(&tmp, &meta_path).map_err(|e| Error::io(&meta_path, e))?;
            sync_dir(&meta_path)?;
        }
        let (files, bytes) = dir_size(&dir)?;
        Ok(pb::TabletSnapshot {
            tablet_id: self.meta.tablet_id.clone(),
            dir: dir.display().to_string(),
            files,
            bytes,
        })
    }

    /// The ids of this tablet's complete snapshots.
    pub fn snapshots(&self) -> Vec<String> {
        list_snapshots(&self.paths.snapshots)
    }

    /// Forces a full compaction (applies history retention and hidden ranges now).
    pub fn compact(&self) -> Result<()> {
        self.db
            .flush()
            .map_err(|e| Error::storage(&self.paths.dir, e))?;
        self.db.compact_range::<&[u8], &[u8]>(None, None);
        Ok(())
    }

    /// Deletes change-log segments older than the history window.
    pub fn truncate_changelog(&self) -> Result<usize> {
        let cutoff = self.policy.cutoff();
        if cutoff == HybridTime::MIN {
            return Ok(0);
        }
        self.writer
            .lock()
            .expect("tablet writer poisoned")
            .truncate_before(cutoff)
    }

    /// Imports a staged copy of a tablet snapshot as a new tablet `meta`, hiding every
    /// version newer than `restore_ht`. The staged directory is moved into place.
    /// Idempotent: importing a tablet that is already there returns it.
    pub fn import(
        data_dir: &Path,
        mut meta: pb::TabletMeta,
        staged: &Path,
        mut restore_ht: HybridTime,
        policy: HistoryPolicy,
    ) -> Result<Self> {
        let paths = TabletPaths::new(data_dir, &meta)?;
        if paths.meta.exists() {
            let existing = read_meta(&paths.meta)?;
            if existing.tablet_id == meta.tablet_id {
                return Self::open_with(paths, existing, policy);
            }
        }
        if !staged.join("CURRENT").is_file() {
            return Err(Error::InvalidArgument(format!(
                "staged directory {} is not a RocksDB checkpoint (no CURRENT file)",
                staged.display()
            )));
        }
        let sm_path = staged.join(SNAPSHOT_META_FILE);
        let mut max_ht = restore_ht;
        if sm_path.exists() {
            let sm: SnapshotMeta =
                serde_json::from_slice(&fs::read(&sm_path).map_err(|e| Error::io(&sm_path, e))?)
                    .map_err(|e| Error::Corrupt {
                        what: sm_path.display().to_string(),
                        detail: e.to_string(),
                    })?;
            // Ranges hidden in the source tablet stay hidden.
            meta.hidden.extend(sm.tablet.hidden.iter().cloned());
            max_ht = max_ht.max(HybridTime(sm.max_ht));
            // The checkpoint is complete only up to its snapshot time: never reveal more.
            restore_ht = restore_ht.min(HybridTime(sm.hybrid_time));
            fs::remove_file(&sm_path).map_err(|e| Error::io(&sm_path, e))?;
        }
        policy.hlc.update(max_ht);
        let until = policy.hlc.now();
        meta.hidden.push(pb::HiddenRange {
            after_ht: restore_ht.0,
            until_ht: until.0,
        });
        let parent = paths.dir.parent().expect("tablet dir has a parent");
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        if paths.dir.exists() {
            fs::remove_dir_all(&paths.dir).map_err(|e| Error::io(&paths.dir, e))?;
        }
        fs::rename(staged, &paths.dir).map_err(|e| {
            Error::io(
                &paths.dir,
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "moving {} into place failed ({e}); stage on the same filesystem as the node's data directory",
                        staged.display()
                    ),
                ),
            )
        })?;
        let t = Self::open_with(paths.clone(), meta.clone(), policy)?;
        write_meta(&paths.meta, &meta)?;
        Ok(t)
    }

    /// Marks the tablet deleted, durably, before its files go: a node that restarts
    /// half-way finishes the deletion instead of reopening the tablet.
    pub fn tombstone(&self) -> Result<()> {
        let dead = self.paths.meta.with_extension("meta.deleted");
        if self.paths.meta.exists() {
            fs::rename(&self.paths.meta, &dead).map_err(|e| Error::io(&dead, e))?;
            sync_dir(&dead)?;
        }
        Ok(())
    }

    /// Removes the tablet's live data and change log (its snapshots stay).
    pub fn destroy(self) -> Result<()> {
        let paths = self.paths.clone();
        drop(self);
        destroy_files(&paths)
    }
}

/// Removes a tablet's metadata (live or tombstone), data and change log.
pub fn destroy_files(paths: &TabletPaths) -> Result<()> {
    for d in [&paths.dir, &paths.changelog] {
        if d.exists() {
            fs::remove_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
    }
    // The metadata goes last: while it (or its tombstone) exists, a restart finishes the job.
    for p in [&paths.meta, &paths.meta.with_extension("meta.deleted")] {
        if p.exists() {
            fs::remove_file(p).map_err(|e| Error::io(p, e))?;
        }
    }
    Ok(())
}

/// Complete snapshots (with their metadata file) in a tablet's snapshots directory.
pub fn list_snapshots(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join(SNAPSHOT_META_FILE).exists())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

/// Number of files and bytes under a directory (not following links).
pub fn dir_size(dir: &Path) -> Result<(u64, u64)> {
    let mut files = 0;
    let mut bytes = 0;
    for e in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let md = e.metadata().map_err(|err| Error::io(e.path(), err))?;
        if md.is_file() {
            files += 1;
            bytes += md.len();
        } else if md.is_dir() {
            let (f, b) = dir_size(&e.path())?;
            files += f;
            bytes += b;
        }
    }
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::value::Kind;

    #[test]
    fn raising_the_retention_never_claims_history_already_compacted() {
        let hlc = Arc::new(Hlc::new());
        hlc.now();
        let p = HistoryPolicy::new(hlc.clone(), Duration::from_secs(60));
        let old = p.window_start();
        assert!(p.set_floor(Duration::from_secs(3600)));
        assert!(!p.set_floor(Duration::from_secs(3600)), "no change");
        // The cut-off moved an hour back, but history is only complete since the old one.
        assert!(p.cutoff() < old);
        assert!(p.window_start() >= old);
        // A restart restores both before any compaction.
        let (floor, since) = p.saved();
        let q = HistoryPolicy::new(hlc.clone(), Duration::from_secs(60));
        q.restore(floor, since);
        // (the cut-off follows the clock, so compare what defines it)
        assert_eq!(q.saved(), p.saved());
        assert!(q.window_start() >= HybridTime(since));
        assert!(
            q.cutoff() < HybridTime(since),
            "the raised retention applies"
        );
        // Withdrawn: back to the node's own setting.
        assert!(p.set_floor(Duration::ZERO));
        assert_eq!(p.saved().0, 0);
        // "Keep everything" nodes ignore floors.
        let all = HistoryPolicy::new(hlc, Duration::ZERO);
        assert!(!all.set_floor(Duration::from_secs(3600)));
        assert_eq!(all.window_start(), HybridTime::MIN);
    }

    fn meta() -> pb::TabletMeta {
        pb::TabletMeta {
            tablet_id: "t1".into(),
            table_id: "tb".into(),
            table_name: "kv".into(),
            database_id: "db".into(),
            schema: Some(pb::TableSchema {
                columns: vec![
                    pb::Column {
                        name: "k".into(),
                        data_type: pb::DataType::Int8 as i32,
                        nullable: false,
                    },
                    pb::Column {
                        name: "v".into(),
                        data_type: pb::DataType::Text as i32,
                        nullable: true,
                    },
                ],
                primary_key: vec![0],
            }),
            schema_version: 1,
            hash_start: 0,
            hash_end: encoding::HASH_SPACE,
            hidden: vec![],
        }
    }

    fn put(k: i64, v: &str) -> pb::RowOp {
        pb::RowOp {
            row: Some(pb::Row {
                values: vec![
                    pb::Value {
                        kind: Some(Kind::Int(k)),
                    },
                    pb::Value {
                        kind: Some(Kind::Text(v.into())),
                    },
                ],
            }),
            delete: false,
        }
    }

    fn key(k: i64) -> pb::Row {
        pb::Row {
            values: vec![pb::Value {
                kind: Some(Kind::Int(k)),
            }],
        }
    }

    fn text(r: &pb::Row) -> String {
        match &r.values[1].kind {
            Some(Kind::Text(s)) => s.clone(),
            _ => panic!(),
        }
    }

    #[test]
    fn a_staged_snapshot_plus_its_change_log_up_to_t_restores_the_tablet_at_t() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let hlc = Arc::new(Hlc::new());
        let policy = HistoryPolicy::new(hlc.clone(), Duration::ZERO);
        let a = Tablet::create(da.path(), meta(), policy.clone()).unwrap();
        let mut marks = Vec::new();
        let mut snap_at = HybridTime::MIN;
        for i in 0..50i64 {
            let ops = if i % 7 == 6 {
                vec![pb::RowOp {
                    row: Some(key(i - 3)),
                    delete: true,
                }]
            } else {
                vec![put(i % 20, &format!("v{i}")), put(100 + i, "x")]
            };
            marks.push(a.write(&hlc, 1, &ops).unwrap());
            if i == 15 {
                snap_at = hlc.now();
                a.snapshot(&hlc, "s1", snap_at).unwrap();
            }
        }
        let t = marks[31];
        // Stage a copy of the snapshot, as a restore does.
        let staged = db.path().join("staging").join("t1");
        fs::create_dir_all(&staged).unwrap();
        for e in fs::read_dir(a.paths().snapshot_dir("s1").unwrap()).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), staged.join(e.file_name())).unwrap();
        }
        let log = a.paths().changelog.clone();
        let read =
            crate::changelog::read_after(&log, snap_at, Default::default(), t, 1 << 20).unwrap();
        let records = crate::changelog::decode_records(&read.records).unwrap();
        assert!(records.iter().all(|(ht, _)| *ht > snap_at && *ht <= t));
        let mut r = StagedReplay::open(&staged).unwrap();
        assert_eq!(r.snapshot_ht(), snap_at);
        r.apply(&records).unwrap();
        r.apply(&records).unwrap(); // idempotent
        r.finish(t, &[]).unwrap();
        let mut m = meta();
        m.tablet_id = "t2".into();
        let b = Tablet::import(db.path(), m, &staged, t, policy).unwrap();
        let rows = |tb: &Tablet, at| {
            let mut v = Vec::new();
            tb.scan(at, |r, ht| {
                v.push(format!("{r:?}@{}", ht.0));
                true
            })
            .unwrap();
            v
        };
        assert_eq!(rows(&b, hlc.now()), rows(&a, t), "exactly the data at t");
        assert_ne!(rows(&a, marks[49]), rows(&a, t));
        assert_ne!(rows(&a, snap_at), rows(&a, t), "the replay mattered");
    }

    #[test]
    fn mvcc_reads_deletes_and_retention() {
        let d = tempfile::tempdir().unwrap();
        let hlc = Arc::new(Hlc::new());
        let policy = HistoryPolicy::new(hlc.clone(), Duration::ZERO);
        let t = Tablet::create(d.path(), meta(), policy.clone()).unwrap();
        let t1 = t.write(&hlc, 1, &[put(1, "a"), put(2, "b")]).unwrap();
        let t2 = t.write(&hlc, 1, &[put(1, "a2")]).unwrap();
        let t3 = t
            .write(
                &hlc,
                1,
                &[pb::RowOp {
                    row: Some(key(2)),
                    delete: true,
                }],
            )
            .unwrap();
        assert_eq!(text(&t.read(&key(1), t1).unwrap().unwrap().0), "a");
        assert_eq!(text(&t.read(&key(1), t2).unwrap().unwrap().0), "a2");
        assert!(t.read(&key(2), t2).unwrap().is_some());
        assert!(t.read(&key(2), t3).unwrap().is_none());
        let mut n = 0;
        t.scan(t1, |_, _| {
            n += 1;
            true
        })
        .unwrap();
        assert_eq!(n, 2);
        // Stale catalog version is refused.
        assert!(matches!(
            t.write(&hlc, 0, &[put(3, "x")]),
            Err(Error::FailedPrecondition(_))
        ));

        // Retention: keep only versions newer than "now"; t1's version of key 1 goes, the
        // newest at or below the cut-off (t2) stays.
        policy.retention_micros.store(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(2));
        t.compact().unwrap();
        assert!(t.read(&key(1), t1).unwrap().is_none());
        assert_eq!(text(&t.read(&key(1), t3).unwrap().unwrap().0), "a2");
    }

    #[test]
    fn snapshot_import_hides_newer_versions() {
        let d = tempfile::tempdir().unwrap();
        let hlc = Arc::new(Hlc::new());
        let policy = HistoryPolicy::new(hlc.clone(), Duration::ZERO);
        let t = Tablet::create(d.path(), meta(), policy.clone()).unwrap();
        t.write(&hlc, 1, &[put(1, "old")]).unwrap();
        let snap_t = hlc.now();
        t.write(&hlc, 1, &[put(1, "new"), put(9, "late")]).unwrap();
        let s = t.snapshot(&hlc, "s1", snap_t).unwrap();
        assert!(s.files > 0);

        // Copy the checkpoint to a staging dir and import it as another tablet.
        let staged = d.path().join("staged");
        fs::create_dir(&staged).unwrap();
        for e in fs::read_dir(&s.dir).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), staged.join(e.file_name())).unwrap();
        }
        let mut m2 = meta();
        m2.tablet_id = "t2".into();
        let target = tempfile::tempdir().unwrap();
        let hlc2 = Arc::new(Hlc::new());
        let p2 = HistoryPolicy::new(hlc2.clone(), Duration::ZERO);
        let r = Tablet::import(target.path(), m2.clone(), &staged, snap_t, p2.clone()).unwrap();
        let now = hlc2.now();
        assert_eq!(text(&r.read(&key(1), now).unwrap().unwrap().0), "old");
        assert!(r.read(&key(9), now).unwrap().is_none());
        // New writes after the restore are visible.
        r.write(&hlc2, 1, &[put(9, "after")]).unwrap();
        assert_eq!(
            text(&r.read(&key(9), hlc2.now()).unwrap().unwrap().0),
            "after"
        );
        drop(r);
        // Import again is a no-op (idempotent).
        let r = Tablet::import(target.path(), m2, &staged, snap_t, p2).unwrap();
        assert_eq!(
            text(&r.read(&key(1), hlc2.now()).unwrap().unwrap().0),
            "old"
        );
    }
}
