//! Observer layer: tells a [`StoreObserver`] about every attempt that reaches the store —
//! bytes moved by the ones that succeeded, and the ones the store throttled (503 SlowDown,
//! 429, timeouts; see `error::store_error_is_throttling`). Placed inside the retry layer it
//! sees each retried attempt, which is what an adaptive rate (the agent's AIMD) feeds on.
//!
//! It must never change a call or its result, and never block: observers are told
//! synchronously and must return at once.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

use crate::error::store_error_is_throttling;

/// Told about store attempts. Implementations must be quick and must not block.
pub trait StoreObserver: Send + Sync + std::fmt::Debug {
    /// An attempt succeeded, moving `bytes` of object data (0 for metadata calls).
    fn transferred(&self, bytes: u64);
    /// The store throttled an attempt (`op` is "put", "get", …).
    fn throttled(&self, op: &'static str, error: &object_store::Error);
}

/// Store wrapper that reports each attempt's outcome to an observer.
#[derive(Debug)]
pub struct ObserveStore {
    inner: Arc<dyn ObjectStore>,
    observer: Arc<dyn StoreObserver>,
}

impl ObserveStore {
    pub fn new(inner: Arc<dyn ObjectStore>, observer: Arc<dyn StoreObserver>) -> Self {
        ObserveStore { inner, observer }
    }

    fn seen<T>(&self, op: &'static str, r: Result<T>, bytes: impl FnOnce(&T) -> u64) -> Result<T> {
        match &r {
            Ok(v) => self.observer.transferred(bytes(v)),
            Err(e) if store_error_is_throttling(e) => self.observer.throttled(op, e),
            Err(_) => {}
        }
        r
    }
}

impl std::fmt::Display for ObserveStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Observe({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for ObserveStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let len = payload.content_length() as u64;
        let r = self.inner.put_opts(location, payload, opts).await;
        self.seen("put", r, |_| len)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let r = self.inner.put_multipart_opts(location, opts).await;
        self.seen("put_multipart", r, |_| 0)
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let head = options.head;
        let r = self.inner.get_opts(location, options).await;
        self.seen(
            "get",
            r,
            |g| {
                if head {
                    0
                } else {
                    g.range.end - g.range.start
                }
            },
        )
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let r = self.inner.get_ranges(location, ranges).await;
        self.seen("get_ranges", r, |v| v.iter().map(|b| b.len() as u64).sum())
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
        let r = self.inner.list_with_delimiter(prefix).await;
        self.seen("list", r, |_| 0)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let r = self.inner.copy_opts(from, to, options).await;
        self.seen("copy", r, |_| 0)
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let r = self.inner.rename_opts(from, to, options).await;
        self.seen("rename", r, |_| 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{FaultConfig, FaultStore};
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Debug, Default)]
    struct Counts {
        bytes: AtomicU64,
        throttled: AtomicU64,
    }

    impl StoreObserver for Counts {
        fn transferred(&self, bytes: u64) {
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        fn throttled(&self, _op: &'static str, _error: &object_store::Error) {
            self.throttled.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn successes_and_throttling_are_reported() {
        let counts = Arc::new(Counts::default());
        let store = ObserveStore::new(Arc::new(InMemory::new()), counts.clone());
        store
            .put(&Path::from("a"), PutPayload::from(vec![1u8; 1000]))
            .await
            .unwrap();
        store.get(&Path::from("a")).await.unwrap();
        assert_eq!(counts.bytes.load(Ordering::Relaxed), 2000);
        assert!(store.get(&Path::from("missing")).await.is_err());
        assert_eq!(counts.throttled.load(Ordering::Relaxed), 0);

        // Every request fails: half of the injected kinds are throttling (timeout, 503).
        let faults = Arc::new(FaultStore::new(
            Arc::new(InMemory::new()),
            FaultConfig::with_rate(1.0),
        ));
        let counts = Arc::new(Counts::default());
        let store = ObserveStore::new(faults, counts.clone());
        for i in 0..8 {
            let p = Path::from(format!("o{i}"));
            assert!(store.put(&p, PutPayload::from_static(b"x")).await.is_err());
        }
        assert_eq!(counts.throttled.load(Ordering::Relaxed), 4);
        assert_eq!(counts.bytes.load(Ordering::Relaxed), 0);
    }
}
