//! Rolling a staged tablet copy forward with archived change-log records (a restore to a
//! time from the off-cluster archive).

use super::*;

/// Replays change-log records into a *staged* tablet snapshot (a restore's staging copy,
/// not yet imported) and moves its restore point to `upto`: afterwards importing it shows
/// exactly the data as of `upto` (versions newer than `upto` stay hidden). Records must
/// be the source tablet's, newer than the snapshot's time and at or before `upto`; they
/// are written at their original hybrid times, so replaying twice changes nothing.
pub struct StagedReplay {
    dir: PathBuf,
    db: rocksdb::DB,
    meta: SnapshotMeta,
    max_ht: u64,
    pub records: u64,
}

impl StagedReplay {
    pub fn open(staged: &Path) -> Result<Self> {
        let sm_path = staged.join(SNAPSHOT_META_FILE);
        let meta: SnapshotMeta =
            serde_json::from_slice(&fs::read(&sm_path).map_err(|e| Error::io(&sm_path, e))?)
                .map_err(|e| Error::Corrupt {
                    what: sm_path.display().to_string(),
                    detail: e.to_string(),
                })?;
        if meta.tablet.schema.is_none() {
            return Err(Error::Corrupt {
                what: sm_path.display().to_string(),
                detail: "the tablet has no schema".into(),
            });
        }
        let opts = super::storage_options();
        let db = rocksdb::DB::open(&opts, staged).map_err(|e| Error::storage(staged, e))?;
        Ok(Self {
            dir: staged.to_path_buf(),
            max_ht: meta.max_ht,
            db,
            meta,
            records: 0,
        })
    }

    /// The snapshot's hybrid time (the replay starts after it).
    pub fn snapshot_ht(&self) -> HybridTime {
        HybridTime(self.meta.hybrid_time)
    }

    pub fn apply(&mut self, records: &[(HybridTime, pb::RowOp)]) -> Result<()> {
        let schema = self.meta.tablet.schema.as_ref().expect("checked at open");
        let mut batch = rocksdb::WriteBatch::default();
        for (ht, op) in records {
            let key = encoding::encode_key(&op_key(schema, op)?);
            let h = encoding::partition_hash(&key);
            if h < self.meta.tablet.hash_start || h >= self.meta.tablet.hash_end {
                return Err(Error::InvalidArgument(format!(
                    "archived change-log record at {ht} hashes to {h}, outside tablet {}'s \
                     range: the archive does not belong to this tablet",
                    self.meta.tablet.tablet_id
                )));
            }
            let value = if op.delete {
                encoding::encode_delete()
            } else {
                encoding::encode_put(op.row.as_ref().expect("checked"))
            };
            batch.put(encoding::mvcc_key(&key, *ht), value);
            self.max_ht = self.max_ht.max(ht.0);
        }
        self.db
            .write(batch)
            .map_err(|e| Error::storage(&self.dir, e))?;
        self.records += records.len() as u64;
        Ok(())
    }

    /// Flushes, closes, and records `upto` as the staged copy's restore point (durably), with
    /// `hidden`: ranges `(after, until]` the source hid by in-place restores before `upto`.
    pub fn finish(self, upto: HybridTime, hidden: &[(u64, u64)]) -> Result<u64> {
        self.db.flush().map_err(|e| Error::storage(&self.dir, e))?;
        drop(self.db);
        let mut meta = self.meta;
        meta.hybrid_time = meta.hybrid_time.max(upto.0);
        meta.max_ht = self.max_ht.max(upto.0);
        for &(after_ht, until_ht) in hidden {
            let h = pb::HiddenRange { after_ht, until_ht };
            if !meta.tablet.hidden.contains(&h) {
                meta.tablet.hidden.push(h);
            }
        }
        let sm_path = self.dir.join(SNAPSHOT_META_FILE);
        let tmp = self.dir.join(format!("{SNAPSHOT_META_FILE}.tmp"));
        let mut f = fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        std::io::Write::write_all(&mut f, &serde_json::to_vec(&meta).expect("json"))
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, &sm_path).map_err(|e| Error::io(&sm_path, e))?;
        sync_dir(&sm_path)?;
        Ok(self.records)
    }
}
