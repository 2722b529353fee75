//! Repository scenarios against a local directory (`file://`), plus multi-writer and
//! default-chunker cases that need no network.

mod common;

use std::sync::Arc;

use common::*;
use snapfleet_repository::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundtrip_and_incremental() {
    let dir = tempfile::tempdir().unwrap();
    common::roundtrip_and_incremental(local_store(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_chunk() {
    let dir = tempfile::tempdir().unwrap();
    damaged_chunk(local_store(dir.path()), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_chunk() {
    let dir = tempfile::tempdir().unwrap();
    damaged_chunk(local_store(dir.path()), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passphrase_and_unknown_format() {
    let dir = tempfile::tempdir().unwrap();
    common::wrong_passphrase_and_unknown_format(local_store(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_chunk() {
    let dir = tempfile::tempdir().unwrap();
    missing_chunk_is_reported(local_store(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_paths() {
    let dir = tempfile::tempdir().unwrap();
    unsafe_paths_are_refused(local_store(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults() {
    let dir = tempfile::tempdir().unwrap();
    survives_faults(local_store(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncommitted_invisible() {
    let dir = tempfile::tempdir().unwrap();
    uncommitted_backup_is_invisible(local_store(dir.path())).await;
}

/// Two writers (as two agents would) write parts of one backup concurrently; a third party
/// commits both parts; restore sees the union.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_one_backup() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let repo_a = new_repo(store.clone()).await;
    let repo_b = Arc::new(Repository::open(store.clone(), PASS).await.unwrap());
    let id = BackupId::new("b-multi").unwrap();
    let src_a = dir.path().join("a");
    let src_b = dir.path().join("b");
    for (d, seed) in [(&src_a, 10), (&src_b, 20)] {
        std::fs::create_dir_all(d.join("node")).unwrap();
        std::fs::write(
            d.join("node").join(format!("tablet-{seed}.sst")),
            random_bytes(3 << 20, seed),
        )
        .unwrap();
        std::fs::write(
            d.join("node").join(format!("meta-{seed}")),
            text_bytes(1000, seed),
        )
        .unwrap();
    }
    let opts = |p: &str| WriterOptions {
        part: Some(p.into()),
        ..Default::default()
    };
    let wa = writer::BackupWriter::with_options(repo_a.clone(), id.clone(), opts("n1"))
        .await
        .unwrap();
    let wb = writer::BackupWriter::with_options(repo_b.clone(), id.clone(), opts("n2"))
        .await
        .unwrap();
    let (pa, pb) = tokio::join!(
        async {
            wa.put_dir(&src_a).await.unwrap();
            wa.finish().await.unwrap()
        },
        async {
            wb.put_dir(&src_b).await.unwrap();
            wb.finish().await.unwrap()
        }
    );
    let root = commit_backup(
        &repo_a,
        &id,
        serde_json::json!({"catalog": "x"}),
        vec![pa, pb],
    )
    .await
    .unwrap();
    assert_eq!(root.stats.files, 4);
    let out = dir.path().join("out");
    restore_backup(&repo_b, &id, &out).await.unwrap();
    for d in [&src_a, &src_b] {
        for e in std::fs::read_dir(d.join("node")).unwrap() {
            let p = e.unwrap().path();
            let restored = out.join("node").join(p.file_name().unwrap());
            assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(restored).unwrap());
        }
    }
    assert!(matches!(
        BackupWriter::new(repo_a.clone(), id.clone()).await,
        Err(Error::BackupExists { .. })
    ));
}

/// The default chunker (1 MiB average) and compression off still round-trip, and a
/// 5% change of a large file stays cheap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_chunker_no_compression() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let repo = Arc::new(
        Repository::init(
            store,
            PASS,
            InitOptions {
                kdf: KdfParams::minimum(),
                chunker: ChunkerParams::default(),
            },
        )
        .await
        .unwrap(),
    );
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut big = random_bytes(40 << 20, 42);
    std::fs::write(src.join("tablet.sst"), &big).unwrap();
    std::fs::write(src.join("log.txt"), text_bytes(3 << 20, 7)).unwrap();
    let opts = WriterOptions {
        compression_level: 0,
        ..Default::default()
    };
    let w = BackupWriter::with_options(repo.clone(), BackupId::new("d1").unwrap(), opts.clone())
        .await
        .unwrap();
    w.put_dir(&src).await.unwrap();
    let (_, s1) = w.commit(serde_json::Value::Null).await.unwrap();
    assert!(
        s1.backup.bytes_uploaded > s1.backup.bytes,
        "no compression: stored ≥ logical"
    );
    let n = big.len() / 20;
    big[1000..1000 + n].copy_from_slice(&random_bytes(n, 43));
    std::fs::write(src.join("tablet.sst"), &big).unwrap();
    let w = BackupWriter::with_options(repo.clone(), BackupId::new("d2").unwrap(), opts)
        .await
        .unwrap();
    let progress = w.progress();
    w.put_dir(&src).await.unwrap();
    let (_, s2) = w.commit(serde_json::Value::Null).await.unwrap();
    assert_eq!(
        progress
            .bytes_read
            .load(std::sync::atomic::Ordering::Relaxed),
        s2.bytes_read
    );
    assert!(s2.backup.bytes_uploaded * 5 < s2.backup.bytes, "{s2:?}");
    let out = dir.path().join("out");
    restore_backup(&repo, &BackupId::new("d2").unwrap(), &out)
        .await
        .unwrap();
    assert_same_tree(&src, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_gc_copy() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    forget_gc_and_copy(local_store(a.path()), local_store(b.path())).await;
}

/// A writer interrupted half-way (an agent killed) told its observer which files it
/// recorded; a new writer of the same backup records those with `put_reused` — without
/// reading them — and reads only the rest; the backup restores byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_writer_is_resumed_from_recorded_entries() {
    #[derive(Default)]
    struct Recorded(std::sync::Mutex<Vec<Entry>>);
    impl EntryObserver for Recorded {
        fn file_recorded(&self, entry: &Entry) {
            self.0.lock().unwrap().push(entry.clone());
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let store = local_store(&dir.path().join("repo"));
    let repo = new_repo(store).await;
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let files = [("big", 3 << 20), ("small-1", 1000), ("small-2", 10_000)];
    for (i, (name, len)) in files.iter().enumerate() {
        std::fs::write(src.join(name), random_bytes(*len, i as u64)).unwrap();
    }
    let id = BackupId::new("b-resumed").unwrap();
    let part = WriterOptions {
        part: Some("tablet_1".into()),
        ..Default::default()
    };

    let first = BackupWriter::with_options(repo.clone(), id.clone(), part.clone())
        .await
        .unwrap();
    let recorded = Arc::new(Recorded::default());
    first.set_observer(recorded.clone());
    for (name, _) in &files {
        first.put_path(name, &src.join(name)).await.unwrap();
    }
    // Killed before `finish`: the small files still waited in a pack, never recorded.
    first.release_lease().await.unwrap();
    drop(first);
    let recorded = std::mem::take(&mut *recorded.0.lock().unwrap());
    assert_eq!(
        recorded.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
        ["big"]
    );

    let second = BackupWriter::with_options(repo.clone(), id.clone(), part)
        .await
        .unwrap();
    let big = &recorded[0];
    let meta = FileMeta {
        mode: big.mode,
        mtime: big.mtime,
        mtime_nsec: big.mtime_nsec,
    };
    // References that do not add up to the size, or name a chunk that is gone: read it.
    assert!(!second
        .put_reused("big", big.size + 1, meta, big.chunks.clone())
        .await
        .unwrap());
    let mut missing = big.chunks.clone();
    missing[0].id = ChunkId([9; 32]);
    assert!(!second
        .put_reused("big", big.size, meta, missing)
        .await
        .unwrap());
    assert!(second
        .put_reused("big", big.size, meta, big.chunks.clone())
        .await
        .unwrap());
    for (name, _) in &files[1..] {
        second.put_path(name, &src.join(name)).await.unwrap();
    }
    let progress = second.progress();
    second.commit(serde_json::json!({})).await.unwrap();
    assert_eq!(
        progress
            .bytes_read
            .load(std::sync::atomic::Ordering::Relaxed),
        11_000,
        "only the small files were read again"
    );
    let out = dir.path().join("out");
    restore_backup(&repo, &id, &out).await.unwrap();
    assert_same_tree(&src, &out);
}

/// A restore interrupted half-way (an agent killed while staging) is run again into the same
/// target with `keep_verified`: files in place whose content hashes to their chunk ids are
/// kept; damaged, missing and packed ones are downloaded again; the result is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_restore_keeps_only_verified_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(&dir.path().join("repo"));
    let repo = new_repo(store).await;
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let files = [
        ("kept", 3 << 20),
        ("sub/damaged", 2 << 20),
        ("missing", 1 << 20),
        // Packed together: references into a shared chunk cannot be checked locally.
        ("small", 1000),
        ("small-2", 2000),
    ];
    for (i, (name, len)) in files.iter().enumerate() {
        std::fs::write(src.join(name), random_bytes(*len, 100 + i as u64)).unwrap();
    }
    let (root, _) = put_tree(&repo, &src, "b-restore-resume").await;
    let out = dir.path().join("out");
    restore_backup(&repo, &root.backup_id, &out).await.unwrap();
    // What a crash would leave, and worse: a flipped byte, a missing file, a partial one.
    let mut damaged = std::fs::read(out.join("sub/damaged")).unwrap();
    damaged[12345] ^= 0xff;
    std::fs::write(out.join("sub/damaged"), damaged).unwrap();
    std::fs::remove_file(out.join("missing")).unwrap();
    std::fs::write(out.join(".missing.snapfleet-partial"), b"half").unwrap();

    let stats = restore_backup_with(
        &repo,
        &root.backup_id,
        &out,
        RestoreOptions {
            keep_verified: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (stats.files_kept, stats.bytes_kept),
        (1, 3 << 20),
        "{stats:?}"
    );
    assert_eq!(stats.files, 5);
    assert_same_tree(&src, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unencrypted_repository() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::unencrypted_repository(local_store(a.path()), local_store(b.path())).await;
}

/// Restores with one and two chunk downloads in flight across four files at once: multi-chunk
/// files share the permits without waiting on each other for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_with_few_download_permits() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src);
    for i in 0..6 {
        std::fs::write(
            src.join(format!("big/more{i}.bin")),
            random_bytes(1 << 20, 500 + i),
        )
        .unwrap();
    }
    let repo = new_repo(local_store(&dir.path().join("repo"))).await;
    let (root, _) = put_tree(&repo, &src, "b1").await;
    for concurrency in [1, 2] {
        let out = dir.path().join(format!("out{concurrency}"));
        let opts = RestoreOptions {
            concurrency,
            ..Default::default()
        };
        tokio::time::timeout(
            std::time::Duration::from_secs(120),
            restore_backup_with(&repo, &root.backup_id, &out, opts),
        )
        .await
        .expect("restore finished")
        .unwrap();
        assert_same_tree(&src, &out);
    }
}

/// Oversized objects in the bucket (here sparse files that claim 64 GiB and cost no disk):
/// a restore, ROOT, a lease listing and opening the repository each fail with a clear error
/// at once, before reading any of the body. Before sizes were checked, the first read tried
/// to allocate the whole object and the process aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_objects_are_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let repo = new_repo(store.clone()).await;
    let src = dir.path().join("src");
    make_tree(&src);
    put_tree(&repo, &src, "b1").await;
    let repo_dir = dir.path().join("repo");
    let inflate = |rel: &str| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(repo_dir.join(rel))
            .unwrap();
        f.set_len(64 << 30).unwrap();
    };
    let started = std::time::Instant::now();

    // A chunk: the restore stops with the chunk named, and writes nothing.
    let (victim, _) = largest_chunk(&store).await;
    inflate(victim.as_ref());
    let out = dir.path().join("out");
    let e = restore_backup(&repo, &BackupId::new("b1").unwrap(), &out)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("more than the") && e.to_string().contains(victim.as_ref()),
        "{e}"
    );

    // ROOT.
    inflate("backups/b1/ROOT");
    let e = repo
        .read_root(&BackupId::new("b1").unwrap())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("more than the"), "{e}");

    // A lease.
    std::fs::create_dir_all(repo_dir.join("locks")).unwrap();
    inflate("locks/writer-hostile");
    let e = list_leases(&repo).await.unwrap_err();
    assert!(e.to_string().contains("more than the"), "{e}");

    // The config: opening the repository is refused.
    inflate("snapfleet-repo.json");
    let e = Repository::open(store.clone(), PASS).await.err().unwrap();
    assert!(e.to_string().contains("more than the"), "{e}");

    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "refusals must not read the objects: {:?}",
        started.elapsed()
    );
}
