//! History cases: the history window (C5), in-place restore to a time (C13), history
//! floors (C14).

use super::*;

/// Everything an attempt at a time outside the history window must leave as it was: the
/// database's tables, their data, the snapshots, the versions hidden on each node.
async fn window_state(
    h: &dyn Harness,
    c: &ClusterRef,
    db: &dyn Database,
    name: &str,
    tables: &[String],
) -> String {
    let d = ok(db.describe(name).await, "describing the database");
    let mut hidden = Vec::new();
    for s in node_stores(h, c).await {
        let mut scan = ok(s.scan_tablets(&d.id).await, "scanning a node").tablets;
        scan.sort_by(|a, b| a.tablet.cmp(&b.tablet));
        hidden.push((s.node().clone(), scan));
    }
    hidden.sort_by(|a, b| a.0.cmp(&b.0));
    let mut snapshots = ok(db.list_snapshots(name).await, "listing snapshots");
    snapshots.sort_by(|a, b| a.id.cmp(&b.id));
    format!(
        "{d:?}\n{:?}\n{snapshots:?}\n{hidden:?}",
        checksums(h, c, name, tables).await
    )
}

/// Asserts a snapshot and an in-place restore (dry run or not) of database `c5` at `at`
/// (outside the history window) are a permanent `Precondition` and change nothing.
async fn refused_at(
    h: &dyn Harness,
    c: &ClusterRef,
    db: &dyn Database,
    tables: &[String],
    at: HybridTime,
    when: &str,
) {
    let before = window_state(h, c, db, "c5", tables).await;
    permanent(
        db.create_snapshot(SnapshotRequest {
            at: Some(at),
            ..snapshot_req("c5")
        })
        .await,
        is_precondition,
        &format!("a snapshot at {when}"),
    );
    for dry_run in [true, false] {
        permanent(
            db.restore_to_time("c5", at, dry_run).await,
            is_precondition,
            &format!("a restore to {when} (dry run: {dry_run})"),
        );
    }
    assert_eq!(
        window_state(h, c, db, "c5", tables).await,
        before,
        "the refused calls at {when} changed nothing"
    );
}

/// C5: on a cluster keeping 3 s of history, a snapshot or an in-place restore (dry run or
/// not) at a time outside the window is a permanent `Precondition` that creates and
/// changes nothing; a time inside the window works, and falls out of it as time passes.
pub async fn c5_history_window(h: &mut dyn Harness) {
    let history = Duration::from_secs(3);
    let c = h.start_cluster_with_history(3, history).await;
    let db = connect(h, &c).await;
    let tables = h.load(&c, "c5", 0, 100).await;
    let t = ok(db.now().await, "now");
    let inside = ok(
        db.create_snapshot(SnapshotRequest {
            at: Some(t),
            ..snapshot_req("c5")
        })
        .await,
        "a snapshot at a time inside the history window",
    );
    assert_eq!(inside.hybrid_time, t);
    ok(
        db.restore_to_time("c5", t, true).await,
        "a dry run of a restore to a time inside the history window",
    );
    h.load(&c, "c5", 100, 50).await;

    let past = t.minus(Duration::from_secs(60));
    refused_at(h, &c, db.as_ref(), &tables, past, "a minute ago").await;

    // T falls out of the window as time passes: this wait is what the case is about.
    let deadline = Instant::now() + history + Duration::from_secs(20);
    loop {
        match db.restore_to_time("c5", t, true).await {
            Ok(_) => {}
            Err(e) if is_precondition(&e) && !e.is_retryable() => break,
            Err(e) => panic!(
                "a dry run of a restore to T: {e} (retryable: {})",
                e.is_retryable()
            ),
        }
        assert!(
            Instant::now() < deadline,
            "T is still inside a {history:?} history window after {:?}",
            history + Duration::from_secs(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    refused_at(h, &c, db.as_ref(), &tables, t, "T, now outside the window").await;
    ok(
        db.delete_snapshot(&inside.id).await,
        "deleting the snapshot at T",
    );
}

/// C13: an in-place restore to T inside the history window brings the database back to
/// exactly the cut at T and drops a table created after T; a dry run reports the same,
/// counts the rows each table has now and would have, and changes nothing.
pub async fn c13_in_place_restore_to_time(h: &mut dyn Harness) {
    let c = h.start_cluster(3).await;
    let db = connect(h, &c).await;
    let counter = h.start_counter(&c, "c13").await;
    counter.wait_for_keys(40).await;
    let t = ok(db.now().await, "now");
    counter.wait_for_keys(counter.keys() + 30).await;
    let log = counter.stop().await;
    h.create_table(&c, "c13", "later", 2).await;
    let before = h.keys_at(&c, "c13", None).await;

    let dry = ok(db.restore_to_time("c13", t, true).await, "a dry run to T");
    assert!(
        dry.removed.iter().any(|n| n == "later"),
        "the dry run names the table created after T: {dry:?}"
    );
    let at_t = log.iter().filter(|(_, ht)| *ht <= t).count() as u64;
    assert!(
        dry.rows
            .iter()
            .any(|r| r.now == before.len() as u64 && r.at_time == at_t),
        "the dry run counts the counter table's rows now ({}) and at T ({at_t}): {:?}",
        before.len(),
        dry.rows
    );
    assert_eq!(
        h.keys_at(&c, "c13", None).await,
        before,
        "a dry run changes nothing"
    );
    let done = ok(db.restore_to_time("c13", t, false).await, "restoring to T");
    assert_eq!(done.hybrid_time, t, "{done:?}");
    assert_eq!(
        done.removed, dry.removed,
        "the dry run said what would happen"
    );
    let got = h.keys_at(&c, "c13", None).await;
    assert_exact(&got, &log, t, "the database restored in place");
    let tables = ok(db.describe("c13").await, "describing the database").tables;
    assert!(
        tables.iter().all(|t| t.name != "later" || t.hidden),
        "the table created after T is gone: {tables:?}"
    );
}

/// C14: history floors are claimed per holder; the cluster's floor is the largest claim,
/// and withdrawing a claim (`ZERO`) lowers it.
pub async fn c14_history_floor(h: &mut dyn Harness) {
    let c = h.start_cluster(3).await;
    let db = connect(h, &c).await;
    let hour = Duration::from_secs(3600);
    let minute = Duration::from_secs(60);
    let floor = ok(
        db.set_history_floor("c14-a", hour).await,
        "claiming an hour",
    );
    assert!(floor >= hour, "the floor covers the claim: {floor:?}");
    let floor = ok(
        db.set_history_floor("c14-b", minute).await,
        "claiming a minute",
    );
    assert!(floor >= hour, "the largest claim wins: {floor:?}");
    let floor = ok(
        db.set_history_floor("c14-a", Duration::ZERO).await,
        "withdrawing the hour",
    );
    assert!(
        floor >= minute && floor < hour,
        "withdrawing the larger claim lowers the floor to the other: {floor:?}"
    );
    let floor = ok(
        db.set_history_floor("c14-b", Duration::ZERO).await,
        "withdrawing the minute",
    );
    assert!(floor < minute, "no claim is left: {floor:?}");
}
