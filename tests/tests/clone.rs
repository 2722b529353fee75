//! Instant clone: a consistent copy at T made of hard links, independent afterwards.

use snapfleet_tabletdb::pb::{self, value::Kind};
use snapfleet_tabletdb::{sql, verify, HybridTime};
use snapfleet_tests::{snapfleet_bin, CounterWriter, TestCluster};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

fn row(k: i64, v: &str) -> pb::Row {
    pb::Row {
        values: vec![
            pb::Value {
                kind: Some(Kind::Int(k)),
            },
            pb::Value {
                kind: Some(Kind::Text(v.into())),
            },
        ],
    }
}

async fn count(c: &snapfleet_tabletdb::Client, db: &str, t: &str) -> u64 {
    let mut n = 0;
    c.scan_table(db, t, None, |_, rows| {
        n += rows.len() as u64;
        Ok(())
    })
    .await
    .unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clone_at_t_is_consistent_shares_files_and_is_independent() {
    let c = TestCluster::start(3);
    let client = Arc::new(c.client().await.unwrap());
    client.create_database("src", false).await.unwrap();
    sql::execute(
        &client,
        "src",
        "CREATE TABLE kv (k int8 PRIMARY KEY, v text) WITH (tablets = 4)",
        None,
    )
    .await
    .unwrap();
    client
        .put_rows("src", "kv", (1..=3000).map(|k| row(k, "orig")).collect())
        .await
        .unwrap();

    // Counter writes run while the clone is made at a time T in the past.
    let log = c.dir.path().join("counter.log");
    let writer = CounterWriter::start(client.clone(), "src", 6, log.clone());
    writer.wait_for_keys(200).await;
    let t = client.now().await.unwrap();
    let before = writer.keys();
    writer.wait_for_keys(before + 200).await;
    let out = std::process::Command::new(snapfleet_bin())
        .args([
            "--json",
            "clone",
            "--master",
            &c.master_addr,
            "--db",
            "src",
            "--as",
            "dst",
            "--at",
            &t.0.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["tables"], 2, "{rep}");
    writer.stop().await;
    client.refresh().await.unwrap();

    // The clone holds exactly the counter keys written at or before T.
    let now = client.now().await.unwrap();
    let r = verify::check_consistency(&client, "dst", t, Some(now), Some(&log))
        .await
        .unwrap();
    assert!(r.ok && r.keys_expected >= 200, "{r:?}");
    assert_eq!(count(&client, "dst", "kv").await, 3000);

    // Its SST files are hard links of the source's, not copies.
    let mut linked = 0;
    for e in walk(c.dir.path()) {
        if e.extension().is_some_and(|x| x == "sst") && std::fs::metadata(&e).unwrap().nlink() > 1 {
            linked += 1;
        }
    }
    assert!(linked > 0, "no shared SST files");

    // Independent afterwards, both ways.
    client
        .put_rows(
            "dst",
            "kv",
            vec![row(1, "clone-only"), row(5000, "clone-new")],
        )
        .await
        .unwrap();
    client
        .put_rows(
            "src",
            "kv",
            vec![row(2, "source-only"), row(6000, "source-new")],
        )
        .await
        .unwrap();
    let get = |db: &'static str, k: i64| {
        let client = client.clone();
        async move {
            client
                .get(
                    db,
                    "kv",
                    pb::Row {
                        values: vec![pb::Value {
                            kind: Some(Kind::Int(k)),
                        }],
                    },
                    None,
                )
                .await
                .unwrap()
                .map(|(r, _)| match &r.values[1].kind {
                    Some(Kind::Text(s)) => s.clone(),
                    _ => panic!(),
                })
        }
    };
    assert_eq!(get("src", 1).await.as_deref(), Some("orig"));
    assert_eq!(get("dst", 1).await.as_deref(), Some("clone-only"));
    assert_eq!(get("dst", 2).await.as_deref(), Some("orig"));
    assert_eq!(get("src", 5000).await, None);
    assert_eq!(get("dst", 6000).await, None);
    assert_eq!(count(&client, "src", "kv").await, 3001);
    assert_eq!(count(&client, "dst", "kv").await, 3001);
    // Compacting the source does not disturb the clone.
    for tb in client.table("src", "kv").await.unwrap().info.tablets {
        let mut n = client.node_for(&tb).await.unwrap();
        n.compact_tablet(pb::CompactTabletRequest {
            tablet_id: tb.tablet_id,
        })
        .await
        .unwrap();
    }
    assert_eq!(count(&client, "dst", "kv").await, 3001);

    // Cloning onto an existing name, or at a time before the history window, fails clearly.
    let e = client
        .master()
        .clone_database(pb::CloneDatabaseRequest {
            source: "src".into(),
            target: "dst".into(),
            hybrid_time: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e}");
    let e = client
        .master()
        .clone_database(pb::CloneDatabaseRequest {
            source: "src".into(),
            target: "old".into(),
            hybrid_time: HybridTime::from_micros(1_000_000).0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(client
        .refresh()
        .await
        .unwrap()
        .databases
        .iter()
        .all(|d| d.name != "old"));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pitr_in_place_restores_exactly_t_and_keeps_serving() {
    let c = TestCluster::start(3);
    let client = Arc::new(c.client().await.unwrap());
    client.create_database("p", false).await.unwrap();
    sql::execute(
        &client,
        "p",
        "CREATE TABLE kv (k int8 PRIMARY KEY, v text) WITH (tablets = 3)",
        None,
    )
    .await
    .unwrap();
    client
        .put_rows("p", "kv", (1..=100).map(|k| row(k, "before")).collect())
        .await
        .unwrap();
    let log = c.dir.path().join("counter.log");
    let writer = CounterWriter::start(client.clone(), "p", 4, log.clone());
    writer.wait_for_keys(200).await;
    let t = client.now().await.unwrap();
    let before = writer.keys();
    writer.wait_for_keys(before + 200).await;
    writer.stop().await;
    // Damage after T: overwrite, delete, and a new table.
    client
        .put_rows("p", "kv", vec![row(1, "bad deploy")])
        .await
        .unwrap();
    client
        .write_ops(
            "p",
            "kv",
            vec![pb::RowOp {
                row: Some(pb::Row {
                    values: vec![pb::Value {
                        kind: Some(Kind::Int(2)),
                    }],
                }),
                delete: true,
            }],
        )
        .await
        .unwrap();
    sql::execute(
        &client,
        "p",
        "CREATE TABLE later (k int8 PRIMARY KEY)",
        None,
    )
    .await
    .unwrap();

    let pitr = |extra: &[&str]| {
        let mut args = vec![
            "--json",
            "pitr",
            "restore",
            "--master",
            &c.master_addr,
            "--db",
            "p",
        ];
        let to = t.0.to_string();
        args.extend_from_slice(&["--to", &to]);
        args.extend_from_slice(extra);
        let out = std::process::Command::new(snapfleet_bin())
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.code(),
            serde_json::from_slice::<serde_json::Value>(&out.stdout).ok(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // Dry run: reports, changes nothing.
    let (code, rep, err) = pitr(&["--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    let rep = rep.unwrap();
    assert_eq!(rep["removed"], serde_json::json!(["later"]), "{rep}");
    assert!(client.table("p", "later").await.is_ok());
    // The real thing.
    let (code, _, err) = pitr(&[]);
    assert_eq!(code, Some(0), "{err}");
    client.refresh().await.unwrap();
    assert!(
        client.table("p", "later").await.is_err(),
        "a table created after T must go away"
    );
    let now = client.now().await.unwrap();
    let r = verify::check_consistency(&client, "p", t, Some(now), Some(&log))
        .await
        .unwrap();
    assert!(r.ok && r.keys_expected >= 200, "{r:?}");
    let one = client
        .get(
            "p",
            "kv",
            pb::Row {
                values: vec![pb::Value {
                    kind: Some(Kind::Int(1)),
                }],
            },
            None,
        )
        .await
        .unwrap();
    assert!(matches!(one.unwrap().0.values[1].kind, Some(Kind::Text(ref s)) if s == "before"));
    assert_eq!(count(&client, "p", "kv").await, 100);
    // Writes after the restore are visible; a node restart keeps the restore.
    client
        .put_rows("p", "kv", vec![row(1000, "after")])
        .await
        .unwrap();
    assert_eq!(count(&client, "p", "kv").await, 101);
    // A time outside the history window: a clear error naming the window, nothing changed.
    let out = std::process::Command::new(snapfleet_bin())
        .args([
            "pitr",
            "restore",
            "--master",
            &c.master_addr,
            "--db",
            "p",
            "--to",
            "2000-01-01T00:00:00Z",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("history window"), "{err}");
    assert_eq!(count(&client, "p", "kv").await, 101);
}
