//! `snapfleet repo …` as an operator runs it: the real binary against local-directory
//! repositories in temporary directories. Manifest entries that would escape the target
//! (`..`, absolute paths, symlinks) are covered against the library in
//! repository/tests (`unsafe_paths_are_refused`, local and S3).

use snapfleet_tests::snapfleet_bin;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const KDF: [&str; 4] = ["--kdf-memory-mib", "19", "--kdf-iterations", "2"];

/// Deterministic pseudo-random bytes (xorshift), incompressible.
fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn text_bytes(n: usize, seed: u64) -> Vec<u8> {
    let words = ["tablet", "raft", "chunk", "leader", "manifest", "snapshot"];
    let r = random_bytes(n / 4 + 1, seed);
    let mut out = Vec::with_capacity(n + 16);
    for b in r {
        out.extend_from_slice(words[b as usize % words.len()].as_bytes());
        out.push(if b % 11 == 0 { b'\n' } else { b' ' });
        if out.len() >= n {
            break;
        }
    }
    out.truncate(n);
    out
}

/// A mixed tree: a large random file, text, many small files, an empty file and directory.
fn make_tree(root: &Path, seed: u64) {
    let write = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
    };
    write("big/random.bin", &random_bytes(3 << 20, seed));
    write("text/log.txt", &text_bytes(1 << 20, seed + 1));
    write("empty", b"");
    for i in 0..60u64 {
        write(
            &format!("small/d{}/f{i:03}", i % 4),
            &random_bytes(100 + i as usize * 97, seed + 10 + i),
        );
    }
    std::fs::create_dir_all(root.join("empty-dir/inner")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("empty"), std::fs::Permissions::from_mode(0o640)).unwrap();
}

fn list_tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(root).unwrap().to_path_buf());
        }
    }
    out.sort();
    out
}

fn assert_same_tree(a: &Path, b: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let names = list_tree(a);
    assert_eq!(names, list_tree(b), "restored tree lists different names");
    for rel in names {
        let (pa, pb) = (a.join(&rel), b.join(&rel));
        let (ma, mb) = (pa.metadata().unwrap(), pb.metadata().unwrap());
        assert_eq!(ma.is_dir(), mb.is_dir(), "{}", rel.display());
        if ma.is_file() {
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
        }
    }
}

/// A local-directory repository and its passphrase file, in a temporary directory.
struct Repo {
    dir: tempfile::TempDir,
    url: String,
    pw: PathBuf,
}

impl Repo {
    fn init(passphrase: &str) -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, format!("{passphrase}\n")).unwrap();
        let url = format!("file://{}", dir.path().join("repo").display());
        let r = Repo { dir, url, pw };
        let mut args = vec!["repo", "init"];
        args.extend(KDF);
        r.ok(&args);
        r
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run_with(&self, pw: &Path, args: &[&str]) -> Output {
        Command::new(snapfleet_bin())
            .args(args)
            .env("SNAPFLEET_REPO", &self.url)
            .env("SNAPFLEET_PASSWORD_FILE", pw)
            .env_remove("SNAPFLEET_PASSWORD")
            .env_remove("SNAPFLEET_TO_PASSWORD")
            .env_remove("SNAPFLEET_TO_PASSWORD_FILE")
            .output()
            .unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(&self.pw, args)
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "snapfleet {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Every chunk object file.
    fn chunks(&self) -> Vec<PathBuf> {
        let root = self.path().join("repo/chunks");
        if !root.exists() {
            return vec![];
        }
        list_tree(&root)
            .into_iter()
            .filter(|p| root.join(p).is_file())
            .collect()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn put_get_round_trip_with_identical_bytes() {
    let r = Repo::init("correct horse");
    let src = r.path().join("src");
    make_tree(&src, 1);
    let total: u64 = list_tree(&src)
        .iter()
        .map(|p| src.join(p))
        .filter(|p| p.is_file())
        .map(|p| p.metadata().unwrap().len())
        .sum();

    let put = r.json(&["repo", "put", src.to_str().unwrap(), "--tag", "nightly"]);
    let id = put["backup_id"].as_str().unwrap().to_string();
    assert_eq!(put["bytes_read"], total, "{put:#}");
    assert!(put["bytes_uploaded"].as_u64().unwrap() > 3 << 20, "{put:#}");
    assert!(put["duration_ms"].is_u64(), "{put:#}");

    // Human mode prints just the id on stdout.
    let id2 = r.ok(&["repo", "put", src.to_str().unwrap()]);
    assert!(id2.trim().starts_with("b-"), "{id2}");

    let list = r.json(&["repo", "list"]);
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backup_id"] == id.as_str())
        .expect("listed");
    assert_eq!(row["bytes"], total);
    assert_eq!(row["files"], 63);
    assert_eq!(row["meta"]["tags"][0], "nightly");

    let out = r.path().join("out");
    r.ok(&["repo", "get", &id, out.to_str().unwrap()]);
    assert_same_tree(&src, &out);
    let latest = r.path().join("latest");
    r.ok(&["repo", "get", "latest", latest.to_str().unwrap()]);
    assert_same_tree(&src, &latest);
}

#[test]
fn wrong_or_missing_passphrase_is_a_clear_error() {
    let r = Repo::init("right one");
    let wrong = r.path().join("wrong");
    std::fs::write(&wrong, "wrong one\n").unwrap();
    let out = r.run_with(&wrong, &["repo", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("wrong passphrase") && err.contains("--password-file"),
        "{err}"
    );
    let out = Command::new(snapfleet_bin())
        .args(["repo", "list", "--repo", &r.url])
        .env_remove("SNAPFLEET_PASSWORD_FILE")
        .env_remove("SNAPFLEET_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("SNAPFLEET_PASSWORD"),
        "{}",
        stderr(&out)
    );
    let out = Command::new(snapfleet_bin())
        .args(["repo", "list"])
        .env_remove("SNAPFLEET_REPO")
        .env("SNAPFLEET_PASSWORD", "right one")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a missing --repo is a usage error"
    );
    assert!(stderr(&out).contains("SNAPFLEET_REPO"), "{}", stderr(&out));
    // The passphrase from the environment works too.
    let out = Command::new(snapfleet_bin())
        .args(["repo", "list", "--repo", &r.url])
        .env_remove("SNAPFLEET_PASSWORD_FILE")
        .env("SNAPFLEET_PASSWORD", "right one")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn deep_verify_names_a_corrupted_chunk_and_the_backup_it_breaks() {
    let r = Repo::init("pw");
    let src = r.path().join("src");
    make_tree(&src, 2);
    let id = r
        .ok(&["repo", "put", src.to_str().unwrap()])
        .trim()
        .to_string();
    r.ok(&["repo", "verify", "--deep"]);

    // Flip one byte in the largest chunk: the size stays, only a deep check sees it.
    let root = r.path().join("repo/chunks");
    let victim = r
        .chunks()
        .into_iter()
        .max_by_key(|p| root.join(p).metadata().unwrap().len())
        .unwrap();
    let path = root.join(&victim);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let key = format!("chunks/{}", victim.display());

    r.ok(&["repo", "verify"]);
    let out = r.run(&["repo", "verify", "--deep"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&key) && err.contains(&id), "{err}");
    let out = r.run(&["--json", "repo", "verify", "--deep"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["damaged"][0]["key"], key.as_str(), "{report:#}");
    assert_eq!(report["damaged"][0]["problem"], "corrupt");
    assert_eq!(report["broken_backups"][0], id.as_str());

    // Restoring it fails naming the object, and says what to run.
    let out = r.run(&["repo", "get", &id, r.path().join("o").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&key) && err.contains("verify --deep"), "{err}");
}

#[test]
fn forget_then_gc_frees_unreferenced_chunks_and_keeps_backups_restorable() {
    let r = Repo::init("pw");
    let (a, b) = (r.path().join("a"), r.path().join("b"));
    make_tree(&a, 3);
    make_tree(&b, 4);
    r.ok(&["repo", "put", a.to_str().unwrap(), "--id", "b1"]);
    r.ok(&["repo", "put", b.to_str().unwrap(), "--id", "b2"]);
    let before = r.chunks().len();

    let dry = r.json(&["repo", "forget", "--keep-last", "1", "--dry-run"]);
    assert_eq!(dry["removed"][0]["backup"], "b1");
    assert_eq!(r.json(&["repo", "list"]).as_array().unwrap().len(), 2);
    let out = r.run(&["repo", "forget"]);
    assert_eq!(out.status.code(), Some(1), "an empty policy is refused");
    assert!(stderr(&out).contains("--keep-last"), "{}", stderr(&out));

    let f = r.json(&["repo", "forget", "--keep-last", "1"]);
    assert_eq!(f["kept"][0]["backup"], "b2");
    let list = r.json(&["repo", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(!r.path().join("repo/backups/b1").exists());

    // The default grace period keeps the young garbage; a zero grace frees it.
    let g = r.json(&["repo", "gc"]);
    assert_eq!(g["chunks_deleted"], 0, "{g:#}");
    assert!(g["chunks_kept_young"].as_u64().unwrap() > 0, "{g:#}");
    let dry = r.json(&["repo", "gc", "--grace", "0s", "--dry-run"]);
    assert!(dry["chunks_deleted"].as_u64().unwrap() > 0, "{dry:#}");
    assert_eq!(r.chunks().len(), before, "dry run deletes nothing");
    let g = r.json(&["repo", "gc", "--grace", "0s"]);
    assert_eq!(g["chunks_deleted"], dry["chunks_deleted"], "{g:#}");
    let after = r.chunks().len();
    assert_eq!(after as u64, g["live_chunks"].as_u64().unwrap());
    assert!(after < before, "{after} chunks of {before} left");

    r.ok(&["repo", "verify", "--deep"]);
    let out = r.path().join("out");
    r.ok(&["repo", "get", "b2", out.to_str().unwrap()]);
    assert_same_tree(&b, &out);
}

/// The dangerous case: a writer reuses (dedups against) chunks of a forgotten backup while gc
/// runs. gc must not delete them: it sees the writer's lease and refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_during_a_running_backup_loses_nothing() {
    use snapfleet_repository::{open_store, BackupId, BackupWriter, Repository};
    let r = Repo::init("pw");
    let (a, b) = (r.path().join("a"), r.path().join("b"));
    make_tree(&a, 5);
    make_tree(&b, 6);
    r.ok(&["repo", "put", a.to_str().unwrap(), "--id", "b1"]);
    r.ok(&["repo", "put", b.to_str().unwrap(), "--id", "b2"]);
    r.ok(&["repo", "forget", "--keep-last", "1"]); // b1's chunks are now garbage
    let garbage = r.chunks().len();

    // Another process writes a backup of the same tree: every chunk is found and reused.
    let repo = std::sync::Arc::new(
        Repository::open(open_store(&r.url).unwrap(), b"pw")
            .await
            .unwrap(),
    );
    let w = BackupWriter::new(repo.clone(), BackupId::new("b3").unwrap())
        .await
        .unwrap();
    w.put_dir(&a).await.unwrap();
    assert_eq!(r.chunks().len(), garbage, "the writer reused b1's chunks");

    let out = r.run(&["repo", "gc", "--grace", "0s"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "gc must refuse while b3 is written"
    );
    let err = stderr(&out);
    assert!(
        err.contains("gc refused") && err.contains("backup b3") && err.contains("locks/writer-"),
        "{err}"
    );
    assert_eq!(r.chunks().len(), garbage, "gc deleted nothing");

    let (root, _) = w.commit(serde_json::json!({})).await.unwrap();
    assert_eq!(root.backup_id.as_str(), "b3");
    let g = r.json(&["repo", "gc", "--grace", "0s"]);
    assert_eq!(g["chunks_deleted"], 0, "every chunk is live again: {g:#}");
    let out = r.path().join("out");
    r.ok(&["repo", "get", "b3", out.to_str().unwrap()]);
    assert_same_tree(&a, &out);
    r.ok(&["repo", "verify", "--deep"]);
}

#[test]
fn copy_to_a_repository_with_another_passphrase() {
    let src_repo = Repo::init("source pass");
    let dst_repo = Repo::init("target pass");
    let (a, b) = (src_repo.path().join("a"), src_repo.path().join("b"));
    make_tree(&a, 7);
    make_tree(&b, 8);
    src_repo.ok(&["repo", "put", a.to_str().unwrap(), "--id", "b1"]);
    src_repo.ok(&["repo", "put", b.to_str().unwrap(), "--id", "b2"]);

    let to_pw = dst_repo.pw.to_str().unwrap();
    let copy = src_repo.json(&[
        "repo",
        "copy",
        "--to",
        &dst_repo.url,
        "--to-password-file",
        to_pw,
        "--backup",
        "b1",
    ]);
    assert_eq!(copy["copied"][0]["backup"], "b1", "{copy:#}");
    // Resumable: b1 is skipped, only b2 is sent.
    let copy = src_repo.json(&[
        "repo",
        "copy",
        "--to",
        &dst_repo.url,
        "--to-password-file",
        to_pw,
    ]);
    assert_eq!(copy["skipped"][0], "b1", "{copy:#}");
    assert_eq!(copy["copied"][0]["backup"], "b2", "{copy:#}");

    // Different keys: no chunk object is shared by name.
    let src_chunks: std::collections::HashSet<PathBuf> = src_repo.chunks().into_iter().collect();
    assert!(dst_repo.chunks().iter().all(|c| !src_chunks.contains(c)));

    let list = dst_repo.json(&["repo", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    for (id, tree) in [("b1", &a), ("b2", &b)] {
        let out = dst_repo.path().join(format!("out-{id}"));
        dst_repo.ok(&["repo", "get", id, out.to_str().unwrap()]);
        assert_same_tree(tree, &out);
    }
    dst_repo.ok(&["repo", "verify", "--deep"]);
    let out = dst_repo.run_with(&src_repo.pw, &["repo", "list"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the source passphrase does not open the copy"
    );
}

#[test]
fn key_add_list_remove() {
    let r = Repo::init("first");
    let second = r.path().join("second");
    std::fs::write(&second, "second\n").unwrap();
    let added = r.json(&[
        "repo",
        "key",
        "add",
        "--new-password-file",
        second.to_str().unwrap(),
    ]);
    let new_id = added["key_id"].as_str().unwrap().to_string();
    let keys = r.json(&["repo", "key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 2);
    let first_id = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .find(|k| *k != new_id)
        .unwrap();
    let out = r.run_with(&second, &["repo", "key", "remove", &first_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(r.run(&["repo", "list"]).status.code(), Some(1));
    let out = r.run_with(&second, &["repo", "key", "remove", &new_id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("last key"), "{}", stderr(&out));
}

/// A second put of the same directory skips unchanged small files (the newest backup of the
/// directory is the parent), sends little, and still restores byte for byte.
#[test]
fn an_incremental_put_reads_and_sends_only_what_changed() {
    let r = Repo::init("pw");
    let src = r.path().join("src");
    make_tree(&src, 9);
    let first = r.json(&["repo", "put", src.to_str().unwrap()]);
    assert!(first["parent"].is_null(), "{first:#}");
    let small = src.join("small");
    let small_bytes: u64 = list_tree(&small)
        .iter()
        .map(|p| small.join(p))
        .filter(|p| p.is_file())
        .map(|p| p.metadata().unwrap().len())
        .sum();
    std::fs::write(src.join("small/d1/f005"), b"changed, and shorter").unwrap();
    std::fs::write(src.join("small/d2/new-file"), random_bytes(5000, 99)).unwrap();
    let second = r.json(&["repo", "put", src.to_str().unwrap()]);
    assert_eq!(second["parent"], first["backup_id"], "{second:#}");
    let read = second["bytes_read"].as_u64().unwrap();
    let total = first["bytes_read"].as_u64().unwrap();
    // Large files are always read (their chunks dedup); of the small ones only the two new.
    assert!(
        read <= total - small_bytes + 5020 + 20,
        "unchanged small files must not be read again: {read} of {total}"
    );
    let sent = second["bytes_uploaded"].as_u64().unwrap();
    assert!(
        sent < 100_000,
        "sent {sent} bytes for two small files: {second:#}"
    );
    let out = r.path().join("out");
    r.ok(&["repo", "get", "latest", out.to_str().unwrap()]);
    assert_same_tree(&src, &out);
    // Without a parent every file is read.
    let full = r.json(&["repo", "put", src.to_str().unwrap(), "--no-parent"]);
    assert!(full["parent"].is_null());
    assert!(full["bytes_read"].as_u64().unwrap() > total);
}

#[test]
fn an_unencrypted_repository_needs_no_passphrase_and_has_no_keys() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("repo").display());
    let run = |args: &[&str]| {
        Command::new(snapfleet_bin())
            .args(args)
            .env("SNAPFLEET_REPO", &url)
            .env_remove("SNAPFLEET_PASSWORD_FILE")
            .env_remove("SNAPFLEET_PASSWORD")
            .output()
            .unwrap()
    };
    let ok = |args: &[&str]| {
        let out = run(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let init: serde_json::Value =
        serde_json::from_str(&ok(&["--json", "repo", "init", "--encryption", "none"])).unwrap();
    assert_eq!(init["format_version"], 2, "{init:#}");
    let src = dir.path().join("src");
    make_tree(&src, 5);
    let put: serde_json::Value = serde_json::from_str(&ok(&[
        "--json",
        "repo",
        "put",
        src.to_str().unwrap(),
        "--compression",
        "0",
    ]))
    .unwrap();
    assert!(put["bytes_uploaded"].as_u64().unwrap() > 0, "{put:#}");
    let out = dir.path().join("out");
    ok(&["repo", "get", "latest", out.to_str().unwrap()]);
    assert_same_tree(&src, &out);
    let keys = run(&["repo", "key", "list"]);
    assert_eq!(keys.status.code(), Some(1));
    assert!(stderr(&keys).contains("not encrypted"), "{}", stderr(&keys));
    let again = run(&["repo", "init", "--encryption", "none"]);
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    // A passphrase means encryption is expected: such a repository is refused, not used in
    // the clear, and `init --encryption none` with a passphrase set is refused too.
    let with_pass = |args: &[&str]| {
        Command::new(snapfleet_bin())
            .args(args)
            .env("SNAPFLEET_REPO", &url)
            .env_remove("SNAPFLEET_PASSWORD_FILE")
            .env("SNAPFLEET_PASSWORD", "some passphrase")
            .output()
            .unwrap()
    };
    let refused = with_pass(&["repo", "list"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("unset the passphrase"),
        "{}",
        stderr(&refused)
    );
    let other = format!("file://{}", dir.path().join("other").display());
    let refused = with_pass(&["repo", "init", "--encryption", "none", "--repo", &other]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("passphrase is set"),
        "{}",
        stderr(&refused)
    );
}

/// A full disk under a `file://` repository: the backup fails at once naming the object and
/// the cause, commits nothing, and the repository still verifies. The disk is a 3 MiB tmpfs
/// mounted in a private mount namespace (`unshare -m`, as root: CI runs as root).
#[test]
fn a_full_disk_fails_the_backup_cleanly_and_commits_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big.bin"), random_bytes(8 << 20, 5)).unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let pass = tmp.path().join("pass");
    std::fs::write(&pass, "pw\n").unwrap();
    let bin = snapfleet_bin();
    let url = format!("file://{}", repo.display());
    let p = pass.display().to_string();
    let script = format!(
        "set -e; mount -t tmpfs -o size=3m tmpfs {repo}; \
         {bin} repo init --repo {url} --password-file {p} {kdf} >/dev/null; \
         if {bin} repo put {src} --repo {url} --password-file {p} 2>{tmp}/put.err; then exit 10; fi; \
         {bin} --json repo list --repo {url} --password-file {p} >{tmp}/list.json; \
         {bin} --json repo verify --repo {url} --password-file {p} >{tmp}/verify.json",
        repo = repo.display(),
        bin = bin.display(),
        src = src.display(),
        tmp = tmp.path().display(),
        kdf = KDF.join(" "),
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux) is needed for this test");
    assert!(
        out.status.success(),
        "exit {:?} (10: the backup succeeded on a full disk): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let err = std::fs::read_to_string(tmp.path().join("put.err")).unwrap();
    assert!(
        err.contains("No space left on device") && err.contains("chunks/"),
        "the error names the object and the cause: {err}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("list.json")).unwrap())
            .unwrap();
    assert_eq!(list.as_array().map(|a| a.len()), Some(0), "{list}");
    let verify: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("verify.json")).unwrap())
            .unwrap();
    assert_eq!(
        verify["damaged"].as_array().map(|a| a.len()),
        Some(0),
        "{verify}"
    );
}
