//! Snapshot cases: topology (C1), a consistent cut now (C2) and at a past time (C3), DDL
//! fencing (C4), snapshot files and deletion (C6), labels and listing (C7).

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// C1: nodes, node stores and database descriptions agree; an unknown database is a
/// permanent `NotFound`.
pub async fn c1_topology(h: &mut dyn Harness) {
    let c = h.start_cluster(3).await;
    let db = connect(h, &c).await;
    let nodes = ok(db.nodes().await, "listing nodes");
    assert_eq!(nodes.len(), 3, "nodes: {nodes:?}");
    assert!(nodes.iter().all(|n| n.live), "every node live: {nodes:?}");
    let names: BTreeSet<NodeName> = nodes.iter().map(|n| n.name.clone()).collect();
    let stores: BTreeSet<NodeName> = node_stores(h, &c)
        .await
        .iter()
        .map(|s| s.node().clone())
        .collect();
    assert_eq!(
        names, stores,
        "Database::nodes and NodeStore::node disagree"
    );

    h.create_table(&c, "c1", "t", 4).await;
    let d = ok(db.describe("c1").await, "describing c1");
    assert_eq!(d.name, "c1");
    assert_eq!(d.tables.len(), 1, "{d:?}");
    let t = &d.tables[0];
    assert_eq!(
        (t.name.as_str(), t.hidden, t.tablets.len()),
        ("t", false, 4)
    );
    let ids: BTreeSet<_> = t.tablets.iter().map(|p| p.id.clone()).collect();
    assert_eq!(ids.len(), 4, "tablet ids are unique");
    for p in &t.tablets {
        assert!(
            names.contains(&p.node),
            "tablet {} on unknown node {}",
            p.id,
            p.node
        );
    }

    permanent(
        db.describe("c1_no_such_db").await,
        is_not_found,
        "describing a missing database",
    );
    let (a, b) = (ok(db.now().await, "now"), ok(db.now().await, "now"));
    assert!(b > a, "the cluster clock moves forward ({a} then {b})");
}

/// C2: a snapshot taken while the counter runs, restored, holds exactly the keys written at
/// or before its time; its native description decodes back to it.
pub async fn c2_snapshot_consistent_at_t(h: &mut dyn Harness) {
    let c = h.start_cluster(3).await;
    let db = connect(h, &c).await;
    let counter = h.start_counter(&c, "c2").await;
    counter.wait_for_keys(50).await;
    let snap = ok(db.create_snapshot(snapshot_req("c2")).await, "snapshot");
    counter.wait_for_keys(counter.keys() + 30).await;
    let log = counter.stop().await;

    let decoded = ok(
        h.adapter().decode_snapshot(&snap.catalog),
        "decoding the snapshot's native description",
    );
    assert_eq!(decoded, snap, "decode_snapshot(s.catalog) == s");
    assert_eq!(snap.database_name, "c2");
    assert_eq!(ok(db.describe("c2").await, "describe").id, snap.database_id);

    restore(h, &snap, &c, &c, "c2_copy", "c2-restore").await;
    let got = h.keys_at(&c, "c2_copy", None).await;
    assert_exact(&got, &log, snap.hybrid_time, "the restored copy");
}

/// C3: a snapshot at a past time T is exactly the cut at T; a time in the future is refused.
pub async fn c3_snapshot_at_past_time(h: &mut dyn Harness) {
    let c = h.start_cluster(3).await;
    let db = connect(h, &c).await;
    let counter = h.start_counter(&c, "c3").await;
    counter.wait_for_keys(40).await;
    let t = ok(db.now().await, "now");
    counter.wait_for_keys(counter.keys() + 40).await;
    let snap = ok(
        db.create_snapshot(SnapshotRequest {
            at: Some(t),
            ..snapshot_req("c3")
        })
        .await,
        "snapshot at a past time",
    );
    let log = counter.stop().await;
    assert_eq!(snap.hybrid_time, t, "the snapshot is at the time asked for");
    restore(h, &snap, &c, &c, "c3_copy", "c3-restore").await;
    let got = h.keys_at(&c, "c3_copy", None).await;
    assert_exact(&got, &log, t, "the copy of a snapshot at a past time");

    let future = ok(db.now().await, "now").plus(Duration::from_secs(3600));
    permanent(
        db.create_snapshot(SnapshotRequest {
            at: Some(future),
            ..snapshot_req("c3")
        })
        .await,
        |e| matches!(e, AdapterError::Invalid { .. }),
        "a snapshot an hour in the future",
    );
}

/// C4: snapshots taken while tables are created and dropped in a loop are each either
/// whole (one version of the catalog: the base table and at most one of the loop's tables,
/// every tablet's files on its node, still there after the table is dropped) or `Fenced`
/// (retryable) and left out of the list; with the loop stopped, a snapshot with retries
/// succeeds.
pub async fn c4_ddl_fencing(h: &mut dyn Harness) {
    const ROUNDS: usize = 20;
    let c = h.start_cluster(3).await;
    let db = connect(h, &c).await;
    h.create_table(&c, "c4", "base", 3).await;
    let stores = node_stores(h, &c).await;
    let h: &dyn Harness = h;
    let stop = AtomicBool::new(false);
    // How many schema changes are done: the snapshots start once the loop runs.
    let (ddl_done, mut ddl_seen) = tokio::sync::watch::channel(0u64);
    let ddl_loop = async {
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let name = format!("ddl_{i}");
            h.create_table(&c, "c4", &name, 2).await;
            ddl_done.send_modify(|n| *n += 1);
            h.drop_table(&c, "c4", &name).await;
            ddl_done.send_modify(|n| *n += 1);
            i += 1;
        }
    };
    let snapshots = async {
        let deadline =
            tokio::time::timeout(Duration::from_secs(30), ddl_seen.wait_for(|n| *n >= 2));
        deadline
            .await
            .expect("the DDL loop made no progress in 30 s")
            .expect("the DDL loop is running");
        let mut out = Vec::new();
        let first = *ddl_seen.borrow();
        let mut raced = 0;
        for _ in 0..ROUNDS {
            let before = *ddl_seen.borrow();
            let r = db
                .create_snapshot(SnapshotRequest {
                    ddl_retries: 0,
                    ..snapshot_req("c4")
                })
                .await;
            raced += usize::from(*ddl_seen.borrow() != before);
            out.push(r);
        }
        stop.store(true, Ordering::SeqCst);
        let during = *ddl_seen.borrow() - first;
        (out, during, raced)
    };
    let ((), (results, during, raced)) = tokio::join!(ddl_loop, snapshots);
    // A database may serialise DDL and snapshots: then they alternate, about one change per
    // snapshot.
    assert!(
        raced >= ROUNDS / 4,
        "the schema changes must race the snapshots for the case to mean anything: {during} \
         changes during {ROUNDS} snapshots, {raced} of them with a change in flight"
    );

    let (mut taken, mut fenced) = (Vec::new(), 0);
    for r in results {
        match r {
            Ok(s) => taken.push(s),
            Err(e @ AdapterError::Fenced { .. }) => {
                assert!(e.is_retryable(), "Fenced is retryable: {e}");
                fenced += 1;
            }
            Err(e) => panic!(
                "a snapshot raced by DDL is either whole or Fenced, not: {e} (retryable: {})",
                e.is_retryable()
            ),
        }
    }
    // Every loop table is dropped by now: their snapshot files must have stayed.
    for s in &taken {
        let names: Vec<&str> = s.tables.iter().map(|t| t.name.as_str()).collect();
        let loop_tables = names.iter().filter(|n| n.starts_with("ddl_")).count();
        assert!(
            names.contains(&"base") && loop_tables <= 1 && names.len() == 1 + loop_tables,
            "snapshot {} is not one version of the catalog (base + at most one loop table): \
             {names:?}",
            s.id
        );
        for t in &s.tables {
            let want = if t.name == "base" { 3 } else { 2 };
            assert_eq!(
                t.tablets.len(),
                want,
                "snapshot {} holds table {} with a part of its tablets",
                s.id,
                t.name
            );
            for p in &t.tablets {
                let files = ok(
                    store(&stores, &p.node)
                        .snapshot_files(&s.tablet_ref(t, p))
                        .await,
                    &format!(
                        "files of tablet {} (table {}) of snapshot {}",
                        p.id, t.name, s.id
                    ),
                );
                assert!(!files.is_empty(), "tablet {} has no snapshot files", p.id);
            }
        }
    }
    let listed: BTreeSet<_> = ok(db.list_snapshots("c4").await, "listing")
        .into_iter()
        .map(|l| l.id)
        .collect();
    let whole: BTreeSet<_> = taken.iter().map(|s| s.id.clone()).collect();
    assert_eq!(
        listed, whole,
        "exactly the whole snapshots are listed ({fenced} were fenced)"
    );

    let quiet = ok(
        db.create_snapshot(SnapshotRequest {
            ddl_retries: 5,
            ..snapshot_req("c4")
        })
        .await,
        "a snapshot with the DDL loop stopped",
    );
    let names: Vec<&str> = quiet.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["base"], "every loop table was dropped");
}

/// C6: each tablet's snapshot files are on its node only; deleting the snapshot removes
/// them, and deleting it again is fine.
pub async fn c6_snapshot_files_and_deletion(h: &mut dyn Harness) {
    let c = h.start_cluster(3).await;
    let db = connect(h, &c).await;
    h.load(&c, "c6", 0, 300).await;
    let snap = ok(db.create_snapshot(snapshot_req("c6")).await, "snapshot");
    let stores = node_stores(h, &c).await;
    let mut tablets = 0;
    for t in &snap.tables {
        for p in &t.tablets {
            tablets += 1;
            let r = snap.tablet_ref(t, p);
            let files = ok(
                store(&stores, &p.node).snapshot_files(&r).await,
                &format!("files of tablet {} on its node", p.id),
            );
            assert!(!files.is_empty(), "tablet {} snapshot has no files", p.id);
            let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted, "files are sorted by name");
            for f in &files {
                assert!(f.metadata.is_file() && f.path.is_file(), "{f:?}");
            }
            for other in stores.iter().filter(|s| s.node() != &p.node) {
                permanent(
                    other.snapshot_files(&r).await,
                    is_not_found,
                    &format!("files of tablet {} on node {}", p.id, other.node()),
                );
            }
        }
    }
    assert!(tablets > 0, "the snapshot has tablets");
    let listed = ok(db.list_snapshots("c6").await, "listing snapshots");
    assert!(listed.iter().any(|s| s.id == snap.id), "{listed:?}");

    ok(db.delete_snapshot(&snap.id).await, "deleting the snapshot");
    for t in &snap.tables {
        for p in &t.tablets {
            permanent(
                store(&stores, &p.node)
                    .snapshot_files(&snap.tablet_ref(t, p))
                    .await,
                is_not_found,
                &format!("files of tablet {} after deletion", p.id),
            );
        }
    }
    let listed = ok(db.list_snapshots("c6").await, "listing snapshots");
    assert!(!listed.iter().any(|s| s.id == snap.id), "{listed:?}");
    ok(db.delete_snapshot(&snap.id).await, "deleting it again");
}

/// C7: labels are kept and listed; a deleted snapshot leaves the list.
pub async fn c7_labels_and_listing(h: &mut dyn Harness) {
    let c = h.start_cluster(3).await;
    let db = connect(h, &c).await;
    h.create_table(&c, "c7", "t", 2).await;
    let labelled = SnapshotRequest {
        label: Some("a"),
        ..snapshot_req("c7")
    };
    let a1 = ok(db.create_snapshot(labelled).await, "snapshot a1");
    let a2 = ok(db.create_snapshot(labelled).await, "snapshot a2");
    let plain = ok(db.create_snapshot(snapshot_req("c7")).await, "snapshot");
    assert_eq!((a1.label.as_str(), plain.label.as_str()), ("a", ""));
    let listed = ok(db.list_snapshots("c7").await, "listing");
    for (s, label) in [(&a1, "a"), (&a2, "a"), (&plain, "")] {
        let l = listed
            .iter()
            .find(|l| l.id == s.id)
            .unwrap_or_else(|| panic!("snapshot {} not listed: {listed:?}", s.id));
        assert_eq!((l.label.as_str(), l.hybrid_time), (label, s.hybrid_time));
    }
    ok(db.delete_snapshot(&a1.id).await, "deleting a1");
    let listed = ok(db.list_snapshots("c7").await, "listing");
    assert!(!listed.iter().any(|l| l.id == a1.id), "{listed:?}");
    assert_eq!(listed.iter().filter(|l| l.label == "a").count(), 1);
}
