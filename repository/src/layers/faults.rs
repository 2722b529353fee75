//! Fault-injection layer for tests: fails a configurable share of requests with a transient
//! error, either before the request reaches the store or after it succeeded (a lost reply),
//! so every caller's retry and idempotency path is exercised (after neon's
//! `simulate_failures.rs`). It can also play a store with a limited capacity, answering
//! `503 SlowDown` to requests beyond a byte rate, as S3 does per prefix: what an adaptive
//! sender must back off from.
//!
//! It must never be used outside tests and drills, and never inject a permanent error: a
//! correct caller with retries always gets through.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// How often to fail.
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultConfig {
    /// Share of requests that fail, 0.0–1.0.
    pub failure_rate: f64,
    /// Bytes per second the store takes (0 = no limit): once requests went beyond it (one
    /// second of burst), it answers `503 SlowDown` until the rate is back under it.
    pub capacity: u64,
}

impl FaultConfig {
    pub fn with_rate(failure_rate: f64) -> Self {
        FaultConfig {
            failure_rate,
            capacity: 0,
        }
    }

    /// No random faults; `503 SlowDown` beyond `bytes_per_sec`.
    pub fn with_capacity(bytes_per_sec: u64) -> Self {
        FaultConfig {
            failure_rate: 0.0,
            capacity: bytes_per_sec,
        }
    }
}

/// Capacity accounting: tokens refill at `capacity` bytes/s up to one second's worth; a
/// request is refused while they are in debt, and an accepted one may take them into debt.
#[derive(Debug)]
struct Capacity {
    tokens: f64,
    last: Instant,
}

/// Store wrapper that injects transient failures.
#[derive(Debug)]
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    config: FaultConfig,
    injected: AtomicU64,
    capacity: Mutex<Capacity>,
    /// Keys under this prefix are unreachable (every request fails) until healed.
    partition: Mutex<Option<String>>,
}

#[derive(Debug, thiserror::Error)]
#[error("injected fault: {0}")]
struct InjectedFault(&'static str);

impl FaultStore {
    pub fn new(inner: Arc<dyn ObjectStore>, config: FaultConfig) -> Self {
        FaultStore {
            inner,
            config,
            injected: AtomicU64::new(0),
            capacity: Mutex::new(Capacity {
                tokens: config.capacity as f64,
                last: Instant::now(),
            }),
            partition: Mutex::new(None),
        }
    }

    /// Cuts off every key under `prefix` (a network partition for those requests, e.g. a
    /// paused writer's lease renewals under `locks/`); `None` heals.
    pub fn set_partition(&self, prefix: Option<&str>) {
        *self.partition.lock().expect("partition lock") = prefix.map(str::to_string);
    }

    fn partitioned(&self, location: &Path) -> Result<()> {
        let p = self.partition.lock().expect("partition lock");
        match p.as_deref() {
            Some(prefix) if location.as_ref().starts_with(prefix) => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                Err(object_store::Error::Generic {
                    store: "faults",
                    source: Box::new(HttpError::new(
                        HttpErrorKind::Connect,
                        InjectedFault("partitioned: connection refused"),
                    )),
                })
            }
            _ => Ok(()),
        }
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    fn roll(&self) -> Option<object_store::Error> {
        if rand::random::<f64>() >= self.config.failure_rate {
            return None;
        }
        let n = self.injected.fetch_add(1, Ordering::Relaxed);
        let source: Box<dyn std::error::Error + Send + Sync> = match n % 4 {
            0 => Box::new(HttpError::new(HttpErrorKind::Connect, InjectedFault("connection refused"))),
            1 => Box::new(HttpError::new(HttpErrorKind::Timeout, InjectedFault("request timed out"))),
            2 => Box::new(std::io::Error::new(std::io::ErrorKind::ConnectionReset, InjectedFault("connection reset by peer"))),
            _ => "Server returned non-2xx status code: 503 Service Unavailable: <Code>SlowDown</Code> (injected)".into(),
        };
        Some(object_store::Error::Generic {
            store: "faults",
            source,
        })
    }

    /// `Some(503 SlowDown)` while the capacity is in debt; else takes `bytes` from it.
    fn over_capacity(&self, bytes: u64) -> Option<object_store::Error> {
        let cap = self.config.capacity;
        if cap == 0 {
            return None;
        }
        let mut c = self.capacity.lock().expect("capacity lock");
        let now = Instant::now();
        c.tokens =
            (c.tokens + now.duration_since(c.last).as_secs_f64() * cap as f64).min(cap as f64);
        c.last = now;
        if c.tokens < 0.0 {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Some(object_store::Error::Generic {
                store: "faults",
                source: "Server returned non-2xx status code: 503 Slow Down: <Code>SlowDown</Code>\
                         <Message>Please reduce your request rate.</Message> (injected: over capacity)"
                    .into(),
            });
        }
        c.tokens -= bytes as f64;
        None
    }

    /// Fails before the call, or runs it and then "loses the reply".
    async fn wrap<T, F: std::future::Future<Output = Result<T>>>(&self, call: F) -> Result<T> {
        self.wrap_sized(0, call, |_| 0).await
    }

    /// Like `wrap`, charging the capacity with `sent` bytes up front and `received(result)`
    /// after.
    async fn wrap_sized<T, F: std::future::Future<Output = Result<T>>>(
        &self,
        sent: u64,
        call: F,
        received: impl FnOnce(&T) -> u64,
    ) -> Result<T> {
        if let Some(e) = self.over_capacity(sent) {
            return Err(e);
        }
        if let Some(e) = self.roll() {
            return Err(e);
        }
        let out = call.await?;
        let got = received(&out);
        if got > 0 && self.config.capacity > 0 {
            let mut c = self.capacity.lock().expect("capacity lock");
            c.tokens -= got as f64;
        }
        if rand::random::<f64>() < self.config.failure_rate / 2.0 {
            if let Some(e) = self.roll() {
                return Err(e);
            }
        }
        Ok(out)
    }
}

impl std::fmt::Display for FaultStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Faults({:.0}%, {} B/s, {})",
            self.config.failure_rate * 100.0,
            self.config.capacity,
            self.inner
        )
    }
}

#[async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.partitioned(location)?;
        let len = payload.content_length() as u64;
        self.wrap_sized(len, self.inner.put_opts(location, payload, opts), |_| 0)
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.wrap(self.inner.put_multipart_opts(location, opts))
            .await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.partitioned(location)?;
        let head = options.head;
        self.wrap_sized(0, self.inner.get_opts(location, options), |g| {
            if head {
                0
            } else {
                g.range.end - g.range.start
            }
        })
        .await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.wrap_sized(0, self.inner.get_ranges(location, ranges), |v| {
            v.iter().map(|b| b.len() as u64).sum()
        })
        .await
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
        self.wrap(self.inner.list_with_delimiter(prefix)).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.wrap(self.inner.copy_opts(from, to, options)).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.wrap(self.inner.rename_opts(from, to, options)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::store_error_is_throttling;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn a_store_with_capacity_slows_down_whoever_sends_too_fast() {
        let store = FaultStore::new(
            Arc::new(InMemory::new()),
            FaultConfig::with_capacity(100_000),
        );
        // One second of burst, then debt: the next request is refused at once.
        store
            .put(&Path::from("a"), PutPayload::from(vec![0u8; 150_000]))
            .await
            .unwrap();
        let e = store
            .put(&Path::from("b"), PutPayload::from(vec![0u8; 10]))
            .await
            .unwrap_err();
        assert!(store_error_is_throttling(&e), "{e}");
        assert_eq!(store.injected(), 1);
        // Reads count too, and the capacity comes back with time (poll, with a deadline).
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match store.get(&Path::from("a")).await {
                Ok(_) => break,
                Err(e) => assert!(store_error_is_throttling(&e), "{e}"),
            }
            assert!(Instant::now() < deadline, "capacity never came back");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(
            store.get(&Path::from("a")).await.is_err(),
            "the read took 150 kB"
        );
    }
}
