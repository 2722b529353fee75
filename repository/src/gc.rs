//! Garbage collection: mark every chunk referenced by a committed backup, then sweep chunks
//! nobody references, manifest pages of backups that were never committed, pages a ROOT does
//! not name, and expired lease objects.
//!
//! Safety against backups being written is the lease protocol in `lease.rs`: gc holds a gc
//! lease and refuses ([`Error::GcBlocked`]) while any writer lease is live; anything younger
//! than the grace period (by the store's clock) is kept whatever the leases say. gc stops
//! before deleting anything if a committed backup cannot be read (its chunks would look
//! unreferenced), and stops sweeping if its own lease lapses.
//!
//! Memory: the set of live chunk ids is held in memory — 32 bytes per distinct chunk plus
//! hash-set overhead, about 50 bytes each: ~50 MiB per million chunks (a 1 TiB repository of
//! 1 MiB chunks). Manifests are streamed one page at a time and the chunk listing is streamed,
//! so nothing else grows with the repository.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::ids::{BackupId, ChunkId};
use crate::lease::{list_leases, Lease, LeaseKind};
use crate::manifest::{page_key, root_key, ManifestReader};
use crate::repo::Repository;

/// How gc runs.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Report what would be deleted, delete nothing.
    pub dry_run: bool,
    /// Objects modified less than this long ago (store clock) are never deleted.
    pub grace: Duration,
    /// Deletes in flight.
    pub concurrency: usize,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            grace: Duration::from_secs(3600),
            concurrency: 16,
        }
    }
}

/// What gc found and did (with `dry_run`, what it would delete).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub grace_secs: u64,
    pub backups: u64,
    pub live_chunks: u64,
    pub chunks_seen: u64,
    pub chunks_deleted: u64,
    pub bytes_deleted: u64,
    /// Unreferenced but younger than the grace period.
    pub chunks_kept_young: u64,
    /// Pages of uncommitted backups and pages no ROOT names.
    pub pages_deleted: u64,
    pub leases_deleted: u64,
    pub duration_ms: u64,
}

/// Mark and sweep (see the module doc).
pub async fn gc(repo: &Arc<Repository>, opts: &GcOptions) -> Result<GcReport> {
    let started = Instant::now();
    let lease = Lease::acquire(repo, LeaseKind::Gc, "gc").await?;
    let result = run(repo, opts, &lease).await;
    if let Err(e) = lease.release().await {
        tracing::warn!(error = %e, "could not release the gc lease; it will expire");
    }
    let mut report = result?;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

async fn run(repo: &Arc<Repository>, opts: &GcOptions, lease: &Lease) -> Result<GcReport> {
    let writers = lease.others(LeaseKind::Writer).await?;
    if !writers.is_empty() {
        let now = lease.store_time();
        return Err(Error::GcBlocked {
            count: writers.len(),
            leases: writers
                .iter()
                .map(|l| l.describe(now))
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    let grace = chrono::Duration::from_std(opts.grace)
        .map_err(|_| Error::InvalidArgument(format!("grace period {:?}", opts.grace)))?;
    let mut report = GcReport {
        dry_run: opts.dry_run,
        grace_secs: opts.grace.as_secs(),
        ..Default::default()
    };

    // Mark.
    let committed = repo.list_backups().await?;
    report.backups = committed.len() as u64;
    let mut live: HashSet<ChunkId> = HashSet::new();
    let mut named_pages: HashSet<String> = HashSet::new();
    for id in &committed {
        let mark_failed = |key: String, e: Error| Error::GcMarkFailed {
            backup: id.to_string(),
            key,
            detail: e.to_string(),
        };
        let root = repo
            .read_root(id)
            .await
            .map_err(|e| mark_failed(root_key(id), e))?;
        named_pages.extend(root.pages.iter().map(|p| page_key(id, &p.name)));
        let mut reader = ManifestReader::new(repo.clone(), &root);
        loop {
            match reader.next_entry().await {
                Ok(Some(entry)) => live.extend(entry.chunks.iter().map(|c| c.id)),
                Ok(None) => break,
                Err(e) => return Err(mark_failed(format!("backups/{id}/manifest"), e)),
            }
        }
    }
    report.live_chunks = live.len() as u64;

    // Sweep: everything is judged against the store's clock as of the gc lease.
    let cutoff = lease.store_time() - grace;
    let mut doomed: Vec<(String, u64)> = Vec::new();
    let mut listing = repo.store().list(Some(&Path::from("chunks")));
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| Error::store("list", "chunks/", e))?;
        report.chunks_seen += 1;
        let name = meta.location.filename().unwrap_or_default();
        let Ok(id) = name.parse::<ChunkId>() else {
            tracing::warn!(key = %meta.location, "leaving an object gc does not recognise");
            continue;
        };
        if live.contains(&id) {
            continue;
        }
        if meta.last_modified > cutoff {
            report.chunks_kept_young += 1;
            continue;
        }
        report.chunks_deleted += 1;
        report.bytes_deleted += meta.size;
        doomed.push((meta.location.to_string(), meta.size));
        if doomed.len() >= 1000 {
            sweep(repo, opts, lease, std::mem::take(&mut doomed)).await?;
        }
    }
    sweep(repo, opts, lease, doomed).await?;

    // Pages: of backups that have no ROOT, and of committed backups that ROOT does not name.
    let committed: HashSet<BackupId> = committed.into_iter().collect();
    let dirs = repo
        .store()
        .list_with_delimiter(Some(&Path::from("backups")))
        .await
        .map_err(|e| Error::store("list", "backups/", e))?;
    for dir in dirs.common_prefixes {
        let metas: Vec<object_store::ObjectMeta> = repo
            .store()
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| Error::store("list", &dir, e))?;
        let is_committed = dir
            .filename()
            .and_then(|n| BackupId::new(n).ok())
            .is_some_and(|id| committed.contains(&id));
        let stale: Vec<(String, u64)> = if is_committed {
            metas
                .iter()
                .filter(|m| m.location.filename() != Some("ROOT"))
                .filter(|m| !named_pages.contains(m.location.as_ref()))
                .filter(|m| m.last_modified <= cutoff)
                .map(|m| (m.location.to_string(), m.size))
                .collect()
        } else if metas.iter().all(|m| m.last_modified <= cutoff) {
            metas
                .iter()
                .map(|m| (m.location.to_string(), m.size))
                .collect()
        } else {
            vec![] // an uncommitted backup still within its grace period
        };
        report.pages_deleted += stale.len() as u64;
        sweep(repo, opts, lease, stale).await?;
    }

    // Lease objects that expired.
    let now = lease.store_time();
    let expired: Vec<(String, u64)> = list_leases(repo)
        .await?
        .into_iter()
        .filter(|l| !l.is_live(now) && l.key != lease.key())
        .map(|l| (l.key, 0))
        .collect();
    report.leases_deleted = expired.len() as u64;
    sweep(repo, opts, lease, expired).await?;
    tracing::info!(?report, "gc done");
    Ok(report)
}

async fn sweep(
    repo: &Repository,
    opts: &GcOptions,
    lease: &Lease,
    keys: Vec<(String, u64)>,
) -> Result<()> {
    if opts.dry_run || keys.is_empty() {
        return Ok(());
    }
    lease.check()?;
    futures::stream::iter(keys)
        .map(|(k, _)| async move { repo.delete_object(&k).await })
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}
