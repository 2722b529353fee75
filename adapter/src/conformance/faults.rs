//! Fault cases: every error while a node or the control plane is down is retryable, and
//! the same calls succeed once it is back (C19).

use super::*;

/// C19: while a node is down, activating a restore with a tablet on it (right after the
/// kill, and again once `nodes()` lists it not live), a snapshot of a database with a tablet
/// on it, opening it and scanning it fail with retryable errors, and the failed calls reveal
/// or leave nothing; once it is back, the activation rolls forward and the rest succeed.
/// While the control plane is down, connecting (unless the handle is cached) and every
/// control call fail with retryable errors; once it is back, the same handle works again.
pub async fn c19_error_classes_under_faults(h: &mut dyn Harness) {
    let mut c = h.start_cluster(3).await;
    let db = connect(h, &c).await;
    let tables = h.load(&c, "c19", 0, 200).await;
    let snap = ok(db.create_snapshot(snapshot_req("c19")).await, "snapshot");
    let restore_id = RestoreId::new("c19-restore").expect("id");
    let prepared = ok(
        db.prepare_restore(RestoreRequest {
            restore_id: &restore_id,
            database: "c19_copy",
            snapshot: &snap,
            tables: &[],
        })
        .await,
        "preparing",
    );
    let stores = node_stores(h, &c).await;
    ship(&snap, &restore_id, &prepared, &stores, &stores, None).await;

    // The node to kill holds both a tablet of the source and a placement of the restore.
    let victim = stores
        .iter()
        .position(|s| {
            prepared.tablets.iter().any(|p| &p.node == s.node())
                && snap
                    .tables
                    .iter()
                    .any(|t| t.tablets.iter().any(|p| &p.node == s.node()))
        })
        .expect("a node with a source tablet and a restore placement");
    let name = stores[victim].node().clone();
    let d = ok(db.describe("c19").await, "describe");
    let listed = ok(db.list_snapshots("c19").await, "listing");
    // A call in flight when the node dies fails retryably (or completes).
    let (during, ()) = tokio::join!(stores[victim].scan_tablets(&d.id), h.kill_node(&c, victim));
    if let Err(e) = during {
        assert!(
            e.is_retryable(),
            "scanning node {name} while it was killed: {e} must be retryable: {e:?}"
        );
    }

    let activation = Activation {
        restore_id: &restore_id,
        database: "c19_copy",
        restore_ht: snap.hybrid_time,
        tables: &prepared.tables,
        tablets: &prepared.tablets,
    };
    retryable(
        db.activate_restore(activation).await,
        &format!("activating a restore with a tablet on node {name}, which is down"),
    );
    let copy = ok(db.describe("c19_copy").await, "describing the target");
    assert!(
        copy.tables.iter().all(|t| t.hidden),
        "a failed activation reveals nothing: {copy:?}"
    );
    retryable(
        db.create_snapshot(SnapshotRequest {
            ddl_retries: 0,
            ..snapshot_req("c19")
        })
        .await,
        &format!("a snapshot of a database with a tablet on node {name}, which is down"),
    );
    assert_eq!(
        ok(db.list_snapshots("c19").await, "listing"),
        listed,
        "a failed snapshot is not listed"
    );
    retryable(
        h.adapter().open_node(&c.nodes[victim]).await,
        &format!("opening node {name}, which is down"),
    );
    retryable(
        stores[victim].scan_tablets(&d.id).await,
        &format!("scanning node {name}, which is down"),
    );

    // Once the control plane has noticed (waiting for that is part of the case), the
    // activation may import the tablets of the live nodes before it fails on the dead one's.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ok(db.nodes().await, "listing nodes")
        .iter()
        .any(|n| n.name == name && n.live)
    {
        assert!(
            Instant::now() < deadline,
            "node {name} still listed live 30 s after it was killed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    retryable(
        db.activate_restore(activation).await,
        &format!("activating a restore with a tablet on node {name}, known to be down"),
    );
    let copy = ok(db.describe("c19_copy").await, "describing the target");
    assert!(
        copy.tables.iter().all(|t| t.hidden),
        "a failed activation reveals nothing: {copy:?}"
    );

    h.restart_node(&mut c, victim).await;
    ok(
        db.activate_restore(activation).await,
        "activating again once the node is back (it rolls forward)",
    );
    let copy = ok(db.describe("c19_copy").await, "describing the target");
    assert!(copy.tables.iter().all(|t| !t.hidden), "{copy:?}");
    for t in &tables {
        assert_eq!(
            h.checksum(&c, "c19_copy", t, None).await,
            h.checksum(&c, "c19", t, Some(snap.hybrid_time)).await,
            "table {t} of the restore activated after the node came back"
        );
    }
    let again = ok(
        db.create_snapshot(snapshot_req("c19")).await,
        "a snapshot once the node is back",
    );
    let reopened = ok(
        h.adapter().open_node(&c.nodes[victim]).await,
        "opening the node once it is back",
    );
    assert_eq!(reopened.node(), &name, "the node keeps its name");
    ok(
        reopened.scan_tablets(&d.id).await,
        "scanning the node once it is back",
    );

    // A call in flight when the control plane dies, or the first one after, may find its
    // connection broken rather than refused: a few rounds, each from a warm connection.
    const ROUNDS: usize = 4;
    for round in 1..=ROUNDS {
        ok(db.now().await, "now, before killing the control plane");
        let (during, ()) = tokio::join!(db.now(), h.kill_control(&c));
        if let Err(e) = during {
            assert!(
                e.is_retryable(),
                "now while the control plane was killed (round {round} of {ROUNDS}): {e} must \
                 be retryable: {e:?}"
            );
        }
        retryable(
            db.now().await,
            &format!("now right after the control plane was killed (round {round} of {ROUNDS})"),
        );
        if round < ROUNDS {
            h.restart_control(&c).await;
        }
    }
    match h.adapter().connect(&c.address).await {
        Ok(_) => {} // a cached handle: its calls below must fail
        Err(e) => assert!(
            e.is_retryable(),
            "connecting to a control plane that is down: {e} must be retryable: {e:?}"
        ),
    }
    let down = "while the control plane is down";
    retryable(db.now().await, &format!("now {down}"));
    retryable(db.nodes().await, &format!("listing nodes {down}"));
    retryable(db.describe("c19").await, &format!("describing {down}"));
    retryable(
        db.list_snapshots("c19").await,
        &format!("listing snapshots {down}"),
    );
    retryable(
        db.create_snapshot(snapshot_req("c19")).await,
        &format!("a snapshot {down}"),
    );

    h.restart_control(&c).await;
    let fresh = connect(h, &c).await;
    ok(
        fresh.describe("c19").await,
        "describing once the control plane is back",
    );
    ok(
        db.describe("c19").await,
        "describing with the handle from before the restart",
    );
    let listed = ok(db.list_snapshots("c19").await, "listing");
    assert!(
        listed.iter().any(|l| l.id == again.id),
        "the snapshot taken before the restart is kept: {listed:?}"
    );
    ok(
        db.create_snapshot(snapshot_req("c19")).await,
        "a snapshot once the control plane is back",
    );
}
