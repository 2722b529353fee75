//! Opens the object store a repository URL names: `file:///abs/path` (local directory,
//! created if missing), `s3://bucket/prefix` (AWS or any S3-compatible server; credentials
//! from the usual AWS environment, endpoint from `SNAPFLEET_S3_ENDPOINT` or
//! `AWS_ENDPOINT_URL`), and `memory://` (tests). A path in the URL becomes a prefix.
//!
//! This module must never log credentials, and never silently fall back to another backend
//! when a URL is wrong.

use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;

use crate::error::{Error, Result};
use crate::layers::{ObserveStore, Rate, RateLimitStore, RetryConfig, RetryStore, StoreObserver};

/// The layers every real repository store should have.
#[derive(Clone, Debug, Default)]
pub struct StoreLayers {
    /// Retry transient failures (recommended for every backend).
    pub retry: Option<RetryConfig>,
    /// Byte-rate budget shared with whoever changes it at run time (0 = unlimited).
    pub rate: Option<Rate>,
    /// Told about every attempt (bytes moved, throttling), e.g. an adaptive rate.
    pub observer: Option<Arc<dyn StoreObserver>>,
}

/// Wraps `store` as `Retry(Observe(RateLimit(store)))`: every retried attempt is paced too,
/// and the observer sees each attempt.
pub fn with_layers(store: Arc<dyn ObjectStore>, layers: StoreLayers) -> Arc<dyn ObjectStore> {
    let store: Arc<dyn ObjectStore> = match layers.rate {
        Some(rate) => Arc::new(RateLimitStore::new(store, rate)),
        None => store,
    };
    let store: Arc<dyn ObjectStore> = match layers.observer {
        Some(observer) => Arc::new(ObserveStore::new(store, observer)),
        None => store,
    };
    match layers.retry {
        Some(config) => Arc::new(RetryStore::new(store, config)),
        None => store,
    }
}

/// Opens the store for `url` with settings from the environment.
pub fn open_store(url: &str) -> Result<Arc<dyn ObjectStore>> {
    open_store_with_options(url, std::iter::empty::<(String, String)>())
}

/// Like [`open_store`], with extra backend options (for S3, `AmazonS3ConfigKey` names such as
/// `aws_access_key_id`, `aws_endpoint`, `aws_allow_http`) that override the environment.
pub fn open_store_with_options<I, K, V>(url: &str, options: I) -> Result<Arc<dyn ObjectStore>>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: Into<String>,
{
    let bad = |reason: &str| Error::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    match parsed.scheme() {
        "file" => {
            let path = parsed.to_file_path().map_err(|_| {
                bad("a file URL needs an absolute local path, e.g. file:///srv/backups")
            })?;
            std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            let fs = LocalFileSystem::new_with_prefix(&path)
                .map_err(|e| Error::store("open", path.display(), e))?
                .with_automatic_cleanup(true);
            // fsync every object (and the rename into its directory) before a write returns.
            Ok(Arc::new(crate::layers::DurableLocal::new(
                Arc::new(fs),
                path,
            )))
        }
        "memory" => Ok(Arc::new(InMemory::new())),
        "s3" => {
            let bucket = parsed
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| bad("missing bucket: s3://bucket/prefix"))?;
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            let endpoint = std::env::var("SNAPFLEET_S3_ENDPOINT")
                .ok()
                .filter(|s| !s.is_empty());
            if let Some(ep) = endpoint.or_else(|| {
                std::env::var("AWS_ENDPOINT_URL")
                    .ok()
                    .filter(|s| !s.is_empty())
            }) {
                builder = builder.with_endpoint(&ep);
                if ep.starts_with("http://") {
                    builder = builder.with_allow_http(true);
                }
            }
            for (k, v) in options {
                let key: AmazonS3ConfigKey = k
                    .as_ref()
                    .parse()
                    .map_err(|e: object_store::Error| bad(&e.to_string()))?;
                let v = v.into();
                if key == AmazonS3ConfigKey::Endpoint && v.starts_with("http://") {
                    builder = builder.with_allow_http(true);
                }
                builder = builder.with_config(key, v);
            }
            // One retry policy: `RetryStore` (layers/retry.rs) retries every request with
            // its budget and paces it through the rate limiter; the S3 client's own retries
            // would multiply with it (10 × 10 attempts per object under throttling).
            builder = builder.with_retry(object_store::RetryConfig {
                max_retries: 0,
                ..Default::default()
            });
            let s3 = builder.build().map_err(|e| bad(&e.to_string()))?;
            let prefix = parsed.path().trim_matches('/');
            if prefix.is_empty() {
                Ok(Arc::new(s3))
            } else {
                Ok(Arc::new(PrefixStore::new(s3, prefix)))
            }
        }
        other => Err(bad(&format!(
            "unsupported scheme `{other}` (use file://, s3:// or memory://)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_are_refused() {
        assert!(matches!(
            open_store("ftp://x/y"),
            Err(Error::InvalidUrl { .. })
        ));
        assert!(matches!(
            open_store("not a url"),
            Err(Error::InvalidUrl { .. })
        ));
        assert!(matches!(
            open_store("file://relative/path"),
            Err(Error::InvalidUrl { .. }) | Err(Error::Io { .. })
        ));
        assert!(open_store("memory://").is_ok());
    }

    #[derive(Debug)]
    struct Nothing;
    impl StoreObserver for Nothing {
        fn transferred(&self, _bytes: u64) {}
        fn throttled(&self, _op: &'static str, _error: &object_store::Error) {}
    }

    #[test]
    fn the_observer_sits_between_retries_and_the_rate_limit() {
        let s = with_layers(
            open_store("memory://").unwrap(),
            StoreLayers {
                retry: Some(RetryConfig::default()),
                rate: Some(Default::default()),
                observer: Some(std::sync::Arc::new(Nothing)),
            },
        );
        assert!(s.to_string().starts_with("Retry(Observe(RateLimit("), "{s}");
    }

    #[test]
    fn layers_stack_in_order() {
        let rate = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let s = with_layers(
            open_store("memory://").unwrap(),
            StoreLayers {
                retry: Some(RetryConfig::default()),
                rate: Some(rate),
                observer: None,
            },
        );
        assert!(s.to_string().starts_with("Retry(RateLimit("), "{s}");
    }

    #[test]
    fn file_urls_create_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a/b");
        open_store(&format!("file://{}", target.display())).unwrap();
        assert!(target.is_dir());
    }

    #[test]
    fn s3_urls_build_with_explicit_options() {
        let s = open_store_with_options(
            "s3://bucket/some/prefix",
            [
                ("aws_endpoint", "http://127.0.0.1:9"),
                ("aws_access_key_id", "a"),
                ("aws_secret_access_key", "b"),
                ("aws_region", "us-east-1"),
            ],
        )
        .unwrap();
        assert!(s.to_string().contains("some/prefix"), "{s}");
    }
}
