//! tabletdb end to end, with real processes on loopback: DDL, MVCC reads, scans, snapshots
//! under load restored into a cluster of another size, history retention, kill -9, and bad
//! input.

use snapfleet_localfleet::cluster::LocalOptions;
use snapfleet_tabletdb::pb::value::Kind;
use snapfleet_tabletdb::restore::{restore_snapshot, tablet_node, tablet_snapshot_dir};
use snapfleet_tabletdb::{pb, sql, verify, Client, Error, HybridTime};
use snapfleet_tests::{eventually, CounterWriter, TestCluster};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

fn int(i: i64) -> pb::Value {
    pb::Value {
        kind: Some(Kind::Int(i)),
    }
}
fn text(s: &str) -> pb::Value {
    pb::Value {
        kind: Some(Kind::Text(s.into())),
    }
}
fn row(k: i64, v: &str) -> pb::Row {
    pb::Row {
        values: vec![int(k), text(v)],
    }
}
fn key(k: i64) -> pb::Row {
    pb::Row {
        values: vec![int(k)],
    }
}
fn val(r: &pb::Row) -> String {
    match &r.values[1].kind {
        Some(Kind::Text(s)) => s.clone(),
        other => panic!("unexpected {other:?}"),
    }
}

async fn kv_table(c: &Client, db: &str, name: &str, tablets: u32) {
    c.create_database(db, true).await.unwrap();
    sql::execute(
        c,
        db,
        &format!("CREATE TABLE {name} (k int8 PRIMARY KEY, v text) WITH (tablets = {tablets})"),
        None,
    )
    .await
    .unwrap();
}

async fn count(c: &Client, db: &str, table: &str, at: Option<HybridTime>) -> u64 {
    let mut n = 0;
    c.scan_table(db, table, at, |_, rows| {
        n += rows.len() as u64;
        Ok(())
    })
    .await
    .unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ddl_writes_reads_at_time_and_scans() {
    let c = TestCluster::start(3);
    let client = c.client().await.unwrap();
    kv_table(&client, "app", "kv", 6).await;

    // Tablets are spread over all three nodes.
    let t = client.table("app", "kv").await.unwrap();
    let mut nodes: Vec<u32> = t.info.tablets.iter().map(|tb| tb.replicas[0]).collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes, vec![1, 2, 3]);

    let t0 = client.now().await.unwrap();
    let rows: Vec<pb::Row> = (1..=500).map(|k| row(k, "v1")).collect();
    let t1 = client.put_rows("app", "kv", rows).await.unwrap();
    let t2 = client
        .put_rows("app", "kv", vec![row(7, "v2")])
        .await
        .unwrap();
    assert!(t2 > t1);
    client
        .write_ops(
            "app",
            "kv",
            vec![pb::RowOp {
                row: Some(key(8)),
                delete: true,
            }],
        )
        .await
        .unwrap();

    assert_eq!(
        val(&client
            .get("app", "kv", key(7), None)
            .await
            .unwrap()
            .unwrap()
            .0),
        "v2"
    );
    assert_eq!(
        val(&client
            .get("app", "kv", key(7), Some(t1))
            .await
            .unwrap()
            .unwrap()
            .0),
        "v1"
    );
    assert!(client
        .get("app", "kv", key(8), None)
        .await
        .unwrap()
        .is_none());
    assert!(client
        .get("app", "kv", key(8), Some(t2))
        .await
        .unwrap()
        .is_some());
    assert!(client
        .get("app", "kv", key(9999), None)
        .await
        .unwrap()
        .is_none());

    assert_eq!(count(&client, "app", "kv", None).await, 499);
    assert_eq!(count(&client, "app", "kv", Some(t1)).await, 500);
    // Before the first write: nothing.
    assert_eq!(count(&client, "app", "kv", Some(t0)).await, 0);

    // The SQL layer sees the same.
    let out = sql::execute(
        &client,
        "app",
        "SELECT count(*) FROM kv; SELECT v FROM kv WHERE k = 7",
        None,
    )
    .await
    .unwrap();
    match (&out[0], &out[1]) {
        (sql::SqlOutput::Rows { rows: a, .. }, sql::SqlOutput::Rows { rows: b, .. }) => {
            assert_eq!(a[0][0], "499");
            assert_eq!(b, &vec![vec!["v2".to_string()]]);
        }
        other => panic!("{other:?}"),
    }

    // The CLI works against the same cluster.
    let out = std::process::Command::new(snapfleet_tests::snapfleet_bin())
        .args([
            "db",
            "sql",
            "--master",
            &c.master_addr,
            "--db",
            "app",
            "SELECT count(*) FROM kv",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("499"));

    // DROP TABLE removes it; the catalog version moves on.
    let v_before = client.catalog().version;
    client.drop_table("app", "kv").await.unwrap();
    assert!(client.catalog().version > v_before);
    assert!(matches!(
        client.table("app", "kv").await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_under_counter_load_restores_consistently_into_fewer_nodes() {
    let source = TestCluster::start(3);
    let client = Arc::new(source.client().await.unwrap());
    kv_table(&client, "shop", "orders", 4).await;
    client
        .put_rows(
            "shop",
            "orders",
            (1..=2000).map(|k| row(k, "order")).collect(),
        )
        .await
        .unwrap();

    // The counter writer runs while the snapshot is taken.
    let log = source.dir.path().join("counter.log");
    let writer = CounterWriter::start(client.clone(), "shop", 6, log.clone());
    writer.wait_for_keys(300).await;
    let snap = client
        .master()
        .create_snapshot(pb::CreateSnapshotRequest {
            database: "shop".into(),
            hybrid_time: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let at_snapshot = writer.keys();
    writer.wait_for_keys(at_snapshot + 200).await;
    let written = writer.stop().await;
    let cut = HybridTime(snap.hybrid_time);

    // The source at T is consistent, and holds keys after T too.
    let r = verify::check_consistency(&client, "shop", cut, None, Some(&log))
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    assert!(
        r.keys_expected > 0 && r.keys_expected < written.keys,
        "{r:?} vs {written:?}"
    );

    // Restore a copy of the snapshot files into a 2-node cluster.
    let target = TestCluster::start(2);
    let tclient = target.client().await.unwrap();
    let report = restore_snapshot(&tclient, &snap, "shop", &[], |tablet| {
        tablet_snapshot_dir(
            &source.node_dir(tablet_node(&snap, tablet).unwrap()),
            &snap,
            tablet,
        )
        .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(report.tables, 2);
    // Both target nodes got tablets.
    let cat = tclient.catalog();
    let mut used: Vec<u32> = cat
        .tables
        .iter()
        .flat_map(|t| &t.tablets)
        .map(|tb| tb.replicas[0])
        .collect();
    used.sort();
    used.dedup();
    assert_eq!(used, vec![1, 2]);

    // Reading the restored database at latest gives exactly the cut.
    let now = tclient.now().await.unwrap();
    let r = verify::check_consistency(&tclient, "shop", cut, Some(now), Some(&log))
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.keys_seen, r.keys_expected);
    let a = verify::table_checksum(&client, "shop", "orders", Some(cut))
        .await
        .unwrap();
    let b = verify::table_checksum(&tclient, "shop", "orders", None)
        .await
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.rows, 2000);

    // The restored database takes new writes, visible at latest.
    tclient
        .put_rows("shop", "orders", vec![row(99_999, "new")])
        .await
        .unwrap();
    assert_eq!(count(&tclient, "shop", "orders", None).await, 2001);

    // Restoring again under the same name is refused and changes nothing.
    let err = restore_snapshot(&tclient, &snap, "shop", &[], |tablet| {
        tablet_snapshot_dir(
            &source.node_dir(tablet_node(&snap, tablet).unwrap()),
            &snap,
            tablet,
        )
        .unwrap()
    })
    .await
    .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
    assert_eq!(count(&tclient, "shop", "orders", None).await, 2001);

    // A restore whose files are missing fails and leaves no table behind.
    let err = restore_snapshot(&tclient, &snap, "shop2", &["orders".to_string()], |_| {
        source.dir.path().join("no-such-dir")
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no-such-dir"), "{err}");
    assert!(tclient.tables("shop2").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_retention_drops_old_versions_but_keeps_the_window_exact() {
    let c = TestCluster::start_with(LocalOptions {
        nodes: 1,
        history_retention: "2s".into(),
        ..Default::default()
    });
    let client = c.client().await.unwrap();
    kv_table(&client, "h", "kv", 1).await;
    let t1 = client.put_rows("h", "kv", vec![row(1, "a")]).await.unwrap();
    let t2 = client.put_rows("h", "kv", vec![row(1, "b")]).await.unwrap();
    // Wait until both versions are older than the 2 s window.
    eventually(
        Duration::from_secs(30),
        "the retention window to pass t2",
        || {
            let client = &client;
            async move {
                let now = client.now().await.ok()?;
                (now.minus(Duration::from_secs(2)) > t2).then_some(())
            }
        },
    )
    .await;
    let t3 = client.put_rows("h", "kv", vec![row(1, "c")]).await.unwrap();
    let tablet = client.table("h", "kv").await.unwrap().info.tablets[0].clone();
    let mut node = client.node_for(&tablet).await.unwrap();
    node.compact_tablet(pb::CompactTabletRequest {
        tablet_id: tablet.tablet_id.clone(),
    })
    .await
    .unwrap();
    // Reads before the window are refused (their versions may be gone: the unit test
    // tablet::tests::mvcc_reads_deletes_and_retention shows they are); the newest version at
    // or below the cut-off (b) stays, so reads at any time inside the window are exact.
    let e = client.get("h", "kv", key(1), Some(t1)).await.unwrap_err();
    assert!(
        matches!(e, Error::FailedPrecondition(_)) && e.to_string().contains("history window"),
        "{e}"
    );
    assert_eq!(
        val(&client
            .get("h", "kv", key(1), Some(HybridTime(t3.0 - 1)))
            .await
            .unwrap()
            .unwrap()
            .0),
        "b"
    );
    assert_eq!(
        val(&client
            .get("h", "kv", key(1), Some(t3))
            .await
            .unwrap()
            .unwrap()
            .0),
        "c"
    );
    // A snapshot before the window is refused with a clear reason.
    let err = client
        .master()
        .create_snapshot(pb::CreateSnapshotRequest {
            database: "h".into(),
            hybrid_time: t1.0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("history window"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_and_restart_lose_no_acknowledged_write() {
    let mut c = TestCluster::start(3);
    let client = Arc::new(c.client().await.unwrap());
    kv_table(&client, "d", "kv", 6).await;

    // Writers run while node 2 is killed; every acknowledged key is recorded.
    let acked = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4i64 {
        let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut k = w * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let rows = vec![row(k, "x")];
                // Writes to the dead node fail after retries; those keys were never acknowledged.
                if client.put_rows("d", "kv", rows).await.is_ok() {
                    acked.lock().unwrap().push(k);
                }
            }
        }));
    }
    eventually(Duration::from_secs(60), "some acknowledged writes", || {
        let acked = acked.clone();
        async move { (acked.lock().unwrap().len() > 300).then_some(()) }
    })
    .await;
    c.kill_node(2);
    let n_at_kill = acked.lock().unwrap().len();
    eventually(
        Duration::from_secs(60),
        "writes to the surviving nodes",
        || {
            let acked = acked.clone();
            async move { (acked.lock().unwrap().len() > n_at_kill + 100).then_some(()) }
        },
    )
    .await;
    c.start_node(2).unwrap();
    let client2 = c.client().await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let mut present = std::collections::HashSet::new();
    client2
        .scan_table("d", "kv", None, |_, rows| {
            for rv in rows {
                if let Some(Kind::Int(k)) = &rv.row.unwrap().values[0].kind {
                    present.insert(*k);
                }
            }
            Ok(())
        })
        .await
        .unwrap();
    let lost: Vec<_> = acked
        .iter()
        .filter(|k| !present.contains(k))
        .take(10)
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged keys lost after kill -9: {lost:?} (of {})",
        acked.len()
    );

    // A clean restart of every node keeps everything too.
    let before = present.len() as u64;
    for id in 1..=3 {
        c.kill_node(id);
        c.start_node(id).unwrap();
    }
    let client3 = c.client().await.unwrap();
    assert_eq!(count(&client3, "d", "kv", None).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_clear_errors_and_never_a_panic() {
    let c = TestCluster::start(2);
    let client = c.client().await.unwrap();
    kv_table(&client, "b", "kv", 2).await;

    // Unknown type, duplicate table, no primary key, bad names.
    let e = sql::execute(
        &client,
        "b",
        "CREATE TABLE g (k int8 PRIMARY KEY, p geometry)",
        None,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("unsupported column type"), "{e}");
    let e = sql::execute(&client, "b", "CREATE TABLE kv (k int8 PRIMARY KEY)", None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::AlreadyExists(_)), "{e}");
    let e = sql::execute(&client, "b", "CREATE TABLE nopk (k int8)", None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("primary key"), "{e}");
    let e = sql::execute(&client, "b", "SELEC 1", None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("syntax"), "{e}");
    let e = sql::execute(&client, "b", "INSERT INTO kv VALUES ('x', 'y')", None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("int8"), "{e}");

    // Raw malformed requests straight to a node: InvalidArgument / NotFound, not a crash.
    let tablet = client.table("b", "kv").await.unwrap().info.tablets[0].clone();
    let mut node = client.node_for(&tablet).await.unwrap();
    let bad_writes = vec![
        pb::WriteRequest {
            tablet_id: tablet.tablet_id.clone(),
            catalog_version: u64::MAX,
            ops: vec![],
            propagated_ht: 0,
        },
        pb::WriteRequest {
            tablet_id: tablet.tablet_id.clone(),
            catalog_version: u64::MAX,
            ops: vec![pb::RowOp {
                row: Some(pb::Row {
                    values: vec![int(1)],
                }),
                delete: false,
            }],
            propagated_ht: 0,
        },
        pb::WriteRequest {
            tablet_id: tablet.tablet_id.clone(),
            catalog_version: u64::MAX,
            ops: vec![pb::RowOp {
                row: Some(pb::Row {
                    values: vec![text("k"), text("v")],
                }),
                delete: false,
            }],
            propagated_ht: 0,
        },
        pb::WriteRequest {
            tablet_id: tablet.tablet_id.clone(),
            catalog_version: u64::MAX,
            ops: vec![pb::RowOp {
                row: None,
                delete: false,
            }],
            propagated_ht: 0,
        },
    ];
    for w in bad_writes {
        let e = node.write(w).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    }
    let e = node
        .write(pb::WriteRequest {
            tablet_id: "../../etc".into(),
            catalog_version: 1,
            ops: vec![],
            propagated_ht: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    let e = node
        .create_tablet(pb::CreateTabletRequest {
            meta: Some(pb::TabletMeta {
                tablet_id: "../evil".into(),
                table_id: "t".into(),
                database_id: "d".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = node
        .import_tablet(pb::ImportTabletRequest {
            meta: None,
            staged_dir: "relative".into(),
            restore_ht: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    // A retried import of a tablet this node already holds (the leader failed over during a
    // restore's activation, after the first attempt moved the staged files in) succeeds at
    // once instead of failing on the staged directory that is gone.
    let info = client.table("b", "kv").await.unwrap().info;
    let again = node
        .import_tablet(pb::ImportTabletRequest {
            meta: Some(snapfleet_tabletdb::restore::import_meta(&info, &tablet)),
            staged_dir: "/nonexistent/staging/r1/t1".into(),
            restore_ht: 1,
        })
        .await;
    assert!(
        again.is_ok(),
        "a repeated import must be a no-op: {again:?}"
    );
    let e = node
        .read(pb::ReadRequest {
            tablet_id: tablet.tablet_id.clone(),
            key: Some(pb::Row { values: vec![] }),
            read_ht: 0,
            propagated_ht: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");

    // A write routed with a stale catalog version is refused, naming the versions.
    let e = node
        .write(pb::WriteRequest {
            tablet_id: tablet.tablet_id.clone(),
            catalog_version: 1,
            ops: vec![pb::RowOp {
                row: Some(row(1, "v")),
                delete: false,
            }],
            propagated_ht: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("stale catalog"), "{e}");

    // The master rejects bad DDL too.
    let e = client
        .master()
        .create_table(pb::CreateTableRequest {
            database: "b".into(),
            name: "x y".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = client
        .master()
        .create_snapshot(pb::CreateSnapshotRequest {
            database: "nope".into(),
            hybrid_time: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");

    // Everything is still up and serving.
    client
        .put_rows("b", "kv", vec![row(5, "ok")])
        .await
        .unwrap();
    assert_eq!(
        val(&client
            .get("b", "kv", key(5), None)
            .await
            .unwrap()
            .unwrap()
            .0),
        "ok"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ddl_racing_snapshots_never_yields_a_mixed_snapshot() {
    let c = TestCluster::start(3);
    let client = Arc::new(c.client().await.unwrap());
    kv_table(&client, "r", "base", 8).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ddl = {
        let (client, stop, started) = (client.clone(), stop.clone(), started.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                started.store(true, Ordering::Relaxed);
                i += 1;
                let name = format!("t{i}");
                if let Err(e) = sql::execute(
                    &client,
                    "r",
                    &format!("CREATE TABLE {name} (k int8 PRIMARY KEY) WITH (tablets = 8)"),
                    None,
                )
                .await
                {
                    panic!("create {name}: {e}");
                }
                if i % 2 == 0 {
                    if let Err(e) = client.drop_table("r", &name).await {
                        panic!("drop {name}: {e}");
                    }
                }
            }
            i
        })
    };
    // The DDL loop runs before the first snapshot (and until the last one ends).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !started.load(Ordering::Relaxed) {
        assert!(
            std::time::Instant::now() < deadline,
            "the DDL loop never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (mut ok, mut aborted) = (0, 0);
    for _ in 0..15 {
        match client
            .master()
            .create_snapshot(pb::CreateSnapshotRequest {
                database: "r".into(),
                hybrid_time: 0,
                ..Default::default()
            })
            .await
        {
            Ok(s) => {
                ok += 1;
                let s = s.into_inner();
                // The tables recorded are exactly those whose tablets were checkpointed.
                for t in &s.tables {
                    for tb in &t.tablets {
                        let dir =
                            tablet_snapshot_dir(&c.node_dir(tb.replicas[0]), &s, &tb.tablet_id)
                                .unwrap();
                        assert!(
                            dir.join("SNAPSHOT_META.json").exists(),
                            "{} missing",
                            dir.display()
                        );
                    }
                }
            }
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Aborted, "{e}");
                assert!(e.message().contains("catalog changed from version"), "{e}");
                aborted += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let ddls = ddl.await.unwrap();
    assert!(ddls > 0);
    eprintln!("snapshots: {ok} ok, {aborted} aborted by {ddls} DDLs");
    // Schema changes wait behind a snapshot (and snapshots behind them): none is aborted.
    assert_eq!(
        aborted, 0,
        "a DDL aborted a snapshot instead of waiting for it"
    );
    // Aborted snapshots leave no files behind.
    let listed = client
        .master()
        .list_snapshots(pb::ListSnapshotsRequest {
            database: "r".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .snapshots;
    assert_eq!(listed.len(), ok);
}
