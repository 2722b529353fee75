//! Restore cases: another node count (C8), atomic activation and abort (C9), idempotency
//! (C10), no overwrite (C11), clones at a time (C12).

use super::*;

/// C8: a snapshot of a 3-node cluster restores into a 2-node cluster: placements use the
/// target's nodes, tables stay hidden until activation, and the data equals the source at T.
pub async fn c8_restore_to_different_node_count(h: &mut dyn Harness) {
    let src = h.start_cluster(3).await;
    let sdb = connect(h, &src).await;
    let tables = h.load(&src, "c8", 0, 400).await;
    let snap = ok(sdb.create_snapshot(snapshot_req("c8")).await, "snapshot");
    h.load(&src, "c8", 400, 100).await; // after T: must not be restored
    let mut at_t = Vec::new();
    for t in &tables {
        let then = h.checksum(&src, "c8", t, Some(snap.hybrid_time)).await;
        let now = h.checksum(&src, "c8", t, None).await;
        assert_ne!(then, now, "table {t} changed after the snapshot");
        at_t.push(then);
    }

    let dst = h.start_cluster(2).await;
    let ddb = connect(h, &dst).await;
    let dst_nodes: BTreeSet<NodeName> = ok(ddb.nodes().await, "target nodes")
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(dst_nodes.len(), 2);
    let restore_id = RestoreId::new("c8-restore").expect("id");
    let prepared = ok(
        ddb.prepare_restore(RestoreRequest {
            restore_id: &restore_id,
            database: "c8",
            snapshot: &snap,
            tables: &[],
        })
        .await,
        "preparing the restore on 2 nodes",
    );
    let source_tablets: usize = snap.tables.iter().map(|t| t.tablets.len()).sum();
    assert_eq!(
        prepared.tablets.len(),
        source_tablets,
        "one placement per source tablet"
    );
    for p in &prepared.tablets {
        assert!(
            dst_nodes.contains(&p.node),
            "placement on a node not in the target: {p:?}"
        );
    }
    let used: BTreeSet<_> = prepared.tablets.iter().map(|p| &p.node).collect();
    assert_eq!(used.len(), 2, "the restore spreads over both target nodes");
    if let Ok(d) = ddb.describe("c8").await {
        assert!(
            d.tables.iter().all(|t| t.hidden),
            "tables are hidden before activation: {d:?}"
        );
    }
    let (s, d) = (node_stores(h, &src).await, node_stores(h, &dst).await);
    ship(&snap, &restore_id, &prepared, &s, &d, None).await;
    ok(
        ddb.activate_restore(Activation {
            restore_id: &restore_id,
            database: "c8",
            restore_ht: snap.hybrid_time,
            tables: &prepared.tables,
            tablets: &prepared.tablets,
        })
        .await,
        "activating",
    );
    let d = ok(ddb.describe("c8").await, "describing the restored db");
    assert!(d.tables.iter().all(|t| !t.hidden), "{d:?}");
    let names: BTreeSet<&str> = d.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, tables.iter().map(String::as_str).collect());
    for (t, want) in tables.iter().zip(&at_t) {
        let got = h.checksum(&dst, "c8", t, None).await;
        assert_eq!(&got, want, "table {t} on the target equals the source at T");
    }
}

/// C9: activation with one tablet not staged fails and reveals nothing; abort leaves the
/// target as it was, and a second abort is fine.
pub async fn c9_atomic_activation_and_abort(h: &mut dyn Harness) {
    let c = h.start_cluster(3).await;
    let db = connect(h, &c).await;
    h.load(&c, "c9", 0, 200).await;
    h.create_table(&c, "c9_target", "keep", 2).await;
    let before = ok(db.describe("c9_target").await, "describe");
    let snap = ok(db.create_snapshot(snapshot_req("c9")).await, "snapshot");
    let restore_id = RestoreId::new("c9-restore").expect("id");
    let prepared = ok(
        db.prepare_restore(RestoreRequest {
            restore_id: &restore_id,
            database: "c9_target",
            snapshot: &snap,
            tables: &[],
        })
        .await,
        "preparing",
    );
    let during = ok(db.describe("c9_target").await, "describe");
    assert!(
        during
            .tables
            .iter()
            .all(|t| t.hidden || before.tables.contains(t)),
        "prepared tables are hidden: {during:?}"
    );
    let stores = node_stores(h, &c).await;
    let missing = &prepared.tablets.last().expect("tablets").source_tablet;
    ship(
        &snap,
        &restore_id,
        &prepared,
        &stores,
        &stores,
        Some(missing),
    )
    .await;
    let activation = Activation {
        restore_id: &restore_id,
        database: "c9_target",
        restore_ht: snap.hybrid_time,
        tables: &prepared.tables,
        tablets: &prepared.tablets,
    };
    let err = db.activate_restore(activation).await;
    assert!(
        err.is_err(),
        "activation with tablet {missing} not staged must fail"
    );
    let after = ok(db.describe("c9_target").await, "describe");
    assert!(
        after
            .tables
            .iter()
            .all(|t| t.hidden || before.tables.contains(t)),
        "a failed activation reveals nothing: {after:?}"
    );
    ok(
        db.abort_restore(&restore_id, "c9_target", &prepared.tables)
            .await,
        "aborting",
    );
    let aborted = ok(db.describe("c9_target").await, "describe");
    assert_eq!(aborted, before, "abort leaves the target as it was");
    ok(
        db.abort_restore(&restore_id, "c9_target", &prepared.tables)
            .await,
        "aborting again",
    );
}

/// C10: activation and preparation repeated (a leader failing over) give one set of tables
/// with the same data.
pub async fn c10_idempotent_restore(h: &mut dyn Harness) {
    let c = h.start_cluster(3).await;
    let db = connect(h, &c).await;
    let tables = h.load(&c, "c10", 0, 200).await;
    let snap = ok(db.create_snapshot(snapshot_req("c10")).await, "snapshot");
    let restore_id = RestoreId::new("c10-restore").expect("id");
    let req = RestoreRequest {
        restore_id: &restore_id,
        database: "c10_copy",
        snapshot: &snap,
        tables: &[],
    };
    let _first = ok(db.prepare_restore(req).await, "preparing");
    let prepared = ok(db.prepare_restore(req).await, "preparing again");
    let d = ok(db.describe("c10_copy").await, "describe");
    assert_eq!(
        d.tables.len(),
        tables.len(),
        "one set of hidden tables: {d:?}"
    );
    let stores = node_stores(h, &c).await;
    ship(&snap, &restore_id, &prepared, &stores, &stores, None).await;
    let a = Activation {
        restore_id: &restore_id,
        database: "c10_copy",
        restore_ht: snap.hybrid_time,
        tables: &prepared.tables,
        tablets: &prepared.tablets,
    };
    ok(db.activate_restore(a).await, "activating");
    ok(db.activate_restore(a).await, "activating again");
    let d = ok(db.describe("c10_copy").await, "describe");
    assert_eq!(d.tables.len(), tables.len(), "{d:?}");
    assert!(d.tables.iter().all(|t| !t.hidden), "{d:?}");
    for t in &tables {
        assert_eq!(
            h.checksum(&c, "c10_copy", t, None).await,
            h.checksum(&c, "c10", t, Some(snap.hybrid_time)).await,
            "table {t}"
        );
    }
}

/// C11: a restore never overwrites a visible table: `AlreadyExists`, nothing changed.
pub async fn c11_no_overwrite(h: &mut dyn Harness) {
    let c = h.start_cluster(3).await;
    let db = connect(h, &c).await;
    let tables = h.load(&c, "c11", 0, 100).await;
    let snap = ok(db.create_snapshot(snapshot_req("c11")).await, "snapshot");
    h.load(&c, "c11", 100, 50).await;
    let before = ok(db.describe("c11").await, "describe");
    let sums: Vec<String> = checksums(h, &c, "c11", &tables).await;
    let restore_id = RestoreId::new("c11-restore").expect("id");
    permanent(
        db.prepare_restore(RestoreRequest {
            restore_id: &restore_id,
            database: "c11",
            snapshot: &snap,
            tables: &[],
        })
        .await,
        is_already_exists,
        "restoring over the source database",
    );
    assert_eq!(ok(db.describe("c11").await, "describe"), before);
    assert_eq!(checksums(h, &c, "c11", &tables).await, sums);
}

/// C12: a clone at T holds exactly the cut at T; later writes stay on their own side; a
/// clone onto an existing name is `AlreadyExists`.
pub async fn c12_clone_at_t(h: &mut dyn Harness) {
    let c = h.start_cluster(3).await;
    let db = connect(h, &c).await;
    let counter = h.start_counter(&c, "c12").await;
    counter.wait_for_keys(40).await;
    let t = ok(db.now().await, "now");
    counter.wait_for_keys(counter.keys() + 30).await;
    let report = ok(
        db.clone_database("c12", "c12_clone", Some(t), 3).await,
        "cloning at T",
    );
    counter.wait_for_keys(counter.keys() + 20).await;
    let log = counter.stop().await;
    assert_eq!(report.hybrid_time, t, "the clone is at the time asked for");
    assert!(report.tables >= 1 && report.tablets >= 1, "{report:?}");
    let got = h.keys_at(&c, "c12_clone", None).await;
    assert_exact(&got, &log, t, "the clone");

    let mine = [1_000_001u64, 1_000_002];
    h.put_counter_keys(&c, "c12_clone", &mine).await;
    let clone_now = h.keys_at(&c, "c12_clone", None).await;
    assert!(
        mine.iter().all(|k| clone_now.contains(k)),
        "writes to the clone land"
    );
    let source_now = h.keys_at(&c, "c12", None).await;
    let all: BTreeSet<u64> = log.iter().map(|(k, _)| *k).collect();
    // Stopping the writer may cut off the acknowledgement of its last key after the write:
    // that one key may be in the source without being in the log.
    let unlogged = all.last().copied().unwrap_or(0) + 1;
    let extra: Vec<_> = source_now.difference(&all).collect();
    assert!(
        all.is_subset(&source_now) && extra.iter().all(|k| **k == unlogged),
        "the source keeps exactly its own keys: {} logged, {} seen, extra {extra:?}",
        all.len(),
        source_now.len()
    );

    permanent(
        db.clone_database("c12", "c12_clone", None, 3).await,
        is_already_exists,
        "cloning onto an existing database",
    );
}
