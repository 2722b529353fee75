//! The agent's local journal: a sled database in `<data>/journal` that remembers, for each
//! upload task (job id + task id), every file already recorded in the backup — its manifest
//! entry with the chunk references the repository writer made — so that a task re-leased
//! after the agent was killed records those files again with `BackupWriter::put_reused`
//! (no read, no hash, only an existence check of their chunks) instead of starting over.
//!
//! It is a cache, never a source of truth: a journal that cannot be opened or read is
//! warned about and set aside, and the task starts from scratch; it must never fail a task.
//! It is bounded: entries live on disk, one file's entry in memory at a time, and a task's
//! entries are removed when the coordinator has its result (or it failed for good); what a
//! cancelled job leaves behind is swept after [`MAX_AGE`].

use snapfleet_repository::{ChunkRef, Entry, EntryKind, EntryObserver, FileMeta};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

/// Journals of tasks untouched for this long are dropped at start-up (their job is over).
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// sled page cache (bytes).
const JOURNAL_CACHE: u64 = 8 << 20;
/// Key of a task tree's header (file paths never start with NUL).
const META_KEY: &[u8] = b"\0meta";

/// The agent's journal; disabled (every lookup misses) when it could not be opened.
pub struct Journal {
    db: Option<sled::Db>,
    dir: PathBuf,
}

/// What the journal of one task was made for: a journal of another backup (same job and
/// task ids after a coordinator was rebuilt) is not reused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskFingerprint {
    pub repo: String,
    pub backup_id: String,
    pub snapshot_id: String,
    pub tablet_id: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    fingerprint: TaskFingerprint,
    created_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn tree_name(job: u64, task: u64) -> String {
    format!("upload/{job}/{task}")
}

fn try_open(dir: &Path) -> Result<sled::Db, String> {
    // A small page cache: the journal holds a few tasks' entries, and the agent's memory must
    // stay bounded (sled's default cache is 1 GiB).
    let config = sled::Config::new().path(dir).cache_capacity(JOURNAL_CACHE);
    // sled reports most damage as errors, but a mangled file can also make it panic.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || config.open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("sled panicked while opening it".into()),
    }
}

impl Journal {
    /// Opens (or creates) the journal in `dir`. One that cannot be opened is moved aside and
    /// a fresh one created; if even that fails, the agent runs without a journal.
    pub fn open(dir: &Path) -> Journal {
        let db = match try_open(dir) {
            Ok(db) => Some(db),
            Err(e) => {
                let aside = dir.with_extension(format!("corrupt-{}", now_ms()));
                warn!(journal = %dir.display(), error = %e, aside = %aside.display(),
                    "the agent journal cannot be opened: setting it aside; interrupted uploads start from scratch");
                let _ = std::fs::rename(dir, &aside);
                match try_open(dir) {
                    Ok(db) => Some(db),
                    Err(e) => {
                        warn!(journal = %dir.display(), error = %e, "running without a journal");
                        None
                    }
                }
            }
        };
        let j = Journal {
            db,
            dir: dir.to_path_buf(),
        };
        j.sweep(MAX_AGE);
        j
    }

    /// A journal that remembers nothing.
    pub fn disabled() -> Journal {
        Journal {
            db: None,
            dir: PathBuf::new(),
        }
    }

    /// The journal of upload task `task` of job `job`, made for `fp`: what an earlier
    /// attempt finished, if it was for the same backup and tablet; else an empty one.
    pub fn upload(&self, job: u64, task: u64, fp: &TaskFingerprint) -> UploadJournal {
        let Some(db) = &self.db else {
            return UploadJournal::disabled();
        };
        let name = tree_name(job, task);
        let opened = (|| -> Result<sled::Tree, String> {
            let tree = db.open_tree(&name).map_err(|e| e.to_string())?;
            let header = match tree.get(META_KEY).map_err(|e| e.to_string())? {
                Some(raw) => serde_json::from_slice::<Header>(&raw).ok(),
                None => None,
            };
            match header {
                Some(h) if h.fingerprint == *fp => {}
                other => {
                    if other.is_some() {
                        info!(journal = %name, "journal of another backup under this task id: starting afresh");
                    }
                    tree.clear().map_err(|e| e.to_string())?;
                    let h = Header {
                        fingerprint: fp.clone(),
                        created_ms: now_ms(),
                    };
                    tree.insert(META_KEY, serde_json::to_vec(&h).expect("json"))
                        .map_err(|e| e.to_string())?;
                }
            }
            Ok(tree)
        })();
        match opened {
            Ok(tree) => UploadJournal {
                tree: Some(tree),
                name,
                broken: AtomicBool::new(false),
            },
            Err(e) => {
                warn!(journal = %name, error = %e, "cannot use the task's journal: uploading every file");
                let _ = db.drop_tree(&name);
                UploadJournal::disabled()
            }
        }
    }

    /// Forgets task `task` of job `job` (done, or failed for good).
    pub fn remove(&self, job: u64, task: u64) {
        if let Some(db) = &self.db {
            let name = tree_name(job, task);
            match db.drop_tree(&name) {
                Ok(_) => debug!(journal = %name, "journal removed"),
                Err(e) => warn!(journal = %name, error = %e, "cannot remove the task's journal"),
            }
        }
    }

    /// Drops task journals older than `max_age` (their task will not come back).
    pub fn sweep(&self, max_age: Duration) {
        let Some(db) = &self.db else { return };
        let cutoff = now_ms().saturating_sub(max_age.as_millis() as u64);
        for name in db.tree_names() {
            if !name.starts_with(b"upload/") {
                continue;
            }
            let old = match db.open_tree(&name).and_then(|t| t.get(META_KEY)) {
                Ok(Some(raw)) => serde_json::from_slice::<Header>(&raw)
                    .map(|h| h.created_ms < cutoff)
                    .unwrap_or(true),
                Ok(None) | Err(_) => true,
            };
            if old {
                let _ = db.drop_tree(&name);
            }
        }
        debug!(journal = %self.dir.display(), "journal swept");
    }

    /// Task journals held (for tests and diagnostics).
    pub fn tasks(&self) -> usize {
        self.db.as_ref().map_or(0, |db| {
            db.tree_names()
                .iter()
                .filter(|n| n.starts_with(b"upload/"))
                .count()
        })
    }
}

/// One upload task's journal: looked up before each file, told of each recorded file.
pub struct UploadJournal {
    tree: Option<sled::Tree>,
    name: String,
    /// Set when a read failed: the task goes on without lookups (from scratch).
    broken: AtomicBool,
}

impl UploadJournal {
    fn disabled() -> UploadJournal {
        UploadJournal {
            tree: None,
            name: String::new(),
            broken: AtomicBool::new(false),
        }
    }

    /// The chunk references of `rel` if an earlier attempt recorded it with this very size,
    /// modification time and mode (snapshot files are immutable hard links; the check is
    /// for safety).
    pub fn lookup(&self, rel: &str, size: u64, meta: FileMeta) -> Option<Vec<ChunkRef>> {
        let tree = self.tree.as_ref()?;
        if self.broken.load(Ordering::Relaxed) {
            return None;
        }
        let entry = match tree.get(rel.as_bytes()) {
            Ok(None) => return None,
            Ok(Some(raw)) => serde_json::from_slice::<Entry>(&raw).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match entry {
            Ok(e)
                if e.kind == EntryKind::File
                    && e.path == rel
                    && e.size == size
                    && e.mtime == meta.mtime
                    && e.mtime_nsec == meta.mtime_nsec
                    && e.mode == meta.mode =>
            {
                Some(e.chunks)
            }
            Ok(_) => None, // the file changed: read it again
            Err(e) => {
                warn!(journal = %self.name, file = rel, error = %e,
                    "the task's journal is unreadable: clearing it and uploading every file");
                self.broken.store(true, Ordering::Relaxed);
                let _ = tree.clear();
                None
            }
        }
    }
}

impl UploadJournal {
    /// Makes what is journaled so far durable (sled also flushes on its own every 500 ms):
    /// called after each large file, so that progress reported for it is progress a
    /// restarted agent keeps.
    pub async fn flush(&self) {
        let Some(tree) = &self.tree else { return };
        if let Err(e) = tree.flush_async().await {
            warn!(journal = %self.name, error = %e, "cannot flush the task's journal");
        }
    }
}

impl EntryObserver for UploadJournal {
    fn file_recorded(&self, entry: &Entry) {
        let Some(tree) = &self.tree else { return };
        let value = serde_json::to_vec(entry).expect("json");
        if let Err(e) = tree.insert(entry.path.as_bytes(), value) {
            warn!(journal = %self.name, error = %e, "cannot journal a finished file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapfleet_repository::ChunkId;

    fn fp(backup: &str) -> TaskFingerprint {
        TaskFingerprint {
            repo: "file:///r".into(),
            backup_id: backup.into(),
            snapshot_id: "s".into(),
            tablet_id: "t".into(),
        }
    }

    fn entry(path: &str, size: u64) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File,
            size,
            mode: 0o644,
            mtime: 1_700_000_000,
            mtime_nsec: 5,
            chunks: vec![ChunkRef {
                id: ChunkId([7; 32]),
                offset: 0,
                len: size,
                stored: size + 40,
            }],
        }
    }

    fn meta() -> FileMeta {
        FileMeta {
            mode: 0o644,
            mtime: 1_700_000_000,
            mtime_nsec: 5,
        }
    }

    #[test]
    fn finished_files_survive_a_restart_until_the_task_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        {
            let j = Journal::open(&path);
            let u = j.upload(1, 2, &fp("b1"));
            u.file_recorded(&entry("t/000001.sst", 100));
            assert_eq!(u.lookup("t/000001.sst", 100, meta()).unwrap().len(), 1);
        }
        let j = Journal::open(&path);
        let u = j.upload(1, 2, &fp("b1"));
        assert!(u.lookup("t/000001.sst", 100, meta()).is_some());
        // Another size or mtime: the file changed, read it.
        assert!(u.lookup("t/000001.sst", 101, meta()).is_none());
        let mut m = meta();
        m.mtime += 1;
        assert!(u.lookup("t/000001.sst", 100, m).is_none());
        assert!(u.lookup("t/000002.sst", 100, meta()).is_none());
        // Same ids, another backup (a rebuilt coordinator): nothing is reused.
        let other = j.upload(1, 2, &fp("b2"));
        assert!(other.lookup("t/000001.sst", 100, meta()).is_none());
        drop(other);
        let u = j.upload(1, 2, &fp("b2"));
        u.file_recorded(&entry("t/x", 1));
        assert_eq!(j.tasks(), 1);
        j.remove(1, 2);
        assert_eq!(j.tasks(), 0);
        assert!(j.upload(1, 2, &fp("b2")).lookup("t/x", 1, meta()).is_none());
    }

    #[test]
    fn unreadable_entries_and_a_corrupt_journal_mean_starting_from_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        {
            let j = Journal::open(&path);
            let u = j.upload(3, 4, &fp("b"));
            u.file_recorded(&entry("t/a", 10));
            u.tree
                .as_ref()
                .unwrap()
                .insert(b"t/b", &b"{not json"[..])
                .unwrap();
            assert!(u.lookup("t/b", 10, meta()).is_none());
            // The whole task journal was cleared: even good entries are not trusted now.
            assert!(u.lookup("t/a", 10, meta()).is_none());
            j.db.as_ref().unwrap().flush().unwrap();
        }
        // Mangle every file of the database.
        fn mangle(dir: &Path) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    mangle(&p);
                } else {
                    std::fs::write(&p, b"garbage, not a sled file").unwrap();
                }
            }
        }
        mangle(&path);
        let j = Journal::open(&path);
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("journal.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "the damaged journal is set aside");
        let u = j.upload(3, 4, &fp("b"));
        assert!(u.lookup("t/a", 10, meta()).is_none());
        u.file_recorded(&entry("t/a", 10));
        assert!(
            u.lookup("t/a", 10, meta()).is_some(),
            "a fresh journal works"
        );
    }

    #[test]
    fn old_task_journals_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("journal"));
        j.upload(1, 1, &fp("a")).file_recorded(&entry("t/a", 1));
        j.sweep(MAX_AGE);
        assert_eq!(j.tasks(), 1);
        j.sweep(Duration::ZERO);
        // created_ms < now - 0 only once a millisecond has passed: poll with a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while j.tasks() > 0 {
            assert!(std::time::Instant::now() < deadline, "never swept");
            std::thread::yield_now();
            j.sweep(Duration::ZERO);
        }
    }
}
