//! The master: owns the catalog (databases, tables, tablet placement, catalog version) and
//! the list of distributed snapshots, persisted as one JSON file written atomically. DDL is
//! serialised by one lock and bumps the catalog version; snapshots do not take that lock
//! while nodes checkpoint, and instead fence on the catalog version, so a racing DDL makes
//! the snapshot fail cleanly (retryable) rather than capture a half-changed schema.

use crate::client::connect_node;
use crate::encoding;
use crate::error::{from_status, Error, Result};
use crate::hlc::{Hlc, HybridTime};
use crate::types::{self, DatabaseId, NodeId, SnapshotId, TableId, TabletId};
use futures::future::join_all;
use pb::master_server::{Master, MasterServer};
use pb::tablet_server_client::TabletServerClient;
use serde::{Deserialize, Serialize};
use snapfleet_proto::tabletdb as pb;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::{info, info_span, warn, Instrument};

/// A node is live if it heartbeated within this long.
pub const NODE_LIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How to run a master.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Tablets per table when CREATE TABLE does not say.
    pub default_tablets: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct NodeRecord {
    node_id: NodeId,
    address: String,
}

/// Everything the master persists.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    format: u32,
    version: u64,
    databases: Vec<pb::DatabaseInfo>,
    tables: Vec<pb::TableInfo>,
    nodes: Vec<NodeRecord>,
    snapshots: Vec<pb::SnapshotInfo>,
    /// History-retention claims (holder → seconds); nodes keep at least the largest.
    #[serde(default)]
    history_floors: std::collections::BTreeMap<String, u64>,
    /// Tables dropped while a history floor was claimed (a PITR schedule): their tablets stay
    /// on the nodes, invisible, so a restore to a time before the drop brings them back.
    /// Purged once the drop is older than the floor.
    #[serde(default)]
    dropped: Vec<DroppedTable>,
    /// Per database id: the newest time a table of it was dropped for good (no PITR window,
    /// or purged). Restores and snapshots before it would silently miss that table.
    #[serde(default)]
    lost_drops: std::collections::BTreeMap<String, u64>,
}

impl State {
    /// Refuses a restore, clone or snapshot of `db` at `t` that a table dropped for good
    /// since would be missing from.
    fn check_no_lost_drop(&self, db: &pb::DatabaseInfo, t: HybridTime) -> Result<()> {
        match self.lost_drops.get(&db.database_id) {
            Some(&lost) if t.0 < lost => Err(Error::FailedPrecondition(format!(
                "a table of database {:?} was dropped for good at {} ({}), after {t}: a restore \
                 or clone at {t} would silently miss it; pick a time after the drop, restore it \
                 from a backup, or keep a PITR schedule (`snapfleet pitr schedule create`) so \
                 dropped tables stay restorable",
                db.name,
                HybridTime(lost),
                HybridTime(lost).to_rfc3339()
            ))),
            _ => Ok(()),
        }
    }

    fn note_lost_drop(&mut self, database_id: &str, at: u64) {
        let e = self.lost_drops.entry(database_id.to_string()).or_default();
        *e = (*e).max(at);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DroppedTable {
    table: pb::TableInfo,
    dropped_ht: u64,
}

impl State {
    fn history_floor(&self) -> u64 {
        self.history_floors.values().copied().max().unwrap_or(0)
    }
}

impl State {
    fn database(&self, name: &str) -> Result<pb::DatabaseInfo> {
        self.databases
            .iter()
            .find(|d| d.name == name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("database {name:?}")))
    }

    fn node_address(&self, id: NodeId) -> Result<String> {
        self.nodes
            .iter()
            .find(|n| n.node_id == id)
            .map(|n| n.address.clone())
            .ok_or_else(|| Error::Unavailable(format!("node {id} has never registered")))
    }
}

struct Inner {
    path: PathBuf,
    state: Mutex<State>,
    hlc: Hlc,
    heartbeats: std::sync::Mutex<HashMap<NodeId, Instant>>,
    clients: std::sync::Mutex<HashMap<String, TabletServerClient<Channel>>>,
    default_tablets: u32,
    /// Registered node addresses, readable without the catalog lock (heartbeats).
    known_nodes: std::sync::Mutex<HashMap<NodeId, String>>,
    /// The catalog version as of the last persist, readable without the catalog lock.
    version: std::sync::atomic::AtomicU64,
    /// The persisted history floor (seconds), readable without the catalog lock.
    history_floor: std::sync::atomic::AtomicU64,
    /// Snapshots hold this shared while they checkpoint tablets; schema changes take it
    /// exclusively. A DDL therefore waits the few milliseconds a snapshot takes (hard
    /// links) instead of aborting it, and a snapshot never starves under a DDL loop (the
    /// lock is fair: each side waits at most for the ones queued before it).
    ddl_fence: tokio::sync::RwLock<()>,
}

/// The master's gRPC service.
#[derive(Clone)]
pub struct MasterService {
    inner: Arc<Inner>,
}

/// Highest catalog version persisted by this process (mirrored for lock-free heartbeats).
static PERSISTED_VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn persist(path: &Path, state: &State) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(state).expect("state is serialisable");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    crate::tablet::sync_dir(path)?;
    PERSISTED_VERSION.fetch_max(state.version, std::sync::atomic::Ordering::AcqRel);
    Ok(())
}

impl MasterService {
    /// Loads (or creates) the master state in `data_dir`.
    pub fn open(data_dir: &Path, default_tablets: u32) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| Error::io(data_dir, e))?;
        let path = data_dir.join("master-state.json");
        let state = if path.exists() {
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            let s: State = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                what: path.display().to_string(),
                detail: e.to_string(),
            })?;
            if s.format != 1 {
                return Err(Error::Corrupt {
                    what: path.display().to_string(),
                    detail: format!("unknown master state format {}", s.format),
                });
            }
            s
        } else {
            let s = State {
                format: 1,
                version: 1,
                ..Default::default()
            };
            persist(&path, &s)?;
            s
        };
        let hlc = Hlc::new();
        // Never hand out a time below one already recorded.
        let max_snap = state
            .snapshots
            .iter()
            .map(|s| s.hybrid_time)
            .max()
            .unwrap_or(0);
        let max_created = state
            .tables
            .iter()
            .map(|t| t.created_ht)
            .chain(state.dropped.iter().map(|d| d.dropped_ht))
            .max()
            .unwrap_or(0);
        hlc.update(HybridTime(max_snap.max(max_created)));
        let floor = state.history_floor();
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                state: Mutex::new(state),
                hlc,
                heartbeats: Default::default(),
                clients: Default::default(),
                default_tablets: default_tablets.max(1),
                known_nodes: Default::default(),
                ddl_fence: Default::default(),
                history_floor: std::sync::atomic::AtomicU64::new(floor),
                version: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    fn live_nodes(&self, state: &State) -> Vec<NodeId> {
        let hb = self.inner.heartbeats.lock().expect("heartbeats lock");
        state
            .nodes
            .iter()
            .filter(|n| {
                hb.get(&n.node_id)
                    .is_some_and(|t| t.elapsed() < NODE_LIVE_TIMEOUT)
            })
            .map(|n| n.node_id)
            .collect()
    }

    async fn node_client(
        &self,
        state: &State,
        node: NodeId,
    ) -> Result<TabletServerClient<Channel>> {
        let addr = state.node_address(node)?;
        if let Some(c) = self.inner.clients.lock().expect("clients lock").get(&addr) {
            return Ok(c.clone());
        }
        let c = connect_node(&addr)
            .await
            .map_err(|e| Error::Unavailable(format!("node {node} at {addr}: {e}")))?;
        self.inner
            .clients
            .lock()
            .expect("clients lock")
            .insert(addr, c.clone());
        Ok(c)
    }

    fn catalog(&self, state: &State) -> pb::Catalog {
        let hb = self.inner.heartbeats.lock().expect("heartbeats lock");
        pb::Catalog {
            version: state.version,
            databases: state.databases.clone(),
            tables: state.tables.clone(),
            nodes: state
                .nodes
                .iter()
                .map(|n| {
                    let age = hb.get(&n.node_id).map(|t| t.elapsed());
                    pb::NodeInfo {
                        node_id: n.node_id,
                        address: n.address.clone(),
                        live: age.is_some_and(|a| a < NODE_LIVE_TIMEOUT),
                        last_heartbeat_ms_ago: age
                            .map(|a| a.as_millis() as u64)
                            .unwrap_or(u64::MAX),
                    }
                })
                .collect(),
            hybrid_time: self.inner.hlc.now().0,
        }
    }

    fn tablet_meta(table: &pb::TableInfo, tablet: &pb::TabletInfo) -> pb::TabletMeta {
        pb::TabletMeta {
            tablet_id: tablet.tablet_id.clone(),
            table_id: table.table_id.clone(),
            table_name: table.name.clone(),
            database_id: table.database_id.clone(),
            schema: table.schema.clone(),
            schema_version: table.schema_version,
            hash_start: tablet.hash_start,
            hash_end: tablet.hash_end,
            hidden: vec![],
        }
    }

    async fn create_table_locked(
        &self,
        state: &mut State,
        req: pb::CreateTableRequest,
    ) -> Result<pb::TableInfo> {
        let db = state.database(&req.database)?;
        types::check_name("table", &req.name)?;
        if let Some(t) = state
            .tables
            .iter()
            .find(|t| t.database_id == db.database_id && t.name == req.name)
        {
            if req.if_not_exists && t.state == pb::TableState::Active as i32 {
                return Ok(t.clone());
            }
            return Err(Error::AlreadyExists(format!(
                "table {:?} in database {:?}",
                req.name, req.database
            )));
        }
        let schema = req
            .schema
            .ok_or_else(|| Error::InvalidArgument("CREATE TABLE without a schema".into()))?;
        types::check_schema(&schema)?;
        let n = if req.num_tablets == 0 {
            self.inner.default_tablets
        } else {
            req.num_tablets
        };
        if n > 4096 {
            return Err(Error::InvalidArgument(format!(
                "{n} tablets is too many (at most 4096)"
            )));
        }
        let mut live = self.live_nodes(state);
        if live.is_empty() {
            return Err(Error::Unavailable(
                "no live tablet servers; start nodes with `snapfleet db node`".into(),
            ));
        }
        // Least-loaded first, then round-robin: spreads tablets evenly over any node count.
        let mut load: HashMap<NodeId, usize> = live.iter().map(|&n| (n, 0)).collect();
        for t in &state.tables {
            for tb in &t.tablets {
                if let Some(c) = tb.replicas.first().and_then(|n| load.get_mut(n)) {
                    *c += 1;
                }
            }
        }
        live.sort_by_key(|n| (load[n], *n));
        if !req.placement.is_empty() {
            if req.placement.len() != n as usize {
                return Err(Error::InvalidArgument(format!(
                    "placement names {} nodes for {n} tablets",
                    req.placement.len()
                )));
            }
            if let Some(bad) = req.placement.iter().find(|p| !live.contains(p)) {
                return Err(Error::Unavailable(format!(
                    "placement names node {bad}, which is not live"
                )));
            }
        }
        let version = state.version + 1;
        let table = pb::TableInfo {
            table_id: TableId::generate().0,
            name: req.name.clone(),
            database_id: db.database_id.clone(),
            schema: Some(schema),
            tablets: encoding::tablet_ranges(n)
                .into_iter()
                .enumerate()
                .map(|(i, (s, e))| pb::TabletInfo {
                    tablet_id: TabletId::generate().0,
                    hash_start: s,
                    hash_end: e,
                    replicas: vec![req
                        .placement
                        .get(i)
                        .copied()
                        .unwrap_or(live[i % live.len()])],
                })
                .collect(),
            schema_version: version,
            created_ht: self.inner.hlc.now().0,
            state: if req.for_restore || req.hidden {
                pb::TableState::Restoring as i32
            } else {
                pb::TableState::Active as i32
            },
        };
        if !req.for_restore {
            let mut calls = Vec::new();
            for tb in &table.tablets {
                let node = tb.replicas[0];
                let mut c = self.node_client(state, node).await?;
                let meta = Self::tablet_meta(&table, tb);
                calls.push(async move {
                    let id = meta.tablet_id.clone();
                    let r = c
                        .create_tablet(pb::CreateTabletRequest { meta: Some(meta) })
                        .await;
                    (node, id, r)
                });
            }
            let results = join_all(calls).await;
            if let Some((node, _, Err(s))) = results.iter().find(|r| r.2.is_err()) {
                let err = format!("creating a tablet on node {node} failed: {}", s.message());
                // Roll back the tablets that were created.
                for (node, id, r) in &results {
                    if r.is_ok() {
                        if let Ok(mut c) = self.node_client(state, *node).await {
                            let _ = c
                                .delete_tablet(pb::DeleteTabletRequest {
                                    tablet_id: id.clone(),
                                })
                                .await;
                        }
                    }
                }
                return Err(Error::Unavailable(err));
            }
        }
        state.tables.push(table.clone());
        state.version = version;
        persist(&self.inner.path, state)?;
        info!(table = %table.name, tablets = n, version, for_restore = req.for_restore, "created table");
        Ok(table)
    }

    async fn drop_table_locked(&self, state: &mut State, table_id: &str) -> Result<()> {
        let Some(pos) = state.tables.iter().position(|t| t.table_id == table_id) else {
            return Err(Error::NotFound(format!("table id {table_id}")));
        };
        let table = state.tables[pos].clone();
        self.delete_tablets(state, &table).await?;
        state.tables.remove(pos);
        state.version += 1;
        persist(&self.inner.path, state)?;
        info!(table = %table.name, version = state.version, "dropped table");
        Ok(())
    }

    /// Deletes a table's tablets on their nodes (one already gone is fine).
    async fn delete_tablets(&self, state: &State, table: &pb::TableInfo) -> Result<()> {
        for tb in &table.tablets {
            let node = tb.replicas[0];
            let mut c = self.node_client(state, node).await?;
            match c
                .delete_tablet(pb::DeleteTabletRequest {
                    tablet_id: tb.tablet_id.clone(),
                })
                .await
            {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => {
                    return Err(Error::Unavailable(format!(
                        "dropping tablet {} on node {node}: {}",
                        tb.tablet_id,
                        s.message()
                    )))
                }
            }
        }
        Ok(())
    }

    /// Deletes the tablets of kept dropped tables that no PITR window reaches any more (best
    /// effort: a node that is down keeps the table listed for the next try).
    async fn purge_dropped(&self, state: &mut State) {
        let floor = std::time::Duration::from_secs(state.history_floor());
        let horizon = if floor.is_zero() {
            HybridTime(u64::MAX)
        } else {
            self.inner.hlc.now().minus(floor)
        };
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut state.dropped)
            .into_iter()
            .partition(|d| HybridTime(d.dropped_ht) < horizon);
        state.dropped = kept;
        let mut changed = false;
        for d in expired {
            match self.delete_tablets(state, &d.table).await {
                Ok(()) => {
                    info!(table = %d.table.name, "dropped table purged (out of every PITR window)");
                    state.note_lost_drop(&d.table.database_id, d.dropped_ht);
                    changed = true;
                }
                Err(e) => {
                    warn!(table = %d.table.name, error = %e, "could not purge a dropped table; will retry");
                    state.dropped.push(d);
                }
            }
        }
        if changed {
            if let Err(e) = persist(&self.inner.path, state) {
                warn!(error = %e, "persisting the purge of dropped tables");
            }
        }
    }

    async fn delete_snapshot_on_nodes(&self, snapshot_id: &str) {
        let state = self.inner.state.lock().await.clone();
        for n in &state.nodes {
            if let Ok(mut c) = self.node_client(&state, n.node_id).await {
                if let Err(s) = c
                    .delete_tablet_snapshots(pb::DeleteTabletSnapshotsRequest {
                        snapshot_id: snapshot_id.to_string(),
                    })
                    .await
                {
                    warn!(node = n.node_id, error = %s.message(), "could not delete snapshot files");
                }
            }
        }
    }

    async fn create_snapshot_inner(
        &self,
        req: pb::CreateSnapshotRequest,
    ) -> Result<pb::SnapshotInfo> {
        let _fence = self.inner.ddl_fence.read().await;
        let (v1, db, tables, state_copy) = {
            let st = self.inner.state.lock().await;
            let db = st.database(&req.database)?;
            let mut tables: Vec<pb::TableInfo> = st
                .tables
                .iter()
                .filter(|t| {
                    t.database_id == db.database_id && t.state == pb::TableState::Active as i32
                })
                .cloned()
                .collect();
            // A snapshot in the past also captures the tables dropped since (kept for a PITR
            // window): clones and backups as of T see the database as it was.
            if req.hybrid_time != 0 {
                st.check_no_lost_drop(&db, HybridTime(req.hybrid_time))?;
                tables.extend(
                    st.dropped
                        .iter()
                        .filter(|d| {
                            d.table.database_id == db.database_id && d.dropped_ht > req.hybrid_time
                        })
                        .map(|d| {
                            let mut t = d.table.clone();
                            t.state = pb::TableState::Active as i32;
                            t
                        }),
                );
            }
            (st.version, db, tables, st.clone())
        };
        let now = self.inner.hlc.now();
        let t = if req.hybrid_time == 0 {
            now
        } else if req.hybrid_time > now.0 {
            return Err(Error::InvalidArgument(format!(
                "snapshot time {} is in the future (now is {now})",
                req.hybrid_time
            )));
        } else {
            HybridTime(req.hybrid_time)
        };
        if req.hybrid_time != 0 {
            // A time in the past must be inside every node's history window, even when no
            // table existed then (there would be no tablet to refuse it).
            for node in self.live_nodes(&state_copy) {
                let mut c = self.node_client(&state_copy, node).await?;
                c.hide_versions(pb::HideVersionsRequest {
                    tablet_ids: vec![],
                    after_ht: t.0,
                    dry_run: true,
                })
                .await
                .map_err(|s| from_status(&format!("node {node}"), s))?;
            }
        }
        // The catalog as of T: tables created after T did not exist then.
        let tables: Vec<pb::TableInfo> = tables
            .into_iter()
            .filter(|tb| tb.created_ht <= t.0)
            .collect();
        let snapshot_id = SnapshotId::generate().0;
        let mut info = pb::SnapshotInfo {
            snapshot_id: snapshot_id.clone(),
            database_id: db.database_id.clone(),
            database_name: db.name.clone(),
            hybrid_time: t.0,
            label: req.label.clone(),
            catalog_version: v1,
            tables: tables.clone(),
            created_unix_ms: chrono::Utc::now().timestamp_millis(),
            total_bytes: 0,
            total_files: 0,
        };
        let catalog_json = serde_json::to_string(&info).expect("serialisable");
        let mut by_node: HashMap<NodeId, Vec<String>> = HashMap::new();
        for table in &tables {
            for tb in &table.tablets {
                by_node
                    .entry(tb.replicas[0])
                    .or_default()
                    .push(tb.tablet_id.clone());
            }
        }
        let mut calls = Vec::new();
        for (node, ids) in by_node {
            let mut c = self.node_client(&state_copy, node).await?;
            let req = pb::SnapshotTabletsRequest {
                snapshot_id: snapshot_id.clone(),
                hybrid_time: t.0,
                tablet_ids: ids,
                catalog_json: catalog_json.clone(),
            };
            calls.push(async move { (node, c.snapshot_tablets(req).await) });
        }
        let mut failure = None;
        for (node, r) in join_all(calls).await {
            match r {
                Ok(resp) => {
                    for ts in resp.into_inner().tablets {
                        info.total_bytes += ts.bytes;
                        info.total_files += ts.files;
                    }
                }
                Err(s) => {
                    failure.get_or_insert_with(|| {
                        let e = from_status(&format!("node {node}"), s);
                        match e {
                            Error::Rpc { peer, status } => Error::Unavailable(format!(
                                "{peer} could not take its part of the snapshot: {}",
                                status.message()
                            )),
                            other => other,
                        }
                    });
                }
            }
        }
        let mut st = self.inner.state.lock().await;
        // A concurrent DDL explains (and takes precedence over) any node failure: a tablet
        // dropped mid-snapshot answers NotFound. Either way nothing partial is kept.
        if let Some(e) = failure.filter(|_| st.version == v1) {
            drop(st);
            self.delete_snapshot_on_nodes(&snapshot_id).await;
            return Err(e);
        }
        if st.version != v1 {
            let v2 = st.version;
            drop(st);
            self.delete_snapshot_on_nodes(&snapshot_id).await;
            return Err(Error::Aborted(format!(
                "the catalog changed from version {v1} to {v2} while the snapshot was being \
                 taken (concurrent DDL); the snapshot was discarded, retry it"
            )));
        }
        st.snapshots.push(info.clone());
        persist(&self.inner.path, &st)?;
        info!(snapshot = %snapshot_id, ht = t.0, bytes = info.total_bytes, "snapshot created");
        Ok(info)
    }
}

impl MasterService {
    async fn restore_to_time_inner(
        &self,
        req: pb::RestoreToTimeRequest,
    ) -> Result<pb::RestoreToTimeResponse> {
        // Serialised with DDL: the catalog cannot move under the restore.
        let _fence = self.inner.ddl_fence.write().await;
        let mut st = self.inner.state.lock().await;
        let db = st.database(&req.database)?;
        let t = HybridTime(req.hybrid_time);
        if t == HybridTime::MIN || t > self.inner.hlc.now() {
            return Err(Error::InvalidArgument(format!(
                "restore time {t} is not in the past"
            )));
        }
        st.check_no_lost_drop(&db, t)?;
        let tables: Vec<pb::TableInfo> = st
            .tables
            .iter()
            .filter(|tb| {
                tb.database_id == db.database_id && tb.state == pb::TableState::Active as i32
            })
            .cloned()
            .collect();
        let (removed, mut kept): (Vec<_>, Vec<_>) =
            tables.into_iter().partition(|tb| tb.created_ht > t.0);
        // Tables dropped after T (kept for a PITR window) come back.
        let revived: Vec<pb::TableInfo> = st
            .dropped
            .iter()
            .filter(|d| {
                d.table.database_id == db.database_id
                    && d.table.created_ht <= t.0
                    && d.dropped_ht > t.0
            })
            .map(|d| d.table.clone())
            .collect();
        kept.extend(revived.iter().cloned());
        let mut by_node: HashMap<NodeId, Vec<String>> = HashMap::new();
        for tb in &kept {
            for tablet in &tb.tablets {
                by_node
                    .entry(tablet.replicas[0])
                    .or_default()
                    .push(tablet.tablet_id.clone());
            }
        }
        // Check every live node first (history window, tablets present), then apply: a
        // time outside the window changes nothing anywhere — even when no table would be
        // kept (a time before every table was created is outside the window too).
        for node in self.live_nodes(&st) {
            by_node.entry(node).or_default();
        }
        for dry_run in [true, false] {
            if !dry_run && req.dry_run {
                break;
            }
            if !dry_run {
                // Fence concurrent snapshots before anything changes: one that straddles
                // the apply sees a new catalog version and aborts.
                st.version += 1;
                persist(&self.inner.path, &st)?;
            }
            for (node, ids) in &by_node {
                let mut c = self.node_client(&st, *node).await?;
                c.hide_versions(pb::HideVersionsRequest {
                    tablet_ids: ids.clone(),
                    after_ht: t.0,
                    dry_run,
                })
                .await
                .map_err(|s| from_status(&format!("node {node}"), s))?;
            }
        }
        let out = pb::RestoreToTimeResponse {
            hybrid_time: t.0,
            restored: kept.iter().map(|tb| tb.name.clone()).collect(),
            removed: removed.iter().map(|tb| tb.name.clone()).collect(),
            revived: revived.iter().map(|tb| tb.name.clone()).collect(),
        };
        if req.dry_run {
            return Ok(out);
        }
        for tb in &removed {
            self.drop_table_locked(&mut st, &tb.table_id).await?;
        }
        for tb in &revived {
            st.dropped.retain(|d| d.table.table_id != tb.table_id);
            let mut tb = tb.clone();
            tb.state = pb::TableState::Active as i32;
            info!(table = %tb.name, "dropped table brought back");
            st.tables.push(tb);
        }
        st.version += 1;
        persist(&self.inner.path, &st)?;
        info!(db = %req.database, ht = t.0, restored = out.restored.len(), removed = out.removed.len(), "restored in place");
        Ok(out)
    }

    async fn clone_inner(
        &self,
        req: pb::CloneDatabaseRequest,
    ) -> Result<pb::CloneDatabaseResponse> {
        types::check_name("database", &req.target)?;
        {
            let st = self.inner.state.lock().await;
            if st.databases.iter().any(|d| d.name == req.target) {
                return Err(Error::AlreadyExists(format!(
                    "database {:?}; clone under another name",
                    req.target
                )));
            }
        }
        let snap = self
            .create_snapshot_inner(pb::CreateSnapshotRequest {
                database: req.source.clone(),
                hybrid_time: req.hybrid_time,
                label: format!("clone:{}", req.target),
            })
            .await?;
        let result = self.clone_from_snapshot(&snap, &req.target).await;
        // The clone's files are its own hard links: the snapshot can go either way.
        self.delete_snapshot_on_nodes(&snap.snapshot_id).await;
        {
            let mut st = self.inner.state.lock().await;
            st.snapshots.retain(|s| s.snapshot_id != snap.snapshot_id);
            persist(&self.inner.path, &st)?;
        }
        result
    }

    async fn clone_from_snapshot(
        &self,
        snap: &pb::SnapshotInfo,
        target: &str,
    ) -> Result<pb::CloneDatabaseResponse> {
        // A schema change like any other: snapshots of other databases wait, not abort.
        let _fence = self.inner.ddl_fence.write().await;
        let db = {
            let mut st = self.inner.state.lock().await;
            let db = pb::DatabaseInfo {
                database_id: DatabaseId::generate().0,
                name: target.to_string(),
            };
            st.databases.push(db.clone());
            st.version += 1;
            persist(&self.inner.path, &st)?;
            db
        };
        let mut created = Vec::new();
        let res = async {
            let mut out = pb::CloneDatabaseResponse {
                hybrid_time: snap.hybrid_time,
                ..Default::default()
            };
            for src in &snap.tables {
                let table = {
                    let mut st = self.inner.state.lock().await;
                    self.create_table_locked(
                        &mut st,
                        pb::CreateTableRequest {
                            database: target.to_string(),
                            name: src.name.clone(),
                            schema: src.schema.clone(),
                            num_tablets: src.tablets.len() as u32,
                            if_not_exists: false,
                            for_restore: true,
                            hidden: false,
                            placement: src.tablets.iter().map(|t| t.replicas[0]).collect(),
                        },
                    )
                    .await?
                };
                created.push(table.table_id.clone());
                let st = self.inner.state.lock().await.clone();
                let mut calls = Vec::new();
                for (s, d) in src.tablets.iter().zip(&table.tablets) {
                    let node = d.replicas[0];
                    let mut c = self.node_client(&st, node).await?;
                    let req = pb::CloneTabletRequest {
                        snapshot_id: snap.snapshot_id.clone(),
                        source_tablet_id: s.tablet_id.clone(),
                        meta: Some(Self::tablet_meta(&table, d)),
                        restore_ht: snap.hybrid_time,
                    };
                    calls.push(async move { (node, c.clone_tablet(req).await) });
                }
                for (node, r) in join_all(calls).await {
                    r.map_err(|s| from_status(&format!("node {node}"), s))?;
                    out.tablets += 1;
                }
                out.tables += 1;
            }
            out.files = snap.total_files;
            out.bytes = snap.total_bytes;
            Ok::<_, Error>(out)
        }
        .await;
        let mut st = self.inner.state.lock().await;
        match res {
            Ok(out) => {
                for t in st
                    .tables
                    .iter_mut()
                    .filter(|t| created.contains(&t.table_id))
                {
                    t.state = pb::TableState::Active as i32;
                }
                st.version += 1;
                persist(&self.inner.path, &st)?;
                info!(source = %snap.database_name, target, ht = snap.hybrid_time, tablets = out.tablets, "database cloned");
                Ok(out)
            }
            Err(e) => {
                for id in created {
                    if let Err(de) = self.drop_table_locked(&mut st, &id).await {
                        warn!(table = %id, error = %de, "could not drop a half-made clone table");
                    }
                }
                st.databases.retain(|d| d.database_id != db.database_id);
                st.version += 1;
                persist(&self.inner.path, &st)?;
                Err(e)
            }
        }
    }
}

#[tonic::async_trait]
impl Master for MasterService {
    async fn register_node(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        let req = request.into_inner();
        if req.node_id == 0 || req.address.is_empty() {
            return Err(Status::invalid_argument(
                "node_id must be > 0 and address set",
            ));
        }
        if let Err(e) = self.inner.hlc.update_remote(HybridTime(req.hybrid_time)) {
            warn!(node = req.node_id, "clock skew: {e}");
        }
        // Fast path: a known node at a known address only refreshes its heartbeat, without
        // waiting for the catalog lock (a slow DDL must not make every node look dead).
        let known = self
            .inner
            .known_nodes
            .lock()
            .expect("known nodes lock")
            .get(&req.node_id)
            .is_some_and(|a| *a == req.address);
        if known {
            self.inner
                .heartbeats
                .lock()
                .expect("heartbeats lock")
                .insert(req.node_id, Instant::now());
            return Ok(Response::new(pb::RegisterNodeResponse {
                catalog_version: PERSISTED_VERSION
                    .load(std::sync::atomic::Ordering::Acquire)
                    .max(
                        self.inner
                            .version
                            .load(std::sync::atomic::Ordering::Acquire),
                    ),
                hybrid_time: self.inner.hlc.now().0,
                history_floor_secs: self
                    .inner
                    .history_floor
                    .load(std::sync::atomic::Ordering::Acquire),
            }));
        }
        let mut st = self.inner.state.lock().await;
        let changed = match st.nodes.iter_mut().find(|n| n.node_id == req.node_id) {
            Some(n) if n.address == req.address => false,
            Some(n) => {
                info!(node = req.node_id, old = %n.address, new = %req.address, "node moved");
                n.address = req.address.clone();
                true
            }
            None => {
                info!(node = req.node_id, address = %req.address, "node registered");
                st.nodes.push(NodeRecord {
                    node_id: req.node_id,
                    address: req.address.clone(),
                });
                true
            }
        };
        if changed {
            persist(&self.inner.path, &st)?;
            self.inner
                .clients
                .lock()
                .expect("clients lock")
                .remove(&req.address);
        }
        self.inner
            .heartbeats
            .lock()
            .expect("heartbeats lock")
            .insert(req.node_id, Instant::now());
        self.inner
            .known_nodes
            .lock()
            .expect("known nodes lock")
            .insert(req.node_id, req.address.clone());
        Ok(Response::new(pb::RegisterNodeResponse {
            catalog_version: st.version,
            hybrid_time: self.inner.hlc.now().0,
            history_floor_secs: st.history_floor(),
        }))
    }

    async fn set_history_floor(
        &self,
        request: Request<pb::SetHistoryFloorRequest>,
    ) -> Result<Response<pb::SetHistoryFloorResponse>, Status> {
        let req = request.into_inner();
        if req.holder.is_empty() {
            return Err(Status::invalid_argument("holder must be set"));
        }
        // Purging dropped tables is a catalog change: no snapshot may straddle it.
        let _fence = self.inner.ddl_fence.write().await;
        let mut st = self.inner.state.lock().await;
        let changed = if req.min_secs == 0 {
            st.history_floors.remove(&req.holder).is_some()
        } else {
            st.history_floors.insert(req.holder.clone(), req.min_secs) != Some(req.min_secs)
        };
        if changed {
            persist(&self.inner.path, &st)?;
            info!(holder = %req.holder, secs = req.min_secs, floor = st.history_floor(), "history floor changed");
        }
        self.purge_dropped(&mut st).await;
        let floor = st.history_floor();
        self.inner
            .history_floor
            .store(floor, std::sync::atomic::Ordering::Release);
        Ok(Response::new(pb::SetHistoryFloorResponse {
            floor_secs: floor,
        }))
    }

    async fn get_catalog(
        &self,
        _request: Request<pb::GetCatalogRequest>,
    ) -> Result<Response<pb::Catalog>, Status> {
        let st = self.inner.state.lock().await;
        Ok(Response::new(self.catalog(&st)))
    }

    async fn now(
        &self,
        _request: Request<pb::NowRequest>,
    ) -> Result<Response<pb::NowResponse>, Status> {
        Ok(Response::new(pb::NowResponse {
            hybrid_time: self.inner.hlc.now().0,
        }))
    }

    async fn create_database(
        &self,
        request: Request<pb::CreateDatabaseRequest>,
    ) -> Result<Response<pb::DatabaseInfo>, Status> {
        let req = request.into_inner();
        types::check_name("database", &req.name)?;
        let span = info_span!("create_database", name = %req.name);
        let _fence = self.inner.ddl_fence.write().instrument(span.clone()).await;
        let mut st = self.inner.state.lock().instrument(span).await;
        if let Some(d) = st.databases.iter().find(|d| d.name == req.name) {
            if req.if_not_exists {
                return Ok(Response::new(d.clone()));
            }
            return Err(Error::AlreadyExists(format!("database {:?}", req.name)).into());
        }
        let db = pb::DatabaseInfo {
            database_id: DatabaseId::generate().0,
            name: req.name,
        };
        st.databases.push(db.clone());
        st.version += 1;
        persist(&self.inner.path, &st)?;
        Ok(Response::new(db))
    }

    async fn drop_database(
        &self,
        request: Request<pb::DropDatabaseRequest>,
    ) -> Result<Response<pb::DropDatabaseResponse>, Status> {
        let req = request.into_inner();
        let span = info_span!("drop_database", name = %req.name);
        async {
            let _fence = self.inner.ddl_fence.write().await;
            let mut st = self.inner.state.lock().await;
            let db = st.database(&req.name)?;
            let ids: Vec<String> = st
                .tables
                .iter()
                .filter(|t| t.database_id == db.database_id)
                .map(|t| t.table_id.clone())
                .collect();
            for id in ids {
                self.drop_table_locked(&mut st, &id).await?;
            }
            st.databases.retain(|d| d.database_id != db.database_id);
            st.version += 1;
            persist(&self.inner.path, &st)?;
            Ok(Response::new(pb::DropDatabaseResponse {
                catalog_version: st.version,
            }))
        }
        .instrument(span)
        .await
    }

    async fn create_table(
        &self,
        request: Request<pb::CreateTableRequest>,
    ) -> Result<Response<pb::TableInfo>, Status> {
        let req = request.into_inner();
        let span = info_span!("create_table", db = %req.database, table = %req.name);
        async {
            let _fence = self.inner.ddl_fence.write().await;
            let mut st = self.inner.state.lock().await;
            Ok(Response::new(self.create_table_locked(&mut st, req).await?))
        }
        .instrument(span)
        .await
    }

    async fn drop_table(
        &self,
        request: Request<pb::DropTableRequest>,
    ) -> Result<Response<pb::DropTableResponse>, Status> {
        let req = request.into_inner();
        let span = info_span!("drop_table", db = %req.database, table = %req.name);
        async {
            let _fence = self.inner.ddl_fence.write().await;
            let mut st = self.inner.state.lock().await;
            let db = st.database(&req.database)?;
            let id = st
                .tables
                .iter()
                .find(|t| t.database_id == db.database_id && t.name == req.name)
                .map(|t| t.table_id.clone())
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "table {:?} in database {:?}",
                        req.name, req.database
                    ))
                })?;
            let active = st
                .tables
                .iter()
                .any(|t| t.table_id == id && t.state == pb::TableState::Active as i32);
            if st.history_floor() > 0 && active {
                // A PITR window covers this moment: keep the tablets for a restore to
                // before the drop. (A restore's hidden table never served: dropped for good.)
                let pos = st
                    .tables
                    .iter()
                    .position(|t| t.table_id == id)
                    .expect("found above");
                let table = st.tables.remove(pos);
                let dropped_ht = self.inner.hlc.now().0;
                info!(table = %table.name, dropped_ht, "dropped table kept for the PITR window");
                st.dropped.push(DroppedTable { table, dropped_ht });
                st.version += 1;
                persist(&self.inner.path, &st)?;
            } else {
                if active {
                    let now = self.inner.hlc.now().0;
                    st.note_lost_drop(&db.database_id, now);
                }
                self.drop_table_locked(&mut st, &id).await?;
            }
            self.purge_dropped(&mut st).await;
            Ok(Response::new(pb::DropTableResponse {
                catalog_version: st.version,
            }))
        }
        .instrument(span)
        .await
    }

    async fn activate_table(
        &self,
        request: Request<pb::ActivateTableRequest>,
    ) -> Result<Response<pb::TableInfo>, Status> {
        let req = request.into_inner();
        let mut ids = req.table_ids.clone();
        if !req.table_id.is_empty() {
            ids.push(req.table_id.clone());
        }
        let _fence = self.inner.ddl_fence.write().await;
        let mut st = self.inner.state.lock().await;
        // Check them all first: all become visible in one catalog change, or none.
        if let Some(missing) = ids
            .iter()
            .find(|id| !st.tables.iter().any(|t| &t.table_id == *id))
        {
            return Err(Error::NotFound(format!("table id {missing}")).into());
        }
        let mut changed = false;
        let mut last = None;
        for t in st.tables.iter_mut().filter(|t| ids.contains(&t.table_id)) {
            if t.state != pb::TableState::Active as i32 {
                t.state = pb::TableState::Active as i32;
                changed = true;
                info!(table = %t.name, "table activated");
            }
            last = Some(t.clone());
        }
        if changed {
            st.version += 1;
            persist(&self.inner.path, &st)?;
        }
        Ok(Response::new(last.unwrap_or_default()))
    }

    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::SnapshotInfo>, Status> {
        let req = request.into_inner();
        let span = info_span!("create_snapshot", db = %req.database);
        Ok(Response::new(
            self.create_snapshot_inner(req).instrument(span).await?,
        ))
    }

    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let req = request.into_inner();
        let st = self.inner.state.lock().await;
        let snapshots = st
            .snapshots
            .iter()
            .filter(|s| req.database.is_empty() || s.database_name == req.database)
            .cloned()
            .collect();
        Ok(Response::new(pb::ListSnapshotsResponse { snapshots }))
    }

    async fn restore_to_time(
        &self,
        request: Request<pb::RestoreToTimeRequest>,
    ) -> Result<Response<pb::RestoreToTimeResponse>, Status> {
        let req = request.into_inner();
        let span = info_span!("restore_to_time", db = %req.database, ht = req.hybrid_time);
        Ok(Response::new(
            self.restore_to_time_inner(req).instrument(span).await?,
        ))
    }

    async fn clone_database(
        &self,
        request: Request<pb::CloneDatabaseRequest>,
    ) -> Result<Response<pb::CloneDatabaseResponse>, Status> {
        let req = request.into_inner();
        let span = info_span!("clone_database", source = %req.source, target = %req.target);
        Ok(Response::new(self.clone_inner(req).instrument(span).await?))
    }

    async fn delete_snapshot(
        &self,
        request: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let req = request.into_inner();
        types::check_id("snapshot", &req.snapshot_id)?;
        {
            let st = self.inner.state.lock().await;
            if !st
                .snapshots
                .iter()
                .any(|s| s.snapshot_id == req.snapshot_id)
            {
                return Err(Error::NotFound(format!("snapshot {}", req.snapshot_id)).into());
            }
        }
        self.delete_snapshot_on_nodes(&req.snapshot_id).await;
        let mut st = self.inner.state.lock().await;
        st.snapshots.retain(|s| s.snapshot_id != req.snapshot_id);
        persist(&self.inner.path, &st)?;
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }
}

/// Runs a master until `shutdown` resolves. Writes the bound address to `<data>/master.addr`.
pub async fn run_master(
    cfg: MasterConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let svc = MasterService::open(&cfg.data_dir, cfg.default_tablets)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| Error::io(cfg.listen.to_string(), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io(cfg.listen.to_string(), e))?;
    info!(address = %bound, data = %cfg.data_dir.display(), "master listening");
    crate::node::write_addr_file(&cfg.data_dir.join("master.addr"), &bound.to_string())?;
    tonic::transport::Server::builder()
        .trace_fn(|req| tracing::info_span!("rpc", role = "master", method = %req.uri().path()))
        .add_service(MasterServer::new(svc))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| Error::Unavailable(format!("master stopped: {e}")))
}
