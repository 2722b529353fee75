//! Off-cluster point-in-time recovery, as an operator runs it: `snapfleet pitr archive
//! enable` makes every agent ship its node's change log into the repository; a base backup;
//! the counter workload keeps writing, a table is dropped, an agent is killed with -9 and
//! restarted; then `snapfleet restore --db D --to TIME` into brand-new clusters (fleets that
//! never saw the source) rebuilds the database exactly as of TIME.

use snapfleet_tabletdb::{sql, verify, workload, HybridTime};
use snapfleet_tests::{init_repo, CounterWriter, TestFleet};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DB: &str = "app";

/// The running archive of DB as `pitr archive status --json` shows it.
fn status(f: &TestFleet) -> serde_json::Value {
    let (ok, v, err) = f.snapfleet(&["pitr", "archive", "status", "--db", DB]);
    assert!(ok, "{err}");
    v[0].clone()
}

fn node_checkpoint(v: &serde_json::Value, node: &str) -> u64 {
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == node)
        .and_then(|n| n["checkpoint_ht"].as_u64())
        .unwrap_or(0)
}

/// Polls until the global checkpoint is at or after `t`.
fn wait_checkpoint(f: &TestFleet, t: HybridTime) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let v = status(f);
        if v["checkpoint_ht"].as_u64().unwrap_or(0) >= t.0 {
            return;
        }
        if Instant::now() > deadline {
            let (_, jobs, _) = f.snapfleet(&["job", "list", "--all"]);
            panic!("the archive's checkpoint never reached {t}: {v}\njobs: {jobs}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn restore_to(
    dst: &TestFleet,
    url: &str,
    pass: &std::path::Path,
    to: &str,
) -> (bool, serde_json::Value, String) {
    dst.snapfleet(&[
        "restore",
        "--db",
        DB,
        "--to",
        to,
        "--repo",
        url,
        "--password-file",
        pass.to_str().unwrap(),
        "--wait",
    ])
}

async fn checksums(
    c: &snapfleet_tabletdb::Client,
    tables: &[String],
    at: Option<HybridTime>,
) -> Vec<verify::TableChecksum> {
    let mut out = Vec::new();
    for t in tables {
        out.push(verify::table_checksum(c, DB, t, at).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn archived_change_log_restores_new_clusters_to_any_time_even_across_a_killed_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, pass) = init_repo(tmp.path()).await;
    let pass_s = pass.to_str().unwrap();
    let mut src = TestFleet::start(3, &pass).await;
    let client = Arc::new(src.cluster.client().await.unwrap());
    client.create_database(DB, false).await.unwrap();
    workload::run_load(
        client.clone(),
        workload::LoadOptions {
            db: DB.into(),
            tables: 1,
            tablets: 4,
            rows: Some(3_000),
            row_size: 128,
            ..Default::default()
        },
        Arc::new(workload::Progress::default()),
    )
    .await
    .unwrap();
    sql::execute(
        &client,
        DB,
        "CREATE TABLE extra (k int8 PRIMARY KEY, v text) WITH (tablets = 2)",
        None,
    )
    .await
    .unwrap();
    sql::execute(
        &client,
        DB,
        "INSERT INTO extra VALUES (1, 'one'), (2, 'two'), (3, 'three')",
        None,
    )
    .await
    .unwrap();
    let log = tmp.path().join("counter.log");
    let writer = CounterWriter::start(client.clone(), DB, 4, log.clone());
    writer.wait_for_keys(50).await;

    // Archive, then the base backup.
    let (ok, v, err) = src.snapfleet(&[
        "pitr",
        "archive",
        "enable",
        "--db",
        DB,
        "--repo",
        &url,
        "--interval",
        "500ms",
    ]);
    assert!(ok, "{err}\n{v}");
    let (ok, _, err) = src.snapfleet(&["pitr", "archive", "enable", "--db", DB, "--repo", &url]);
    assert!(!ok && err.contains("already being archived"), "{err}");
    let v = src.backup_wait(DB, &url, pass_s, &[]);
    let base = HybridTime(v["result"]["hybrid_time"].as_u64().unwrap());
    wait_checkpoint(&src, base);

    // kill -9 node 1's agent: its checkpoint stops, holding the global one back.
    src.fleet.kill_agent(1);
    let stalled = node_checkpoint(&status(&src), "1");
    let k = writer.keys();
    writer.wait_for_keys(k + 40).await;
    let t1 = client.now().await.unwrap(); // written while node 1 archives nothing
    let k = writer.keys();
    writer.wait_for_keys(k + 20).await;
    let v = status(&src);
    let dead = node_checkpoint(&v, "1");
    assert!(
        dead >= stalled && dead < t1.0,
        "a dead agent's checkpoint passed writes made after its death: {v}"
    );
    assert!(
        v["checkpoint_ht"].as_u64().unwrap() <= dead,
        "the global checkpoint passed data nobody archived: {v}"
    );
    // Restarted, it resumes where its progress object says: no hole in the chain.
    src.start_agent(1).unwrap();
    wait_checkpoint(&src, t1);

    let tables_t1 = vec![
        "load_0".to_string(),
        "counter".to_string(),
        "extra".to_string(),
    ];
    let want_t1 = checksums(&client, &tables_t1, Some(t1)).await;
    // Drop a table after t1, then a later time t2.
    sql::execute(&client, DB, "DROP TABLE extra", None)
        .await
        .unwrap();
    // Let the archivers see the drop before t2: an archive pass reads the catalog first,
    // then the logs up to its checkpoint. Once the checkpoint passes a time after the drop,
    // the next pass (the one that moves it past a second, later time) read the catalog
    // after the drop. Without this, t3 could fall between the drop and the pass that saw
    // it, which a restore rightly refuses ("its archiver did not look in between").
    let after_drop = client.now().await.unwrap();
    wait_checkpoint(&src, after_drop);
    let later = client.now().await.unwrap();
    wait_checkpoint(&src, later);
    let k = writer.keys();
    writer.wait_for_keys(k + 20).await;
    let t2_rfc = client.now().await.unwrap().to_rfc3339();
    let t2 = HybridTime::parse(&t2_rfc).unwrap();
    let k = writer.keys();
    writer.wait_for_keys(k + 20).await;
    writer.stop().await;
    let tables_t2 = vec!["load_0".to_string(), "counter".to_string()];
    let want_t2 = checksums(&client, &tables_t2, Some(t2)).await;
    assert_ne!(
        checksums(&client, &tables_t2, Some(base)).await,
        want_t2,
        "the change log must matter"
    );
    // The source is restored in place to t2: the archive must hide what it hid (the
    // writes after t2 are in the change log all the same).
    assert_ne!(checksums(&client, &tables_t2, None).await, want_t2);
    let (ok, _, err) = src.snapfleet(&["pitr", "restore", "--db", DB, "--to", &t2_rfc]);
    assert!(ok, "in-place restore: {err}");
    assert_eq!(checksums(&client, &tables_t2, None).await, want_t2);
    let t3_rfc = client.now().await.unwrap().to_rfc3339();
    let t3 = HybridTime::parse(&t3_rfc).unwrap();
    wait_checkpoint(&src, t3);

    // Retention: a newer backup and `repo forget --keep-last 1` keep the base backup that
    // the PITR window needs (and prune only log pieces older than it).
    src.backup_wait(DB, &url, pass_s, &[]);
    let base_id = {
        let (ok, v, err) =
            src.snapfleet(&["backup", "list", "--repo", &url, "--password-file", pass_s]);
        assert!(ok, "{err}");
        v.as_array()
            .unwrap()
            .iter()
            .find(|b| b["hybrid_time"].as_u64() == Some(base.0))
            .unwrap_or_else(|| panic!("base backup not listed: {v}"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (ok, v, err) = src.snapfleet(&[
        "repo",
        "forget",
        "--keep-last",
        "1",
        "--repo",
        &url,
        "--password-file",
        pass_s,
    ]);
    assert!(ok, "{err}");
    assert!(v["removed"].as_array().unwrap().is_empty(), "{v}");
    let kept = v["kept"].as_array().unwrap();
    assert!(
        kept.iter()
            .any(|d| d["backup"] == base_id.as_str() && d["reasons"][0] == "pitr"),
        "{v}"
    );

    // t1 into a new 2-node cluster: the base backup plus the replayed log, exactly.
    let dst = TestFleet::start(2, &pass).await;
    let (ok, r, err) = restore_to(&dst, &url, &pass, &t1.0.to_string());
    assert!(ok, "restore to t1 failed: {err}\n{r}");
    assert_eq!(r["result"]["restore_ht"].as_u64(), Some(t1.0), "{r}");
    assert!(r["result"]["replayed"].as_u64().unwrap() > 0, "{r}");
    let dclient = dst.cluster.client().await.unwrap();
    assert_eq!(checksums(&dclient, &tables_t1, None).await, want_t1);
    let rep = verify::check_consistency(
        &dclient,
        DB,
        t1,
        Some(dclient.now().await.unwrap()),
        Some(&log),
    )
    .await
    .unwrap();
    assert!(rep.ok && rep.keys_expected > 0, "{rep:?}");

    // t3 (RFC 3339, after the in-place restore) into another new cluster: the table dropped
    // before is not there, and the rows are those the source shows (as of t2).
    let dst2 = TestFleet::start(2, &pass).await;
    let (ok, r, err) = restore_to(&dst2, &url, &pass, &t3_rfc);
    assert!(ok, "restore to t3 failed: {err}\n{r}");
    assert_eq!(r["result"]["skipped_tables"][0], "extra", "{r}");
    let d2 = dst2.cluster.client().await.unwrap();
    assert_eq!(checksums(&d2, &tables_t2, None).await, want_t2);
    assert!(d2.table(DB, "extra").await.is_err());

    // Outside the window: clear errors, nothing created.
    let (ok, _, err) = restore_to(&dst2, &url, &pass, "2000-01-01T00:00:00Z");
    assert!(!ok && err.contains("no base backup"), "{err}");
    let later = HybridTime::from_micros(t3.physical_micros() + 3_600_000_000);
    let (ok, _, err) = restore_to(&dst2, &url, &pass, &later.0.to_string());
    assert!(!ok && err.contains("PITR window"), "{err}");
    assert!(d2.tables(DB).await.unwrap().len() == 2);

    // Disabled: no archive runs any more.
    let (ok, _, err) = src.snapfleet(&["pitr", "archive", "disable", "--db", DB]);
    assert!(ok, "{err}");
    let (ok, v, err) = src.snapfleet(&["pitr", "archive", "status"]);
    assert!(ok && v.as_array().unwrap().is_empty(), "{err}{v}");
}
