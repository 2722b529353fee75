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
    let fleet = TestFleet::start(2, &pass);
    let client = fleet.db.client().await.unwrap();
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
    assert!(!ok && err.contains("\"nope\" does not exist"), "{err}");

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
    // No snapshot of theirs is left (a firing under way was waited for), and a second
    // delete is a clear error.
    assert!(labelled(&client, "pitr:fast").await.is_empty());
    assert!(labelled(&client, "pitr:wide").await.is_empty());
    let (ok, _, err) = fleet.snapfleet(&["pitr", "schedule", "delete", "fast"]);
    assert!(!ok && err.contains("no PITR schedule"), "{err}");
}
