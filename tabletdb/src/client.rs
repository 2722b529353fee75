//! The tabletdb client: caches the catalog, routes each row to its tablet by partition hash,
//! writes per-tablet batches in parallel, and scans whole tables at one hybrid time so a
//! read across tablets and nodes is a consistent cut. Carries the highest hybrid time it
//! has seen on every request (HLC propagation), so its own writes are causally ordered.

use crate::encoding;
use crate::error::{from_status, Error, Result};
use crate::hlc::{Hlc, HybridTime};
use crate::types::NodeId;
use pb::master_client::MasterClient;
use pb::tablet_server_client::TabletServerClient;
use snapfleet_proto::tabletdb as pb;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

fn endpoint(addr: &str) -> Result<Endpoint> {
    // TLS when this process was given certificates (`security::use_client_tls`); an idle
    // connection is probed so a dead peer is noticed in seconds, not at the next timeout.
    Ok(crate::security::endpoint(addr)?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(120))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true))
}

/// Connects to a master.
pub async fn connect_master(addr: &str) -> Result<MasterClient<Channel>> {
    let ch = endpoint(addr)?
        .connect()
        .await
        .map_err(|e| Error::Unavailable(format!("cannot reach master at {addr}: {e}")))?;
    Ok(MasterClient::new(ch).max_decoding_message_size(64 << 20))
}

/// Connects to a tablet server.
pub async fn connect_node(addr: &str) -> Result<TabletServerClient<Channel>> {
    let ch = endpoint(addr)?
        .connect()
        .await
        .map_err(|e| Error::Unavailable(format!("cannot reach node at {addr}: {e}")))?;
    Ok(TabletServerClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// A table as the client routes to it.
#[derive(Debug, Clone)]
pub struct TableRoute {
    pub info: pb::TableInfo,
    pub catalog_version: u64,
}

impl TableRoute {
    pub fn schema(&self) -> &pb::TableSchema {
        self.info
            .schema
            .as_ref()
            .expect("catalog tables have schemas")
    }

    /// The tablet that owns `row` (a full row).
    pub fn tablet_for_row(&self, row: &pb::Row) -> &pb::TabletInfo {
        let key = encoding::encode_key(&encoding::key_values(self.schema(), row));
        self.tablet_for_hash(encoding::partition_hash(&key))
    }

    /// The tablet that owns key values `key`.
    pub fn tablet_for_key(&self, key: &pb::Row) -> &pb::TabletInfo {
        self.tablet_for_hash(encoding::partition_hash(&encoding::encode_key(key)))
    }

    fn tablet_for_hash(&self, h: u32) -> &pb::TabletInfo {
        let i = self
            .info
            .tablets
            .partition_point(|t| t.hash_end <= h)
            .min(self.info.tablets.len() - 1);
        &self.info.tablets[i]
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.schema().columns.iter().position(|c| c.name == name)
    }
}

/// A connection to a tabletdb cluster.
pub struct Client {
    master_addr: String,
    master: MasterClient<Channel>,
    catalog: RwLock<Arc<pb::Catalog>>,
    nodes: Mutex<HashMap<String, TabletServerClient<Channel>>>,
    hlc: Hlc,
}

impl Client {
    /// Connects to the master at `addr` and loads the catalog.
    pub async fn connect(addr: &str) -> Result<Self> {
        let master = connect_master(addr).await?;
        let c = Self {
            master_addr: addr.to_string(),
            master,
            catalog: RwLock::new(Arc::new(pb::Catalog::default())),
            nodes: Mutex::new(HashMap::new()),
            hlc: Hlc::new(),
        };
        c.refresh().await?;
        Ok(c)
    }

    pub fn master_addr(&self) -> &str {
        &self.master_addr
    }

    /// A handle on the master's gRPC API.
    pub fn master(&self) -> MasterClient<Channel> {
        self.master.clone()
    }

    fn master_err(&self, s: tonic::Status) -> Error {
        from_status(&format!("master {}", self.master_addr), s)
    }

    /// Reloads the catalog from the master.
    pub async fn refresh(&self) -> Result<Arc<pb::Catalog>> {
        let cat = self
            .master()
            .get_catalog(pb::GetCatalogRequest {})
            .await
            .map_err(|s| self.master_err(s))?
            .into_inner();
        self.hlc.update(HybridTime(cat.hybrid_time));
        let cat = Arc::new(cat);
        *self.catalog.write().expect("catalog lock") = cat.clone();
        Ok(cat)
    }

    /// The cached catalog.
    pub fn catalog(&self) -> Arc<pb::Catalog> {
        self.catalog.read().expect("catalog lock").clone()
    }

    /// The master's current hybrid time (also advances this client's clock).
    pub async fn now(&self) -> Result<HybridTime> {
        let t = self
            .master()
            .now(pb::NowRequest {})
            .await
            .map_err(|s| self.master_err(s))?
            .into_inner()
            .hybrid_time;
        self.hlc.update(HybridTime(t));
        Ok(HybridTime(t))
    }

    /// A distributed snapshot of database `db` at `at` (None = now). A DDL racing the
    /// snapshot aborts it (the catalog version is fenced); it is retried up to `retries`
    /// times with a growing pause, then the error says what raced.
    pub async fn create_snapshot(
        &self,
        db: &str,
        at: Option<HybridTime>,
        retries: u32,
    ) -> Result<pb::SnapshotInfo> {
        self.create_labeled_snapshot(db, at, retries, "").await
    }

    /// [`Client::create_snapshot`] with a label naming who owns it (e.g. a PITR schedule).
    pub async fn create_labeled_snapshot(
        &self,
        db: &str,
        at: Option<HybridTime>,
        retries: u32,
        label: &str,
    ) -> Result<pb::SnapshotInfo> {
        let mut attempt = 0;
        loop {
            let r = self
                .master()
                .create_snapshot(pb::CreateSnapshotRequest {
                    database: db.into(),
                    hybrid_time: at.map(|t| t.0).unwrap_or(0),
                    label: label.to_string(),
                })
                .await;
            match r {
                Ok(s) => return Ok(s.into_inner()),
                Err(s) if s.code() == tonic::Code::Aborted && attempt < retries => {
                    attempt += 1;
                    tracing::warn!(attempt, reason = %s.message(), "snapshot aborted by a concurrent change; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
                }
                Err(s) if s.code() == tonic::Code::Aborted => {
                    return Err(Error::Aborted(format!(
                        "snapshot of database {db:?} failed after {} attempt(s): {} \
                         (schema changes kept racing it; retry when DDL is quiet or raise --ddl-retries)",
                        attempt + 1,
                        s.message()
                    )))
                }
                Err(s) => return Err(self.master_err(s)),
            }
        }
    }

    /// Deletes a snapshot on every node; one already gone is not an error.
    pub async fn delete_snapshot(&self, snapshot_id: &str) -> Result<()> {
        match self
            .master()
            .delete_snapshot(pb::DeleteSnapshotRequest {
                snapshot_id: snapshot_id.to_string(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(self.master_err(s)),
        }
    }

    /// The highest hybrid time this client has seen.
    pub fn seen(&self) -> HybridTime {
        self.hlc.peek()
    }

    pub async fn create_database(
        &self,
        name: &str,
        if_not_exists: bool,
    ) -> Result<pb::DatabaseInfo> {
        let r = self
            .master()
            .create_database(pb::CreateDatabaseRequest {
                name: name.into(),
                if_not_exists,
            })
            .await
            .map_err(|s| self.master_err(s))?
            .into_inner();
        self.refresh().await?;
        Ok(r)
    }

    pub async fn create_table(&self, req: pb::CreateTableRequest) -> Result<pb::TableInfo> {
        let r = self
            .master()
            .create_table(req)
            .await
            .map_err(|s| self.master_err(s))?
            .into_inner();
        self.refresh().await?;
        Ok(r)
    }

    pub async fn drop_table(&self, db: &str, name: &str) -> Result<()> {
        self.master()
            .drop_table(pb::DropTableRequest {
                database: db.into(),
                name: name.into(),
            })
            .await
            .map_err(|s| self.master_err(s))?;
        self.refresh().await?;
        Ok(())
    }

    /// The database's id, from the cached catalog (refreshing once if missing).
    pub async fn database(&self, name: &str) -> Result<pb::DatabaseInfo> {
        for attempt in 0..2 {
            let cat = if attempt == 0 {
                self.catalog()
            } else {
                self.refresh().await?
            };
            if let Some(d) = cat.databases.iter().find(|d| d.name == name) {
                return Ok(d.clone());
            }
        }
        Err(Error::NotFound(format!(
            "database {name:?}; create it with `CREATE DATABASE {name}`"
        )))
    }

    /// Active tables of a database.
    pub async fn tables(&self, db: &str) -> Result<Vec<pb::TableInfo>> {
        let d = self.database(db).await?;
        let cat = self.catalog();
        let mut t: Vec<_> = cat
            .tables
            .iter()
            .filter(|t| t.database_id == d.database_id && t.state == pb::TableState::Active as i32)
            .cloned()
            .collect();
        t.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(t)
    }

    /// Routing information for a table (refreshing the catalog once if missing).
    pub async fn table(&self, db: &str, name: &str) -> Result<TableRoute> {
        for attempt in 0..2 {
            let cat = if attempt == 0 {
                self.catalog()
            } else {
                self.refresh().await?
            };
            if let Some(d) = cat.databases.iter().find(|d| d.name == db) {
                if let Some(t) = cat.tables.iter().find(|t| {
                    t.database_id == d.database_id
                        && t.name == name
                        && t.state == pb::TableState::Active as i32
                }) {
                    return Ok(TableRoute {
                        info: t.clone(),
                        catalog_version: cat.version,
                    });
                }
            }
        }
        Err(Error::NotFound(format!(
            "table {name:?} in database {db:?}"
        )))
    }

    /// A client for the node that leads `tablet`.
    pub async fn node_for(&self, tablet: &pb::TabletInfo) -> Result<TabletServerClient<Channel>> {
        let node = *tablet.replicas.first().ok_or_else(|| {
            Error::Unavailable(format!("tablet {} has no replica", tablet.tablet_id))
        })?;
        self.node(node).await
    }

    /// A client for node `id`.
    pub async fn node(&self, id: NodeId) -> Result<TabletServerClient<Channel>> {
        let cat = self.catalog();
        let addr = cat
            .nodes
            .iter()
            .find(|n| n.node_id == id)
            .map(|n| n.address.clone())
            .ok_or_else(|| Error::Unavailable(format!("node {id} is not in the catalog")))?;
        self.node_at(&addr).await
    }

    pub async fn node_at(&self, addr: &str) -> Result<TabletServerClient<Channel>> {
        if let Some(c) = self.nodes.lock().expect("nodes lock").get(addr) {
            return Ok(c.clone());
        }
        let c = connect_node(addr).await?;
        self.nodes
            .lock()
            .expect("nodes lock")
            .insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Writes full rows (upserts). Returns the largest hybrid time of the per-tablet batches.
    pub async fn put_rows(&self, db: &str, table: &str, rows: Vec<pb::Row>) -> Result<HybridTime> {
        let ops = rows
            .into_iter()
            .map(|r| pb::RowOp {
                row: Some(r),
                delete: false,
            })
            .collect();
        self.write_ops(db, table, ops).await
    }

    /// Applies row operations, one atomic batch per tablet, tablets in parallel. Retries
    /// once with a fresh catalog when the routing was stale, and a few times while a node is
    /// unreachable.
    pub async fn write_ops(
        &self,
        db: &str,
        table: &str,
        ops: Vec<pb::RowOp>,
    ) -> Result<HybridTime> {
        let mut attempt = 0;
        loop {
            let route = self.table(db, table).await?;
            match self.write_routed(&route, ops.clone()).await {
                Ok(ht) => return Ok(ht),
                Err(e) => {
                    attempt += 1;
                    let stale = matches!(e, Error::FailedPrecondition(_) | Error::NotFound(_));
                    if attempt >= 5 || !(stale || e.is_retryable()) {
                        return Err(e);
                    }
                    if e.is_retryable() {
                        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    }
                    self.refresh().await?;
                }
            }
        }
    }

    /// Writes to a table by its routing information, including hidden (RESTORING) tables
    /// that name lookups do not see. Retries while a node is briefly unreachable.
    pub async fn write_to(&self, route: &TableRoute, ops: Vec<pb::RowOp>) -> Result<HybridTime> {
        let mut attempt = 0;
        loop {
            match self.write_routed(route, ops.clone()).await {
                Ok(ht) => return Ok(ht),
                Err(e) if e.is_retryable() && attempt < 4 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    self.refresh().await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn write_routed(&self, route: &TableRoute, ops: Vec<pb::RowOp>) -> Result<HybridTime> {
        let schema = route.schema();
        let mut groups: HashMap<String, (pb::TabletInfo, Vec<pb::RowOp>)> = HashMap::new();
        for op in ops {
            let row = op
                .row
                .as_ref()
                .ok_or_else(|| Error::InvalidArgument("row op without a row".into()))?;
            let tablet = if op.delete && row.values.len() == schema.primary_key.len() {
                route.tablet_for_key(row)
            } else {
                route.tablet_for_row(row)
            };
            groups
                .entry(tablet.tablet_id.clone())
                .or_insert_with(|| (tablet.clone(), Vec::new()))
                .1
                .push(op);
        }
        let mut calls = Vec::new();
        for (_, (tablet, ops)) in groups {
            let mut c = self.node_for(&tablet).await?;
            let req = pb::WriteRequest {
                tablet_id: tablet.tablet_id.clone(),
                catalog_version: route.catalog_version,
                ops,
                propagated_ht: self.hlc.peek().0,
            };
            calls.push(async move { (tablet.tablet_id, c.write(req).await) });
        }
        let mut max = HybridTime::MIN;
        let mut first_err = None;
        for (tablet, r) in futures::future::join_all(calls).await {
            match r {
                Ok(resp) => {
                    let ht = HybridTime(resp.into_inner().hybrid_time);
                    self.hlc.update(ht);
                    max = max.max(ht);
                }
                Err(s) => {
                    first_err.get_or_insert(from_status(&format!("tablet {tablet}"), s));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(max),
        }
    }

    /// Reads one row by primary key at `at` (latest when `None`).
    pub async fn get(
        &self,
        db: &str,
        table: &str,
        key: pb::Row,
        at: Option<HybridTime>,
    ) -> Result<Option<(pb::Row, HybridTime)>> {
        let route = self.table(db, table).await?;
        let tablet = route.tablet_for_key(&key).clone();
        let mut c = self.node_for(&tablet).await?;
        let resp = c
            .read(pb::ReadRequest {
                tablet_id: tablet.tablet_id.clone(),
                key: Some(key),
                read_ht: at.map(|t| t.0).unwrap_or(0),
                propagated_ht: self.hlc.peek().0,
            })
            .await
            .map_err(|s| from_status(&format!("tablet {}", tablet.tablet_id), s))?
            .into_inner();
        self.hlc.update(HybridTime(resp.hybrid_time));
        Ok(resp
            .found
            .then(|| (resp.row.unwrap_or_default(), HybridTime(resp.version_ht))))
    }

    /// Scans a whole table at one hybrid time (`at`, or now), tablets in parallel, calling
    /// `f` with each batch of rows. Memory stays bounded by a few batches per tablet.
    /// Returns the read time used.
    pub async fn scan_table(
        &self,
        db: &str,
        table: &str,
        at: Option<HybridTime>,
        mut f: impl FnMut(&TableRoute, Vec<pb::RowVersion>) -> Result<()>,
    ) -> Result<HybridTime> {
        let route = self.table(db, table).await?;
        let read_ht = match at {
            Some(t) => t,
            None => self.now().await?,
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<pb::RowVersion>>>(8);
        let mut tasks = tokio::task::JoinSet::new();
        for tablet in route.info.tablets.clone() {
            let mut c = self.node_for(&tablet).await?;
            let tx = tx.clone();
            let propagated = self.hlc.peek().0;
            tasks.spawn(async move {
                let req = pb::ScanRequest {
                    tablet_id: tablet.tablet_id.clone(),
                    read_ht: read_ht.0,
                    limit: 0,
                    propagated_ht: propagated,
                };
                let peer = format!("tablet {}", tablet.tablet_id);
                let mut stream = match c.scan(req).await {
                    Ok(s) => s.into_inner(),
                    Err(s) => {
                        let _ = tx.send(Err(from_status(&peer, s))).await;
                        return;
                    }
                };
                loop {
                    match stream.message().await {
                        Ok(Some(m)) => {
                            if tx.send(Ok(m.rows)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(s) => {
                            let _ = tx.send(Err(from_status(&peer, s))).await;
                            return;
                        }
                    }
                }
            });
        }
        drop(tx);
        while let Some(batch) = rx.recv().await {
            f(&route, batch?)?;
        }
        while tasks.join_next().await.is_some() {}
        Ok(read_ht)
    }
}
