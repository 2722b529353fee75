//! `raft::Storage` over sled: the Raft log, hard state, conf state and the latest
//! state-machine snapshot, all in one sled database per replica. Every write path ends with
//! `sync` (an fsync) before the Raft loop acknowledges anything. This file must never
//! interpret command payloads: it stores bytes for Raft.

// rust-protobuf messages are built by assigning fields, as in raft-rs's own examples.
#![allow(clippy::field_reassign_with_default)]

use crate::error::{CoordinatorError, Result};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::path::{Path, PathBuf};

const HARD_STATE: &[u8] = b"hard_state";
const CONF_STATE: &[u8] = b"conf_state";
const SNAP_META: &[u8] = b"snapshot_metadata";
const SNAP_DATA: &[u8] = b"snapshot_data";

/// A new group's log starts after this index (and term): its initial configuration lives in a
/// snapshot at this index, never in log entries. A replica that joins later starts with an
/// empty log and no voters, so it can only be caught up by that snapshot (or a later one),
/// which carries the configuration the log's membership changes build on.
pub const BOOTSTRAP_INDEX: u64 = 5;

/// A replica's durable Raft state. Cheap to clone (sled handles are shared).
#[derive(Clone)]
pub struct SledStorage {
    path: PathBuf,
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn index_of(k: &[u8]) -> u64 {
    u64::from_be_bytes(k.try_into().expect("log keys are 8 bytes"))
}

fn store_err(e: impl std::error::Error + Send + Sync + 'static) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl SledStorage {
    /// Opens (or creates) the sled database under `dir`.
    ///
    /// sled's background flusher keeps the file lock for a moment after the last handle of a
    /// database is dropped, so a reopen right after a close (a replica restarted in-process)
    /// is retried for up to `LOCK_WAIT`; a lock still held after that (another live replica
    /// on the same directory) is the error.
    pub fn open(dir: &Path) -> Result<Self> {
        const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
        let path = dir.join("raft.sled");
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::open(&path) {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(CoordinatorError::Storage {
                        path: path.display().to_string(),
                        source,
                    })
                }
            }
        };
        let log = db.open_tree("log").map_err(|e| Self::err(&path, e))?;
        let meta = db.open_tree("meta").map_err(|e| Self::err(&path, e))?;
        Ok(Self {
            path,
            db,
            log,
            meta,
        })
    }

    fn err(path: &Path, source: sled::Error) -> CoordinatorError {
        CoordinatorError::Storage {
            path: path.display().to_string(),
            source,
        }
    }

    fn e(&self, source: sled::Error) -> CoordinatorError {
        Self::err(&self.path, source)
    }

    /// Whether this replica has Raft state already (it was initialized before).
    pub fn is_initialized(&self) -> Result<bool> {
        Ok(self.meta.get(CONF_STATE).map_err(|e| self.e(e))?.is_some())
    }

    /// On a brand-new replica, records the initial voters (every replica of a new cluster
    /// starts with the same configuration) as a snapshot at [`BOOTSTRAP_INDEX`]. With no
    /// voters, the replica is joining an existing group: it starts empty and waits for the
    /// leader's snapshot. Does nothing if the replica has state already.
    pub fn initialize(&self, voters: &[u64]) -> Result<()> {
        if self.is_initialized()? {
            return Ok(());
        }
        let mut cs = ConfState::default();
        cs.voters = voters.to_vec();
        if !voters.is_empty() {
            let mut meta = SnapshotMetadata::default();
            meta.index = BOOTSTRAP_INDEX;
            meta.term = BOOTSTRAP_INDEX;
            meta.set_conf_state(cs.clone());
            self.put_meta(SNAP_META, &meta)?;
            let mut hs = HardState::default();
            hs.term = BOOTSTRAP_INDEX;
            hs.commit = BOOTSTRAP_INDEX;
            self.set_hard_state(&hs)?;
        }
        self.put_meta(CONF_STATE, &cs)?;
        self.sync()
    }

    /// Records the configuration in force after applying a membership change (made durable
    /// by the Raft loop's next `sync`).
    pub fn set_conf_state(&self, cs: &ConfState) -> Result<()> {
        self.put_meta(CONF_STATE, cs)
    }

    fn put_meta<M: protobuf::Message>(&self, k: &[u8], m: &M) -> Result<()> {
        let bytes = m
            .write_to_bytes()
            .map_err(|e| CoordinatorError::corrupt("raft metadata", e))?;
        self.meta.insert(k, bytes).map_err(|e| self.e(e))?;
        Ok(())
    }

    fn get_meta<M: protobuf::Message + Default>(&self, k: &[u8]) -> raft::Result<M> {
        match self.meta.get(k).map_err(store_err)? {
            None => Ok(M::default()),
            Some(v) => Ok(M::parse_from_bytes(&v)?),
        }
    }

    pub fn hard_state(&self) -> raft::Result<HardState> {
        self.get_meta(HARD_STATE)
    }

    pub fn conf_state(&self) -> raft::Result<ConfState> {
        self.get_meta(CONF_STATE)
    }

    pub fn snapshot_metadata(&self) -> raft::Result<SnapshotMetadata> {
        self.get_meta(SNAP_META)
    }

    /// The state-machine bytes of the latest snapshot (empty if none yet).
    pub fn snapshot_data(&self) -> Result<Vec<u8>> {
        Ok(self
            .meta
            .get(SNAP_DATA)
            .map_err(|e| self.e(e))?
            .map(|v| v.to_vec())
            .unwrap_or_default())
    }

    pub fn set_hard_state(&self, hs: &HardState) -> Result<()> {
        self.put_meta(HARD_STATE, hs)
    }

    pub fn set_commit(&self, commit: u64) -> Result<()> {
        let mut hs = self.hard_state()?;
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    /// Appends entries, truncating any conflicting suffix first (atomically).
    pub fn append(&self, entries: &[Entry]) -> Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        for kv in self.log.range(key(first.index)..) {
            let (k, _) = kv.map_err(|e| self.e(e))?;
            batch.remove(k);
        }
        for e in entries {
            let bytes = e
                .write_to_bytes()
                .map_err(|err| CoordinatorError::corrupt("raft entry", err))?;
            batch.insert(&key(e.index), bytes);
        }
        self.log.apply_batch(batch).map_err(|e| self.e(e))
    }

    /// Installs a snapshot received from the leader: replaces the log and the conf state.
    pub fn apply_snapshot(&self, snap: &Snapshot) -> Result<()> {
        let meta = snap.get_metadata();
        let mut hs = self.hard_state()?;
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        self.log.clear().map_err(|e| self.e(e))?;
        self.put_meta(SNAP_META, meta)?;
        self.meta
            .insert(SNAP_DATA, snap.get_data())
            .map_err(|e| self.e(e))?;
        self.put_meta(CONF_STATE, meta.get_conf_state())?;
        self.set_hard_state(&hs)
    }

    /// Records a snapshot of the state machine as of `index` (already applied) and drops
    /// every log entry up to and including it.
    pub fn compact_with_snapshot(&self, index: u64, data: Vec<u8>) -> Result<()> {
        let term = raft::Storage::term(self, index)?;
        let mut meta = SnapshotMetadata::default();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state()?);
        self.put_meta(SNAP_META, &meta)?;
        self.meta.insert(SNAP_DATA, data).map_err(|e| self.e(e))?;
        let mut batch = sled::Batch::default();
        for kv in self.log.range(..=key(index)) {
            let (k, _) = kv.map_err(|e| self.e(e))?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(|e| self.e(e))?;
        self.sync()
    }

    /// Makes every write so far durable (fsync).
    pub fn sync(&self) -> Result<()> {
        self.db.flush().map_err(|e| self.e(e))?;
        Ok(())
    }

    /// Number of entries currently in the log (for tests and status).
    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    fn first_entry_index(&self) -> raft::Result<Option<u64>> {
        Ok(self
            .log
            .first()
            .map_err(store_err)?
            .map(|(k, _)| index_of(&k)))
    }

    fn last_entry_index(&self) -> raft::Result<Option<u64>> {
        Ok(self
            .log
            .last()
            .map_err(store_err)?
            .map(|(k, _)| index_of(&k)))
    }
}

impl raft::Storage for SledStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state()?, self.conf_state()?))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index()? {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index()? + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        for kv in self.log.range(key(low)..key(high)) {
            let (_, v) = kv.map_err(store_err)?;
            out.push(Entry::parse_from_bytes(&v)?);
        }
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let snap = self.snapshot_metadata()?;
        if idx == snap.index {
            return Ok(snap.term);
        }
        if idx < self.first_index()? {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.log.get(key(idx)).map_err(store_err)? {
            Some(v) => Ok(Entry::parse_from_bytes(&v)?.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        match self.first_entry_index()? {
            Some(i) => Ok(i),
            None => Ok(self.snapshot_metadata()?.index + 1),
        }
    }

    fn last_index(&self) -> raft::Result<u64> {
        match self.last_entry_index()? {
            Some(i) => Ok(i),
            None => Ok(self.snapshot_metadata()?.index),
        }
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let meta = self.snapshot_metadata()?;
        if meta.index < request_index {
            // Only snapshots taken by compaction exist; the caller retries later.
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        snap.set_data(
            self.snapshot_data()
                .map_err(|e| store_err(std::io::Error::other(e.to_string())))?
                .into(),
        );
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = format!("e{index}").into_bytes().into();
        e
    }

    const B: u64 = BOOTSTRAP_INDEX;

    #[test]
    fn append_truncates_conflicts_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStorage::open(dir.path()).unwrap();
            s.initialize(&[1, 2, 3]).unwrap();
            // A new group's log starts after the bootstrap snapshot.
            assert_eq!(s.first_index().unwrap(), B + 1);
            assert_eq!(s.last_index().unwrap(), B);
            assert_eq!(s.term(B).unwrap(), B);
            s.append(&(B + 1..=B + 5).map(|i| entry(i, 6)).collect::<Vec<_>>())
                .unwrap();
            s.append(&[entry(B + 4, 7), entry(B + 5, 7), entry(B + 6, 7)])
                .unwrap();
            s.append(&[entry(B + 5, 8)]).unwrap();
            let mut hs = HardState::default();
            hs.term = 8;
            hs.commit = B + 4;
            s.set_hard_state(&hs).unwrap();
            s.sync().unwrap();
        }
        let s = SledStorage::open(dir.path()).unwrap();
        assert_eq!(s.first_index().unwrap(), B + 1);
        assert_eq!(s.last_index().unwrap(), B + 5);
        assert_eq!(s.term(B + 4).unwrap(), 7);
        assert_eq!(s.term(B + 5).unwrap(), 8);
        let st = s.initial_state().unwrap();
        assert_eq!(st.hard_state.commit, B + 4);
        assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
        let es = s
            .entries(B + 2, B + 5, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(
            es.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![B + 2, B + 3, B + 4]
        );
        // initialize on an existing replica changes nothing.
        s.initialize(&[9]).unwrap();
        assert_eq!(s.conf_state().unwrap().voters, vec![1, 2, 3]);
    }

    #[test]
    fn a_joining_replica_starts_empty_and_keeps_its_conf_state() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStorage::open(dir.path()).unwrap();
            assert!(!s.is_initialized().unwrap());
            s.initialize(&[]).unwrap();
            assert!(s.is_initialized().unwrap());
            assert_eq!(s.first_index().unwrap(), 1);
            assert_eq!(s.last_index().unwrap(), 0);
            assert!(s.conf_state().unwrap().voters.is_empty());
            let mut cs = ConfState::default();
            cs.voters = vec![1, 2, 3, 4];
            s.set_conf_state(&cs).unwrap();
            s.sync().unwrap();
        }
        let s = SledStorage::open(dir.path()).unwrap();
        assert_eq!(s.conf_state().unwrap().voters, vec![1, 2, 3, 4]);
    }

    #[test]
    fn compaction_keeps_term_of_snapshot_index() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStorage::open(dir.path()).unwrap();
        s.initialize(&[1]).unwrap();
        s.append(
            &(B + 1..=B + 10)
                .map(|i| entry(i, B + 1 + i / 5))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        s.compact_with_snapshot(B + 7, b"state".to_vec()).unwrap();
        assert_eq!(s.first_index().unwrap(), B + 8);
        assert_eq!(s.last_index().unwrap(), B + 10);
        assert_eq!(s.term(B + 7).unwrap(), B + 1 + (B + 7) / 5);
        assert!(matches!(
            s.term(B + 6),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(s
            .entries(B + 5, B + 9, None, GetEntriesContext::empty(false))
            .is_err());
        assert_eq!(s.log_len(), 3);
        let snap = s.snapshot(B + 7, 2).unwrap();
        assert_eq!(snap.get_metadata().index, B + 7);
        assert_eq!(snap.get_data(), b"state");
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1]);
    }

    #[test]
    fn applying_a_snapshot_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStorage::open(dir.path()).unwrap();
        s.initialize(&[1, 2, 3]).unwrap();
        s.append(&[entry(B + 1, 6), entry(B + 2, 6)]).unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 20;
        snap.mut_metadata().term = 4;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        snap.set_data(b"sm".to_vec().into());
        s.apply_snapshot(&snap).unwrap();
        assert_eq!(s.first_index().unwrap(), 21);
        assert_eq!(s.last_index().unwrap(), 20);
        assert_eq!(s.term(20).unwrap(), 4);
        assert_eq!(s.hard_state().unwrap().commit, 20);
        assert_eq!(s.snapshot_data().unwrap(), b"sm");
    }
}
