//! `repo copy`: copies committed backups to a second repository (offsite), keeping backup
//! ids, creation times and `meta`.
//!
//! Chunk ids are keyed hashes and chunks are encrypted under each repository's own master
//! key, so nothing can be moved as is between repositories with different keys. Instead every
//! file is streamed out of the source (each chunk verified) and through a [`BackupWriter`] on
//! the target, which re-chunks, dedups against what the target already holds (only missing
//! chunks are sent) and encrypts under the target's keys. Copying is resumable: a backup whose
//! ROOT already exists in the target is skipped, and the chunks an interrupted run uploaded are
//! found again by dedup.
//!
//! Memory is bounded like a restore plus a backup: one manifest page, a few packs, and a few
//! chunks in flight per file. This module must never commit a target backup whose every file
//! was not read back completely and verified from the source.

use std::io::Read;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::format::FORMAT_VERSION;
use crate::ids::BackupId;
use crate::manifest::{root_key, EntryKind, ManifestReader, Root};
use crate::reader::{fetch, PackCache};
use crate::repo::Repository;
use crate::writer::{BackupWriter, FileMeta, Progress, WriteStats, WriterOptions};

/// Files up to this size are read whole before being handed to the writer.
const INLINE_MAX: u64 = 1 << 20;
/// Source chunks fetched ahead per streamed file.
const READ_AHEAD: usize = 4;

/// What to copy and how.
#[derive(Clone, Debug, Default)]
pub struct CopyOptions {
    /// Only these backups (default: every committed backup of the source).
    pub backups: Option<Vec<BackupId>>,
    /// Options of the target writer (compression level, concurrency).
    pub writer: WriterOptions,
}

/// One copied backup.
#[derive(Clone, Debug, Serialize)]
pub struct CopiedBackup {
    pub backup: BackupId,
    pub stats: WriteStats,
}

/// What `copy_backups` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CopyReport {
    pub copied: Vec<CopiedBackup>,
    /// Already in the target (committed there): left alone.
    pub skipped: Vec<BackupId>,
}

/// Copies the selected committed backups from `src` to `dst` in id order. `on_start` is told
/// of each backup being copied with the live counters of its target writer.
pub async fn copy_backups(
    src: &Arc<Repository>,
    dst: &Arc<Repository>,
    opts: &CopyOptions,
    mut on_start: impl FnMut(&BackupId, Arc<Progress>),
) -> Result<CopyReport> {
    let ids = match &opts.backups {
        Some(ids) => ids.clone(),
        None => src.list_backups().await?,
    };
    let mut report = CopyReport::default();
    for id in ids {
        match copy_backup(src, dst, &id, &opts.writer, &mut on_start).await? {
            Some(stats) => report.copied.push(CopiedBackup { backup: id, stats }),
            None => report.skipped.push(id),
        }
    }
    Ok(report)
}

/// Copies one backup; `Ok(None)` when the target already has it.
pub async fn copy_backup(
    src: &Arc<Repository>,
    dst: &Arc<Repository>,
    id: &BackupId,
    writer_opts: &WriterOptions,
    on_start: &mut impl FnMut(&BackupId, Arc<Progress>),
) -> Result<Option<WriteStats>> {
    let root = src.read_root(id).await?;
    if dst.head_size(&root_key(id)).await?.is_some() {
        return Ok(None);
    }
    let mut wopts = writer_opts.clone();
    // A fixed part name: a rerun after an interruption overwrites the same page names.
    wopts.part = Some("copy".into());
    let w = BackupWriter::with_options(dst.clone(), id.clone(), wopts).await?;
    on_start(id, w.progress());
    let result = copy_entries(src, dst, &root, &w).await;
    if let Err(e) = w.release_lease().await {
        tracing::warn!(error = %e, "could not release the writer lease; it will expire");
    }
    result.map(Some)
}

async fn copy_entries(
    src: &Arc<Repository>,
    dst: &Arc<Repository>,
    root: &Root,
    w: &BackupWriter,
) -> Result<WriteStats> {
    let cache = Arc::new(PackCache::default());
    let mut reader = ManifestReader::new(src.clone(), root);
    while let Some(e) = reader.next_entry().await? {
        let meta = FileMeta {
            mode: e.mode,
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
        };
        if e.kind == EntryKind::Dir {
            w.put_dir_entry(&e.path, meta).await?;
            continue;
        }
        let total: u64 = e.chunks.iter().map(|r| r.len).sum();
        if total != e.size {
            return Err(Error::corrupt(
                format!("manifest of {} in backup {}", e.path, root.backup_id),
                format!("chunks hold {total} bytes, entry says {}", e.size),
            ));
        }
        if e.size <= INLINE_MAX {
            let mut buf = Vec::with_capacity(e.size as usize);
            for r in &e.chunks {
                let (data, start, end) = fetch(src, &cache, r).await?;
                buf.extend_from_slice(&data[start..end]);
            }
            w.put_file(&e.path, std::io::Cursor::new(buf), meta).await?;
            continue;
        }
        // Large file: a task fetches and verifies chunks ahead; the writer reads them through
        // a channel on its blocking thread.
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let feeder = {
            let (src, cache, chunks) = (src.clone(), cache.clone(), e.chunks.clone());
            tokio::spawn(async move {
                use futures::StreamExt;
                let mut pieces = futures::stream::iter(chunks)
                    .map(|r| {
                        let (src, cache) = (src.clone(), cache.clone());
                        async move { fetch(&src, &cache, &r).await }
                    })
                    .buffered(READ_AHEAD);
                while let Some(piece) = pieces.next().await {
                    if tx.send(piece?).await.is_err() {
                        break; // the writer failed; its error wins
                    }
                }
                Ok::<(), Error>(())
            })
        };
        let put = w
            .put_file(&e.path, ChannelReader { rx, current: None }, meta)
            .await;
        let fed = feeder.await.map_err(|e| Error::Task(e.to_string()))?;
        fed?; // a source chunk that failed to verify ends the file early: never commit that
        put?;
    }
    let part = w.finish().await?;
    let new_root = Root {
        format_version: FORMAT_VERSION,
        backup_id: root.backup_id.clone(),
        created: root.created,
        meta: root.meta.clone(),
        page_count: part.pages.len() as u64,
        pages: part.pages,
        stats: part.stats.backup.clone(),
    };
    w.check_lease()?;
    new_root.commit(dst).await?;
    Ok(part.stats)
}

type Piece = (Arc<Vec<u8>>, usize, usize);

/// A blocking `Read` over verified chunk slices arriving on a channel.
struct ChannelReader {
    rx: mpsc::Receiver<Piece>,
    current: Option<Piece>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some((data, start, end)) = &mut self.current {
                if *start < *end {
                    let n = buf.len().min(*end - *start);
                    buf[..n].copy_from_slice(&data[*start..*start + n]);
                    *start += n;
                    return Ok(n);
                }
            }
            match self.rx.blocking_recv() {
                Some(piece) => self.current = Some(piece),
                None => return Ok(0),
            }
        }
    }
}
