//! gc racing backups, on a local directory: whatever gc does between or during backups, a
//! committed backup never names a missing chunk.
//!
//! - A long-lived writer process (an agent) remembers which chunks exist; a gc run by
//!   another process between two of its backups deletes some of them. The next backup must
//!   not believe its memory: it asks the store again and uploads what is gone.
//! - A writer whose lease renewals stall (a paused process, a partition) for longer than the
//!   TTL lets a gc run; when the renewals come back the writer must still refuse to commit,
//!   because chunks it reused may have been swept while it was away.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use snapfleet_repository::layers::{FaultConfig, FaultStore};
use snapfleet_repository::*;

fn gc_now() -> GcOptions {
    GcOptions {
        grace: Duration::ZERO,
        ..Default::default()
    }
}

async fn assert_restorable(repo: &Arc<Repository>, id: &str, src: &std::path::Path) {
    let deep = VerifyOptions {
        deep: true,
        concurrency: 4,
    };
    let report = verify(repo, &deep).await.unwrap();
    assert!(report.is_ok(), "a committed backup is damaged: {report:?}");
    let out = tempfile::tempdir().unwrap();
    restore_backup(repo, &BackupId::new(id).unwrap(), &out.path().join("r"))
        .await
        .unwrap();
    assert_same_tree(src, &out.path().join("r"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_writer_does_not_trust_chunks_a_gc_removed_since() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let store = local_store(tmp.path());
    // The agent's repository handle lives across backups; the operator's gc is another.
    let agent = new_repo(store.clone()).await;
    let operator = Arc::new(Repository::open(store.clone(), PASS).await.unwrap());

    put_tree(&agent, &src, "b1").await;
    assert!(agent.known_chunks() > 0, "the writer remembered its chunks");
    remove_backup(&operator, &BackupId::new("b1").unwrap())
        .await
        .unwrap();
    let swept = gc(&operator, &gc_now()).await.unwrap();
    assert!(swept.chunks_deleted > 0, "{swept:?}");
    assert!(chunk_objects(&store).await.is_empty());

    // Same data again through the same handle: every chunk must be uploaded again.
    let (_, stats) = put_tree(&agent, &src, "b2").await;
    assert_eq!(stats.backup.chunks_reused, 0, "{stats:?}");
    assert!(stats.backup.chunks_new > 0, "{stats:?}");
    assert_restorable(&operator, "b2", &src).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_whose_lease_lapsed_refuses_to_commit_even_after_renewals_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let store = local_store(tmp.path());
    let operator = new_repo(store.clone()).await;
    // Garbage: chunks of a forgotten backup, still stored until a gc.
    put_tree(&operator, &src, "old").await;
    remove_backup(&operator, &BackupId::new("old").unwrap())
        .await
        .unwrap();

    // The writer talks to the bucket through a link that can be cut.
    let link = Arc::new(FaultStore::new(store.clone(), FaultConfig::default()));
    let writer_repo = Arc::new(Repository::open(link.clone(), PASS).await.unwrap());
    let opts = WriterOptions {
        lease_ttl: Duration::from_secs(3),
        ..Default::default()
    };
    let w = BackupWriter::with_options(writer_repo.clone(), BackupId::new("new").unwrap(), opts)
        .await
        .unwrap();
    w.put_dir(&src).await.unwrap();
    let live_before = chunk_objects(&store).await.len();
    assert!(live_before > 0);

    // The writer's lease renewals stop (a pause, a partition)...
    link.set_partition(Some("locks/"));
    // ...until gc sees the lease expired and sweeps the garbage the writer reused.
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        match gc(&operator, &gc_now()).await {
            Ok(r) => break r,
            Err(Error::GcBlocked { .. }) => {}
            Err(e) => panic!("gc: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the writer's lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(report.chunks_deleted > 0, "{report:?}");

    // Renewals resume and succeed: the lease object is live again.
    link.set_partition(None);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = chrono::Utc::now();
        let leases = list_leases(&operator).await.unwrap();
        if leases.iter().any(|l| {
            l.info.purpose == "backup new" && l.renewed > now - chrono::Duration::seconds(1)
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "renewals never resumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The lapse is remembered: no commit, so no ROOT naming swept chunks.
    match w.commit(serde_json::json!({})).await {
        Err(Error::LeaseLost { secs, ttl, .. }) => assert!(secs >= 2 && ttl == 3, "{secs} {ttl}"),
        other => panic!("a writer whose lease lapsed committed: {other:?}"),
    }
    assert!(operator.list_backups().await.unwrap().is_empty());
    assert!(verify(&operator, &VerifyOptions::default())
        .await
        .unwrap()
        .is_ok());
}
