//! Bandwidth layer: a token bucket in bytes per second over uploads and downloads, whose rate
//! can be changed while running (an `Arc<AtomicU64>` shared with whoever sets the budget).
//!
//! It must never reorder, split or alter requests; it only delays them. A rate of 0 means
//! unlimited. Large requests go into debt and later callers wait it off, so no request can
//! starve and the long-run rate stays at the budget.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// Shared, runtime-changeable rate in bytes per second (0 = unlimited).
pub type Rate = Arc<AtomicU64>;

#[derive(Debug)]
struct Bucket {
    /// May go negative (debt).
    tokens: f64,
    last: Instant,
}

/// Token bucket with one second of burst.
#[derive(Debug)]
pub struct TokenBucket {
    rate: Rate,
    state: Mutex<Bucket>,
}

impl TokenBucket {
    pub fn new(rate: Rate) -> Self {
        TokenBucket {
            rate,
            state: Mutex::new(Bucket {
                tokens: 0.0,
                last: Instant::now(),
            }),
        }
    }

    /// How long a caller taking `n` bytes now must wait.
    pub fn reserve(&self, n: u64) -> Duration {
        let rate = self.rate.load(Ordering::Relaxed);
        let mut s = self.state.lock().expect("bucket lock");
        let now = Instant::now();
        if rate == 0 {
            s.tokens = 0.0;
            s.last = now;
            return Duration::ZERO;
        }
        let rate = rate as f64;
        let elapsed = now.duration_since(s.last).as_secs_f64();
        s.tokens = (s.tokens + elapsed * rate).min(rate);
        s.last = now;
        s.tokens -= n as f64;
        if s.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.tokens / rate)
        }
    }

    pub async fn acquire(&self, n: u64) {
        let wait = self.reserve(n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Store wrapper that paces request bodies to a byte rate.
#[derive(Debug)]
pub struct RateLimitStore {
    inner: Arc<dyn ObjectStore>,
    bucket: TokenBucket,
}

impl RateLimitStore {
    /// `rate` is bytes/s, 0 = unlimited; store a new value in it at any time.
    pub fn new(inner: Arc<dyn ObjectStore>, rate: Rate) -> Self {
        RateLimitStore {
            inner,
            bucket: TokenBucket::new(rate),
        }
    }
}

impl std::fmt::Display for RateLimitStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RateLimit({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for RateLimitStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.bucket.acquire(payload.content_length() as u64).await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let head = options.head;
        let result = self.inner.get_opts(location, options).await?;
        if !head {
            self.bucket
                .acquire(result.range.end - result.range.start)
                .await;
        }
        Ok(result)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.bucket
            .acquire(ranges.iter().map(|r| r.end - r.start).sum())
            .await;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    #[test]
    fn bucket_accounts_debt_and_rate_changes() {
        let rate = Arc::new(AtomicU64::new(1000));
        let b = TokenBucket::new(rate.clone());
        // Empty bucket: 500 bytes at 1000 B/s is half a second of debt.
        let w = b.reserve(500);
        assert!(
            w > Duration::from_millis(400) && w <= Duration::from_millis(500),
            "{w:?}"
        );
        let w2 = b.reserve(500);
        assert!(w2 > Duration::from_millis(900), "{w2:?}");
        rate.store(0, Ordering::Relaxed);
        assert_eq!(b.reserve(1 << 30), Duration::ZERO);
    }

    #[tokio::test]
    async fn uploads_are_paced_and_the_rate_changes_live() {
        let rate = Arc::new(AtomicU64::new(1_000_000));
        let store = RateLimitStore::new(Arc::new(InMemory::new()), rate.clone());
        let start = Instant::now();
        for i in 0..5 {
            store
                .put(
                    &Path::from(format!("o{i}")),
                    PutPayload::from(vec![0u8; 100_000]),
                )
                .await
                .unwrap();
        }
        // 500 kB at 1 MB/s from an empty bucket: at least ~0.5 s.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(450), "{took:?}");
        rate.store(0, Ordering::Relaxed);
        let start = Instant::now();
        store
            .put(&Path::from("big"), PutPayload::from(vec![0u8; 10_000_000]))
            .await
            .unwrap();
        assert!(
            start.elapsed() < Duration::from_millis(400),
            "unlimited after the change"
        );
    }
}
