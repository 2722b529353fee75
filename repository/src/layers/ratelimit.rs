//! Bandwidth layer: a token bucket in bytes per second over uploads and downloads, whose rate
//! can be changed while running (an `Arc<AtomicU64>` shared with whoever sets the budget).
//!
//! It must never reorder, split or alter requests; it only delays them. A rate of 0 means
//! unlimited. Every request also costs [`REQUEST_COST`] bytes of budget, so requests without
//! a body (HEAD, LIST pages, DELETE) are paced too: when the agents lower their rate after
//! a 503 SlowDown, a flood of existence checks slows down with the uploads. Large requests go into debt and later callers wait it off, so no request can
//! starve and the long-run rate stays at the budget.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// Shared, runtime-changeable rate in bytes per second (0 = unlimited).
pub type Rate = Arc<AtomicU64>;

/// What one request costs beyond its body, in bytes of budget (a LIST page of up to 1,000
/// keys counts as one request). At a 1 MiB/s budget that is at most 64 requests a second.
pub const REQUEST_COST: u64 = 16 << 10;

/// Keys per LIST page (S3's maximum, what object_store asks for).
const LIST_PAGE: u64 = 1000;

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
    bucket: Arc<TokenBucket>,
}

impl RateLimitStore {
    /// `rate` is bytes/s, 0 = unlimited; store a new value in it at any time.
    pub fn new(inner: Arc<dyn ObjectStore>, rate: Rate) -> Self {
        RateLimitStore {
            inner,
            bucket: Arc::new(TokenBucket::new(rate)),
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
        self.bucket
            .acquire(REQUEST_COST + payload.content_length() as u64)
            .await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.bucket.acquire(REQUEST_COST).await;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.bucket.acquire(REQUEST_COST).await;
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
            .acquire(REQUEST_COST + ranges.iter().map(|r| r.end - r.start).sum::<u64>())
            .await;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let bucket = self.bucket.clone();
        let paced = locations
            .then(move |l| {
                let bucket = bucket.clone();
                async move {
                    bucket.acquire(REQUEST_COST).await;
                    l
                }
            })
            .boxed();
        self.inner.delete_stream(paced)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        paced_listing(self.bucket.clone(), self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        paced_listing(
            self.bucket.clone(),
            self.inner.list_with_offset(prefix, offset),
        )
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.bucket.acquire(REQUEST_COST).await;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.bucket.acquire(REQUEST_COST).await;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.bucket.acquire(REQUEST_COST).await;
        self.inner.rename_opts(from, to, options).await
    }
}

/// A listing that pays one request's cost per page of keys (the first page up front).
fn paced_listing(
    bucket: Arc<TokenBucket>,
    inner: BoxStream<'static, Result<ObjectMeta>>,
) -> BoxStream<'static, Result<ObjectMeta>> {
    let mut seen = 0u64;
    inner
        .then(move |item| {
            let bucket = bucket.clone();
            let page_start = seen.is_multiple_of(LIST_PAGE);
            seen += 1;
            async move {
                if page_start {
                    bucket.acquire(REQUEST_COST).await;
                }
                item
            }
        })
        .boxed()
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

    #[tokio::test]
    async fn requests_without_a_body_are_paced_too() {
        // 20 HEADs at a budget of 5 requests' cost a second: one second of burst, then
        // about three more seconds.
        let rate = Arc::new(AtomicU64::new(5 * REQUEST_COST));
        let store = RateLimitStore::new(Arc::new(InMemory::new()), rate.clone());
        store
            .put(&Path::from("o"), PutPayload::from(vec![0u8; 10]))
            .await
            .unwrap();
        let start = Instant::now();
        for _ in 0..20 {
            store.head(&Path::from("o")).await.unwrap();
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(2500), "{took:?}");
    }
}
