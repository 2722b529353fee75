//! Leases under `locks/`: what keeps garbage collection safe against backups being written.
//!
//! # The protocol
//!
//! A chunk is live when a committed ROOT references it. A backup being written references
//! chunks that no ROOT names yet: the ones it uploads, and — the subtle case — *old* chunks
//! it finds already stored and reuses (dedup), which may be garbage from a forgotten backup.
//! "Keep chunks newer than the oldest writer" would protect the first kind but not the
//! second, so gc and writers exclude each other instead:
//!
//! 1. Every writer ([`crate::BackupWriter`]) holds a **writer lease** `locks/writer-<id>.json`
//!    from before its first existence check until its backup is committed (or it is dropped),
//!    rewriting it every TTL/3. A lease is live while `last_modified + ttl` (both by the
//!    *store's* clock, so client clocks do not matter) is in the future.
//! 2. gc first writes its own **gc lease** `locks/gc-<id>.json` (renewed the same way), then
//!    lists the leases: if any writer lease is live it deletes nothing and fails with
//!    [`Error::GcBlocked`] naming them.
//! 3. A writer, right after writing its lease, lists the leases: while a gc lease is live it
//!    waits (polling) before touching any chunk.
//!
//! Both sides write their own lease *before* listing the other's, so with a store whose
//! listings are strongly consistent (S3, GCS, Azure, local disks) at least one of them sees
//! the other: a gc that saw no writer lease runs alone until its lease is gone.
//!
//! 4. **Fencing**: a holder whose renewals have not succeeded for most of a TTL (a paused
//!    process, a network partition) must assume others consider its lease expired. A writer
//!    then refuses to commit or finish a part ([`Error::LeaseLost`]); gc stops sweeping.
//! 5. The **grace period** of gc (default 1 h) covers what leases cannot: chunks and pages of
//!    writer parts that finished (and dropped their lease) but whose backup is not committed
//!    yet. A committer that outlives its writers (the coordinator) should hold a writer lease
//!    of its own from the first task until `commit_backup` ([`Lease::acquire`]).
//!
//! 6. **Lapses are remembered.** A lease that once went unrenewed past the margin stays
//!    lost ([`Lease::check`]) even when renewals succeed again: a gc may have run during the
//!    gap. Committing is refused, and the process's dedup cache is dropped.
//! 7. **The dedup cache lives inside a lease.** A [`Repository`] remembers which chunks
//!    exist only while this process holds a writer lease continuously (counted from the
//!    first writer lease to the last): between leases a gc may delete anything, so the
//!    cache is emptied when the first writer lease of a new period is acquired, and not
//!    consulted while none is held.
//!
//! Lease objects are plain JSON (kind, holder host and pid, purpose, TTL): they must never
//! contain anything secret. Expired leases are removed by gc.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repo::Repository;

/// Prefix of every lease object.
pub const LOCKS_PREFIX: &str = "locks";
/// Default lease time-to-live; leases are renewed every third of it.
pub const DEFAULT_TTL: Duration = Duration::from_secs(120);
/// How often a waiting writer looks again for a running gc.
const GC_POLL: Duration = Duration::from_secs(1);

/// Who holds a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseKind {
    /// A backup writer (or a committer); blocks gc.
    Writer,
    /// A garbage collection; writers wait for it.
    Gc,
}

impl LeaseKind {
    fn prefix(self) -> &'static str {
        match self {
            LeaseKind::Writer => "writer",
            LeaseKind::Gc => "gc",
        }
    }
}

/// The content of a lease object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub kind: LeaseKind,
    /// `host:pid` of the holder.
    pub holder: String,
    /// What the holder does, e.g. `backup b-2026…`.
    pub purpose: String,
    pub ttl_secs: u64,
    /// The holder's clock when acquired (informational only).
    pub created: DateTime<Utc>,
}

/// A lease as found in the store.
#[derive(Clone, Debug, Serialize)]
pub struct FoundLease {
    pub key: String,
    pub info: LeaseInfo,
    /// Last renewal, by the store's clock.
    pub renewed: DateTime<Utc>,
}

impl FoundLease {
    /// Whether the lease is still live at `now` (store clock).
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.renewed + chrono::Duration::seconds(self.info.ttl_secs as i64) > now
    }

    /// `writer host:pid (backup b-1, renewed 3 s ago)`.
    pub fn describe(&self, now: DateTime<Utc>) -> String {
        format!(
            "{} by {} ({}, renewed {} s ago, TTL {} s)",
            self.key,
            self.info.holder,
            self.info.purpose,
            (now - self.renewed).num_seconds().max(0),
            self.info.ttl_secs
        )
    }
}

/// Every lease object in the repository (unreadable ones are skipped with a warning).
pub async fn list_leases(repo: &Repository) -> Result<Vec<FoundLease>> {
    let metas: Vec<object_store::ObjectMeta> = repo
        .store()
        .list(Some(&object_store::path::Path::from(LOCKS_PREFIX)))
        .try_collect()
        .await
        .map_err(|e| Error::store("list", "locks/", e))?;
    let mut out = Vec::new();
    for m in metas {
        let key = m.location.to_string();
        let bytes = match repo.get_bytes(&key, crate::repo::limits::LEASE).await {
            Ok(b) => b,
            Err(Error::MissingObject { .. }) => continue, // released meanwhile
            Err(e) => return Err(e),
        };
        match serde_json::from_slice::<LeaseInfo>(&bytes) {
            Ok(info) => out.push(FoundLease {
                key,
                info,
                renewed: m.last_modified,
            }),
            Err(e) => tracing::warn!(%key, error = %e, "ignoring unreadable lease object"),
        }
    }
    Ok(out)
}

struct Health {
    /// When the last successful write of the lease was *issued* (local monotonic clock).
    last_ok: Instant,
    /// Store-clock time of that write.
    store_time: DateTime<Utc>,
    /// The longest time without a successful renewal seen so far, once it exceeded the
    /// fencing margin: remembered for the life of the lease, because a gc may have run while
    /// it lasted even if renewals succeed again afterwards.
    lapsed: Option<Duration>,
}

impl Health {
    /// Remembers `gap` without a successful renewal if it is longer than `margin`.
    fn note_gap(&mut self, gap: Duration, margin: Duration) {
        if gap > margin {
            self.lapsed = Some(self.lapsed.map_or(gap, |l| l.max(gap)));
        }
    }

    /// Records a successful write issued at `issued`; a gap since the previous one longer
    /// than `margin` is a lapse, remembered.
    fn renewed(&mut self, issued: Instant, store_time: DateTime<Utc>, margin: Duration) {
        self.note_gap(issued.saturating_duration_since(self.last_ok), margin);
        self.last_ok = issued;
        self.store_time = store_time;
    }
}

/// A held lease: renewed in the background until released or dropped.
pub struct Lease {
    repo: Arc<Repository>,
    key: String,
    ttl: Duration,
    health: Arc<Mutex<Health>>,
    renewer: Option<tokio::task::JoinHandle<()>>,
    /// A writer lease counted in the repository's dedup-cache scope.
    writer: bool,
}

/// How long without a successful renewal before others may think the lease expired: two
/// thirds of the TTL (one renewal period of margin).
fn fence_margin(ttl: Duration) -> Duration {
    ttl * 2 / 3
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("key", &self.key).finish()
    }
}

fn holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host}:{}", std::process::id())
}

/// Writes the lease object and returns its store-clock modification time.
async fn write_lease(repo: &Repository, key: &str, body: &[u8]) -> Result<DateTime<Utc>> {
    repo.put_bytes(key, body.to_vec()).await?;
    let meta = repo
        .head_meta(key)
        .await?
        .ok_or_else(|| Error::MissingObject {
            key: key.to_string(),
        })?;
    Ok(meta.last_modified)
}

impl Lease {
    /// Acquires a lease with the default TTL. A writer lease waits while a gc runs.
    pub async fn acquire(repo: &Arc<Repository>, kind: LeaseKind, purpose: &str) -> Result<Lease> {
        Self::acquire_with_ttl(repo, kind, purpose, DEFAULT_TTL).await
    }

    pub async fn acquire_with_ttl(
        repo: &Arc<Repository>,
        kind: LeaseKind,
        purpose: &str,
        ttl: Duration,
    ) -> Result<Lease> {
        if ttl < Duration::from_secs(3) {
            return Err(Error::InvalidArgument(format!(
                "lease TTL {ttl:?} is too short (at least 3 s)"
            )));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let key = format!("{LOCKS_PREFIX}/{}-{id}.json", kind.prefix());
        let info = LeaseInfo {
            kind,
            holder: holder(),
            purpose: purpose.to_string(),
            ttl_secs: ttl.as_secs(),
            created: Utc::now(),
        };
        let body = serde_json::to_vec_pretty(&info).expect("lease serializes");
        let issued = Instant::now();
        let store_time = write_lease(repo, &key, &body).await?;
        let health = Arc::new(Mutex::new(Health {
            last_ok: issued,
            store_time,
            lapsed: None,
        }));
        let renewer = {
            let (repo, key, health) = (repo.clone(), key.clone(), health.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    let issued = Instant::now();
                    match write_lease(&repo, &key, &body).await {
                        Ok(t) => {
                            let mut h = health.lock().expect("lease health");
                            h.renewed(issued, t, fence_margin(ttl));
                            if h.lapsed.is_some() && kind == LeaseKind::Writer {
                                // What this process remembers of the store may be stale.
                                repo.forget_known_chunks();
                            }
                        }
                        Err(e) => tracing::warn!(%key, error = %e, "lease renewal failed"),
                    }
                }
            })
        };
        let mut lease = Lease {
            repo: repo.clone(),
            key,
            ttl,
            health,
            renewer: Some(renewer),
            writer: false,
        };
        if kind == LeaseKind::Writer {
            lease.wait_for_gc().await?;
            // From here until the last writer lease of this process goes, no gc can run
            // unnoticed: the dedup cache may be trusted, and only then.
            repo.writer_lease_acquired();
            lease.writer = true;
        }
        tracing::debug!(key = %lease.key, "lease acquired");
        Ok(lease)
    }

    /// Object key of this lease.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Store-clock time of the last successful renewal: "now" for comparisons with other
    /// objects' modification times.
    pub fn store_time(&self) -> DateTime<Utc> {
        self.health.lock().expect("lease health").store_time
    }

    /// Fails with [`Error::LeaseLost`] when the lease may have expired in others' eyes at
    /// any time since it was acquired: no successful renewal for two thirds of the TTL (one
    /// renewal period of margin), now or in a lapse that renewals have since ended.
    pub fn check(&self) -> Result<()> {
        let mut h = self.health.lock().expect("lease health");
        let since = h.last_ok.elapsed();
        h.note_gap(since, fence_margin(self.ttl));
        if let Some(gap) = h.lapsed {
            return Err(Error::LeaseLost {
                key: self.key.clone(),
                secs: gap.as_secs(),
                ttl: self.ttl.as_secs(),
            });
        }
        Ok(())
    }

    /// Live leases of `kind` other than this one, as of this lease's last renewal.
    pub async fn others(&self, kind: LeaseKind) -> Result<Vec<FoundLease>> {
        let now = self.store_time();
        Ok(list_leases(&self.repo)
            .await?
            .into_iter()
            .filter(|l| l.key != self.key && l.info.kind == kind && l.is_live(now))
            .collect())
    }

    async fn wait_for_gc(&self) -> Result<()> {
        let mut logged = false;
        loop {
            let gcs = self.others(LeaseKind::Gc).await?;
            if gcs.is_empty() {
                return Ok(());
            }
            if !logged {
                let now = self.store_time();
                tracing::info!(gc = %gcs[0].describe(now), "waiting for a running gc to finish");
                logged = true;
            }
            tokio::time::sleep(GC_POLL).await;
        }
    }

    /// Stops renewing and deletes the lease object.
    pub async fn release(mut self) -> Result<()> {
        if let Some(r) = self.renewer.take() {
            r.abort();
            let _ = r.await;
        }
        if std::mem::take(&mut self.writer) {
            self.repo.writer_lease_released();
        }
        let key = std::mem::take(&mut self.key);
        self.repo.delete_object(&key).await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        if std::mem::take(&mut self.writer) {
            self.repo.writer_lease_released();
        }
        if self.key.is_empty() {
            return; // released
        }
        // Best effort: an unreleased lease simply expires after its TTL.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (repo, key) = (self.repo.clone(), std::mem::take(&mut self.key));
            rt.spawn(async move {
                let _ = repo.delete_object(&key).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InitOptions, KdfParams};
    use object_store::memory::InMemory;

    async fn repo() -> Arc<Repository> {
        let opts = InitOptions {
            kdf: KdfParams::minimum(),
            ..Default::default()
        };
        Arc::new(
            Repository::init(Arc::new(InMemory::new()), b"pw", opts)
                .await
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn leases_are_listed_live_and_released() {
        let repo = repo().await;
        let w = Lease::acquire(&repo, LeaseKind::Writer, "backup b-1")
            .await
            .unwrap();
        w.check().unwrap();
        let found = list_leases(&repo).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].info.purpose, "backup b-1");
        assert!(found[0].is_live(w.store_time()));
        assert!(!found[0].is_live(w.store_time() + chrono::Duration::seconds(121)));
        let gc = Lease::acquire(&repo, LeaseKind::Gc, "gc").await.unwrap();
        assert_eq!(gc.others(LeaseKind::Writer).await.unwrap().len(), 1);
        w.release().await.unwrap();
        assert!(gc.others(LeaseKind::Writer).await.unwrap().is_empty());
        drop(gc);
    }

    #[tokio::test]
    async fn a_writer_waits_for_a_running_gc() {
        let repo = repo().await;
        let gc = Lease::acquire(&repo, LeaseKind::Gc, "gc").await.unwrap();
        let r2 = repo.clone();
        let writer =
            tokio::spawn(async move { Lease::acquire(&r2, LeaseKind::Writer, "backup b-2").await });
        // The writer has written its lease and is now waiting: gc sees it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while gc.others(LeaseKind::Writer).await.unwrap().is_empty() {
            assert!(Instant::now() < deadline, "writer lease never appeared");
            tokio::task::yield_now().await;
        }
        assert!(
            !writer.is_finished(),
            "writer must wait while gc holds its lease"
        );
        gc.release().await.unwrap();
        let w = tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("writer proceeds once gc is gone")
            .unwrap()
            .unwrap();
        w.release().await.unwrap();
        assert!(list_leases(&repo).await.unwrap().is_empty());
    }
}
