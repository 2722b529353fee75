//! The adapter conformance suite (`snapfleet_adapter::conformance`) run against tabletdb:
//! [`TabletdbHarness`] starts real local tabletdb clusters (master + nodes, loopback ports,
//! temporary directories, killed on drop) and supplies the data plane the adapter traits
//! leave out (counter workload, bulk load, scans, checksums).
//!
//! Needs the `snapfleet` binary (`cargo build --workspace --bins`). Must never call the
//! adapter's internals: the cases see tabletdb only through the traits.

use snapfleet_adapter::conformance::{ClusterRef, Counter, Harness};
use snapfleet_adapter::{Adapter, HybridTime};
use snapfleet_adapter_tabletdb::TabletdbAdapter;
use snapfleet_localfleet::cluster::{LocalCluster, LocalOptions};
use snapfleet_tabletdb::pb::value::Kind;
use snapfleet_tabletdb::workload::{self, COUNTER_TABLE};
use snapfleet_tabletdb::{pb, verify, Client};
use snapfleet_tests::{snapfleet_bin, CounterWriter};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// One local cluster of a case.
///
/// Its processes are started (and restarted) on the thread running the case, never on a
/// blocking-pool thread (`spawn_blocking`, `block_in_place`): `LocalCluster` spawns them
/// with `PR_SET_PDEATHSIG`, which fires when the *thread* that spawned a child exits, and
/// tokio retires idle blocking threads after 10 s, which killed the nodes of longer cases.
/// The thread running the case (`Runtime::block_on` in `#[tokio::test]`) lives as long as
/// the case.
struct Cluster {
    master: String,
    local: LocalCluster,
    /// Reconnected after each restart.
    client: Arc<Client>,
    /// The tabletdb node id of each `ClusterRef::nodes` entry, by index.
    ids: Vec<u32>,
}

/// Local tabletdb clusters for one conformance case.
struct TabletdbHarness {
    adapter: Arc<TabletdbAdapter>,
    dir: tempfile::TempDir,
    clusters: Vec<Cluster>,
}

impl TabletdbHarness {
    fn new() -> Self {
        Self {
            adapter: TabletdbAdapter::new(),
            // SNAPFLEET_KEEP_TEST_DIRS=1 keeps the clusters' data and logs for a post-mortem.
            dir: tempfile::Builder::new()
                .prefix("snapfleet-adapter-")
                .disable_cleanup(std::env::var_os("SNAPFLEET_KEEP_TEST_DIRS").is_some())
                .tempdir()
                .expect("temp dir"),
            clusters: Vec::new(),
        }
    }

    fn cluster(&mut self, c: &ClusterRef) -> &mut Cluster {
        self.clusters
            .iter_mut()
            .find(|k| k.master == c.address)
            .unwrap_or_else(|| panic!("no cluster at {}", c.address))
    }

    fn client(&self, c: &ClusterRef) -> Arc<Client> {
        self.clusters
            .iter()
            .find(|k| k.master == c.address)
            .map(|k| k.client.clone())
            .unwrap_or_else(|| panic!("no cluster at {}", c.address))
    }

    /// Starts a cluster whose nodes run with `--history-retention <history>`.
    async fn start(&mut self, nodes: u32, history: String) -> ClusterRef {
        let dir = self.dir.path().join(format!("c{}", self.clusters.len()));
        let opts = LocalOptions {
            nodes,
            history_retention: history,
            default_tablets: 4,
            ..Default::default()
        };
        // Blocking, on purpose on this thread (see `Cluster`).
        let local = LocalCluster::start(&snapfleet_bin(), &dir, opts)
            .unwrap_or_else(|e| panic!("starting a {nodes}-node cluster: {e}"));
        let client = Arc::new(
            local
                .client()
                .await
                .unwrap_or_else(|e| panic!("cluster did not come up: {e}")),
        );
        let nodes = client.catalog().nodes.clone();
        let c = ClusterRef {
            address: local.master_addr.clone(),
            nodes: nodes.iter().map(|n| n.address.clone()).collect(),
        };
        self.clusters.push(Cluster {
            master: c.address.clone(),
            local,
            client,
            ids: nodes.iter().map(|n| n.node_id).collect(),
        });
        c
    }
}

impl Cluster {
    /// Waits until every running process is up and registered; a fresh client.
    async fn reconnect(&mut self) {
        self.client = Arc::new(
            self.local
                .client()
                .await
                .unwrap_or_else(|e| panic!("the cluster did not come back: {e}")),
        );
    }
}

/// The counter workload of `tests::CounterWriter`, its log read back at the end.
struct TabletdbCounter(CounterWriter);

#[snapfleet_adapter::async_trait]
impl Counter for TabletdbCounter {
    fn keys(&self) -> u64 {
        self.0.keys()
    }

    async fn wait_for_keys(&self, n: u64) {
        self.0.wait_for_keys(n).await
    }

    async fn stop(self: Box<Self>) -> Vec<(u64, HybridTime)> {
        let report = self.0.stop().await;
        workload::read_counter_log(&report.log)
            .expect("counter log")
            .into_iter()
            .map(|(k, ht)| (k, HybridTime(ht.0)))
            .collect()
    }
}

fn counter_row(key: u64) -> pb::Row {
    let v = |k| pb::Value { kind: Some(k) };
    pb::Row {
        values: vec![
            v(Kind::Int(key as i64)),
            v(Kind::TimestampMicros(0)),
            v(Kind::Text(format!("counter key {key}"))),
        ],
    }
}

#[snapfleet_adapter::async_trait]
impl Harness for TabletdbHarness {
    fn adapter(&self) -> Arc<dyn Adapter> {
        self.adapter.clone()
    }

    async fn start_cluster(&mut self, nodes: u32) -> ClusterRef {
        self.start(nodes, LocalOptions::default().history_retention)
            .await
    }

    async fn start_cluster_with_history(&mut self, nodes: u32, history: Duration) -> ClusterRef {
        assert!(!history.is_zero(), "tabletdb's 0 s keeps all history");
        self.start(nodes, format!("{}ms", history.as_millis()))
            .await
    }

    async fn kill_node(&mut self, c: &ClusterRef, i: usize) {
        let k = self.cluster(c);
        let id = k.ids[i];
        k.local.kill_node(id);
    }

    async fn restart_node(&mut self, c: &mut ClusterRef, i: usize) {
        let k = self.cluster(c);
        let id = k.ids[i];
        k.local
            .start_node(id)
            .unwrap_or_else(|e| panic!("restarting node {id}: {e}"));
        k.reconnect().await;
        c.nodes[i] = k
            .client
            .catalog()
            .nodes
            .iter()
            .find(|n| n.node_id == id)
            .map(|n| n.address.clone())
            .unwrap_or_else(|| panic!("node {id} is not in the catalog after its restart"));
    }

    async fn kill_control(&mut self, c: &ClusterRef) {
        let k = self.cluster(c);
        k.local.kill_master();
    }

    async fn restart_control(&mut self, c: &ClusterRef) {
        let k = self.cluster(c);
        k.local
            .start_master()
            .unwrap_or_else(|e| panic!("restarting the master: {e}"));
        assert_eq!(
            k.local.master_addr, c.address,
            "the master kept its address"
        );
        k.reconnect().await;
    }

    async fn create_table(&self, c: &ClusterRef, db: &str, table: &str, tablets: u32) {
        let client = self.client(c);
        client.create_database(db, true).await.expect("database");
        client
            .create_table(pb::CreateTableRequest {
                database: db.into(),
                name: table.into(),
                schema: Some(workload::load_schema()),
                num_tablets: tablets,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("creating table {table} in {db}: {e}"));
    }

    async fn drop_table(&self, c: &ClusterRef, db: &str, table: &str) {
        self.client(c)
            .drop_table(db, table)
            .await
            .unwrap_or_else(|e| panic!("dropping table {table} of {db}: {e}"));
    }

    async fn load(&self, c: &ClusterRef, db: &str, first_id: u64, rows: u64) -> Vec<String> {
        let opts = workload::LoadOptions {
            db: db.into(),
            tables: 2,
            table_prefix: "load".into(),
            tablets: 3,
            rows: Some(rows),
            row_size: 64,
            batch: 50,
            concurrency: 2,
            id_offset: first_id,
            ..Default::default()
        };
        let tables = (0..opts.tables).map(|i| format!("load_{i}")).collect();
        workload::run_load(self.client(c), opts, Default::default())
            .await
            .unwrap_or_else(|e| panic!("loading {db}: {e}"));
        tables
    }

    async fn start_counter(&self, c: &ClusterRef, db: &str) -> Box<dyn Counter> {
        // One counter per database and case: the name is unique.
        let log = self.dir.path().join(format!("counter-{db}.log"));
        Box::new(TabletdbCounter(CounterWriter::start(
            self.client(c),
            db,
            4,
            log,
        )))
    }

    async fn put_counter_keys(&self, c: &ClusterRef, db: &str, keys: &[u64]) {
        self.client(c)
            .put_rows(
                db,
                COUNTER_TABLE,
                keys.iter().map(|&k| counter_row(k)).collect(),
            )
            .await
            .unwrap_or_else(|e| panic!("writing counter keys to {db}: {e}"));
    }

    async fn keys_at(&self, c: &ClusterRef, db: &str, at: Option<HybridTime>) -> BTreeSet<u64> {
        let mut keys = BTreeSet::new();
        self.client(c)
            .scan_table(
                db,
                COUNTER_TABLE,
                at.map(|t| snapfleet_tabletdb::HybridTime(t.0)),
                |_, rows| {
                    for rv in rows {
                        if let Some(Kind::Int(k)) = rv
                            .row
                            .as_ref()
                            .and_then(|r| r.values.first())
                            .and_then(|v| v.kind.as_ref())
                        {
                            keys.insert(*k as u64);
                        }
                    }
                    Ok(())
                },
            )
            .await
            .unwrap_or_else(|e| panic!("scanning the counter table of {db}: {e}"));
        keys
    }

    async fn checksum(
        &self,
        c: &ClusterRef,
        db: &str,
        table: &str,
        at: Option<HybridTime>,
    ) -> String {
        let s = verify::table_checksum(
            &self.client(c),
            db,
            table,
            at.map(|t| snapfleet_tabletdb::HybridTime(t.0)),
        )
        .await
        .unwrap_or_else(|e| panic!("checksum of {db}.{table}: {e}"));
        format!("{} rows, {}", s.rows, s.digest)
    }
}

snapfleet_adapter::adapter_conformance!(TabletdbHarness::new());
