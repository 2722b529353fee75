//! Cancellation reaches every remote operation: a backup or a restore whose token fires
//! while the store keeps failing (and the retry layer keeps retrying) returns
//! `Error::Cancelled` at once, and no request is made after it returns — including by the
//! uploads that run on their own tasks, which outlived a dropped writer before.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use object_store::ObjectStore;
use snapfleet_repository::layers::{FaultConfig, FaultStore, RetryConfig, RetryStore};
use snapfleet_repository::*;
use tokio_util::sync::CancellationToken;

/// A link to `store` whose chunk requests can be cut, with a retry layer that keeps
/// retrying a cut request every few milliseconds for a minute.
fn flaky_link(store: Arc<dyn ObjectStore>) -> (Arc<FaultStore>, Arc<dyn ObjectStore>) {
    let link = Arc::new(FaultStore::new(store, FaultConfig::default()));
    let retry = RetryConfig {
        max_retries: 100_000,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        deadline: Duration::from_secs(60),
    };
    let layered: Arc<dyn ObjectStore> = Arc::new(RetryStore::new(link.clone(), retry));
    (link, layered)
}

/// Waits (10 s at most) until the link has refused at least `n` requests.
async fn wait_injected(link: &FaultStore, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while link.injected() < n {
        assert!(Instant::now() < deadline, "no request reached the cut link");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// After the operation returned, the link sees no more requests: nothing retries on.
async fn assert_quiet(link: &FaultStore) {
    let before = link.injected();
    // A live retrier would come back every ≤ 20 ms: 25 chances to be caught.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        link.injected(),
        before,
        "requests kept going after the cancelled operation returned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_backup_stops_every_upload_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let store = local_store(tmp.path());
    new_repo(store.clone()).await;
    let (link, layered) = flaky_link(store);
    let repo = Arc::new(Repository::open(layered, PASS).await.unwrap());
    let cancel = CancellationToken::new();
    let opts = WriterOptions {
        cancel: cancel.clone(),
        ..Default::default()
    };
    let w = BackupWriter::with_options(repo, BackupId::new("b").unwrap(), opts)
        .await
        .unwrap();
    // Every chunk request now fails, and is retried.
    link.set_partition(Some("chunks/"));
    let put = tokio::spawn(async move { w.put_dir(&src).await });
    wait_injected(&link, 20).await;

    let t = Instant::now();
    cancel.cancel();
    let r = tokio::time::timeout(Duration::from_secs(5), put)
        .await
        .expect("the cancelled backup returned")
        .unwrap();
    assert!(
        matches!(r, Err(Error::Cancelled { .. })),
        "a cancelled backup ends with Cancelled: {r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_quiet(&link).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_restore_stops_its_downloads_and_leaves_no_partial_file() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let store = local_store(tmp.path());
    let writer = new_repo(store.clone()).await;
    put_tree(&writer, &src, "b").await;
    let (link, layered) = flaky_link(store);
    let repo = Arc::new(Repository::open(layered, PASS).await.unwrap());
    link.set_partition(Some("chunks/"));
    let cancel = CancellationToken::new();
    let target = tmp.path().join("restored");
    let restore = {
        let (repo, target, cancel) = (repo.clone(), target.clone(), cancel.clone());
        tokio::spawn(async move {
            let opts = RestoreOptions {
                cancel,
                ..Default::default()
            };
            restore_backup_with(&repo, &BackupId::new("b").unwrap(), &target, opts).await
        })
    };
    wait_injected(&link, 20).await;

    let t = Instant::now();
    cancel.cancel();
    let r = tokio::time::timeout(Duration::from_secs(5), restore)
        .await
        .expect("the cancelled restore returned")
        .unwrap();
    assert!(
        matches!(r, Err(Error::Cancelled { .. })),
        "a cancelled restore ends with Cancelled: {r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_quiet(&link).await;
    // Every file under way was under its temporary name, removed when dropped: what is
    // left is only whole files (here: the empty one, which needs no chunk).
    let mut stack = vec![target.clone()];
    let mut left = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
                continue;
            }
            let rel = e.path().strip_prefix(&target).unwrap().to_path_buf();
            let want = std::fs::metadata(src.join(&rel)).map(|m| m.len());
            assert_eq!(
                want.ok(),
                Some(e.metadata().unwrap().len()),
                "a partial file was left behind: {}",
                rel.display()
            );
            left += 1;
        }
    }
    assert!(left <= 1, "{left} files restored through a cut link");
}
