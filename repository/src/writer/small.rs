//! `put_dir`'s small files: packed together (many files, one chunk stream), read in
//! batches on blocking threads ahead of the packing, and matched against the parent
//! backup's entries so unchanged files are recorded without being read.

use std::io::Read;
use std::path::PathBuf;

use futures::stream::FuturesOrdered;

use super::FileMeta;
use crate::error::{Error, Result};
use crate::manifest::{ChunkRef, Entry, EntryKind, ManifestReader};

/// Files waiting in one pack at most (reused files add entries but no bytes).
pub(super) const MAX_PENDING_FILES: usize = 10_000;

pub(super) struct PendingSmall {
    pub(super) path: String,
    pub(super) meta: FileMeta,
    pub(super) offset: u64,
    pub(super) len: u64,
    /// Unchanged since the parent backup: its chunk references; nothing of it is in the pack.
    pub(super) reused: Option<Vec<ChunkRef>>,
}

/// Walks the parent backup's small-file entries alongside `put_dir`. Both are in walk order
/// (depth first, names sorted: component-wise lexicographic), so one forward cursor finds
/// every unchanged file with one manifest page in memory. Entries out of that order (large
/// files, which finish concurrently; other writers' parts) are only missed, never mismatched.
pub(super) struct ParentCursor {
    pub(super) reader: ManifestReader,
    pub(super) peeked: Option<Entry>,
    pub(super) threshold: u64,
}

impl ParentCursor {
    pub(super) async fn find(&mut self, path: &str) -> Result<Option<Entry>> {
        loop {
            let Some(e) = &self.peeked else {
                match self.reader.next_entry().await? {
                    None => return Ok(None),
                    Some(e) => {
                        if e.kind == EntryKind::File
                            && e.size > 0
                            && e.size < self.threshold
                            && !e.chunks.is_empty()
                        {
                            self.peeked = Some(e);
                        }
                        continue;
                    }
                }
            };
            match e.path.split('/').cmp(path.split('/')) {
                std::cmp::Ordering::Less => self.peeked = None,
                std::cmp::Ordering::Equal => return Ok(self.peeked.take()),
                std::cmp::Ordering::Greater => return Ok(None),
            }
        }
    }
}

/// Small files listed but not yet read, one batch at a time.
pub(super) const SMALL_BATCH_FILES: usize = 256;
pub(super) const SMALL_BATCH_BYTES: u64 = 4 << 20;
/// Batches read ahead of the one being packed (bounds memory: ~4 × 4 MiB).
pub(super) const SMALL_BATCHES_AHEAD: usize = 3;

pub(super) struct SmallJob {
    pub(super) rel: String,
    pub(super) path: PathBuf,
    pub(super) size: u64,
    pub(super) meta: FileMeta,
    /// Unchanged since the parent backup: its chunk references (not read unless they are gone).
    pub(super) reuse: Option<Vec<ChunkRef>>,
}

pub(super) enum SmallRead {
    Reuse {
        job: SmallJob,
        chunks: Vec<ChunkRef>,
    },
    Data {
        rel: String,
        meta: FileMeta,
        data: Vec<u8>,
    },
    Grew {
        rel: String,
        path: PathBuf,
    },
}

/// `put_dir`'s small files: read in batches on blocking threads, a few batches ahead of the
/// packing, and recorded in walk order. One file at a time cost two thread hand-offs per
/// file, which made a tree of 16 KiB files ten times slower per byte than large files.
#[derive(Default)]
pub(super) struct SmallFiles {
    pub(super) batch: Vec<SmallJob>,
    pub(super) batch_bytes: u64,
    pub(super) reading: FuturesOrdered<tokio::task::JoinHandle<Result<Vec<SmallRead>>>>,
}

impl SmallFiles {
    pub(super) fn push(&mut self, job: SmallJob) {
        if job.reuse.is_none() {
            self.batch_bytes += job.size;
        }
        self.batch.push(job);
    }

    pub(super) fn batch_full(&self) -> bool {
        self.batch.len() >= SMALL_BATCH_FILES || self.batch_bytes >= SMALL_BATCH_BYTES
    }

    /// Starts reading the current batch (files at or above `threshold` by now come back as
    /// `Grew`).
    pub(super) fn launch(&mut self, threshold: u64) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.reading.push_back(tokio::task::spawn_blocking(move || {
            batch
                .into_iter()
                .map(|job| read_small(job, threshold))
                .collect()
        }));
    }
}

pub(super) fn read_small(mut job: SmallJob, threshold: u64) -> Result<SmallRead> {
    if let Some(chunks) = job.reuse.take() {
        return Ok(SmallRead::Reuse { job, chunks });
    }
    let path = &job.path;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = FileMeta::from_metadata(&f.metadata().map_err(|e| Error::io(path, e))?);
    let mut data = Vec::with_capacity(job.size as usize + 1);
    f.take(threshold)
        .read_to_end(&mut data)
        .map_err(|e| Error::io(path, e))?;
    if data.len() as u64 >= threshold {
        return Ok(SmallRead::Grew {
            rel: job.rel,
            path: job.path,
        });
    }
    Ok(SmallRead::Data {
        rel: job.rel,
        meta,
        data,
    })
}
