//! `BackupWriter`: puts files into one backup — chunk, dedup against what the repository
//! already holds, compress, encrypt, upload with N concurrent uploads — and records them in
//! manifest pages. Many writers (tasks, processes, hosts) can write one backup: each writes
//! its own manifest part and returns a [`PartSummary`]; [`commit_backup`] then writes ROOT.
//! Every writer holds a writer lease under `locks/` from creation until commit (or
//! `release_lease`, or drop) so that gc never runs while it writes (see `lease.rs`).
//!
//! Memory is bounded: at most `concurrency` chunks in flight, each keeping its chunker block
//! (8 MiB) alive until uploaded, plus one block per file stream — about (concurrency + 2 ×
//! file_streams) × 8 MiB at worst — one pack buffer, the small files read ahead (≤ 4 × 4
//! MiB), one manifest page. It must never load a whole large file, never record a chunk in a
//! manifest before the chunk is stored, and never write ROOT before every page is stored.

use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::chunker::Chunker;
use crate::error::{or_cancelled, Error, Result};
use crate::format::FORMAT_VERSION;
use crate::ids::{BackupId, ChunkId};
use crate::lease::{Lease, LeaseKind};
use crate::manifest::{
    root_key, BackupStats, ChunkRef, Entry, EntryKind, ManifestReader, ManifestWriter, PageRef,
    Root,
};
use crate::reader::check_rel_path;
use crate::repo::Repository;

mod small;
use small::{
    ParentCursor, PendingSmall, SmallFiles, SmallJob, SmallRead, MAX_PENDING_FILES,
    SMALL_BATCHES_AHEAD,
};

/// Tuning for a writer.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// zstd level, 0 = no compression.
    pub compression_level: i32,
    /// Chunks being sealed or uploaded at once (across all files of this writer).
    pub concurrency: usize,
    /// Large files processed at once by `put_dir`.
    pub file_streams: usize,
    /// Files smaller than this are packed together.
    pub small_file_threshold: u64,
    /// A pack is cut at a content-defined point once it reaches this size …
    pub pack_target: usize,
    /// … and always before it would exceed this one.
    pub pack_max: usize,
    pub page_entries: usize,
    /// Name of this writer's manifest part; random if `None`.
    pub part: Option<String>,
    /// TTL of the writer's lease (renewed every third of it).
    pub lease_ttl: std::time::Duration,
    /// Cancels the writer's remote operations: uploads under way (also those running on
    /// their own tasks), existence checks and manifest pages stop with `Error::Cancelled`.
    /// The default never fires.
    pub cancel: CancellationToken,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            compression_level: 3,
            concurrency: 8,
            file_streams: 4,
            small_file_threshold: 512 << 10,
            pack_target: 4 << 20,
            pack_max: 8 << 20,
            page_entries: crate::manifest::DEFAULT_PAGE_ENTRIES,
            part: None,
            lease_ttl: crate::lease::DEFAULT_TTL,
            cancel: CancellationToken::new(),
        }
    }
}

/// Live counters, shared with whoever draws a progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    pub files: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub chunks_new: AtomicU64,
    pub chunks_reused: AtomicU64,
}

/// What a writer did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteStats {
    #[serde(flatten)]
    pub backup: BackupStats,
    pub bytes_read: u64,
    pub duration_ms: u64,
}

impl WriteStats {
    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.duration_ms)
    }
}

/// One writer's finished share of a backup: pages written and stats. Send it to whoever
/// commits (`commit_backup`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartSummary {
    pub pages: Vec<PageRef>,
    pub stats: WriteStats,
}

/// Ownership and times of a file or directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileMeta {
    pub mode: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
}

impl FileMeta {
    pub fn from_metadata(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let (mtime, mtime_nsec) = match m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        {
            Some(d) => (d.as_secs() as i64, d.subsec_nanos()),
            None => (0, 0),
        };
        FileMeta {
            mode: m.permissions().mode() & 0o7777,
            mtime,
            mtime_nsec,
        }
    }
}

/// Told about every file entry a writer records, once the file's chunks are stored: e.g. a
/// journal of finished files, so that a writer restarted after a crash records them again
/// with [`BackupWriter::put_reused`] instead of reading them. Must return quickly.
pub trait EntryObserver: Send + Sync {
    fn file_recorded(&self, entry: &Entry);
}

#[derive(Default)]
struct Pack {
    buf: Vec<u8>,
    files: Vec<PendingSmall>,
}

struct Shared {
    repo: Arc<Repository>,
    backup: BackupId,
    opts: WriterOptions,
    progress: Arc<Progress>,
    uploads: Arc<Semaphore>,
    manifest: Mutex<Option<ManifestWriter>>,
    pack: Mutex<Pack>,
    parent: Mutex<Option<ParentCursor>>,
    observer: std::sync::Mutex<Option<Arc<dyn EntryObserver>>>,
    /// Writer lease (see `lease.rs`): held from before the first dedup check until commit,
    /// `release_lease` or drop.
    lease: std::sync::Mutex<Option<Lease>>,
    files: AtomicU64,
    dirs: AtomicU64,
    bytes: AtomicU64,
    chunk_refs: AtomicU64,
    chunks_new: AtomicU64,
    chunks_reused: AtomicU64,
    bytes_uploaded: AtomicU64,
    bytes_read: AtomicU64,
    started: Instant,
}

/// Writes files into one backup. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct BackupWriter {
    s: Arc<Shared>,
}

impl BackupWriter {
    /// A writer with default options. Fails if the backup is already committed.
    pub async fn new(repo: Arc<Repository>, backup: BackupId) -> Result<Self> {
        Self::with_options(repo, backup, WriterOptions::default()).await
    }

    pub async fn with_options(
        repo: Arc<Repository>,
        backup: BackupId,
        opts: WriterOptions,
    ) -> Result<Self> {
        if opts.pack_max < opts.small_file_threshold as usize
            || opts.concurrency == 0
            || opts.file_streams == 0
        {
            return Err(Error::InvalidArgument(
                "pack_max must be ≥ small_file_threshold; concurrency ≥ 1".into(),
            ));
        }
        if repo.head_size(&root_key(&backup)).await?.is_some() {
            return Err(Error::BackupExists {
                id: backup.to_string(),
            });
        }
        let part = opts
            .part
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_string());
        let manifest = ManifestWriter::new(repo.clone(), backup.clone(), &part, opts.page_entries)?;
        let lease = Lease::acquire_with_ttl(
            &repo,
            LeaseKind::Writer,
            &format!("backup {backup}"),
            opts.lease_ttl,
        )
        .await?;
        Ok(BackupWriter {
            s: Arc::new(Shared {
                uploads: Arc::new(Semaphore::new(opts.concurrency)),
                repo,
                backup,
                opts,
                progress: Arc::new(Progress::default()),
                manifest: Mutex::new(Some(manifest)),
                pack: Mutex::new(Pack::default()),
                parent: Mutex::new(None),
                observer: std::sync::Mutex::new(None),
                lease: std::sync::Mutex::new(Some(lease)),
                files: AtomicU64::new(0),
                dirs: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                chunk_refs: AtomicU64::new(0),
                chunks_new: AtomicU64::new(0),
                chunks_reused: AtomicU64::new(0),
                bytes_uploaded: AtomicU64::new(0),
                bytes_read: AtomicU64::new(0),
                started: Instant::now(),
            }),
        })
    }

    pub fn backup_id(&self) -> &BackupId {
        &self.s.backup
    }

    /// Live counters for progress display.
    pub fn progress(&self) -> Arc<Progress> {
        self.s.progress.clone()
    }

    /// Records a directory (so empty directories and their modes are restored).
    pub async fn put_dir_entry(&self, rel_path: &str, meta: FileMeta) -> Result<()> {
        check_rel_path(rel_path)?;
        self.s.dirs.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            path: rel_path.to_string(),
            kind: EntryKind::Dir,
            size: 0,
            mode: meta.mode,
            mtime: meta.mtime,
            mtime_nsec: meta.mtime_nsec,
            chunks: vec![],
        };
        self.push_entry(&entry).await
    }

    /// Stores one file read from `reader` (blocking reads run on a blocking thread).
    pub async fn put_file<R: Read + Send + 'static>(
        &self,
        rel_path: &str,
        reader: R,
        meta: FileMeta,
    ) -> Result<()> {
        self.put_file_sized(rel_path, reader, meta, None).await
    }

    /// [`BackupWriter::put_file`] with the expected size, so a file much smaller than the
    /// chunker's block does not take a whole block of memory.
    async fn put_file_sized<R: Read + Send + 'static>(
        &self,
        rel_path: &str,
        reader: R,
        meta: FileMeta,
        size_hint: Option<u64>,
    ) -> Result<()> {
        check_rel_path(rel_path)?;
        let s = self.s.clone();
        let threshold = s.opts.small_file_threshold;
        let params = s.repo.config().chunker;
        let keys = s.repo.keys().clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(ChunkId, BytesMut)>(1);
        let name = rel_path.to_string();
        let chunker = tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>> {
            let mut reader = reader;
            let mut prefix = Vec::new();
            (&mut reader)
                .take(threshold)
                .read_to_end(&mut prefix)
                .map_err(|e| Error::io(&name, e))?;
            if (prefix.len() as u64) < threshold {
                return Ok(Some(prefix));
            }
            for chunk in Chunker::with_prefix(prefix, reader, params).size_hint(size_hint) {
                let data = chunk.map_err(|e| Error::io(&name, e))?;
                let id = keys.chunk_id(&data);
                if tx.blocking_send((id, data)).is_err() {
                    break; // the uploader failed and hung up; its error wins
                }
            }
            Ok(None)
        });

        let mut refs = Vec::new();
        let mut inflight = FuturesOrdered::new();
        let mut size = 0u64;
        let mut result: Result<()> = Ok(());
        loop {
            let next = tokio::select! {
                biased;
                _ = s.opts.cancel.cancelled() => {
                    result = Err(Error::Cancelled {
                        what: format!("backup {}: putting a file", s.backup),
                    });
                    break;
                }
                next = rx.recv() => next,
            };
            let Some((id, data)) = next else { break };
            let len = data.len() as u64;
            size += len;
            s.bytes_read.fetch_add(len, Ordering::Relaxed);
            s.progress.bytes_read.fetch_add(len, Ordering::Relaxed);
            let permit = s
                .uploads
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore open");
            let s2 = s.clone();
            inflight.push_back(tokio::spawn(async move {
                store_chunk(&s2, id, data, permit)
                    .await
                    .map(|stored| (id, len, stored))
            }));
            while let Some(done) = inflight.next().now_or_never().flatten() {
                if let Err(e) = collect(done, &mut refs) {
                    result = Err(e);
                    break;
                }
            }
            if result.is_err() {
                break;
            }
        }
        drop(rx);
        while let Some(done) = inflight.next().await {
            if let Err(e) = collect(done, &mut refs) {
                result = result.and(Err(e));
            }
        }
        let small = chunker.await.map_err(|e| Error::Task(e.to_string()))?;
        result?;
        match small? {
            Some(data) => self.record_small_data(rel_path, meta, data).await,
            None => self.push_file_entry(rel_path, meta, size, refs).await,
        }
    }

    /// Counts a small file's bytes as read and packs it (an empty one is just an entry).
    async fn record_small_data(&self, rel_path: &str, meta: FileMeta, data: Vec<u8>) -> Result<()> {
        let n = data.len() as u64;
        self.s.bytes_read.fetch_add(n, Ordering::Relaxed);
        self.s.progress.bytes_read.fetch_add(n, Ordering::Relaxed);
        if data.is_empty() {
            self.push_file_entry(rel_path, meta, 0, vec![]).await
        } else {
            self.add_small(rel_path, meta, data).await
        }
    }

    /// Stores the local file `local` as `rel_path`.
    pub async fn put_path(&self, rel_path: &str, local: &Path) -> Result<()> {
        let local_owned = local.to_path_buf();
        let (file, meta, size) = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&local_owned).map_err(|e| Error::io(&local_owned, e))?;
            let m = f.metadata().map_err(|e| Error::io(&local_owned, e))?;
            Ok::<_, Error>((f, FileMeta::from_metadata(&m), m.len()))
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        self.put_file_sized(rel_path, file, meta, Some(size)).await
    }

    /// Stores a whole directory tree: files in name order (so packs of small files come out
    /// the same for an unchanged tree), up to `file_streams` large files at once. Symlinks and
    /// special files are skipped with a warning.
    pub async fn put_dir(&self, local_dir: &Path) -> Result<()> {
        let mut stack: Vec<(String, VecDeque<Listed>)> =
            vec![(String::new(), list_dir(local_dir.to_path_buf()).await?)];
        let mut large: JoinSet<Result<()>> = JoinSet::new();
        let mut small = SmallFiles::default();
        while let Some((prefix, items)) = stack.last_mut() {
            if self.s.opts.cancel.is_cancelled() {
                return Err(Error::Cancelled {
                    what: format!("backup {}: putting {}", self.s.backup, local_dir.display()),
                });
            }
            let Some(item) = items.pop_front() else {
                stack.pop();
                continue;
            };
            let rel = if prefix.is_empty() {
                item.name.clone()
            } else {
                format!("{prefix}/{}", item.name)
            };
            match item.kind {
                ListedKind::Dir => {
                    self.put_dir_entry(&rel, item.meta).await?;
                    let listing = list_dir(item.path.clone()).await?;
                    stack.push((rel, listing));
                }
                ListedKind::File if item.size < self.s.opts.small_file_threshold => {
                    let reuse = self.parent_chunks(&rel, item.size, item.meta).await?;
                    small.push(SmallJob {
                        rel,
                        path: item.path,
                        size: item.size,
                        meta: item.meta,
                        reuse,
                    });
                    if small.batch_full() {
                        small.launch(self.s.opts.small_file_threshold);
                        while small.reading.len() > SMALL_BATCHES_AHEAD {
                            let done = small.reading.next().await.expect("non-empty");
                            self.record_small(done).await?;
                        }
                    }
                }
                ListedKind::File => {
                    while large.len() >= self.s.opts.file_streams {
                        joined(large.join_next().await.expect("non-empty"))?;
                    }
                    let w = self.clone();
                    large.spawn(async move { w.put_path(&rel, &item.path).await });
                }
                ListedKind::Other => {
                    tracing::warn!(path = %item.path.display(), "skipping symlink or special file")
                }
            }
            // Let finished large files release their slot and surface errors early.
            while let Some(r) = large.try_join_next() {
                joined(r)?;
            }
        }
        small.launch(self.s.opts.small_file_threshold);
        while let Some(done) = small.reading.next().await {
            self.record_small(done).await?;
        }
        while let Some(r) = large.join_next().await {
            joined(r)?;
        }
        Ok(())
    }

    /// Records one batch of small files read by [`SmallFiles::launch`], in walk order.
    async fn record_small(
        &self,
        done: std::result::Result<Result<Vec<SmallRead>>, tokio::task::JoinError>,
    ) -> Result<()> {
        let batch = done.map_err(|e| Error::Task(e.to_string()))??;
        for f in batch {
            match f {
                SmallRead::Reuse { job, chunks } => {
                    if !self
                        .put_reused(&job.rel, job.size, job.meta, chunks)
                        .await?
                    {
                        self.put_path(&job.rel, &job.path).await?;
                    }
                }
                SmallRead::Data { rel, meta, data } => {
                    self.record_small_data(&rel, meta, data).await?
                }
                // Grew past the threshold since it was listed: chunk it as a large file.
                SmallRead::Grew { rel, path } => self.put_path(&rel, &path).await?,
            }
        }
        Ok(())
    }

    /// Uses `parent`, a committed backup of the same tree, to skip reading small files whose
    /// path, size, modification time and mode are unchanged: `put_dir` records them with the
    /// parent's chunk references (after checking those chunks exist). Change detection by
    /// metadata, as restic and rsync do; without a parent every file is read.
    pub async fn set_parent(&self, parent: &Root) {
        *self.s.parent.lock().await = Some(ParentCursor {
            reader: ManifestReader::new(self.s.repo.clone(), parent),
            peeked: None,
            threshold: self.s.opts.small_file_threshold,
        });
    }

    /// The parent backup's chunk references for `rel` if it is unchanged there (same size,
    /// mtime and mode); `None` if it must be read.
    async fn parent_chunks(
        &self,
        rel: &str,
        size: u64,
        meta: FileMeta,
    ) -> Result<Option<Vec<ChunkRef>>> {
        if size == 0 {
            return Ok(None);
        }
        let found = {
            let mut parent = self.s.parent.lock().await;
            let Some(cursor) = parent.as_mut() else {
                return Ok(None);
            };
            match cursor.find(rel).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the parent backup; reading every file");
                    *parent = None;
                    return Ok(None);
                }
            }
        };
        let Some(e) = found else { return Ok(None) };
        if e.size != size
            || e.mtime != meta.mtime
            || e.mtime_nsec != meta.mtime_nsec
            || e.mode != meta.mode
        {
            return Ok(None);
        }
        Ok(Some(e.chunks))
    }

    /// Records `rel_path` (`size` bytes, `meta`) with chunk references an earlier writer
    /// stored — a parent backup's entry, or an interrupted upload's journal — without reading
    /// the file, after checking every chunk is still in the repository. Returns false, having
    /// recorded nothing, when the references do not add up to `size` or a chunk is gone:
    /// then the caller must read the file (`put_path`). The caller vouches that the file is
    /// unchanged since those references were made (same path, size, mtime, mode).
    pub async fn put_reused(
        &self,
        rel_path: &str,
        size: u64,
        meta: FileMeta,
        chunks: Vec<ChunkRef>,
    ) -> Result<bool> {
        check_rel_path(rel_path)?;
        let total: u64 = chunks.iter().map(|c| c.len).sum();
        if total != size {
            return Ok(false);
        }
        for c in &chunks {
            let exists = or_cancelled(
                &self.s.opts.cancel,
                || format!("backup {}: checking chunk {}", self.s.backup, c.id),
                self.s.repo.chunk_exists(&c.id),
            );
            if exists.await?.is_none() {
                return Ok(false);
            }
        }
        let mut pack = self.s.pack.lock().await;
        if pack.buf.is_empty() {
            // Nothing packed waits before it: record it now (after earlier reused files).
            self.flush_pack(&mut pack).await?;
            drop(pack);
            self.push_file_entry(rel_path, meta, size, chunks).await?;
        } else {
            // Keep walk order: recorded when the pack before it is flushed.
            pack.files.push(PendingSmall {
                path: rel_path.to_string(),
                meta,
                offset: 0,
                len: size,
                reused: Some(chunks),
            });
            if pack.files.len() >= MAX_PENDING_FILES {
                self.flush_pack(&mut pack).await?; // bound memory: cut the pack early
            }
        }
        Ok(true)
    }

    /// Tells `observer` about every file this writer records from now on (see
    /// [`EntryObserver`]).
    pub fn set_observer(&self, observer: Arc<dyn EntryObserver>) {
        *self.s.observer.lock().expect("observer lock") = Some(observer);
    }

    async fn add_small(&self, rel_path: &str, meta: FileMeta, data: Vec<u8>) -> Result<()> {
        let cut_here = self.s.repo.keys().chunk_id(&data).0[0] & 0x0f == 0;
        let mut pack = self.s.pack.lock().await;
        if pack.buf.len() + data.len() > self.s.opts.pack_max {
            self.flush_pack(&mut pack).await?;
        }
        if pack.buf.capacity() == 0 {
            // One allocation per pack instead of a doubling series of copies.
            pack.buf.reserve_exact(self.s.opts.pack_max);
        }
        let offset = pack.buf.len() as u64;
        pack.buf.extend_from_slice(&data);
        pack.files.push(PendingSmall {
            path: rel_path.to_string(),
            meta,
            offset,
            len: data.len() as u64,
            reused: None,
        });
        if pack.buf.len() >= self.s.opts.pack_target && cut_here {
            self.flush_pack(&mut pack).await?;
        }
        Ok(())
    }

    async fn flush_pack(&self, pack: &mut Pack) -> Result<()> {
        if pack.files.is_empty() {
            return Ok(());
        }
        let Pack { buf, files } = std::mem::take(pack);
        let packed = if buf.is_empty() {
            None // only files reused from the parent
        } else {
            let id = self.s.repo.keys().chunk_id(&buf);
            let permit = self
                .s
                .uploads
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore open");
            let buf = BytesMut::from(Bytes::from(buf));
            Some((id, store_chunk(&self.s, id, buf, permit).await?))
        };
        for f in files {
            let refs = match (f.reused, packed) {
                (Some(refs), _) => refs,
                (None, Some((id, stored))) => vec![ChunkRef {
                    id,
                    offset: f.offset,
                    len: f.len,
                    stored,
                }],
                (None, None) => unreachable!("a packed file has bytes in the pack"),
            };
            self.push_file_entry(&f.path, f.meta, f.len, refs).await?;
        }
        Ok(())
    }

    async fn push_file_entry(
        &self,
        path: &str,
        meta: FileMeta,
        size: u64,
        chunks: Vec<ChunkRef>,
    ) -> Result<()> {
        self.s.files.fetch_add(1, Ordering::Relaxed);
        self.s.progress.files.fetch_add(1, Ordering::Relaxed);
        self.s.bytes.fetch_add(size, Ordering::Relaxed);
        self.s
            .chunk_refs
            .fetch_add(chunks.len() as u64, Ordering::Relaxed);
        let entry = Entry {
            path: path.to_string(),
            kind: EntryKind::File,
            size,
            mode: meta.mode,
            mtime: meta.mtime,
            mtime_nsec: meta.mtime_nsec,
            chunks,
        };
        self.push_entry(&entry).await?;
        let observer = self.s.observer.lock().expect("observer lock").clone();
        if let Some(o) = observer {
            o.file_recorded(&entry);
        }
        Ok(())
    }

    async fn push_entry(&self, entry: &Entry) -> Result<()> {
        let mut m = self.s.manifest.lock().await;
        let m = m
            .as_mut()
            .ok_or_else(|| Error::InvalidArgument("writer already finished".into()))?;
        or_cancelled(
            &self.s.opts.cancel,
            || format!("backup {}: writing a manifest page", self.s.backup),
            m.push(entry),
        )
        .await
    }

    /// Fails with `Error::LeaseLost` if this writer's lease may have expired (see `lease.rs`).
    pub fn check_lease(&self) -> Result<()> {
        match &*self.s.lease.lock().expect("lease lock") {
            Some(lease) => lease.check(),
            None => Ok(()),
        }
    }

    /// Releases this writer's lease now (commit does it; call it after `commit_backup` or
    /// when abandoning a writer, so gc need not wait for the lease to expire).
    pub async fn release_lease(&self) -> Result<()> {
        let lease = self.s.lease.lock().expect("lease lock").take();
        match lease {
            Some(l) => l.release().await,
            None => Ok(()),
        }
    }

    /// Flushes the last pack and manifest page of this writer's part. Other clones of this
    /// writer must be done. Fails with `Error::LeaseLost` when the writer's lease lapsed.
    pub async fn finish(&self) -> Result<PartSummary> {
        self.check_lease()?;
        {
            let mut pack = self.s.pack.lock().await;
            self.flush_pack(&mut pack).await?;
        }
        let manifest = self
            .s
            .manifest
            .lock()
            .await
            .take()
            .ok_or_else(|| Error::InvalidArgument("writer already finished".into()))?;
        let (pages, page_bytes) = or_cancelled(
            &self.s.opts.cancel,
            || format!("backup {}: writing the last manifest page", self.s.backup),
            manifest.finish(),
        )
        .await?;
        self.check_lease()?;
        self.s
            .bytes_uploaded
            .fetch_add(page_bytes, Ordering::Relaxed);
        self.s
            .progress
            .bytes_uploaded
            .fetch_add(page_bytes, Ordering::Relaxed);
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let s = &self.s;
        Ok(PartSummary {
            pages,
            stats: WriteStats {
                backup: BackupStats {
                    files: l(&s.files),
                    dirs: l(&s.dirs),
                    bytes: l(&s.bytes),
                    chunk_refs: l(&s.chunk_refs),
                    chunks_new: l(&s.chunks_new),
                    chunks_reused: l(&s.chunks_reused),
                    bytes_uploaded: l(&s.bytes_uploaded),
                },
                bytes_read: l(&s.bytes_read),
                duration_ms: s.started.elapsed().as_millis() as u64,
            },
        })
    }

    /// Single-writer convenience: finish, then write ROOT with `meta`.
    pub async fn commit(&self, meta: serde_json::Value) -> Result<(Root, WriteStats)> {
        let part = self.finish().await?;
        let stats = part.stats.clone();
        let root = or_cancelled(
            &self.s.opts.cancel,
            || format!("backup {}: writing ROOT", self.s.backup),
            commit_backup(&self.s.repo, &self.s.backup, meta, vec![part]),
        )
        .await?;
        if let Err(e) = self.release_lease().await {
            tracing::warn!(error = %e, "could not release the writer lease; it will expire");
        }
        Ok((root, stats))
    }
}

/// Writes the ROOT of a backup from every writer's part — the commit point.
pub async fn commit_backup(
    repo: &Repository,
    backup: &BackupId,
    meta: serde_json::Value,
    parts: Vec<PartSummary>,
) -> Result<Root> {
    let mut stats = BackupStats::default();
    let mut pages = Vec::new();
    for p in parts {
        stats.add(&p.stats.backup);
        pages.extend(p.pages);
    }
    let root = Root {
        format_version: FORMAT_VERSION,
        backup_id: backup.clone(),
        created: chrono::Utc::now(),
        meta,
        page_count: pages.len() as u64,
        pages,
        stats,
    };
    root.commit(repo).await?;
    Ok(root)
}

fn joined(r: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    r.map_err(|e| Error::Task(e.to_string()))?
}

fn collect(
    done: std::result::Result<Result<(ChunkId, u64, u64)>, tokio::task::JoinError>,
    refs: &mut Vec<ChunkRef>,
) -> Result<()> {
    let (id, len, stored) = done.map_err(|e| Error::Task(e.to_string()))??;
    refs.push(ChunkRef {
        id,
        offset: 0,
        len,
        stored,
    });
    Ok(())
}

/// Dedup check, then seal and upload if the repository lacks the chunk. Holds `permit`
/// (one slot of the writer's upload budget) until done.
async fn store_chunk(
    s: &Shared,
    id: ChunkId,
    data: BytesMut,
    permit: OwnedSemaphorePermit,
) -> Result<u64> {
    or_cancelled(
        &s.opts.cancel,
        || format!("backup {}: uploading chunk {id}", s.backup),
        store_chunk_now(s, id, data, permit),
    )
    .await
}

async fn store_chunk_now(
    s: &Shared,
    id: ChunkId,
    data: BytesMut,
    permit: OwnedSemaphorePermit,
) -> Result<u64> {
    let _permit = permit;
    if let Some(stored) = s.repo.chunk_exists(&id).await? {
        s.chunks_reused.fetch_add(1, Ordering::Relaxed);
        s.progress.chunks_reused.fetch_add(1, Ordering::Relaxed);
        return Ok(stored);
    }
    let stored = s
        .repo
        .upload_chunk(id, data, s.opts.compression_level)
        .await?;
    s.chunks_new.fetch_add(1, Ordering::Relaxed);
    s.progress.chunks_new.fetch_add(1, Ordering::Relaxed);
    s.bytes_uploaded.fetch_add(stored, Ordering::Relaxed);
    s.progress
        .bytes_uploaded
        .fetch_add(stored, Ordering::Relaxed);
    Ok(stored)
}

enum ListedKind {
    File,
    Dir,
    Other,
}

struct Listed {
    name: String,
    path: PathBuf,
    kind: ListedKind,
    size: u64,
    meta: FileMeta,
}

/// One directory's entries, sorted by name (names that are not UTF-8 are refused).
async fn list_dir(dir: PathBuf) -> Result<VecDeque<Listed>> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let e = e.map_err(|e| Error::io(&dir, e))?;
            let path = e.path();
            let name = e.file_name().into_string().map_err(|n| {
                Error::InvalidArgument(format!("file name {n:?} in {} is not UTF-8", dir.display()))
            })?;
            let m = std::fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
            let kind = if m.is_dir() {
                ListedKind::Dir
            } else if m.is_file() {
                ListedKind::File
            } else {
                ListedKind::Other
            };
            out.push(Listed {
                name,
                path,
                kind,
                size: m.len(),
                meta: FileMeta::from_metadata(&m),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out.into())
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))?
}
