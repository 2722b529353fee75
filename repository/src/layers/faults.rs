//! Fault-injection layer for tests: fails a configurable share of requests with a transient
//! error, either before the request reaches the store or after it succeeded (a lost reply),
//! so every caller's retry and idempotency path is exercised (after neon's
//! `simulate_failures.rs`).
//!
//! It must never be used outside tests and drills, and never inject a permanent error: a
//! correct caller with retries always gets through.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
#[derive(Clone, Copy, Debug)]
pub struct FaultConfig {
    /// Share of requests that fail, 0.0–1.0.
    pub failure_rate: f64,
}

impl FaultConfig {
    pub fn with_rate(failure_rate: f64) -> Self {
        FaultConfig { failure_rate }
    }
}

/// Store wrapper that injects transient failures.
#[derive(Debug)]
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    config: FaultConfig,
    injected: AtomicU64,
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

    /// Fails before the call, or runs it and then "loses the reply".
    async fn wrap<T, F: std::future::Future<Output = Result<T>>>(&self, call: F) -> Result<T> {
        if let Some(e) = self.roll() {
            return Err(e);
        }
        let out = call.await?;
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
            "Faults({:.0}%, {})",
            self.config.failure_rate * 100.0,
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
        self.wrap(self.inner.put_opts(location, payload, opts))
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
        self.wrap(self.inner.get_opts(location, options)).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.wrap(self.inner.get_ranges(location, ranges)).await
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
