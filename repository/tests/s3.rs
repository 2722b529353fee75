//! Repository scenarios against a real S3-compatible server: moto's server
//! (`pip install 'moto[server]'`), started on a free loopback port per test and killed on drop.
//! A missing moto fails the test with the install command; nothing is skipped.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_roundtrip_and_incremental() {
    let moto = Moto::start();
    common::roundtrip_and_incremental(moto.store("roundtrip")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_corrupt_and_truncated_chunk() {
    let moto = Moto::start();
    damaged_chunk(moto.store("corrupt"), false).await;
    damaged_chunk(moto.store("truncated"), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_passphrase_and_unknown_format() {
    let moto = Moto::start();
    common::wrong_passphrase_and_unknown_format(moto.store("keys")).await;
    common::unencrypted_repository(moto.store("plain"), moto.store("plain-copy")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_missing_chunk_and_unsafe_paths() {
    let moto = Moto::start();
    missing_chunk_is_reported(moto.store("missing")).await;
    unsafe_paths_are_refused(moto.store("unsafe")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_faults() {
    let moto = Moto::start();
    survives_faults(moto.store("faults")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_uncommitted_invisible() {
    let moto = Moto::start();
    uncommitted_backup_is_invisible(moto.store("pending")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_forget_gc_copy() {
    let moto = Moto::start();
    forget_gc_and_copy(moto.store("retention"), moto.store("offsite")).await;
}

/// A throttling endpoint: a proxy answers `503 SlowDown` to 30% of HTTP requests. The
/// backup and the restore still complete (object_store's HTTP retries plus our retry layer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_behind_a_503_slowdown_proxy() {
    use std::sync::Arc;
    use std::time::Duration;

    use snapfleet_repository::layers::{RetryConfig, RetryStore};
    use snapfleet_repository::*;

    let moto = Moto::start();
    moto.store("throttled"); // creates the bucket
    let proxy = SlowDownProxy::start(&moto, 0.3);
    let retry = RetryConfig {
        initial_backoff: Duration::from_millis(10),
        ..RetryConfig::default()
    };
    let store: Arc<dyn object_store::ObjectStore> =
        Arc::new(RetryStore::new(proxy.store("throttled"), retry));

    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/big.bin"), random_bytes(6 << 20, 1)).unwrap();
    for i in 0..40 {
        std::fs::write(src.join(format!("d/s{i}")), text_bytes(2000 + i, i as u64)).unwrap();
    }
    let repo = new_repo(store.clone()).await;
    let (root, _) = put_tree(&repo, &src, "b-throttled").await;
    let reader = Arc::new(Repository::open(store, PASS).await.unwrap());
    let out = tmp.path().join("out");
    restore_backup(&reader, &root.backup_id, &out)
        .await
        .unwrap();
    assert_same_tree(&src, &out);
    assert!(
        proxy.injected() >= 5,
        "the proxy answered 503 only {} times",
        proxy.injected()
    );
}
