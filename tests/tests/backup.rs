//! End-to-end backup and restore through the coordinator and the agents, all real
//! processes: backup while the counter workload writes, restore from the repository alone
//! (a fresh fleet that never saw the backup) into clusters of other sizes, a killed agent,
//! a corrupted chunk, an incremental backup, a racing DDL.

use snapfleet_localfleet::scenario::compare_tables;
use snapfleet_tabletdb::{sql, verify, workload, HybridTime};
use snapfleet_tests::{init_repo, CounterWriter, TestFleet};
use std::path::Path;
use std::sync::Arc;

const DB: &str = "app";

async fn load(client: &Arc<snapfleet_tabletdb::Client>, rows: u64, offset: u64) {
    workload::run_load(
        client.clone(),
        workload::LoadOptions {
            db: DB.into(),
            tables: 2,
            tablets: 4,
            rows: Some(rows),
            row_size: 256,
            id_offset: offset,
            ..Default::default()
        },
        Arc::new(workload::Progress::default()),
    )
    .await
    .expect("load");
}

fn restore(
    dst: &TestFleet,
    url: &str,
    pass: &Path,
    backup_id: &str,
    extra: &[&str],
) -> (bool, serde_json::Value, String) {
    let mut args = vec![
        "restore",
        "--backup",
        backup_id,
        "--repo",
        url,
        "--password-file",
        pass.to_str().unwrap(),
        "--wait",
    ];
    args.extend_from_slice(extra);
    dst.snapfleet(&args)
}

/// Every table of the source at `at` equals the same table on the target now (the
/// scenario's check, as the demo and the benches run it); returns the rows compared.
async fn assert_same(
    src: &snapfleet_tabletdb::Client,
    dst: &snapfleet_tabletdb::Client,
    db_dst: &str,
    at: HybridTime,
) -> u64 {
    let checks = compare_tables(src, DB, at, dst, db_dst).await.unwrap();
    assert!(!checks.is_empty(), "no tables compared");
    for c in &checks {
        assert!(c.ok, "table {} differs after restore: {c:?}", c.table);
    }
    checks.iter().map(|c| c.source_rows).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_during_writes_restores_consistently_into_2_and_5_nodes() {
    let (tmp, url, pass, src, client) = loaded_source(3, 20_000).await;
    let log = tmp.path().join("counter.log");
    let writer = CounterWriter::start(client.clone(), DB, 6, log.clone());
    writer.wait_for_keys(200).await;

    let v = src.backup_wait(DB, &url, pass.to_str().unwrap(), &[]);
    let at = HybridTime(v["result"]["hybrid_time"].as_u64().unwrap());
    let id = v["result"]["backup_id"].as_str().unwrap().to_string();
    assert!(v["result"]["bytes"].as_u64().unwrap() > 1 << 20, "{v}");
    // Writes go on after the cut: the restore must not show them.
    let k = writer.keys();
    writer.wait_for_keys(k + 100).await;
    writer.stop().await;
    // The tablet snapshots were released on the nodes.
    let snaps = client
        .master()
        .list_snapshots(snapfleet_tabletdb::pb::ListSnapshotsRequest {
            database: DB.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .snapshots;
    assert!(snaps.is_empty(), "snapshots left behind: {snaps:?}");

    // Restore from the repository alone, with fresh fleets that never saw the backup.
    for nodes in [2u32, 5] {
        let dst = TestFleet::start(nodes, &pass).await;
        let (ok, r, err) = restore(&dst, &url, &pass, &id, &[]);
        assert!(ok, "restore into {nodes} nodes failed: {err}\n{r}");
        assert_eq!(r["result"]["restore_ht"].as_u64(), Some(at.0), "{r}");
        let dclient = dst.cluster.client().await.unwrap();
        let rows = assert_same(&client, &dclient, DB, at).await;
        assert_no_staging(&dst).await;
        assert!(rows > 20_000, "{rows}");
        let rep = verify::check_consistency(
            &dclient,
            DB,
            at,
            Some(dclient.now().await.unwrap()),
            Some(&log),
        )
        .await
        .unwrap();
        assert!(rep.ok && rep.keys_expected > 0, "{nodes} nodes: {rep:?}");
        // Tablets are spread over every target node.
        let cat = dclient.refresh().await.unwrap();
        let used: std::collections::BTreeSet<u32> = cat
            .tables
            .iter()
            .flat_map(|t| t.tablets.iter().map(|tb| tb.replicas[0]))
            .collect();
        assert_eq!(used.len(), nodes as usize, "placement {used:?}");
    }

    // A subset of tables under a new name.
    let dst = TestFleet::start(2, &pass).await;
    let (ok, r, err) = restore(
        &dst,
        &url,
        &pass,
        &id,
        &["--db", "copy", "--tables", "load_0"],
    );
    assert!(ok, "{err}\n{r}");
    let dclient = dst.cluster.client().await.unwrap();
    let names: Vec<String> = dclient
        .tables("copy")
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, vec!["load_0".to_string()]);
    let a = verify::table_checksum(&client, DB, "load_0", Some(at))
        .await
        .unwrap();
    let b = verify::table_checksum(&dclient, "copy", "load_0", None)
        .await
        .unwrap();
    assert_eq!(a, b);
    // Restoring the same tables again into the same database is refused, target unchanged.
    let (ok, r, err) = restore(
        &dst,
        &url,
        &pass,
        &id,
        &["--db", "copy", "--tables", "load_0"],
    );
    assert!(!ok, "{r}");
    assert!(err.contains("already exists"), "{err}");
    let b2 = verify::table_checksum(&dclient, "copy", "load_0", None)
        .await
        .unwrap();
    assert_eq!(b, b2);
}

/// A repository and an `nodes`-node source with its fleet and `rows` loaded: (temp dir,
/// repository url, passphrase file, source, client).
async fn loaded_source(
    nodes: u32,
    rows: u64,
) -> (
    tempfile::TempDir,
    String,
    std::path::PathBuf,
    TestFleet,
    Arc<snapfleet_tabletdb::Client>,
) {
    let tmp = tempfile::tempdir().unwrap();
    let (url, pass) = init_repo(tmp.path()).await;
    let src = TestFleet::start(nodes, &pass).await;
    let client = Arc::new(src.cluster.client().await.unwrap());
    client.create_database(DB, false).await.unwrap();
    load(&client, rows, 0).await;
    (tmp, url, pass, src, client)
}

/// A 2-node source with its fleet, `rows` loaded and backed up (zstd off): (temp dir,
/// repository url, passphrase file, source, client, backup id).
async fn backed_up(
    rows: u64,
) -> (
    tempfile::TempDir,
    String,
    std::path::PathBuf,
    TestFleet,
    Arc<snapfleet_tabletdb::Client>,
    String,
) {
    let (tmp, url, pass, src, client) = loaded_source(2, rows).await;
    let v = src.backup_wait(DB, &url, pass.to_str().unwrap(), &["--compression", "0"]);
    let id = v["result"]["backup_id"].as_str().unwrap().to_string();
    (tmp, url, pass, src, client, id)
}

/// Nothing is left in the target nodes' staging directories: each agent's janitor removes
/// the staging of an ended restore on its own host within a few seconds.
async fn assert_no_staging(dst: &TestFleet) {
    let staged = || -> Vec<std::path::PathBuf> {
        (0..dst.cluster.nodes.len())
            .flat_map(|i| {
                let staging = dst.cluster.node_dir(i as u32 + 1).join("staging");
                std::fs::read_dir(&staging)
                    .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect()
    };
    snapfleet_tests::eventually(
        std::time::Duration::from_secs(30),
        "the agents to remove the staging of the ended restore",
        || async { staged().is_empty().then_some(()) },
    )
    .await;
}

/// Flips one byte in the middle of every chunk object larger than 4 KiB.
fn corrupt_chunks(repo_dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![repo_dir.join("chunks")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.metadata().unwrap().len() > 4096 {
                let mut b = std::fs::read(e.path()).unwrap();
                let mid = b.len() / 2;
                b[mid] ^= 0x55;
                std::fs::write(e.path(), b).unwrap();
                n += 1;
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_chunk_fails_restore_before_activate_and_target_is_untouched() {
    let (tmp, url, pass, _src, _client, id) = backed_up(5_000).await;

    let dst = TestFleet::start(2, &pass).await;
    let dclient = dst.cluster.client().await.unwrap();
    dclient.create_database("keep", false).await.unwrap();
    sql::execute(
        &dclient,
        "keep",
        "CREATE TABLE t (k int8 PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'x')",
        None,
    )
    .await
    .unwrap();
    let before = dclient.refresh().await.unwrap();
    assert!(corrupt_chunks(&tmp.path().join("repo")) > 0);
    let (ok, r, err) = restore(&dst, &url, &pass, &id, &[]);
    assert!(!ok, "a restore from a corrupted repository succeeded: {r}");
    assert!(
        err.contains("corrupt") || err.contains("authentic"),
        "{err}"
    );
    let after = dclient.refresh().await.unwrap();
    assert!(
        after.databases.iter().all(|d| d.name != DB)
            || dclient.tables(DB).await.unwrap().is_empty(),
        "hidden tables left behind: {:?}",
        after.tables
    );
    let names = |c: &snapfleet_tabletdb::pb::Catalog| {
        c.tables.iter().map(|t| t.name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(names(&before), names(&after));
    // Nothing is left in the target nodes' staging directories.
    assert_no_staging(&dst).await;
}

/// The first in-flight job's progress on `node` as (bytes_done, bytes_total), via the CLI.
fn node_progress(f: &TestFleet, node: &str) -> Option<(u64, u64)> {
    let (ok, v, _) = f.snapfleet(&["job", "list"]);
    if !ok {
        return None;
    }
    let job = v.as_array()?.first()?.clone();
    let n = job["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["node"] == node)?
        .clone();
    Some((n["bytes_done"].as_u64()?, n["bytes_total"].as_u64()?))
}

/// Waits until the running job has done at least `frac` of `node`'s bytes (60 s at most).
fn wait_progress(f: &TestFleet, node: &str, frac: f64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some((done, total)) = node_progress(f, node) {
            if total > 0 && done as f64 >= frac * total as f64 {
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no progress on node {node}: {:?}",
            f.snapfleet(&["job", "list", "--all"])
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn spawn_snapfleet(f: &TestFleet, args: &[&str]) -> std::process::Child {
    std::process::Command::new(snapfleet_tests::snapfleet_bin())
        .arg("--json")
        .args(args)
        .env("SNAPFLEET_COORDINATOR", &f.fleet.coordinator_addr)
        .env("SNAPFLEET_DB_MASTER", &f.cluster.master_addr)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// `backup create --wait` of [`DB`] in the background, zstd off, at 2 MiB/s in all: slow
/// enough to act on it (kill a process, run a gc) while it runs.
fn spawn_slow_backup(f: &TestFleet, url: &str, pass: &str) -> std::process::Child {
    spawn_snapfleet(
        f,
        &[
            "backup",
            "create",
            "--db",
            DB,
            "--repo",
            url,
            "--password-file",
            pass,
            "--compression",
            "0",
            "--rate-limit",
            "2MiB/s",
            "--wait",
        ],
    )
}

fn finish(child: std::process::Child) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_agent_and_killed_coordinator_leader_do_not_stop_backup_or_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, pass) = init_repo(tmp.path()).await;
    // Three coordinator replicas: killing the leader elects another, whose job driver
    // picks the backup up from the phase in the log.
    let mut src = TestFleet::start_with(3, &pass, 3).await;
    let client = Arc::new(src.cluster.client().await.unwrap());
    client.create_database(DB, false).await.unwrap();
    workload::run_load(
        client.clone(),
        workload::LoadOptions {
            db: DB.into(),
            tables: 2,
            tablets: 3,
            rows: Some(24_000),
            row_size: 1024,
            ..Default::default()
        },
        Arc::new(workload::Progress::default()),
    )
    .await
    .unwrap();
    let pass_s = pass.to_str().unwrap();
    let leader = src.coordinator_leader();
    // ~26 MB over 3 nodes at 2 MiB/s in all: ~4 s per node at least, long enough to kill
    // even when a node's progress (counted per finished file) jumps late.
    let backup = spawn_slow_backup(&src, &url, pass_s);
    wait_progress(&src, "1", 0.4);
    src.fleet.kill_agent(1);
    src.start_agent(1).unwrap();
    // `job list` shows unfinished jobs only: the backup is still running.
    assert!(
        node_progress(&src, "1").is_some(),
        "the backup ended before the leader could be killed: slow it down"
    );
    src.fleet.kill_coordinator(leader);
    let v = finish(backup);
    assert_eq!(v["state"], "succeeded", "{v}");
    let r = &v["result"];
    let at = HybridTime(r["hybrid_time"].as_u64().unwrap());
    // The restarted agent resumed from its journal: files it had finished (≥ 40% of its
    // bytes when it was killed) were recorded without being read or sent again.
    assert!(r["retried_tablets"].as_u64().unwrap() >= 1, "{r}");
    let bytes = r["retried_bytes"].as_u64().unwrap();
    let read = r["retried_bytes_read"].as_u64().unwrap();
    let sent = r["retried_bytes_uploaded"].as_u64().unwrap();
    let journaled = r["journal_bytes"].as_u64().unwrap();
    eprintln!(
        "retried tablets: {bytes} bytes, {read} read again, {sent} uploaded, {journaled} \
         from the journal ({} files)",
        r["journal_files"]
    );
    assert!(r["journal_files"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(
        read + journaled,
        bytes,
        "a file is either journaled or read: {r}"
    );
    // How much the journal saves depends on where the kill landed: a retried tablet whose
    // only large file was in flight has nothing journaled (then every byte is read again,
    // which the equality above still checks). When it had finished files, they were neither
    // read nor sent again.
    if journaled > 0 {
        assert!(
            (read as f64) < 0.7 * bytes as f64,
            "the restarted agent read {read} of its tablets' {bytes} bytes again: {r}"
        );
        assert!(
            (sent as f64) < 0.7 * bytes as f64,
            "the retried tablets sent {sent} of {bytes} bytes again: {r}"
        );
    }

    // Restore into 2 nodes (a single coordinator replica and an agent, kill -9 and restarted
    // half-way).
    let mut dst = TestFleet::start(2, &pass).await;
    let restore = spawn_snapfleet(
        &dst,
        &[
            "restore",
            "--backup",
            r["backup_id"].as_str().unwrap(),
            "--repo",
            &url,
            "--password-file",
            pass_s,
            "--rate-limit",
            "8MiB/s",
            "--wait",
        ],
    );
    wait_progress(&dst, "1", 0.3);
    assert!(
        node_progress(&dst, "1").is_some(),
        "the restore ended too soon"
    );
    // kill -9 of the agent too: its re-leased downloads keep the files it had staged (each
    // verified again by hashing) instead of downloading them again.
    dst.fleet.kill_agent(1);
    dst.fleet.kill_coordinator(1);
    dst.fleet.start_coordinator(1).unwrap();
    dst.start_agent(1).unwrap();
    let v = finish(restore);
    assert_eq!(v["state"], "succeeded", "{v}");
    eprintln!(
        "restore: {} bytes, {} staged before the agent was killed and kept",
        v["result"]["bytes"], v["result"]["resumed_bytes"]
    );
    let dclient = dst.cluster.client().await.unwrap();
    assert_same(&client, &dclient, DB, at).await;
}

/// An object store that answers `503 SlowDown` beyond 2 MiB/s (per agent, injected below
/// the agents' retry layer): the backup still completes and restores intact, because the
/// agents retry the throttled requests and lower their own rate (AIMD) instead of failing,
/// and the job result and the agents' logs say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_lower_their_rate_when_the_object_store_throttles() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, pass) = init_repo(tmp.path()).await;
    let mut src = TestFleet::start(2, &pass).await;
    let client = Arc::new(src.cluster.client().await.unwrap());
    client.create_database(DB, false).await.unwrap();
    workload::run_load(
        client.clone(),
        workload::LoadOptions {
            db: DB.into(),
            tables: 2,
            tablets: 2,
            rows: Some(12_000),
            row_size: 1024,
            ..Default::default()
        },
        Arc::new(workload::Progress::default()),
    )
    .await
    .unwrap();
    // The agents, restarted against a store with a capacity.
    src.fleet.agent_args = vec!["--drill-store-capacity".into(), "2MiB/s".into()];
    for id in 1..=2 {
        src.fleet.kill_agent(id);
        src.start_agent(id).unwrap();
    }
    let started = std::time::Instant::now();
    let v = src.backup_wait(DB, &url, pass.to_str().unwrap(), &["--compression", "0"]);
    let r = &v["result"];
    let (throttled, lowest) = (
        r["throttled"].as_u64().unwrap(),
        r["throttled_lowest_rate"].as_u64().unwrap(),
    );
    eprintln!(
        "backup of {} bytes in {:.1?}: throttled {throttled} times, rate lowered to {lowest} B/s \
         at the lowest; note: {}",
        r["bytes"],
        started.elapsed(),
        r["throttle_note"]
    );
    assert!(throttled > 0, "the store never throttled: {r}");
    assert!(
        lowest > 0 && lowest < 64 << 20,
        "the agents did not lower their rate: {r}"
    );
    let note = r["throttle_note"].as_str().unwrap_or_default();
    assert!(note.contains("lowered their rate"), "{r}");
    let logs: String = (1..=2)
        .map(|i| std::fs::read_to_string(src.fleet.dir.join(format!("agent-{i}.log"))).unwrap())
        .collect();
    assert!(
        logs.contains("the object store is throttling: rate lowered to"),
        "no agent logged lowering its rate:\n{logs}"
    );

    // Nothing was lost to the throttling: the backup restores to exactly the data at T.
    let at = HybridTime(r["hybrid_time"].as_u64().unwrap());
    let dst = TestFleet::start(1, &pass).await;
    let (ok, v, err) = restore(&dst, &url, &pass, r["backup_id"].as_str().unwrap(), &[]);
    assert!(ok, "restore failed: {err}\n{v}");
    assert_eq!(v["state"], "succeeded", "{v}");
    let dclient = dst.cluster.client().await.unwrap();
    assert_same(&client, &dclient, DB, at).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn second_backup_after_changing_5_percent_uploads_little() {
    let (_tmp, url, pass, src, client) = loaded_source(3, 40_000).await;
    let first = src.backup_wait(DB, &url, pass.to_str().unwrap(), &[]);
    // Rewrite 5% of the rows with new payloads.
    load(&client, 2_000, 0).await;
    let second = src.backup_wait(DB, &url, pass.to_str().unwrap(), &[]);
    let (b1, u1) = (
        first["result"]["bytes"].as_u64().unwrap(),
        first["result"]["bytes_uploaded"].as_u64().unwrap(),
    );
    let (b2, u2) = (
        second["result"]["bytes"].as_u64().unwrap(),
        second["result"]["bytes_uploaded"].as_u64().unwrap(),
    );
    eprintln!(
        "first: {b1} bytes, {u1} uploaded; second: {b2} bytes, {u2} uploaded ({:.1}%)",
        100.0 * u2 as f64 / b2 as f64
    );
    assert!(
        u1 as f64 > 0.3 * b1 as f64,
        "first backup uploads the data: {first}"
    );
    assert!(
        (u2 as f64) < 0.15 * b2 as f64,
        "second backup sent {u2} of {b2} bytes: {second}"
    );
    // Both backups restore to their own point in time.
    let dst = TestFleet::start(1, &pass).await;
    for (v, name) in [(&first, "one"), (&second, "two")] {
        let (ok, r, err) = restore(
            &dst,
            &url,
            &pass,
            v["result"]["backup_id"].as_str().unwrap(),
            &["--db", name],
        );
        assert!(ok, "{err}\n{r}");
        let at = HybridTime(v["result"]["hybrid_time"].as_u64().unwrap());
        let dclient = dst.cluster.client().await.unwrap();
        assert_same(&client, &dclient, name, at).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ddl_racing_the_backup_waits_and_is_never_captured_half_way() {
    let (_tmp, url, pass, src, client) = loaded_source(2, 5_000).await;
    // Schema changes in a tight loop for the whole test.
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let ddl = {
        let (client, stop, done) = (client.clone(), stop.clone(), done.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = format!("ddl_{}", n % 3);
                let _ = sql::execute(&client, DB, &format!("DROP TABLE IF EXISTS {t}"), None).await;
                let _ = sql::execute(
                    &client,
                    DB,
                    &format!("CREATE TABLE {t} (k int8 PRIMARY KEY) WITH (tablets = 2)"),
                    None,
                )
                .await;
                n += 1;
                done.store(n, Ordering::Relaxed);
            }
            n
        })
    };
    // The DDL loop is running before the backups start and still after they end (each
    // DDL takes milliseconds, so it races them the whole time).
    let wait_ddls = |at_least: u64| {
        let done = done.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while done.load(Ordering::Relaxed) < at_least {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the DDL loop stalled at {} schema changes",
                    done.load(Ordering::Relaxed)
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    wait_ddls(3).await;
    let pass_s = pass.to_str().unwrap();
    let mut committed = Vec::new();
    for retries in ["0", "10"] {
        let (ok, v, err) = src.snapfleet(&[
            "backup",
            "create",
            "--db",
            DB,
            "--repo",
            &url,
            "--password-file",
            pass_s,
            "--ddl-retries",
            retries,
            "--wait",
        ]);
        // DDL waits the few milliseconds a snapshot takes: even without retries the
        // backup is never refused.
        assert!(
            ok,
            "a backup racing DDL (--ddl-retries {retries}) failed: {err}"
        );
        committed.push(v["result"].clone());
    }
    wait_ddls(done.load(Ordering::Relaxed) + 3).await;
    stop.store(true, Ordering::Relaxed);
    ddl.await.unwrap();
    // Every committed backup restores the load tables exactly as of its time.
    let dst = TestFleet::start(2, &pass).await;
    let dclient = dst.cluster.client().await.unwrap();
    for (i, r) in committed.iter().enumerate() {
        let name = format!("r{i}");
        let (ok, v, err) = restore(
            &dst,
            &url,
            &pass,
            r["backup_id"].as_str().unwrap(),
            &["--db", &name],
        );
        assert!(ok, "{err}\n{v}");
        let at = HybridTime(r["hybrid_time"].as_u64().unwrap());
        for t in ["load_0", "load_1"] {
            let a = verify::table_checksum(&client, DB, t, Some(at))
                .await
                .unwrap();
            let b = verify::table_checksum(&dclient, &name, t, None)
                .await
                .unwrap();
            assert_eq!(a, b, "{t} of backup {i}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_schedule_fires_on_time_and_keeps_the_newest_n() {
    let (_tmp, url, pass, src, _client) = loaded_source(2, 2_000).await;
    let pass_s = pass.to_str().unwrap();
    let (ok, v, err) = src.snapfleet(&[
        "backup",
        "schedule",
        "create",
        "--db",
        DB,
        "--repo",
        &url,
        "--password-file",
        pass_s,
        "--every",
        "2s",
        "--keep",
        "2",
        "--id",
        "nightly",
    ]);
    assert!(ok, "{err}");
    assert_eq!(v["id"], "nightly");
    // Wait until four scheduled backups have succeeded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let (_, jobs, _) = src.snapfleet(&["job", "list", "--all"]);
        let done = jobs
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|j| j["kind"] == "backup" && j["state"] == "succeeded")
                    .count()
            })
            .unwrap_or(0);
        let failed: Vec<_> = jobs
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|j| j["state"] == "failed")
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        assert!(failed.is_empty(), "scheduled backups failed: {failed:?}");
        if done >= 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {done} scheduled backups in 90 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (ok, _, err) = src.snapfleet(&["backup", "schedule", "delete", "nightly"]);
    assert!(ok, "{err}");
    let (ok, list, _) = src.snapfleet(&["backup", "schedule", "list"]);
    assert!(ok && list.as_array().unwrap().is_empty(), "{list}");
    // Let a firing that was already running finish, then count what the repository keeps.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while src
        .snapfleet(&["job", "list"])
        .1
        .as_array()
        .is_some_and(|a| !a.is_empty())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "scheduled job never ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (ok, backups, err) =
        src.snapfleet(&["backup", "list", "--repo", &url, "--password-file", pass_s]);
    assert!(ok, "{err}");
    let ids: Vec<String> = backups
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "retention keeps 2: {ids:?}");
    assert!(ids.iter().all(|i| i.starts_with("nightly-")), "{ids:?}");
    // The newest is restorable; the other one can be deleted by hand.
    let newest = ids.iter().max().unwrap();
    let oldest = ids.iter().min().unwrap();
    let (ok, _, err) = src.snapfleet(&[
        "backup",
        "delete",
        oldest,
        "--repo",
        &url,
        "--password-file",
        pass_s,
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = src.snapfleet(&[
        "backup",
        "delete",
        oldest,
        "--repo",
        &url,
        "--password-file",
        pass_s,
    ]);
    assert!(
        !ok && err.contains(oldest.as_str()),
        "deleting twice: {err}"
    );
    let dst = TestFleet::start(1, &pass).await;
    let (ok, r, err) = restore(&dst, &url, &pass, newest, &[]);
    assert!(ok, "{err}\n{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_restore_leaves_the_target_as_it_was() {
    let (_tmp, url, pass, _src, _client, id) = backed_up(20_000).await;

    let dst = TestFleet::start(2, &pass).await;
    let pass_s = pass.to_str().unwrap();
    let child = spawn_snapfleet(
        &dst,
        &[
            "restore",
            "--backup",
            &id,
            "--repo",
            &url,
            "--password-file",
            pass_s,
            "--rate-limit",
            "1MiB/s",
            "--wait",
        ],
    );
    wait_progress(&dst, "1", 0.1);
    let (_, jobs, _) = dst.snapfleet(&["job", "list"]);
    let job = jobs[0]["id"].as_u64().unwrap().to_string();
    let (ok, _, err) = dst.snapfleet(&["job", "cancel", &job, "--reason", "drill over"]);
    assert!(ok, "{err}");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a cancelled restore reported success"
    );
    assert!(
        err.contains("cancelled") && err.contains("drill over"),
        "{err}"
    );
    let dclient = dst.cluster.client().await.unwrap();
    let cat = dclient.refresh().await.unwrap();
    assert!(
        cat.tables.is_empty(),
        "tables left behind: {:?}",
        cat.tables
    );
    assert_no_staging(&dst).await;
}

/// Past its point of no return a restore rolls forward through transient failures, but a
/// permanent one ends it: here an operator drops the hidden table a restore is filling, and
/// the activation, which can never succeed, fails the job with the reason instead of
/// retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_permanent_error_at_activation_ends_the_restore() {
    let (_tmp, url, pass, _src, _client, id) = backed_up(20_000).await;
    let dst = TestFleet::start(2, &pass).await;
    let child = spawn_snapfleet(
        &dst,
        &[
            "restore",
            "--backup",
            &id,
            "--repo",
            &url,
            "--password-file",
            pass.to_str().unwrap(),
            "--rate-limit",
            "2MiB/s",
            "--wait",
        ],
    );
    wait_progress(&dst, "1", 0.05);
    // The restoring (hidden) tables, dropped under the running restore.
    let dclient = dst.cluster.client().await.unwrap();
    let hidden: Vec<String> = dclient
        .refresh()
        .await
        .unwrap()
        .tables
        .iter()
        .map(|t| t.name.clone())
        .collect();
    assert!(!hidden.is_empty());
    for t in &hidden {
        dclient.drop_table(DB, t).await.unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the restore reported success");
    assert!(err.contains("not found"), "the failure says why: {err}");
    let (_, jobs, _) = dst.snapfleet(&["job", "list", "--all"]);
    assert_eq!(jobs[0]["state"], "failed", "{jobs}");
    assert!(dclient.refresh().await.unwrap().tables.is_empty());
    assert_no_staging(&dst).await;
}

/// gc racing a running backup through the real fleet: while the backup runs, `repo gc`
/// refuses and names the backup's leases, the coordinator's own among them (it holds one
/// from before the snapshot to ROOT, so even the gap between the agents' last part and the
/// commit is covered); the backup commits, a gc with no grace period afterwards removes
/// nothing it needs, and the backup restores exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_racing_a_backup_is_refused_and_the_backup_stays_whole() {
    let (_tmp, url, pass, src, client) = loaded_source(2, 20_000).await;
    let pass_s = pass.to_str().unwrap();
    let child = spawn_slow_backup(&src, &url, pass_s);
    wait_progress(&src, "1", 0.05);
    let gc = |grace: &str| {
        std::process::Command::new(snapfleet_tests::snapfleet_bin())
            .args(["--json", "repo", "gc", "--grace", grace, "--repo", &url])
            .args(["--password-file", pass_s])
            .output()
            .unwrap()
    };
    let refused = gc("0s");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "gc ran during a backup");
    assert!(
        err.contains("(commit, coordinator)") && err.contains("backup "),
        "the refusal names the backup's leases, the coordinator's included: {err}"
    );
    let v = finish(child);
    assert_eq!(v["state"], "succeeded", "{v}");
    let at = HybridTime(v["result"]["hybrid_time"].as_u64().unwrap());
    let id = v["result"]["backup_id"].as_str().unwrap().to_string();
    // Every lease is gone with the job: gc runs, with no grace period at all.
    let ran = gc("0s");
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let dst = TestFleet::start(2, &pass).await;
    let (ok, r, err) = restore(&dst, &url, &pass, &id, &[]);
    assert!(ok, "restore after gc failed: {err}\n{r}");
    let dclient = dst.cluster.client().await.unwrap();
    assert!(assert_same(&client, &dclient, DB, at).await >= 20_000);
}
