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
//!
//! The cases, by concept: [`snapshots`] (topology, cuts at T, DDL fencing, files, labels),
//! [`restore`] (other node counts, atomic activation, idempotency, no overwrite, clones),
//! [`history`] (in-place restore to a time, floors, the history window), [`change_log`]
//! (reading it, gaps, replay) and [`faults`] (error classes while a node or the control
//! plane is down). This file holds the harness and the helpers they share.

pub mod change_log;
pub mod faults;
pub mod history;
pub mod restore;
pub mod snapshots;

pub use change_log::*;
pub use faults::*;
pub use history::*;
pub use restore::*;
pub use snapshots::*;

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
    /// Like [`Harness::start_cluster`], with nodes that keep only `history` of history (old
    /// versions and the change log): as short as the database allows.
    async fn start_cluster_with_history(&mut self, nodes: u32, history: Duration) -> ClusterRef;
    /// Kills node `c.nodes[i]` abruptly (SIGKILL: no clean shutdown), keeping its data.
    async fn kill_node(&mut self, c: &ClusterRef, i: usize);
    /// Starts node `c.nodes[i]` again on its data after [`Harness::kill_node`], waits until
    /// the control plane sees it live, and updates `c.nodes[i]` (its address may change).
    async fn restart_node(&mut self, c: &mut ClusterRef, i: usize);
    /// Kills the control plane (`c.address`) abruptly, keeping its data.
    async fn kill_control(&mut self, c: &ClusterRef);
    /// Starts the control plane again at `c.address` after [`Harness::kill_control`] and
    /// waits until every running node is live again.
    async fn restart_control(&mut self, c: &ClusterRef);
    /// Creates table `table` (any schema) with `tablets` tablets in `db` (created if needed).
    async fn create_table(&self, c: &ClusterRef, db: &str, table: &str, tablets: u32);
    /// Drops table `table` of `db` (which must exist).
    async fn drop_table(&self, c: &ClusterRef, db: &str, table: &str);
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

/// Asserts `r` failed with an error a retry may fix (the database is down or busy).
#[track_caller]
fn retryable<T>(r: Result<T, AdapterError>, doing: &str) -> AdapterError {
    match r {
        Ok(_) => panic!("{doing}: expected a retryable error, got success"),
        Err(e) => {
            assert!(e.is_retryable(), "{doing}: {e} must be retryable: {e:?}");
            e
        }
    }
}

fn is_precondition(e: &AdapterError) -> bool {
    matches!(e, AdapterError::Precondition { .. })
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

/// The latest checksum of each of `tables`.
async fn checksums(h: &dyn Harness, c: &ClusterRef, db: &str, tables: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for t in tables {
        out.push(h.checksum(c, db, t, None).await);
    }
    out
}

/// Every case, by name, in the order [`adapter_conformance!`](crate::adapter_conformance)
/// runs them.
pub const CASES: &[&str] = &[
    "c1_topology",
    "c2_snapshot_consistent_at_t",
    "c3_snapshot_at_past_time",
    "c4_ddl_fencing",
    "c5_history_window",
    "c6_snapshot_files_and_deletion",
    "c7_labels_and_listing",
    "c8_restore_to_different_node_count",
    "c9_atomic_activation_and_abort",
    "c10_idempotent_restore",
    "c11_no_overwrite",
    "c12_clone_at_t",
    "c13_in_place_restore_to_time",
    "c14_history_floor",
    "c15_change_log_and_node_scan",
    "c16_change_log_gap",
    "c17_replay_to_a_time",
    "c19_error_classes_under_faults",
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
            c4_ddl_fencing,
            c5_history_window,
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
            c16_change_log_gap,
            c17_replay_to_a_time,
            c19_error_classes_under_faults
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
