//! End-to-end backup and restore through the coordinator and the agents, all real
//! processes: backup while the counter workload writes, restore from the repository alone
//! (a fresh fleet that never saw the backup) into clusters of other sizes, a killed agent,
//! a corrupted chunk, an incremental backup, a racing DDL.

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

fn backup(src: &TestFleet, url: &str, pass: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "backup",
        "create",
        "--db",
        DB,
        "--repo",
        url,
        "--password-file",
        pass.to_str().unwrap(),
        "--wait",
    ];
    args.extend_from_slice(extra);
    let (ok, v, err) = src.snapfleet(&args);
    assert!(ok, "backup failed: {err}\n{v}");
    assert_eq!(v["state"], "succeeded", "{v}");
    v
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

/// Every table of the source at `at` equals the same table on the target now.
async fn assert_same(
    src: &snapfleet_tabletdb::Client,
    dst: &snapfleet_tabletdb::Client,
    db_dst: &str,
    at: HybridTime,
) -> u64 {
    let mut rows = 0;
    for t in src.tables(DB).await.unwrap() {
        let a = verify::table_checksum(src, DB, &t.name, Some(at))
            .await
            .unwrap();
        let b = verify::table_checksum(dst, db_dst, &t.name, None)
            .await
            .unwrap();
        assert_eq!(a, b, "table {} differs after restore", t.name);
        rows += a.rows;
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_during_writes_restores_consistently_into_2_and_5_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, pass) = init_repo(tmp.path()).await;
    let src = TestFleet::start(3, &pass);
    let client = Arc::new(src.db.client().await.unwrap());
    client.create_database(DB, false).await.unwrap();
    load(&client, 20_000, 0).await;
    let log = tmp.path().join("counter.log");
    let writer = CounterWriter::start(client.clone(), DB, 6, log.clone());
    writer.wait_for_keys(200).await;

    let v = backup(&src, &url, &pass, &[]);
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
        let dst = TestFleet::start(nodes, &pass);
        let (ok, r, err) = restore(&dst, &url, &pass, &id, &[]);
        assert!(ok, "restore into {nodes} nodes failed: {err}\n{r}");
        assert_eq!(r["result"]["restore_ht"].as_u64(), Some(at.0), "{r}");
        let dclient = dst.db.client().await.unwrap();
        let rows = assert_same(&client, &dclient, DB, at).await;
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
    let dst = TestFleet::start(2, &pass);
    let (ok, r, err) = restore(
        &dst,
        &url,
        &pass,
        &id,
        &["--db", "copy", "--tables", "load_0"],
    );
    assert!(ok, "{err}\n{r}");
    let dclient = dst.db.client().await.unwrap();
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
    let tmp = tempfile::tempdir().unwrap();
    let (url, pass) = init_repo(tmp.path()).await;
    let src = TestFleet::start(2, &pass);
    let client = Arc::new(src.db.client().await.unwrap());
    client.create_database(DB, false).await.unwrap();
    load(&client, 5_000, 0).await;
    let v = backup(&src, &url, &pass, &["--compression", "0"]);
    let id = v["result"]["backup_id"].as_str().unwrap().to_string();

    let dst = TestFleet::start(2, &pass);
    let dclient = dst.db.client().await.unwrap();
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
    for id in 1..=2 {
        let staging = dst.db.node_dir(id).join("staging");
        let left: Vec<_> = std::fs::read_dir(&staging)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "staging left behind: {left:?}");
    }
}
