//! Retry layer: repeats a failed store call with exponential backoff and full jitter when the
//! failure is transient (5xx, 503 SlowDown, 429, timeouts, connection resets), for every
//! backend — object_store's own HTTP retries cover only its HTTP clients and stop at their
//! own budget.
//!
//! It must never retry a permanent failure (not found, denied, precondition, bad request),
//! and never retry without a bound on both attempts and elapsed time.

use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

use crate::error::store_error_is_retryable;

/// Backoff policy.
#[derive(Clone, Debug)]
pub struct RetryConfig {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Backoff ceiling before the first retry; doubles each retry.
    pub initial_backoff: Duration,
    /// Largest single backoff.
    pub max_backoff: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub deadline: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            deadline: Duration::from_secs(300),
        }
    }
}

impl RetryConfig {
    /// The sleep before retry number `retry` (1-based): uniform in `[0, min(max, initial·2^(retry-1))]`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20));
        let ceiling = exp.min(self.max_backoff);
        ceiling.mul_f64(rand::random::<f64>())
    }

    /// Runs `f` until it succeeds, fails permanently, or the budget is spent.
    pub async fn run<T, F, Fut>(&self, what: &str, retries: &AtomicU64, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let start = Instant::now();
        let mut retry = 0u32;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e)
                    if store_error_is_retryable(&e)
                        && retry < self.max_retries
                        && start.elapsed() < self.deadline =>
                {
                    retry += 1;
                    retries.fetch_add(1, Ordering::Relaxed);
                    let sleep = self.backoff(retry);
                    tracing::debug!(%what, retry, ?sleep, error = %e, "retrying store call");
                    tokio::time::sleep(sleep).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Store wrapper that retries transient failures.
#[derive(Debug)]
pub struct RetryStore {
    inner: Arc<dyn ObjectStore>,
    config: RetryConfig,
    retries: Arc<AtomicU64>,
}

impl RetryStore {
    pub fn new(inner: Arc<dyn ObjectStore>, config: RetryConfig) -> Self {
        RetryStore {
            inner,
            config,
            retries: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Total retries made so far (for metrics and tests).
    pub fn retries(&self) -> Arc<AtomicU64> {
        self.retries.clone()
    }
}

/// The state of a listing that resumes after a transient failure.
struct Listing {
    inner: Arc<dyn ObjectStore>,
    config: RetryConfig,
    retries: Arc<AtomicU64>,
    prefix: Option<Path>,
    /// The last key returned (or the caller's offset): a resumed listing starts after it.
    last: Option<Path>,
    current: Option<BoxStream<'static, Result<ObjectMeta>>>,
    /// Retries since the last key that came through, and when that run of failures began.
    retry: u32,
    failing_since: Option<Instant>,
    done: bool,
}

impl RetryStore {
    /// A listing (a stream of pages) that survives a throttled or failed page: it is
    /// resumed after the last key returned, with the same backoff and budget as any other
    /// request (the budget counts failures in a row, so a listing of millions of keys with
    /// an occasional 503 completes, and one that keeps failing stops).
    fn resumable_list(
        &self,
        prefix: Option<&Path>,
        offset: Option<&Path>,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let st = Listing {
            inner: self.inner.clone(),
            config: self.config.clone(),
            retries: self.retries.clone(),
            prefix: prefix.cloned(),
            last: offset.cloned(),
            current: None,
            retry: 0,
            failing_since: None,
            done: false,
        };
        futures::stream::unfold(st, |mut st| async move {
            if st.done {
                return None;
            }
            loop {
                let stream = st.current.get_or_insert_with(|| match &st.last {
                    Some(after) => st.inner.list_with_offset(st.prefix.as_ref(), after),
                    None => st.inner.list(st.prefix.as_ref()),
                });
                match stream.next().await {
                    None => return None,
                    Some(Ok(meta)) => {
                        st.last = Some(meta.location.clone());
                        st.retry = 0;
                        st.failing_since = None;
                        return Some((Ok(meta), st));
                    }
                    Some(Err(e))
                        if store_error_is_retryable(&e)
                            && st.retry < st.config.max_retries
                            && st
                                .failing_since
                                .is_none_or(|t| t.elapsed() < st.config.deadline) =>
                    {
                        st.retry += 1;
                        st.failing_since.get_or_insert_with(Instant::now);
                        st.retries.fetch_add(1, Ordering::Relaxed);
                        let sleep = st.config.backoff(st.retry);
                        tracing::debug!(retry = st.retry, ?sleep, error = %e, "resuming a listing");
                        st.current = None;
                        tokio::time::sleep(sleep).await;
                    }
                    Some(Err(e)) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                }
            }
        })
        .boxed()
    }
}

impl std::fmt::Display for RetryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Retry({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for RetryStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.config
            .run("put", &self.retries, || {
                self.inner.put_opts(location, payload.clone(), opts.clone())
            })
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.config
            .run("put_multipart", &self.retries, || {
                self.inner.put_multipart_opts(location, opts.clone())
            })
            .await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.config
            .run("get", &self.retries, || {
                self.inner.get_opts(location, options.clone())
            })
            .await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.config
            .run("get_ranges", &self.retries, || {
                self.inner.get_ranges(location, ranges)
            })
            .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let inner = self.inner.clone();
        let config = self.config.clone();
        let retries = self.retries.clone();
        locations
            .then(move |location| {
                let (inner, config, retries) = (inner.clone(), config.clone(), retries.clone());
                async move {
                    let location = location?;
                    config
                        .run("delete", &retries, || inner.delete(&location))
                        .await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.resumable_list(prefix, None)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.resumable_list(prefix, Some(offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.config
            .run("list", &self.retries, || {
                self.inner.list_with_delimiter(prefix)
            })
            .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.config
            .run("copy", &self.retries, || {
                self.inner.copy_opts(from, to, options.clone())
            })
            .await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.config
            .run("rename", &self.retries, || {
                self.inner.rename_opts(from, to, options.clone())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{FaultConfig, FaultStore};
    use object_store::memory::InMemory;

    fn quick() -> RetryConfig {
        RetryConfig {
            max_retries: 50,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            deadline: Duration::from_secs(30),
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let c = RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..quick()
        };
        for _ in 0..100 {
            assert!(c.backoff(1) <= Duration::from_millis(100));
            assert!(c.backoff(3) <= Duration::from_millis(400));
            assert!(c.backoff(30) <= Duration::from_secs(1));
        }
    }

    #[tokio::test]
    async fn transient_faults_are_retried_until_success() {
        let faults = Arc::new(FaultStore::new(
            Arc::new(InMemory::new()),
            FaultConfig::with_rate(0.5),
        ));
        let store = RetryStore::new(faults.clone(), quick());
        for i in 0..50 {
            let p = Path::from(format!("o/{i}"));
            store
                .put(&p, PutPayload::from(vec![i as u8; 10]))
                .await
                .unwrap();
            assert_eq!(
                store.get(&p).await.unwrap().bytes().await.unwrap().as_ref(),
                &[i as u8; 10]
            );
        }
        assert!(
            faults.injected() > 10,
            "fault layer injected {}",
            faults.injected()
        );
        assert!(store.retries().load(Ordering::Relaxed) >= faults.injected());
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let store = RetryStore::new(Arc::new(InMemory::new()), quick());
        let err = store.get(&Path::from("missing")).await.unwrap_err();
        assert!(matches!(err, object_store::Error::NotFound { .. }));
        assert_eq!(store.retries().load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn gives_up_after_max_retries() {
        let faults = Arc::new(FaultStore::new(
            Arc::new(InMemory::new()),
            FaultConfig::with_rate(1.0),
        ));
        let store = RetryStore::new(
            faults.clone(),
            RetryConfig {
                max_retries: 3,
                ..quick()
            },
        );
        let err = store
            .put(&Path::from("x"), PutPayload::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(store_error_is_retryable(&err));
        assert_eq!(faults.injected(), 4);
    }
}
