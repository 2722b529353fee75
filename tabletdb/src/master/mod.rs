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

// The master's concepts, one file each: the catalog, its state and the RPC surface here;
// DDL in `ddl.rs`; snapshots, in-place restore and clone in `snapshots.rs`.
mod ddl;
mod snapshots;

/// A node is live if it heartbeated within this long.
pub const NODE_LIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How to run a master.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Tablets per table when CREATE TABLE does not say.
    pub default_tablets: u32,
    /// Mutual TLS with roles (`--certs`); None serves plaintext, on loopback only unless
    /// `insecure`.
    pub tls: Option<std::sync::Arc<snapfleet_tls::Tls>>,
    pub insecure: bool,
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
    let builder = crate::security::server("master", cfg.listen, cfg.tls.as_deref(), cfg.insecure)?;
    if let Some(t) = &cfg.tls {
        // The master dials nodes with its node identity.
        crate::security::use_client_tls(t, true);
    }
    let svc = MasterService::open(&cfg.data_dir, cfg.default_tablets)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| Error::io(cfg.listen.to_string(), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io(cfg.listen.to_string(), e))?;
    info!(address = %bound, data = %cfg.data_dir.display(), "master listening");
    crate::node::write_addr_file(&cfg.data_dir.join("master.addr"), &bound.to_string())?;
    builder
        .trace_fn(|req| tracing::info_span!("rpc", role = "master", method = %req.uri().path()))
        .add_service(MasterServer::new(svc))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| Error::Unavailable(format!("master stopped: {e}")))
}
