//! The conformance suite: what every adapter must do, written only against the traits of
//! this crate and a small test [`Harness`] that supplies what the traits deliberately lack
//! (starting clusters, a data plane to write and read rows).
//!
//! Each case is an `async fn(&mut dyn Harness)` that panics with a message naming the broken
//! promise. [`adapter_conformance!`](crate::adapter_conformance) expands the cases into one
//! `#[tokio::test]` each, for an adapter's test crate:
//! `snapfleet_adapter::adapter_conformance!(MyHarness::new());`.
//!
//! In place of agents and a repository, [`ship`] copies each placement's snapshot files
//! (`NodeStore::snapshot_files` on the source node) into `NodeStore::staging_dir` on the
//! target node. This module must never name a database: a case that needs a
//! database-specific step needs a new harness method instead.

use crate::{
    Activation, Adapter, AdapterError, Database, HybridTime, NodeStore, PreparedRestore, RestoreId,
    RestoreRequest, SnapshotInfo, SnapshotRequest, TabletId,
};
use snapfleet_api::NodeName;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A cluster a harness started.
#[derive(Debug, Clone)]
pub struct ClusterRef {
    /// The control address (`Adapter::connect`).
    pub address: String,
    /// Every node's address (`Adapter::open_node`).
    pub nodes: Vec<String>,
}

/// The consistency workload running in the background: one writer appending counter keys
/// 1, 2, 3, … spread over all tablets, each acknowledged at its own hybrid time.
#[async_trait::async_trait]
pub trait Counter: Send {
    /// Keys acknowledged so far.
    fn keys(&self) -> u64;
    /// Waits (with a deadline, panicking after it) until at least `n` keys are acknowledged.
    async fn wait_for_keys(&self, n: u64);
    /// Stops the writer: every acknowledged key with its hybrid time, in key order.
    async fn stop(self: Box<Self>) -> Vec<(u64, HybridTime)>;
}

/// What a case needs besides the traits. A harness that cannot do what is asked panics: that
/// is a broken test set-up, not an adapter failure. Processes it starts die with it.
#[async_trait::async_trait]
pub trait Harness: Send + Sync {
    /// The adapter under test.
    fn adapter(&self) -> Arc<dyn Adapter>;
    /// Starts a new cluster of `nodes` nodes and waits until every node is live.
    async fn start_cluster(&mut self, nodes: u32) -> ClusterRef;
    /// Creates table `table` (any schema) with `tablets` tablets in `db` (created if needed).
    async fn create_table(&self, c: &ClusterRef, db: &str, table: &str, tablets: u32);
    /// Writes `rows` rows of the bulk workload into `db` (tables created if missing), with
    /// ids from `first_id` (so a second call adds rows); returns the workload's tables.
    async fn load(&self, c: &ClusterRef, db: &str, first_id: u64, rows: u64) -> Vec<String>;
    /// Starts the counter workload in `db` (creates its table; the db may exist).
    async fn start_counter(&self, c: &ClusterRef, db: &str) -> Box<dyn Counter>;
    /// Writes counter keys `keys` into `db`'s counter table (which must exist).
    async fn put_counter_keys(&self, c: &ClusterRef, db: &str, keys: &[u64]);
    /// The counter keys visible in `db` at `at` (latest when `None`).
    async fn keys_at(&self, c: &ClusterRef, db: &str, at: Option<HybridTime>) -> BTreeSet<u64>;
    /// An order-independent digest of `table`'s rows at `at` (latest when `None`).
    async fn checksum(
        &self,
        c: &ClusterRef,
        db: &str,
        table: &str,
        at: Option<HybridTime>,
    ) -> String;
}

// ---------------------------------------------------------------- helpers

/// Unwraps an adapter result, panicking with what was being done.
#[track_caller]
fn ok<T>(r: Result<T, AdapterError>, doing: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{doing}: {e} (retryable: {})", e.is_retryable()),
    }
}

/// Asserts `r` failed with a permanent error matching `kind`.
#[track_caller]
fn permanent<T: std::fmt::Debug>(
    r: Result<T, AdapterError>,
    kind: fn(&AdapterError) -> bool,
    doing: &str,
) -> AdapterError {
    match r {
        Ok(v) => panic!("{doing}: expected an error, got {v:?}"),
        Err(e) => {
            assert!(kind(&e), "{doing}: wrong kind of error: {e:?}");
            assert!(!e.is_retryable(), "{doing}: {e} must not be retryable");
            e
        }
    }
}

fn is_not_found(e: &AdapterError) -> bool {
    matches!(e, AdapterError::NotFound { .. })
}

fn is_already_exists(e: &AdapterError) -> bool {
    matches!(e, AdapterError::AlreadyExists { .. })
}

async fn connect(h: &dyn Harness, c: &ClusterRef) -> Arc<dyn Database> {
    ok(
        h.adapter().connect(&c.address).await,
        &format!("connecting to {}", c.address),
    )
}

/// A node store for every node of `c`.
pub async fn node_stores(h: &dyn Harness, c: &ClusterRef) -> Vec<Arc<dyn NodeStore>> {
    let mut out = Vec::new();
    for a in &c.nodes {
        out.push(ok(
            h.adapter().open_node(a).await,
            &format!("opening node {a}"),
        ));
    }
    out
}

fn store<'a>(stores: &'a [Arc<dyn NodeStore>], name: &NodeName) -> &'a Arc<dyn NodeStore> {
    stores
        .iter()
        .find(|s| s.node() == name)
        .unwrap_or_else(|| panic!("no node store for node {name}"))
}

/// Copies every placement's snapshot files (except `skip`'s) from its source node into its
/// staging directory on its target node: what the agents do through the repository.
pub async fn ship(
    snapshot: &SnapshotInfo,
    restore_id: &RestoreId,
    prepared: &PreparedRestore,
    src: &[Arc<dyn NodeStore>],
    dst: &[Arc<dyn NodeStore>],
    skip: Option<&TabletId>,
) {
    for p in &prepared.tablets {
        if Some(&p.source_tablet) == skip {
            continue;
        }
        let (table, placement) = snapshot
            .tablet(&p.source_tablet)
            .unwrap_or_else(|| panic!("placement of unknown source tablet {}", p.source_tablet));
        let from = store(src, &placement.node);
        let files = ok(
            from.snapshot_files(&snapshot.tablet_ref(table, placement))
                .await,
            &format!("listing the snapshot files of tablet {}", p.source_tablet),
        );
        let to = store(dst, &p.node).staging_dir(restore_id, &p.source_tablet);
        std::fs::create_dir_all(&to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
        for f in files {
            let target = to.join(&f.name);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).expect("staging subdirectory");
            }
            std::fs::copy(&f.path, &target)
                .unwrap_or_else(|e| panic!("copying {}: {e}", f.path.display()));
        }
    }
}

/// Prepares, ships and activates a restore of `snapshot` (from `src`) into `db` on `dst`.
async fn restore(
    h: &dyn Harness,
    snapshot: &SnapshotInfo,
    src: &ClusterRef,
    dst: &ClusterRef,
    db: &str,
    restore_id: &str,
) -> PreparedRestore {
    let target = connect(h, dst).await;
    let restore_id = RestoreId::new(restore_id).expect("restore id");
    let prepared = ok(
        target
            .prepare_restore(RestoreRequest {
                restore_id: &restore_id,
                database: db,
                snapshot,
                tables: &[],
            })
            .await,
        "preparing the restore",
    );
    let (src_stores, dst_stores) = (node_stores(h, src).await, node_stores(h, dst).await);
    ship(
        snapshot,
        &restore_id,
        &prepared,
        &src_stores,
        &dst_stores,
        None,
    )
    .await;
    ok(
        target
            .activate_restore(Activation {
                restore_id: &restore_id,
                database: db,
                restore_ht: snapshot.hybrid_time,
                tables: &prepared.tables,
                tablets: &prepared.tablets,
            })
            .await,
        "activating the restore",
    );
    prepared
}

/// The keys the counter log says were acknowledged at or before `t`.
fn keys_until(log: &[(u64, HybridTime)], t: HybridTime) -> BTreeSet<u64> {
    log.iter()
        .filter(|(_, ht)| *ht <= t)
        .map(|(k, _)| *k)
        .collect()
}

/// Asserts `got` is exactly the cut at `t`: no gap, no extra key.
#[track_caller]
fn assert_exact(got: &BTreeSet<u64>, log: &[(u64, HybridTime)], t: HybridTime, what: &str) {
    let want = keys_until(log, t);
    let missing: Vec<_> = want.difference(got).take(10).collect();
    let extra: Vec<_> = got.difference(&want).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what} is not exactly the cut at {t}: {} keys expected, {} seen; missing {missing:?}, \
         extra {extra:?}",
        want.len(),
        got.len()
    );
    assert!(
        log.iter().any(|(_, ht)| *ht > t) && !want.is_empty(),
        "{what}: the counter log must have keys on both sides of {t} for the check to mean \
         anything"
    );
}

fn snapshot_req(database: &str) -> SnapshotRequest<'_> {
    SnapshotRequest {
        database,
        at: None,
        label: None,
        ddl_retries: 3,
    }
}

// ---------------------------------------------------------------- cases

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

async fn checksums(h: &dyn Harness, c: &ClusterRef, db: &str, tables: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for t in tables {
        out.push(h.checksum(c, db, t, None).await);
    }
    out
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

/// C13: an in-place restore to T inside the history window brings the database back to
/// exactly the cut at T and drops a table created after T; a dry run reports the same and
/// changes nothing.
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

/// Reads a tablet's change log after `after` until it covers `until` (polling: the tablet's
/// safe time passes `until` shortly after), in chunks of about `max_bytes`: the records and
/// their count. `covered` must never go back.
async fn read_log(
    store: &dyn NodeStore,
    tablet: &TabletId,
    after: HybridTime,
    until: HybridTime,
    max_bytes: u32,
) -> (Vec<u8>, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut records, mut count) = (Vec::new(), 0u64);
    let (mut from, mut cursor) = (after, crate::LogCursor::default());
    loop {
        let chunk = ok(
            store.read_change_log(tablet, from, cursor, max_bytes).await,
            &format!("reading the change log of tablet {tablet}"),
        );
        assert!(chunk.gap.is_none(), "no gap expected: {chunk:?}");
        assert!(
            chunk.covered >= from,
            "covered went back: {} < {from}",
            chunk.covered
        );
        records.extend_from_slice(&chunk.records);
        count += u64::from(chunk.count);
        from = chunk.covered;
        cursor = chunk.cursor;
        if !chunk.more && from >= until {
            return (records, count);
        }
        assert!(
            Instant::now() < deadline,
            "tablet {tablet}'s log never covered {until}"
        );
        if !chunk.more {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// C15 + C18: each node lists exactly its own tablets of a database; the change log of every
/// tablet holds each write once, read in small or large chunks alike; an unknown tablet is
/// `NotFound`.
pub async fn c15_change_log_and_node_scan(h: &mut dyn Harness) {
    let c = h.start_cluster(3).await;
    let db = connect(h, &c).await;
    let start = ok(db.now().await, "now");
    let rows = 200;
    h.load(&c, "c15", 0, rows).await;
    let end = ok(db.now().await, "now");
    let d = ok(db.describe("c15").await, "describe");
    let stores = node_stores(h, &c).await;
    let mut listed = BTreeSet::new();
    for s in &stores {
        let scan = ok(s.scan_tablets(&d.id).await, "scanning a node");
        assert!(
            scan.at >= start,
            "scan time {} before the tablets existed",
            scan.at
        );
        for t in &scan.tablets {
            let (table, p) = d
                .tables
                .iter()
                .find_map(|tb| {
                    tb.tablets
                        .iter()
                        .find(|p| p.id == t.tablet)
                        .map(|p| (tb, p))
                })
                .unwrap_or_else(|| panic!("node {} lists unknown tablet {t:?}", s.node()));
            assert_eq!((&p.node, &table.id), (s.node(), &t.table), "{t:?}");
            assert!(
                listed.insert(t.tablet.clone()),
                "tablet {} listed twice",
                t.tablet
            );
        }
    }
    let all: BTreeSet<TabletId> = d
        .tables
        .iter()
        .flat_map(|t| t.tablets.iter().map(|p| p.id.clone()))
        .collect();
    assert_eq!(listed, all, "the nodes list every tablet of the database");

    let mut total = 0;
    for t in &d.tables {
        for p in &t.tablets {
            let s = store(&stores, &p.node);
            let (small, n_small) = read_log(s.as_ref(), &p.id, start, end, 1024).await;
            let (large, n_large) = read_log(s.as_ref(), &p.id, start, end, 1 << 20).await;
            assert_eq!((&small, n_small), (&large, n_large), "tablet {}", p.id);
            total += n_small;
        }
    }
    assert_eq!(total, rows, "every write is in the change log once");
    let unknown = TabletId::new("no-such-tablet").expect("id");
    permanent(
        stores[0]
            .read_change_log(&unknown, start, Default::default(), 1024)
            .await,
        is_not_found,
        "reading the log of an unknown tablet",
    );
}

/// C17: a snapshot at T0, staged, rolled forward with the change log of (T0, T1] (applied
/// twice), activated at T1, equals the source at T1; records of another tablet are refused.
pub async fn c17_replay_to_a_time(h: &mut dyn Harness) {
    let c = h.start_cluster(3).await;
    let db = connect(h, &c).await;
    let tables = h.load(&c, "c17", 0, 150).await;
    let snap = ok(db.create_snapshot(snapshot_req("c17")).await, "snapshot");
    let t0 = snap.hybrid_time;
    h.load(&c, "c17", 150, 100).await;
    let t1 = ok(db.now().await, "now");
    h.load(&c, "c17", 250, 50).await; // after T1: must not appear
    let restore_id = RestoreId::new("c17-restore").expect("id");
    let prepared = ok(
        db.prepare_restore(RestoreRequest {
            restore_id: &restore_id,
            database: "c17_copy",
            snapshot: &snap,
            tables: &[],
        })
        .await,
        "preparing",
    );
    let stores = node_stores(h, &c).await;
    ship(&snap, &restore_id, &prepared, &stores, &stores, None).await;
    let mut logs = Vec::new();
    for p in &prepared.tablets {
        let (_, src) = snap.tablet(&p.source_tablet).expect("source tablet");
        let from = store(&stores, &src.node);
        logs.push(read_log(from.as_ref(), &p.source_tablet, t0, t1, 1 << 20).await);
    }
    let (mut replayed, mut foreign_checked) = (0, 0);
    for (i, p) in prepared.tablets.iter().enumerate() {
        let staged = store(&stores, &p.node).staging_dir(&restore_id, &p.source_tablet);
        let mut r = ok(
            store(&stores, &p.node).open_replay(&staged).await,
            "opening a staged tablet for replay",
        );
        assert_eq!(
            r.snapshot_ht(),
            t0,
            "the staged copy is at the snapshot's time"
        );
        // Records of another tablet of the same table (another hash range) are refused.
        // (Of another table with the same ranges, an adapter may not be able to tell.)
        let table = snap.tablet(&p.source_tablet).map(|(t, _)| &t.id);
        let foreign = prepared.tablets.iter().zip(&logs).position(|(q, (_, n))| {
            *n > 0
                && q.source_tablet != p.source_tablet
                && snap.tablet(&q.source_tablet).map(|(t, _)| &t.id) == table
        });
        if let Some(j) = foreign {
            foreign_checked += 1;
            permanent(
                r.apply(logs[j].0.clone(), t0, t1).await,
                |e| matches!(e, AdapterError::Invalid { .. }),
                "applying another tablet's records",
            );
        }
        let first = ok(r.apply(logs[i].0.clone(), t0, t1).await, "applying");
        let again = ok(r.apply(logs[i].0.clone(), t0, t1).await, "applying again");
        assert_eq!(first, again, "both passes select the same records");
        ok(r.finish(t1, &[]).await, "finishing the replay");
        replayed += first;
    }
    assert_eq!(replayed, 100, "the writes of (T0, T1] are replayed");
    assert!(
        foreign_checked > 0,
        "some tablet was offered another's records"
    );
    ok(
        db.activate_restore(Activation {
            restore_id: &restore_id,
            database: "c17_copy",
            restore_ht: t1,
            tables: &prepared.tables,
            tablets: &prepared.tablets,
        })
        .await,
        "activating at T1",
    );
    for t in &tables {
        assert_eq!(
            h.checksum(&c, "c17_copy", t, None).await,
            h.checksum(&c, "c17", t, Some(t1)).await,
            "table {t} replayed to T1 equals the source at T1"
        );
    }
}

/// Every case, by name, in the order [`adapter_conformance!`](crate::adapter_conformance)
/// runs them.
pub const CASES: &[&str] = &[
    "c1_topology",
    "c2_snapshot_consistent_at_t",
    "c3_snapshot_at_past_time",
    "c6_snapshot_files_and_deletion",
    "c7_labels_and_listing",
    "c8_restore_to_different_node_count",
    "c9_atomic_activation_and_abort",
    "c10_idempotent_restore",
    "c11_no_overwrite",
    "c12_clone_at_t",
    "c15_change_log_and_node_scan",
    "c17_replay_to_a_time",
];

/// Expands into one `#[tokio::test]` per conformance case, each with a fresh harness from
/// `$make` (an expression, evaluated inside the async test: it may `.await`).
#[macro_export]
macro_rules! adapter_conformance {
    ($make:expr) => {
        $crate::adapter_conformance!(
            @cases $make;
            c1_topology,
            c2_snapshot_consistent_at_t,
            c3_snapshot_at_past_time,
            c6_snapshot_files_and_deletion,
            c7_labels_and_listing,
            c8_restore_to_different_node_count,
            c9_atomic_activation_and_abort,
            c10_idempotent_restore,
            c11_no_overwrite,
            c12_clone_at_t,
            c13_in_place_restore_to_time,
            c14_history_floor,
            c15_change_log_and_node_scan,
            c17_replay_to_a_time
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let mut harness = $make;
                $crate::conformance::$case(&mut harness).await;
            }
        )*
    };
}
