//! Paged manifests: the list of files in a backup, written as encrypted JSON-lines pages
//! (`backups/<id>/manifest/<part>-<seq>`) of at most N entries each, and the backup's `ROOT`
//! (`backups/<id>/ROOT`) — written last, the commit point — that names every page with its
//! keyed hash, plus stats and a free-form `meta` value (the database catalog).
//!
//! Memory is bounded by one page on either side, whatever the backup size. This module must
//! never write ROOT before every page it names is stored, and never yield an entry from a
//! page that did not authenticate and hash to the id ROOT records for it.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::{Keys, ObjectKind};
use crate::error::{Error, Result};
use crate::format::FORMAT_VERSION;
use crate::ids::{BackupId, ChunkId};
use crate::repo::Repository;
use futures::{StreamExt, TryStreamExt};

/// Default entries per manifest page.
pub const DEFAULT_PAGE_ENTRIES: usize = 10_000;
/// A page is also cut once its JSON reaches this size.
const PAGE_MAX_BYTES: usize = 16 << 20;

/// Object key of a backup's commit marker.
pub fn root_key(id: &BackupId) -> String {
    format!("backups/{id}/ROOT")
}

/// Object key of a manifest page.
pub fn page_key(id: &BackupId, name: &str) -> String {
    format!("backups/{id}/manifest/{name}")
}

/// A slice of a chunk's plaintext: the whole chunk, or one file inside a pack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: ChunkId,
    /// Offset inside the chunk's plaintext (non-zero only for packed small files).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    /// Bytes of this file taken from the chunk.
    pub len: u64,
    /// Size of the stored object, for quick verification.
    pub stored: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// File or directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
}

/// One file or directory of a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative path with `/` separators.
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
    /// Unix permission bits.
    pub mode: u32,
    /// Modification time, Unix seconds and nanoseconds.
    pub mtime: i64,
    #[serde(default)]
    pub mtime_nsec: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkRef>,
}

/// A stored manifest page, as ROOT records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRef {
    /// `<part>-<seq>`; the object is `backups/<id>/manifest/<name>`.
    pub name: String,
    /// Keyed hash of the page plaintext.
    pub id: ChunkId,
    pub entries: u64,
    pub stored: u64,
}

/// Counters for a backup or one writer's part of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStats {
    pub files: u64,
    pub dirs: u64,
    /// Logical bytes of all files.
    pub bytes: u64,
    /// Chunk references (a reused chunk counts each time).
    pub chunk_refs: u64,
    pub chunks_new: u64,
    pub chunks_reused: u64,
    /// Bytes sent to the store for new chunks and pages.
    pub bytes_uploaded: u64,
}

impl BackupStats {
    pub fn add(&mut self, o: &BackupStats) {
        self.files += o.files;
        self.dirs += o.dirs;
        self.bytes += o.bytes;
        self.chunk_refs += o.chunk_refs;
        self.chunks_new += o.chunks_new;
        self.chunks_reused += o.chunks_reused;
        self.bytes_uploaded += o.bytes_uploaded;
    }
}

/// The commit marker of a backup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Root {
    pub format_version: u64,
    pub backup_id: BackupId,
    pub created: DateTime<Utc>,
    /// Free-form: the database catalog, hybrid time, source cluster, ….
    pub meta: serde_json::Value,
    pub page_count: u64,
    pub pages: Vec<PageRef>,
    pub stats: BackupStats,
}

fn root_context(id: &BackupId) -> Vec<u8> {
    format!("ROOT|{id}").into_bytes()
}

impl Root {
    pub(crate) fn seal(&self, keys: &Keys) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(self)
            .map_err(|e| Error::InvalidArgument(format!("ROOT meta: {e}")))?;
        keys.seal(ObjectKind::Root, &root_context(&self.backup_id), &json, 3)
    }

    pub(crate) fn open(keys: &Keys, id: &BackupId, object: &[u8]) -> Result<Root> {
        let key = root_key(id);
        let json = keys.open(&key, ObjectKind::Root, &root_context(id), object)?;
        let value: serde_json::Value = serde_json::from_slice(&json)
            .map_err(|e| Error::corrupt(&key, format!("not JSON: {e}")))?;
        let found = value
            .get("format_version")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        if found != FORMAT_VERSION {
            return Err(Error::UnsupportedFormat {
                found,
                supported: FORMAT_VERSION,
            });
        }
        let root: Root = serde_json::from_value(value)
            .map_err(|e| Error::corrupt(&key, format!("layout: {e}")))?;
        if &root.backup_id != id || root.page_count != root.pages.len() as u64 {
            return Err(Error::corrupt(
                &key,
                "backup id or page count does not match",
            ));
        }
        Ok(root)
    }

    /// Writes ROOT — the commit point. Refuses if the backup is already committed.
    pub async fn commit(&self, repo: &Repository) -> Result<()> {
        let key = root_key(&self.backup_id);
        if repo.head_size(&key).await?.is_some() {
            return Err(Error::BackupExists {
                id: self.backup_id.to_string(),
            });
        }
        for page in &self.pages {
            if repo
                .head_size(&page_key(&self.backup_id, &page.name))
                .await?
                .is_none()
            {
                return Err(Error::MissingObject {
                    key: page_key(&self.backup_id, &page.name),
                });
            }
        }
        repo.put_bytes(&key, self.seal(repo.keys())?).await?;
        tracing::info!(backup = %self.backup_id, pages = self.page_count, "committed backup ROOT");
        Ok(())
    }
}

/// Streams entries into pages of one writer's part of a backup.
pub struct ManifestWriter {
    repo: Arc<Repository>,
    backup: BackupId,
    part: String,
    page_entries: usize,
    buf: Vec<u8>,
    count: usize,
    seq: u64,
    pages: Vec<PageRef>,
    bytes_uploaded: u64,
}

impl ManifestWriter {
    /// `part` distinguishes concurrent writers of one backup (e.g. a tablet id or random).
    pub fn new(
        repo: Arc<Repository>,
        backup: BackupId,
        part: &str,
        page_entries: usize,
    ) -> Result<Self> {
        if part.is_empty()
            || !part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(Error::InvalidArgument(format!(
                "manifest part `{part}` must be [A-Za-z0-9_.]+"
            )));
        }
        Ok(ManifestWriter {
            repo,
            backup,
            part: part.to_string(),
            page_entries: page_entries.max(1),
            buf: Vec::new(),
            count: 0,
            seq: 0,
            pages: Vec::new(),
            bytes_uploaded: 0,
        })
    }

    /// Appends an entry; uploads a page when it is full.
    pub async fn push(&mut self, entry: &Entry) -> Result<()> {
        serde_json::to_writer(&mut self.buf, entry).expect("entry serializes");
        self.buf.push(b'\n');
        self.count += 1;
        if self.count >= self.page_entries || self.buf.len() >= PAGE_MAX_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        let plain = std::mem::take(&mut self.buf);
        let keys = self.repo.keys().clone();
        let (id, sealed) = tokio::task::spawn_blocking(move || {
            let id = keys.chunk_id(&plain);
            keys.seal(ObjectKind::ManifestPage, &id.0, &plain, 3)
                .map(|s| (id, s))
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        let name = format!("{}-{:06}", self.part, self.seq);
        let stored = sealed.len() as u64;
        self.repo
            .put_bytes(&page_key(&self.backup, &name), sealed)
            .await?;
        self.pages.push(PageRef {
            name,
            id,
            entries: self.count as u64,
            stored,
        });
        self.bytes_uploaded += stored;
        self.seq += 1;
        self.count = 0;
        Ok(())
    }

    /// Uploads the last page; returns every page written and the bytes they took.
    pub async fn finish(mut self) -> Result<(Vec<PageRef>, u64)> {
        self.flush().await?;
        Ok((self.pages, self.bytes_uploaded))
    }
}

/// Streams the entries of a committed backup back, one page in memory at a time.
pub struct ManifestReader {
    repo: Arc<Repository>,
    backup: BackupId,
    pages: VecDeque<PageRef>,
    current: VecDeque<Entry>,
}

impl ManifestReader {
    pub fn new(repo: Arc<Repository>, root: &Root) -> Self {
        ManifestReader {
            repo,
            backup: root.backup_id.clone(),
            pages: root.pages.iter().cloned().collect(),
            current: VecDeque::new(),
        }
    }

    /// The next entry, or `None` after the last page.
    pub async fn next_entry(&mut self) -> Result<Option<Entry>> {
        loop {
            if let Some(e) = self.current.pop_front() {
                return Ok(Some(e));
            }
            let Some(page) = self.pages.pop_front() else {
                return Ok(None);
            };
            self.current = read_page(&self.repo, &self.backup, &page).await?.into();
        }
    }
}

/// Authenticates, re-hashes and parses the object of one page (`expected` entries).
pub(crate) fn parse_page(
    keys: &Keys,
    key: &str,
    id: &ChunkId,
    object: &[u8],
    expected: u64,
) -> Result<Vec<Entry>> {
    let plain = keys.open(key, ObjectKind::ManifestPage, &id.0, object)?;
    if keys.chunk_id(&plain) != *id {
        return Err(Error::corrupt(
            key,
            "page content does not hash to the id in ROOT",
        ));
    }
    let entries = plain
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice::<Entry>(l)
                .map_err(|e| Error::corrupt(key, format!("entry: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    if entries.len() as u64 != expected {
        return Err(Error::corrupt(
            key,
            format!("{} entries where ROOT says {expected}", entries.len()),
        ));
    }
    Ok(entries)
}

/// Downloads, authenticates, re-hashes and parses one page.
pub async fn read_page(repo: &Repository, backup: &BackupId, page: &PageRef) -> Result<Vec<Entry>> {
    let key = page_key(backup, &page.name);
    let object = repo.get_bytes(&key, crate::repo::limits::META).await?;
    let keys = repo.keys().clone();
    let id = page.id;
    let expected = page.entries;
    tokio::task::spawn_blocking(move || parse_page(&keys, &key, &id, &object, expected))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

/// Backups as the repository holds them: a backup exists once its ROOT does.
impl Repository {
    /// Committed backups (those with a ROOT), sorted by id.
    pub async fn list_backups(&self) -> Result<Vec<BackupId>> {
        let listing = self
            .store()
            .list_with_delimiter(Some(&object_store::path::Path::from("backups")))
            .await
            .map_err(|e| Error::store("list", "backups/", e))?;
        let candidates: Vec<BackupId> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(|n| BackupId::new(n).ok()))
            .collect();
        let mut committed: Vec<BackupId> =
            futures::stream::iter(candidates)
                .map(|id| async move {
                    Ok::<_, Error>(self.head_size(&root_key(&id)).await?.map(|_| id))
                })
                .buffer_unordered(16)
                .try_filter_map(|x| async move { Ok(x) })
                .try_collect()
                .await?;
        committed.sort();
        Ok(committed)
    }

    /// Reads and authenticates a backup's ROOT.
    pub async fn read_root(&self, id: &BackupId) -> Result<Root> {
        let key = root_key(id);
        let bytes = match self.get_bytes(&key, crate::repo::limits::META).await {
            Err(Error::MissingObject { .. }) => {
                return Err(Error::BackupNotFound { id: id.to_string() })
            }
            r => r?,
        };
        Root::open(self.keys(), id, &bytes)
    }

    /// Like [`read_root`](Self::read_root), shared: the last [`ROOTS_CACHED`] ROOTs read
    /// this way are kept, so the thousands of restore tasks of one backup that an agent
    /// runs read and parse its ROOT (which lists every page of every tablet) once, not
    /// once each — that made a restore's cost grow with the square of its tablets.
    pub async fn read_root_shared(&self, id: &BackupId) -> Result<Arc<Root>> {
        let repo_id = self.config().repo_id.clone();
        let cached = |roots: &VecDeque<(String, Arc<Root>)>| {
            roots
                .iter()
                .find(|(r, root)| *r == repo_id && &root.backup_id == id)
                .map(|(_, root)| root.clone())
        };
        if let Some(r) = cached(&SHARED_ROOTS.lock().expect("roots lock")) {
            return Ok(r);
        }
        let root = Arc::new(self.read_root(id).await?);
        let mut roots = SHARED_ROOTS.lock().expect("roots lock");
        if cached(&roots).is_none() {
            if roots.len() >= ROOTS_CACHED {
                roots.pop_front();
            }
            roots.push_back((repo_id, root.clone()));
        }
        Ok(root)
    }
}

/// The ROOTs [`Repository::read_root_shared`] keeps, by repository id, newest last
/// (process-wide: a committed ROOT never changes).
static SHARED_ROOTS: std::sync::Mutex<VecDeque<(String, Arc<Root>)>> =
    std::sync::Mutex::new(VecDeque::new());

/// ROOTs kept by [`Repository::read_root_shared`].
pub const ROOTS_CACHED: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunker::ChunkerParams;
    use crate::format::KdfParams;
    use crate::repo::InitOptions;
    use object_store::memory::InMemory;

    fn entry(i: usize) -> Entry {
        Entry {
            path: format!("dir/file-{i}"),
            kind: EntryKind::File,
            size: i as u64,
            mode: 0o644,
            mtime: 1_700_000_000,
            mtime_nsec: 5,
            chunks: vec![ChunkRef {
                id: ChunkId([i as u8; 32]),
                offset: 0,
                len: i as u64,
                stored: 99,
            }],
        }
    }

    #[tokio::test]
    async fn pages_stream_out_and_back() {
        let store = Arc::new(InMemory::new());
        let opts = InitOptions {
            kdf: KdfParams::minimum(),
            chunker: ChunkerParams::default(),
        };
        let repo = Arc::new(Repository::init(store, b"pw", opts).await.unwrap());
        let id = BackupId::new("b1").unwrap();
        let mut w = ManifestWriter::new(repo.clone(), id.clone(), "p0", 7).unwrap();
        for i in 0..50 {
            w.push(&entry(i)).await.unwrap();
        }
        let (pages, _) = w.finish().await.unwrap();
        assert_eq!(pages.len(), 8);
        assert!(repo.list_backups().await.unwrap().is_empty(), "no ROOT yet");
        let root = Root {
            format_version: FORMAT_VERSION,
            backup_id: id.clone(),
            created: Utc::now(),
            meta: serde_json::json!({"catalog": {"tables": 3}}),
            page_count: pages.len() as u64,
            pages,
            stats: BackupStats::default(),
        };
        root.commit(&repo).await.unwrap();
        assert!(matches!(
            root.commit(&repo).await,
            Err(Error::BackupExists { .. })
        ));
        assert_eq!(repo.list_backups().await.unwrap(), vec![id.clone()]);
        let back = repo.read_root(&id).await.unwrap();
        assert_eq!(back, root);
        let mut r = ManifestReader::new(repo.clone(), &back);
        let mut n = 0;
        while let Some(e) = r.next_entry().await.unwrap() {
            assert_eq!(e, entry(n));
            n += 1;
        }
        assert_eq!(n, 50);
    }
}
