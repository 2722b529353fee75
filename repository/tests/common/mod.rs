//! Shared test support: data trees, tree comparison, a real S3-compatible server (moto) on
//! loopback, and the scenarios every backend must pass. Scenarios take a store so the same
//! story runs against a local directory and against S3.
//!
//! Nothing here may sleep to synchronise (poll with a deadline), leave a server running
//! (killed on drop), or skip silently when a tool is missing (fail with what to install).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use rand::{Rng, SeedableRng};
use snapfleet_repository::layers::{FaultConfig, FaultStore, RetryConfig, RetryStore};
use snapfleet_repository::*;

pub const PASS: &[u8] = b"correct horse battery staple";

/// Small chunks so a test tree makes many of them quickly.
pub fn small_chunks() -> ChunkerParams {
    ChunkerParams {
        min_size: 64 << 10,
        avg_size: 256 << 10,
        max_size: 1 << 20,
    }
}

pub fn init_opts() -> InitOptions {
    InitOptions {
        kdf: KdfParams::minimum(),
        chunker: small_chunks(),
    }
}

pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; n];
    rng.fill(&mut v[..]);
    v
}

pub fn text_bytes(n: usize, seed: u64) -> Vec<u8> {
    let words = [
        "tablet", "snapshot", "hybrid", "time", "raft", "leader", "chunk", "manifest", "key",
        "value",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        out.extend_from_slice(words[rng.random_range(0..words.len())].as_bytes());
        out.push(if rng.random_range(0..12) == 0 {
            b'\n'
        } else {
            b' '
        });
    }
    out.truncate(n);
    out
}

/// A mixed tree: incompressible files, text, many small files, an empty file, nested and
/// empty directories. Returns its total size in bytes.
pub fn make_tree(root: &Path) -> u64 {
    let mut total = 0u64;
    let mut write = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        total += data.len() as u64;
    };
    write("big/random.bin", &random_bytes(16 << 20, 1));
    write("big/random2.bin", &random_bytes(3 << 20, 2));
    write("text/log.txt", &text_bytes(2 << 20, 3));
    write("empty", b"");
    for i in 0..300 {
        let data = if i % 2 == 0 {
            random_bytes(100 + i * 37, 100 + i as u64)
        } else {
            text_bytes(50 + i * 53, i as u64)
        };
        write(&format!("small/d{}/f{i:04}.dat", i % 7), &data);
    }
    write("a/b/c/d/deep.txt", b"deep file\n");
    write("medium.bin", &random_bytes(700 << 10, 4)); // just above the small-file threshold
    std::fs::create_dir_all(root.join("empty-dir/inner")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        root.join("a/b/c/d/deep.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    total
}

/// Asserts that `b` holds exactly the files and directories of `a`, byte for byte, with
/// the same permission bits.
pub fn assert_same_tree(a: &Path, b: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let list = |root: &Path| {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                if p.is_dir() {
                    stack.push(p.clone());
                }
                out.push(rel);
            }
        }
        out.sort();
        out
    };
    let (la, lb) = (list(a), list(b));
    assert_eq!(la, lb, "restored tree lists different names");
    for rel in la {
        let (pa, pb) = (a.join(&rel), b.join(&rel));
        let (ma, mb) = (
            std::fs::symlink_metadata(&pa).unwrap(),
            std::fs::symlink_metadata(&pb).unwrap(),
        );
        assert_eq!(ma.is_dir(), mb.is_dir(), "{}", rel.display());
        if ma.is_file() {
            assert_eq!(ma.len(), mb.len(), "size of {}", rel.display());
            assert!(
                std::fs::read(&pa).unwrap() == std::fs::read(&pb).unwrap(),
                "content of {} differs",
                rel.display()
            );
            assert_eq!(
                ma.permissions().mode() & 0o777,
                mb.permissions().mode() & 0o777,
                "mode of {}",
                rel.display()
            );
            assert_eq!(
                ma.modified().unwrap(),
                mb.modified().unwrap(),
                "mtime of {}",
                rel.display()
            );
        }
    }
}

pub fn local_store(dir: &Path) -> Arc<dyn ObjectStore> {
    open_store(&format!("file://{}", dir.join("repo").display())).unwrap()
}

/// moto's S3 server on a free loopback port, killed on drop.
pub struct Moto {
    child: Child,
    pub endpoint: String,
    port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let python = std::env::var("SNAPFLEET_PYTHON").unwrap_or_else(|_| "python3".into());
        let probe = Command::new(&python)
            .args(["-c", "import moto.server, flask"])
            .output();
        match probe {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "moto's S3 server is not installed for `{python}`: run `pip install 'moto[server]'` ({})",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!("cannot run `{python}` ({e}): install Python 3, then `pip install 'moto[server]'`"),
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(&python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("start moto server");
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = moto.child.try_wait().unwrap() {
                let mut s = String::new();
                std::fs::File::open(log.path())
                    .unwrap()
                    .read_to_string(&mut s)
                    .unwrap();
                panic!("moto server exited with {status}: {s}");
            }
            if moto.http("GET", "/").map(|s| s == 200).unwrap_or(false) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "moto server did not answer on port {port} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50)); // polling interval, not synchronisation
        }
        moto
    }

    /// A minimal HTTP/1.1 request; returns the status code.
    pub fn http(&self, method: &str, path: &str) -> std::io::Result<u16> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", self.port)?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        resp.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad HTTP response: {resp:.100}")))
    }

    /// Creates `bucket` and opens `s3://bucket/prefix` on it.
    pub fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        let status = self.http("PUT", &format!("/{bucket}")).unwrap();
        assert_eq!(status, 200, "creating bucket {bucket}");
        open_store_with_options(
            &format!("s3://{bucket}/team/prod"),
            [
                ("aws_endpoint", self.endpoint.as_str()),
                ("aws_access_key_id", "testing"),
                ("aws_secret_access_key", "testing"),
                ("aws_region", "us-east-1"),
            ],
        )
        .unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn new_repo(store: Arc<dyn ObjectStore>) -> Arc<Repository> {
    Arc::new(Repository::init(store, PASS, init_opts()).await.unwrap())
}

pub async fn put_tree(repo: &Arc<Repository>, src: &Path, id: &str) -> (Root, WriteStats) {
    let w = BackupWriter::new(repo.clone(), BackupId::new(id).unwrap())
        .await
        .unwrap();
    w.put_dir(src).await.unwrap();
    w.commit(serde_json::json!({"source": src.display().to_string()}))
        .await
        .unwrap()
}

/// Every chunk object key with its size.
pub async fn chunk_objects(store: &Arc<dyn ObjectStore>) -> Vec<(ObjPath, u64)> {
    use futures::TryStreamExt;
    let mut v: Vec<(ObjPath, u64)> = store
        .list(Some(&ObjPath::from("chunks")))
        .map_ok(|m| (m.location, m.size))
        .try_collect()
        .await
        .unwrap();
    v.sort();
    v
}

/// The largest chunk object (a piece of the big random file) and its bytes.
pub async fn largest_chunk(store: &Arc<dyn ObjectStore>) -> (ObjPath, Vec<u8>) {
    let (victim, _) = chunk_objects(store)
        .await
        .into_iter()
        .max_by_key(|(_, s)| *s)
        .unwrap();
    let bytes = store.get(&victim).await.unwrap().bytes().await.unwrap();
    (victim, bytes.to_vec())
}

pub fn names_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------- scenarios

pub async fn roundtrip_and_incremental(store: Arc<dyn ObjectStore>) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let total = make_tree(&src);
    let repo = new_repo(store.clone()).await;

    let (root, stats) = put_tree(&repo, &src, "b1").await;
    assert_eq!(stats.backup.bytes, total);
    assert_eq!(stats.bytes_read, total);
    assert_eq!(stats.backup.files, 306);
    assert!(stats.backup.chunks_new > 10);
    assert!(
        stats.backup.chunks_new < 150,
        "300 small files must be packed, not stored one by one: {} chunks",
        stats.backup.chunks_new
    );
    assert_eq!(root.stats.files, 306);
    assert_eq!(root.meta["source"], src.display().to_string());

    // A second handle (as another process would) restores byte-identically.
    let reader = Arc::new(Repository::open(store.clone(), PASS).await.unwrap());
    let out = tmp.path().join("out1");
    let rs = restore_backup(&reader, &root.backup_id, &out)
        .await
        .unwrap();
    assert_eq!(rs.bytes, total);
    assert_same_tree(&src, &out);

    // Change ~5% of the big file in place, then back up again.
    let big = src.join("big/random.bin");
    let mut data = std::fs::read(&big).unwrap();
    let n = data.len() / 20;
    let at = data.len() / 2;
    data[at..at + n].copy_from_slice(&random_bytes(n, 99));
    std::fs::write(&big, &data).unwrap();
    let repo2 = Arc::new(Repository::open(store.clone(), PASS).await.unwrap()); // cold dedup cache
    let (root2, stats2) = put_tree(&repo2, &src, "b2").await;
    assert!(
        stats2.backup.bytes_uploaded * 5 < stats2.backup.bytes,
        "incremental backup uploaded {} of {} bytes (must be < 20%)",
        stats2.backup.bytes_uploaded,
        stats2.backup.bytes
    );
    assert!(stats2.backup.chunks_reused > stats2.backup.chunks_new);
    let out2 = tmp.path().join("out2");
    restore_backup(&reader, &root2.backup_id, &out2)
        .await
        .unwrap();
    assert_same_tree(&src, &out2);

    assert_eq!(
        repo.list_backups().await.unwrap(),
        vec![BackupId::new("b1").unwrap(), BackupId::new("b2").unwrap()]
    );
    let report = verify(
        &repo,
        &VerifyOptions {
            deep: true,
            concurrency: 4,
        },
    )
    .await
    .unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.backups, 2);
}

fn expect_corrupt(err: Error, key: &str) {
    match &err {
        Error::CorruptObject { key: k, .. } => assert_eq!(k, key),
        other => panic!("expected CorruptObject for {key}, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(key) && msg.contains("snapfleet repo verify --deep"),
        "{msg}"
    );
}

/// Damages the largest chunk (a piece of the big random file) with `damage`, then checks
/// that restore fails naming it, writes nothing outside the target and leaves no partial
/// file, and that verify reports it and the backup it breaks.
pub async fn damaged_chunk(store: Arc<dyn ObjectStore>, truncate: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let repo = new_repo(store.clone()).await;
    let (root, _) = put_tree(&repo, &src, "b1").await;

    let (victim, bytes) = largest_chunk(&store).await;
    let size = bytes.len() as u64;
    let damaged = if truncate {
        bytes[..bytes.len() / 2].to_vec()
    } else {
        let mut b = bytes.clone();
        b[bytes.len() / 2] ^= 0x40;
        b
    };
    store.put(&victim, PutPayload::from(damaged)).await.unwrap();

    let base = tempfile::tempdir().unwrap();
    let target = base.path().join("target");
    let fresh = Arc::new(Repository::open(store.clone(), PASS).await.unwrap());
    let err = restore_backup(&fresh, &root.backup_id, &target)
        .await
        .unwrap_err();
    expect_corrupt(err, victim.as_ref());
    assert_eq!(
        names_in(base.path()),
        vec![target.clone()],
        "nothing written outside the target"
    );
    let mut stack = vec![target.clone()];
    while let Some(d) = stack.pop() {
        for p in names_in(&d) {
            assert!(
                !p.to_string_lossy().contains("snapfleet-partial"),
                "partial file left: {}",
                p.display()
            );
            if p.is_dir() {
                stack.push(p);
            }
        }
    }

    let quick = verify(&fresh, &VerifyOptions::default()).await.unwrap();
    let deep = verify(
        &fresh,
        &VerifyOptions {
            deep: true,
            concurrency: 4,
        },
    )
    .await
    .unwrap();
    if truncate {
        assert_eq!(quick.damaged.len(), 1, "{quick:?}");
        assert_eq!(
            quick.damaged[0].problem,
            Problem::WrongSize {
                expected: size,
                found: size / 2
            }
        );
    } else {
        assert!(
            quick.is_ok(),
            "a flipped bit keeps the size: quick verify cannot see it"
        );
    }
    assert_eq!(deep.damaged.len(), 1, "{deep:?}");
    assert_eq!(deep.damaged[0].key, victim.as_ref());
    assert!(matches!(deep.damaged[0].problem, Problem::Corrupt { .. }));
    assert_eq!(deep.broken_backups, vec![root.backup_id.clone()]);
}

pub async fn wrong_passphrase_and_unknown_format(store: Arc<dyn ObjectStore>) {
    new_repo(store.clone()).await;
    let err = Repository::open(store.clone(), b"not the passphrase")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongPassphrase), "{err:?}");
    assert!(err.to_string().contains("wrong passphrase"));

    let key = ObjPath::from("snapfleet-repo.json");
    let raw = store.get(&key).await.unwrap().bytes().await.unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    v["format_version"] = serde_json::json!(3);
    store
        .put(&key, PutPayload::from(serde_json::to_vec(&v).unwrap()))
        .await
        .unwrap();
    let err = Repository::open(store.clone(), PASS).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnsupportedFormat {
                found: 3,
                supported: 2
            }
        ),
        "{err:?}"
    );
}

pub async fn missing_chunk_is_reported(store: Arc<dyn ObjectStore>) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("only.bin"), random_bytes(3 << 20, 5)).unwrap();
    let repo = new_repo(store.clone()).await;
    let (root, _) = put_tree(&repo, &src, "b-missing").await;
    std::fs::write(src.join("other.bin"), random_bytes(1 << 20, 6)).unwrap();
    let (root2, _) = put_tree(&repo, &src, "b-other").await;

    let (victim, _) = chunk_objects(&store).await.into_iter().next().unwrap();
    store.delete(&victim).await.unwrap();
    // Which backups reference it: both contain only.bin; other.bin chunks are only in b-other.
    for deep in [false, true] {
        let report = verify(
            &repo,
            &VerifyOptions {
                deep,
                concurrency: 4,
            },
        )
        .await
        .unwrap();
        assert!(!report.is_ok());
        assert_eq!(report.damaged.len(), 1, "{report:?}");
        let d = &report.damaged[0];
        assert_eq!(d.key, victim.as_ref());
        assert_eq!(d.problem, Problem::Missing);
        assert!(!d.backups.is_empty());
        assert!(d
            .backups
            .iter()
            .all(|b| b == &root.backup_id || b == &root2.backup_id));
        assert_eq!(report.broken_backups, d.backups);
    }
    let err = restore_backup(&repo, &root.backup_id, &tmp.path().join("out")).await;
    if let Err(e) = err {
        assert!(matches!(e, Error::MissingObject { .. }), "{e:?}");
    } else {
        // The deleted chunk belonged only to other.bin (in b-other).
        let e = restore_backup(&repo, &root2.backup_id, &tmp.path().join("out2"))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::MissingObject { .. }), "{e:?}");
    }
}

/// Crafts backups whose manifests hold hostile names and checks restore refuses them.
pub async fn unsafe_paths_are_refused(store: Arc<dyn ObjectStore>) {
    let repo = new_repo(store.clone()).await;
    let base = tempfile::tempdir().unwrap();
    let outside = base.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    for (i, name) in [
        "../escaped",
        "/tmp/absolute-escape",
        "ok/../../escaped",
        "link/escaped",
    ]
    .iter()
    .enumerate()
    {
        let id = BackupId::new(format!("evil-{i}")).unwrap();
        let mut m = ManifestWriter::new(repo.clone(), id.clone(), "p", 100).unwrap();
        m.push(&Entry {
            path: "harmless.txt".into(),
            kind: EntryKind::File,
            size: 0,
            mode: 0o644,
            mtime: 0,
            mtime_nsec: 0,
            chunks: vec![],
        })
        .await
        .unwrap();
        m.push(&Entry {
            path: name.to_string(),
            kind: EntryKind::File,
            size: 0,
            mode: 0o644,
            mtime: 0,
            mtime_nsec: 0,
            chunks: vec![],
        })
        .await
        .unwrap();
        let (pages, _) = m.finish().await.unwrap();
        commit_backup(
            &repo,
            &id,
            serde_json::json!({}),
            vec![PartSummary {
                pages,
                stats: WriteStats::default(),
            }],
        )
        .await
        .unwrap();

        let target = base.path().join(format!("target-{i}"));
        std::fs::create_dir_all(&target).unwrap();
        std::os::unix::fs::symlink(&outside, target.join("link")).unwrap();
        let err = restore_backup(&repo, &id, &target).await.unwrap_err();
        match &err {
            Error::UnsafePath { path } => assert_eq!(path, name),
            other => panic!("{name}: expected UnsafePath, got {other:?}"),
        }
        assert!(
            names_in(&outside).is_empty(),
            "{name} wrote through the symlink"
        );
        assert!(!base.path().join("escaped").exists(), "{name} escaped");
        assert!(!Path::new("/tmp/absolute-escape").exists());
    }
    // The writer refuses such names up front too.
    let w = BackupWriter::new(repo.clone(), BackupId::new("evil-writer").unwrap())
        .await
        .unwrap();
    let err = w
        .put_file("../x", std::io::empty(), FileMeta::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnsafePath { .. }));
}

/// 30% of requests fail with transient errors; with the retry layer, put and get succeed.
pub async fn survives_faults(store: Arc<dyn ObjectStore>) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let faults = Arc::new(FaultStore::new(store, FaultConfig::with_rate(0.3)));
    let retry = RetryConfig {
        max_retries: 30,
        initial_backoff: Duration::from_millis(2),
        max_backoff: Duration::from_millis(50),
        deadline: Duration::from_secs(120),
    };
    let retrying = Arc::new(RetryStore::new(faults.clone(), retry));
    let retries = retrying.retries();
    let store: Arc<dyn ObjectStore> = retrying;
    let repo = new_repo(store.clone()).await;
    let (root, _) = put_tree(&repo, &src, "b-faulty").await;
    let out = tmp.path().join("out");
    let reader = Arc::new(Repository::open(store, PASS).await.unwrap());
    restore_backup(&reader, &root.backup_id, &out)
        .await
        .unwrap();
    assert_same_tree(&src, &out);
    let injected = faults.injected();
    assert!(injected > 20, "only {injected} faults injected");
    assert!(retries.load(std::sync::atomic::Ordering::Relaxed) >= injected);
}

/// A backup whose writer never committed is invisible; committing makes it appear.
pub async fn uncommitted_backup_is_invisible(store: Arc<dyn ObjectStore>) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = new_repo(store.clone()).await;
    let w = BackupWriter::new(repo.clone(), BackupId::new("b-pending").unwrap())
        .await
        .unwrap();
    w.put_file(
        "data.bin",
        std::io::Cursor::new(random_bytes(2 << 20, 8)),
        FileMeta::default(),
    )
    .await
    .unwrap();
    let part = w.finish().await.unwrap();
    assert_eq!(part.pages.len(), 1);
    assert!(
        !chunk_objects(&store).await.is_empty(),
        "chunks and pages are stored"
    );
    assert!(
        repo.list_backups().await.unwrap().is_empty(),
        "no ROOT, not listed"
    );
    let err = restore_backup(
        &repo,
        &BackupId::new("b-pending").unwrap(),
        &tmp.path().join("o"),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::BackupNotFound { .. }), "{err:?}");
    let report = verify(&repo, &VerifyOptions::default()).await.unwrap();
    assert_eq!(report.backups, 0);

    // Another writer process commits the parts (here: the same part) later.
    commit_backup(
        &repo,
        &BackupId::new("b-pending").unwrap(),
        serde_json::json!({}),
        vec![part],
    )
    .await
    .unwrap();
    assert_eq!(
        repo.list_backups().await.unwrap(),
        vec![BackupId::new("b-pending").unwrap()]
    );
    let out = tmp.path().join("o2");
    restore_backup(&repo, &BackupId::new("b-pending").unwrap(), &out)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(out.join("data.bin")).unwrap(),
        random_bytes(2 << 20, 8)
    );
}

// ---------------------------------------------------------------- 503 proxy

/// An HTTP proxy in front of moto that answers `503 SlowDown` to a share of requests,
/// as a throttling S3 endpoint does. One request per connection (it forces
/// `Connection: close`), which keeps it small and exact.
pub struct SlowDownProxy {
    pub endpoint: String,
    port: u16,
    injected: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl SlowDownProxy {
    pub fn start(upstream: &Moto, failure_rate: f64) -> SlowDownProxy {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let injected = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (inj, st, up) = (injected.clone(), stop.clone(), upstream.port);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let inj = inj.clone();
                std::thread::spawn(move || {
                    let _ = proxy_one(conn, up, failure_rate, &inj);
                });
            }
        });
        SlowDownProxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            injected,
            stop,
        }
    }

    pub fn injected(&self) -> u64 {
        self.injected.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Opens `s3://bucket/prefix` through the proxy (the bucket must exist).
    pub fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        open_store_with_options(
            &format!("s3://{bucket}/throttled"),
            [
                ("aws_endpoint", self.endpoint.as_str()),
                ("aws_access_key_id", "testing"),
                ("aws_secret_access_key", "testing"),
                ("aws_region", "us-east-1"),
            ],
        )
        .unwrap()
    }
}

impl Drop for SlowDownProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wake the accept loop
    }
}

fn proxy_one(
    mut client: TcpStream,
    upstream_port: u16,
    failure_rate: f64,
    injected: &std::sync::atomic::AtomicU64,
) -> std::io::Result<()> {
    use std::io::BufRead;
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = std::io::BufReader::new(client.try_clone()?);
    let mut head_lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
        head_lines.push(line);
    }
    let header = |name: &str| {
        head_lines.iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    assert!(
        header("transfer-encoding").is_none(),
        "proxy does not support chunked requests"
    );
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let is_head = head_lines[0].starts_with("HEAD ");

    if rand::random::<f64>() < failure_rate {
        injected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                   <Message>Please reduce your request rate.</Message></Error>";
        let body = if is_head { "" } else { xml };
        write!(
            client,
            "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }

    let mut up = TcpStream::connect(("127.0.0.1", upstream_port))?;
    up.set_read_timeout(Some(Duration::from_secs(30)))?;
    for l in &head_lines {
        if !l.to_ascii_lowercase().starts_with("connection:") {
            up.write_all(l.as_bytes())?;
        }
    }
    up.write_all(b"Connection: close\r\n\r\n")?;
    up.write_all(&body)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    // Re-issue the response with `Connection: close` so the client does not reuse the socket.
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("complete response head")
        + 2;
    let head = String::from_utf8_lossy(&resp[..split]);
    let mut out = String::new();
    for l in head.split("\r\n").filter(|l| !l.is_empty()) {
        if !l.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n");
    client.write_all(out.as_bytes())?;
    client.write_all(&resp[split..])?;
    client.flush()
}

/// Retention, gc and copy on one backend: forget the older of two backups; gc refuses while a
/// writer holds a lease, then frees the forgotten backup's chunks; the kept backup still
/// restores; copying to a repository with another passphrase re-encrypts, and a second copy
/// skips what is there.
pub async fn forget_gc_and_copy(store: Arc<dyn ObjectStore>, target: Arc<dyn ObjectStore>) {
    let tmp = tempfile::tempdir().unwrap();
    let (src1, src2) = (tmp.path().join("src1"), tmp.path().join("src2"));
    make_tree(&src1);
    std::fs::create_dir_all(&src2).unwrap();
    std::fs::write(src2.join("other.bin"), random_bytes(3 << 20, 77)).unwrap();
    std::fs::write(src2.join("notes.txt"), text_bytes(200 << 10, 78)).unwrap();
    let repo = new_repo(store.clone()).await;
    put_tree(&repo, &src1, "b1").await;
    put_tree(&repo, &src2, "b2").await;
    let before = chunk_objects(&store).await.len();

    let policy = KeepPolicy {
        last: 1,
        ..Default::default()
    };
    let report = forget(&repo, &policy, false, &Default::default())
        .await
        .unwrap();
    assert_eq!(report.removed.len(), 1);
    assert_eq!(report.removed[0].backup.as_str(), "b1");
    assert_eq!(
        repo.list_backups().await.unwrap(),
        vec![BackupId::new("b2").unwrap()]
    );

    let opts = GcOptions {
        grace: Duration::ZERO,
        ..Default::default()
    };
    let w = BackupWriter::new(repo.clone(), BackupId::new("b3").unwrap())
        .await
        .unwrap();
    match gc(&repo, &opts).await {
        Err(Error::GcBlocked { count: 1, leases }) => assert!(leases.contains("backup b3")),
        other => panic!("gc must refuse while b3 is written: {other:?}"),
    }
    assert_eq!(chunk_objects(&store).await.len(), before);
    w.release_lease().await.unwrap();
    drop(w);
    let report = gc(&repo, &opts).await.unwrap();
    assert!(report.chunks_deleted > 0, "{report:?}");
    assert_eq!(
        chunk_objects(&store).await.len() as u64,
        report.live_chunks,
        "{report:?}"
    );
    let deep = VerifyOptions {
        deep: true,
        concurrency: 4,
    };
    assert!(verify(&repo, &deep).await.unwrap().is_ok());
    let out = tmp.path().join("out");
    restore_backup(&repo, &BackupId::new("b2").unwrap(), &out)
        .await
        .unwrap();
    assert_same_tree(&src2, &out);

    let dst = Arc::new(
        Repository::init(target.clone(), b"another passphrase", init_opts())
            .await
            .unwrap(),
    );
    let copied = copy_backups(&repo, &dst, &CopyOptions::default(), |_, _| {})
        .await
        .unwrap();
    assert_eq!(copied.copied.len(), 1);
    assert!(copied.copied[0].stats.backup.bytes_uploaded > 0);
    let again = copy_backups(&repo, &dst, &CopyOptions::default(), |_, _| {})
        .await
        .unwrap();
    assert!(again.copied.is_empty());
    assert_eq!(again.skipped, vec![BackupId::new("b2").unwrap()]);
    let out2 = tmp.path().join("out2");
    restore_backup(&dst, &BackupId::new("b2").unwrap(), &out2)
        .await
        .unwrap();
    assert_same_tree(&src2, &out2);
    assert_eq!(
        dst.read_root(&BackupId::new("b2").unwrap())
            .await
            .unwrap()
            .created,
        repo.read_root(&BackupId::new("b2").unwrap())
            .await
            .unwrap()
            .created,
        "a copy keeps the creation time (retention in the target depends on it)"
    );
}

/// `init_unencrypted`: round trip, objects in the clear (an encrypted repository of the
/// same tree holds none of those bytes), no passphrase needed, key management refused,
/// damage still detected and named, and `copy` into an encrypted repository.
pub async fn unencrypted_repository(store: Arc<dyn ObjectStore>, target: Arc<dyn ObjectStore>) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let repo = Arc::new(
        Repository::init_unencrypted(store.clone(), small_chunks())
            .await
            .unwrap(),
    );
    assert!(!repo.is_encrypted());
    assert_eq!(repo.config().format_version, 2);
    let (root, _) = put_tree(&repo, &src, "b1").await;

    let out = tmp.path().join("out");
    let fresh = Arc::new(
        Repository::open_without_passphrase(store.clone())
            .await
            .unwrap(),
    );
    restore_backup(&fresh, &root.backup_id, &out).await.unwrap();
    assert_same_tree(&src, &out);
    // Whoever holds a passphrase expects encryption: an unencrypted description (which anyone
    // with write access to the bucket could plant) is refused, not silently used.
    match Repository::open(store.clone(), PASS).await {
        Err(e @ Error::UnexpectedlyUnencrypted { .. }) => {
            assert!(e.to_string().contains("unset the passphrase"), "{e}")
        }
        r => panic!("{r:?}"),
    }
    let mut keyed = Repository::open_without_passphrase(store.clone())
        .await
        .unwrap();
    match keyed.add_key(b"new", KdfParams::minimum()).await {
        Err(e @ Error::NotEncrypted { .. }) => assert!(e.to_string().contains("not encrypted")),
        r => panic!("{r:?}"),
    }

    // The clear text of an incompressible file is in a chunk object as it is.
    let needle =
        std::fs::read(src.join("big/random.bin")).unwrap()[5 << 20..(5 << 20) + 64].to_vec();
    let holds_needle = |store: Arc<dyn ObjectStore>| {
        let needle = needle.clone();
        async move {
            for (key, _) in chunk_objects(&store).await {
                let b = store.get(&key).await.unwrap().bytes().await.unwrap();
                if b.windows(needle.len()).any(|w| w == needle) {
                    return true;
                }
            }
            false
        }
    };
    assert!(
        holds_needle(store.clone()).await,
        "unencrypted chunks are plain"
    );

    // Copy into an encrypted repository (re-sealed there), which needs its passphrase and
    // holds none of the clear bytes.
    let enc = new_repo(target.clone()).await;
    copy_backups(&fresh, &enc, &CopyOptions::default(), |_, _| {})
        .await
        .unwrap();
    assert!(
        !holds_needle(target.clone()).await,
        "encrypted chunks are not"
    );
    match Repository::open_without_passphrase(target.clone()).await {
        Err(e @ Error::PassphraseRequired { .. }) => {
            assert!(e.to_string().contains("SNAPFLEET_PASSWORD"), "{e}")
        }
        r => panic!("{r:?}"),
    }
    let out2 = tmp.path().join("out2");
    restore_backup(&enc, &root.backup_id, &out2).await.unwrap();
    assert_same_tree(&src, &out2);

    // A flipped bit is caught by the checksum and named, by restore and by verify.
    let (victim, mut bytes) = largest_chunk(&store).await;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    store.put(&victim, PutPayload::from(bytes)).await.unwrap();
    let err = restore_backup(&fresh, &root.backup_id, &tmp.path().join("out3"))
        .await
        .unwrap_err();
    expect_corrupt(err, victim.as_ref());
    let deep = verify(
        &fresh,
        &VerifyOptions {
            deep: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(deep.damaged.len(), 1, "{deep:?}");
    assert_eq!(deep.damaged[0].key, victim.as_ref());
}
