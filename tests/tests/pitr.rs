//! PITR snapshot schedules, as an operator runs them: `snapfleet pitr schedule create`
//! stores the schedule in the coordinator; the leader snapshots on time, raises every
//! node's history retention to cover the window, and expires snapshots that fell out of
//! it; `delete` withdraws the claim and the snapshots.

use snapfleet_tabletdb::pb;
use snapfleet_tabletdb::sql;
use snapfleet_tests::TestFleet;
use std::time::{Duration, Instant};

async fn labelled(client: &snapfleet_tabletdb::Client, label: &str) -> Vec<pb::SnapshotInfo> {
    client
        .master()
        .list_snapshots(pb::ListSnapshotsRequest {
            database: "p".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .snapshots
        .into_iter()
        .filter(|s| s.label == label)
        .collect()
}

async fn tablets_on_nodes(client: &snapfleet_tabletdb::Client) -> usize {
    client.refresh().await.unwrap();
    let mut n = 0;
    for node in client.catalog().nodes.iter().filter(|n| n.live) {
        let mut c = client.node_at(&node.address).await.unwrap();
        n += c
            .node_status(pb::NodeStatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .tablets
            .len();
    }
    n
}

/// Polls until the nodes hold `n` tablets (a dropped table's were purged).
async fn wait_purged(client: &snapfleet_tabletdb::Client, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while tablets_on_nodes(client).await != n {
        assert!(
            Instant::now() < deadline,
            "the dropped table was never purged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn retention_secs(client: &snapfleet_tabletdb::Client) -> Vec<u64> {
    client.refresh().await.unwrap();
    let mut out = Vec::new();
    for n in client.catalog().nodes.iter().filter(|n| n.live) {
        let mut c = client.node_at(&n.address).await.unwrap();
        let st = c
            .node_status(pb::NodeStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        out.push(st.history_retention_secs);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pitr_schedules_snapshot_on_time_hold_history_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "pitr test passphrase\n").unwrap();
    let fleet = TestFleet::start(2, &pass).await;
    let client = fleet.cluster.client().await.unwrap();
    client.create_database("p", true).await.unwrap();
    sql::execute(
        &client,
        "p",
        "CREATE TABLE t (k int8 PRIMARY KEY) WITH (tablets = 4)",
        None,
    )
    .await
    .unwrap();
    let before = retention_secs(&client).await;
    assert_eq!(before.len(), 2);

    // Refused: a window shorter than the interval; a database that does not exist.
    let (ok, _, err) = fleet.snapfleet(&[
        "pitr",
        "schedule",
        "create",
        "--db",
        "p",
        "--interval",
        "1h",
        "--retention",
        "10m",
    ]);
    assert!(!ok && err.contains("shorter than --interval"), "{err}");
    let (ok, _, err) = fleet.snapfleet(&["pitr", "schedule", "create", "--db", "nope"]);
    assert!(!ok && err.contains("database \"nope\" not found"), "{err}");

    // A fast schedule: a snapshot every 2 s kept for 4 s.
    let (ok, v, err) = fleet.snapfleet(&[
        "pitr",
        "schedule",
        "create",
        "--db",
        "p",
        "--interval",
        "2s",
        "--retention",
        "4s",
        "--id",
        "fast",
    ]);
    assert!(ok, "{err}");
    assert_eq!(v["kind"], "pitr");
    // Snapshots appear on time and the old ones go: after 6 firings (12 s) at most the
    // window's 2-3 plus the one covering its start remain.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let now: Vec<String> = labelled(&client, "pitr:fast")
            .await
            .into_iter()
            .map(|s| s.snapshot_id)
            .collect();
        assert!(now.len() <= 5, "snapshots are not expiring: {now:?}");
        seen.extend(now.iter().cloned());
        if seen.len() >= 6 && now.len() < seen.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the schedule did not fire 6 times in 120 s ({} seen)",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every firing is a pitr job that finishes (none fails).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, jobs, err) = fleet.snapfleet(&["job", "list", "--all"]);
        assert!(ok, "{err}");
        let pitr: Vec<_> = jobs
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["kind"] == "pitr")
            .collect();
        assert!(pitr.iter().all(|j| j["state"] != "failed"), "{jobs}");
        if pitr.iter().filter(|j| j["state"] == "succeeded").count() >= 6 {
            break;
        }
        assert!(Instant::now() < deadline, "{jobs}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A table dropped while the window is claimed keeps its tablets only until the drop
    // falls out of the window (4 s + 2 s): then the next firing purges them.
    sql::execute(
        &client,
        "p",
        "CREATE TABLE t2 (k int8 PRIMARY KEY) WITH (tablets = 3)",
        None,
    )
    .await
    .unwrap();
    let before_drop = tablets_on_nodes(&client).await;
    client.drop_table("p", "t2").await.unwrap();
    wait_purged(&client, before_drop - 3).await;

    // A wide window raises every node's history retention to cover it (2 h + 1 h).
    let (ok, _, err) = fleet.snapfleet(&[
        "pitr",
        "schedule",
        "create",
        "--db",
        "p",
        "--interval",
        "1h",
        "--retention",
        "2h",
        "--id",
        "wide",
    ]);
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while retention_secs(&client).await.iter().any(|&r| r < 3 * 3600) {
        assert!(Instant::now() < deadline, "history retention never rose");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Under the wide window a dropped table keeps its tablets (a restore to before the drop
    // can bring it back)...
    let before_drop = tablets_on_nodes(&client).await;
    let t_before_drop = client.now().await.unwrap();
    client.drop_table("p", "t").await.unwrap();
    assert_eq!(tablets_on_nodes(&client).await, before_drop);
    let (ok, list, err) = fleet.snapfleet(&["pitr", "schedule", "list"]);
    assert!(ok, "{err}");
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["fast", "wide"]);

    // Deleting both withdraws the claims (retention back to the nodes' own setting) and
    // the snapshots.
    for id in ["wide", "fast"] {
        let (ok, v, err) = fleet.snapfleet(&["pitr", "schedule", "delete", id]);
        assert!(ok, "{err}");
        assert_eq!(v["id"], id);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while retention_secs(&client).await != before {
        assert!(
            Instant::now() < deadline,
            "history retention did not return to {before:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and once no window is claimed any more, they go.
    wait_purged(&client, before_drop - 4).await;
    // A restore to before that drop would now silently miss the table: refused, saying why.
    let (ok, _, err) = fleet.snapfleet(&[
        "pitr",
        "restore",
        "--db",
        "p",
        "--to",
        &t_before_drop.0.to_string(),
    ]);
    assert!(!ok && err.contains("dropped for good"), "{err}");
    // No snapshot of theirs is left (a firing under way was waited for), and a second
    // delete is a clear error.
    assert!(labelled(&client, "pitr:fast").await.is_empty());
    assert!(labelled(&client, "pitr:wide").await.is_empty());
    let (ok, _, err) = fleet.snapfleet(&["pitr", "schedule", "delete", "fast"]);
    assert!(!ok && err.contains("no PITR schedule"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_dropped_inside_the_pitr_window_comes_back_in_place_and_in_a_clone() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "pitr test passphrase\n").unwrap();
    let fleet = TestFleet::start(2, &pass).await;
    let client = fleet.cluster.client().await.unwrap();
    client.create_database("p", true).await.unwrap();
    for ddl in [
        "CREATE TABLE orders (k int8 PRIMARY KEY, v text) WITH (tablets = 4)",
        "CREATE TABLE keep (k int8 PRIMARY KEY, v text) WITH (tablets = 2)",
    ] {
        sql::execute(&client, "p", ddl, None).await.unwrap();
    }
    for t in ["orders", "keep"] {
        let rows = (0..500)
            .map(|i| format!("({i}, '{t} row {i}')"))
            .collect::<Vec<_>>()
            .join(", ");
        sql::execute(
            &client,
            "p",
            &format!("INSERT INTO {t} VALUES {rows}"),
            None,
        )
        .await
        .unwrap();
    }
    // A PITR schedule is in force (its first firing claims the history window).
    let (ok, _, err) = fleet.snapfleet(&[
        "pitr",
        "schedule",
        "create",
        "--db",
        "p",
        "--interval",
        "1h",
        "--retention",
        "2h",
        "--id",
        "hourly",
    ]);
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while labelled(&client, "pitr:hourly").await.is_empty() {
        assert!(Instant::now() < deadline, "the schedule never fired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = client.now().await.unwrap();
    let at_t = |table: &'static str| {
        let client = &client;
        async move {
            snapfleet_tabletdb::verify::table_checksum(client, "p", table, Some(t))
                .await
                .unwrap()
        }
    };
    let (orders_t, keep_t) = (at_t("orders").await, at_t("keep").await);
    // The bad deploy: more writes, the table dropped, its name reused.
    sql::execute(
        &client,
        "p",
        "INSERT INTO keep VALUES (9999, 'after t')",
        None,
    )
    .await
    .unwrap();
    client.drop_table("p", "orders").await.unwrap();
    sql::execute(
        &client,
        "p",
        "CREATE TABLE orders (id int8 PRIMARY KEY)",
        None,
    )
    .await
    .unwrap();

    // A clone as of T has the dropped table with its rows.
    let (ok, v, err) = fleet.snapfleet(&[
        "clone",
        "--db",
        "p",
        "--as",
        "p_at_t",
        "--at",
        &t.0.to_string(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(v["tables"], 2, "{v}");
    let clone_orders =
        snapfleet_tabletdb::verify::table_checksum(&client, "p_at_t", "orders", None)
            .await
            .unwrap();
    assert_eq!(clone_orders, orders_t);

    // Dry run says what would happen, and changes nothing.
    let to = t.0.to_string();
    let (ok, v, err) = fleet.snapfleet(&["pitr", "restore", "--db", "p", "--to", &to, "--dry-run"]);
    assert!(ok, "{err}");
    assert_eq!(v["revived"], serde_json::json!(["orders"]), "{v}");
    assert_eq!(v["removed"], serde_json::json!(["orders"]), "{v}");
    // `keep` got one row after T: the dry run counts it now and not at T.
    assert_eq!(
        v["row_counts"],
        serde_json::json!([{"table": "keep", "now": keep_t.rows + 1, "at_time": keep_t.rows}]),
        "{v}"
    );
    let live = client.tables("p").await.unwrap();
    assert!(live
        .iter()
        .any(|t| t.name == "orders" && t.schema.as_ref().unwrap().columns.len() == 1));

    // In place: the dropped table is back with exactly its rows at T; the new one is gone.
    let (ok, v, err) = fleet.snapfleet(&["pitr", "restore", "--db", "p", "--to", &to]);
    assert!(ok, "{err}");
    assert_eq!(v["revived"], serde_json::json!(["orders"]), "{v}");
    client.refresh().await.unwrap();
    let now_orders = snapfleet_tabletdb::verify::table_checksum(&client, "p", "orders", None)
        .await
        .unwrap();
    assert_eq!(now_orders, orders_t);
    let now_keep = snapfleet_tabletdb::verify::table_checksum(&client, "p", "keep", None)
        .await
        .unwrap();
    assert_eq!(now_keep, keep_t);
    // It serves writes again.
    sql::execute(
        &client,
        "p",
        "INSERT INTO orders VALUES (100000, 'new')",
        None,
    )
    .await
    .unwrap();
}
