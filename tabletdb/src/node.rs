//! A tablet server ("node"): hosts tablets, serves reads, writes, scans, snapshots and
//! restore imports over gRPC, and heartbeats to the master. All RocksDB work runs on the
//! blocking pool so slow disks never stall the RPC runtime.

use crate::error::{from_status, Error, Result};
use crate::hlc::{Hlc, HybridTime};
use crate::tablet::{self, HistoryPolicy, Tablet};
use crate::types::{self, NodeId};
use pb::master_client::MasterClient;
use pb::tablet_server_server::{TabletServer, TabletServerServer};
use snapfleet_proto::tabletdb as pb;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};
use tracing::{info, info_span, warn, Instrument};

/// How to run a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Address others use to reach this node (default: the bound address).
    pub advertise: Option<String>,
    pub master: String,
    /// Versions older than this may be compacted away (0 = keep all).
    pub history_retention: Duration,
    /// Mutual TLS with roles (`--certs`); None serves plaintext, on loopback only unless
    /// `insecure`.
    pub tls: Option<Arc<snapfleet_tls::Tls>>,
    pub insecure: bool,
}

/// Shared state of a running node.
pub struct NodeState {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub hlc: Arc<Hlc>,
    pub policy: HistoryPolicy,
    tablets: RwLock<HashMap<String, Arc<Tablet>>>,
}

impl NodeState {
    /// Opens every tablet found under `data_dir`.
    pub fn open(node_id: NodeId, data_dir: &Path, retention: Duration) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| Error::io(data_dir, e))?;
        // Absolute and symlink-free: staging paths handed to restores are checked against it.
        let data_dir = &data_dir
            .canonicalize()
            .map_err(|e| Error::io(data_dir, e))?;
        let hlc = Arc::new(Hlc::new());
        let policy = HistoryPolicy::new(hlc.clone(), retention);
        // The history floor learned before a restart applies before any tablet compacts.
        if let Some((floor, since)) = read_history_state(data_dir) {
            policy.restore(floor, since);
        }
        let mut tablets = HashMap::new();
        for meta_path in find_tablet_metas(data_dir)? {
            if meta_path.extension().is_some_and(|e| e == "deleted") {
                // A deletion interrupted by a crash: finish it.
                let meta = tablet::read_meta(&meta_path)?;
                let paths = tablet::TabletPaths::new(data_dir, &meta)?;
                tablet::destroy_files(&paths)?;
                info!(tablet = %meta.tablet_id, "finished an interrupted tablet deletion");
                continue;
            }
            let t = Tablet::open(&meta_path, data_dir, policy.clone())?;
            tablets.insert(t.meta().tablet_id.clone(), Arc::new(t));
        }
        info!(node_id, tablets = tablets.len(), "opened tablets");
        let st = Self {
            node_id,
            data_dir: data_dir.to_path_buf(),
            hlc,
            policy,
            tablets: RwLock::new(tablets),
        };
        st.recover_clock();
        Ok(st)
    }

    fn tablet(&self, id: &str) -> Result<Arc<Tablet>> {
        self.tablets
            .read()
            .expect("tablets lock")
            .get(id)
            .cloned()
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "tablet {id} is not hosted on node {}; refresh the catalog",
                    self.node_id
                ))
            })
    }

    pub fn tablet_ids(&self) -> Vec<String> {
        self.tablets
            .read()
            .expect("tablets lock")
            .keys()
            .cloned()
            .collect()
    }

    fn all_tablets(&self) -> Vec<Arc<Tablet>> {
        self.tablets
            .read()
            .expect("tablets lock")
            .values()
            .cloned()
            .collect()
    }

    fn read_time(&self, requested: u64, propagated: u64) -> Result<HybridTime> {
        self.hlc
            .update_remote(HybridTime(propagated))
            .map_err(Error::InvalidArgument)?;
        if requested == 0 {
            return Ok(self.hlc.now());
        }
        let at = HybridTime(requested);
        // A read in the future would push this clock (and the history cut-off) forward.
        self.hlc.update_remote(at).map_err(Error::InvalidArgument)?;
        let cutoff = self.policy.window_start();
        if at < cutoff {
            return Err(Error::FailedPrecondition(format!(
                "read time {at} ({}) is before node {}'s history window, which starts at {cutoff} ({}); \
                 versions that old may be compacted away",
                at.to_rfc3339(),
                self.node_id,
                cutoff.to_rfc3339()
            )));
        }
        Ok(at)
    }

    /// Raises the clock above every time already used on this node (hidden ranges left by
    /// restores, the newest change-log record), so a restarted node never issues a time
    /// below data it already holds.
    fn recover_clock(&self) {
        let mut max = HybridTime::MIN;
        for t in self.all_tablets() {
            for h in &t.current_meta().hidden {
                max = max.max(HybridTime(h.until_ht));
            }
            if let Some(ht) = crate::changelog::last_record_ht(&t.paths().changelog) {
                max = max.max(ht);
            }
        }
        self.hlc.update(max);
    }
}

impl NodeState {
    /// Shared end of restore imports and clones: a tablet already hosted is left as it is
    /// (idempotent); otherwise `stage` prepares a directory on the blocking pool, it is
    /// imported hiding versions newer than `restore_ht`, and the tablet starts serving.
    async fn import_staged(
        self: Arc<Self>,
        meta: pb::TabletMeta,
        restore_ht: HybridTime,
        span: tracing::Span,
        stage: impl FnOnce(&NodeState) -> Result<PathBuf> + Send + 'static,
    ) -> Result<HybridTime> {
        let id = meta.tablet_id.clone();
        if self.tablet(&id).is_err() {
            let st = self.clone();
            let t = blocking(move || {
                let staged = stage(&st)?;
                Tablet::import(&st.data_dir, meta, &staged, restore_ht, st.policy.clone())
            })
            .instrument(span)
            .await?;
            self.tablets
                .write()
                .expect("tablets lock")
                .insert(id, Arc::new(t));
        }
        Ok(self.hlc.now())
    }
}

/// `<data>/*/table-*/tablet-*.meta`
fn find_tablet_metas(data_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let read = |p: &Path| -> Result<Vec<PathBuf>> {
        Ok(std::fs::read_dir(p)
            .map_err(|e| Error::io(p, e))?
            .flatten()
            .map(|e| e.path())
            .collect())
    };
    for db in read(data_dir)? {
        if !db.is_dir() {
            continue;
        }
        for table in read(&db)? {
            let is_table = table
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("table-"));
            if !is_table || !table.is_dir() {
                continue;
            }
            for f in read(&table)? {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.starts_with("tablet-")
                    && (name.ends_with(".meta") || name.ends_with(".meta.deleted"))
                {
                    out.push(f);
                }
            }
        }
    }
    Ok(out)
}

/// Snapshot directories of `snapshot_id` under every tablet, including dropped ones.
fn find_snapshot_dirs(data_dir: &Path, snapshot_id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for db in std::fs::read_dir(data_dir).into_iter().flatten().flatten() {
        for table in std::fs::read_dir(db.path()).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(table.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = f.file_name();
                let name = name.to_str().unwrap_or("");
                if name.starts_with("tablet-") && name.ends_with(".snapshots") {
                    let d = f.path().join(snapshot_id);
                    if d.exists() {
                        out.push(d);
                    }
                }
            }
        }
    }
    out
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Unavailable(format!("worker task failed: {e}")))?
}

/// The gRPC service of a node.
#[derive(Clone)]
pub struct TabletService {
    state: Arc<NodeState>,
}

impl TabletService {
    pub fn new(state: Arc<NodeState>) -> Self {
        Self { state }
    }
}

fn req_meta(m: Option<pb::TabletMeta>) -> Result<pb::TabletMeta> {
    let m = m.ok_or_else(|| Error::InvalidArgument("missing tablet meta".into()))?;
    types::check_id("tablet", &m.tablet_id)?;
    types::check_id("table", &m.table_id)?;
    types::check_id("database", &m.database_id)?;
    let schema = m
        .schema
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("tablet meta has no schema".into()))?;
    types::check_schema(schema)?;
    if m.hash_start >= m.hash_end || m.hash_end > crate::encoding::HASH_SPACE {
        return Err(Error::InvalidArgument(format!(
            "bad hash range [{}, {})",
            m.hash_start, m.hash_end
        )));
    }
    Ok(m)
}

#[tonic::async_trait]
impl TabletServer for TabletService {
    async fn create_tablet(
        &self,
        request: Request<pb::CreateTabletRequest>,
    ) -> Result<Response<pb::CreateTabletResponse>, Status> {
        let meta = req_meta(request.into_inner().meta)?;
        let span = info_span!("create_tablet", tablet = %meta.tablet_id);
        let st = self.state.clone();
        async move {
            if st.tablet(&meta.tablet_id).is_ok() {
                return Ok(Response::new(pb::CreateTabletResponse {}));
            }
            let id = meta.tablet_id.clone();
            let st2 = st.clone();
            let t =
                blocking(move || Tablet::create(&st2.data_dir, meta, st2.policy.clone())).await?;
            st.tablets
                .write()
                .expect("tablets lock")
                .insert(id, Arc::new(t));
            Ok(Response::new(pb::CreateTabletResponse {}))
        }
        .instrument(span)
        .await
    }

    async fn delete_tablet(
        &self,
        request: Request<pb::DeleteTabletRequest>,
    ) -> Result<Response<pb::DeleteTabletResponse>, Status> {
        let id = request.into_inner().tablet_id;
        types::check_id("tablet", &id)?;
        info!(tablet = %id, "delete_tablet");
        let removed = self
            .state
            .tablets
            .write()
            .expect("tablets lock")
            .remove(&id);
        if let Some(t) = &removed {
            // Durable first: even if the files cannot go now, the tablet never comes back.
            t.tombstone()?;
        }
        if let Some(t) = removed {
            // Wait for in-flight requests to let go of the tablet, then remove its files.
            let mut t = t;
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                match Arc::try_unwrap(t) {
                    Ok(owned) => {
                        blocking(move || owned.destroy()).await?;
                        break;
                    }
                    Err(back) if std::time::Instant::now() < deadline => {
                        t = back;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(_) => {
                        return Err(Status::unavailable(format!(
                            "tablet {id} is still busy; retry the delete"
                        )))
                    }
                }
            }
        }
        Ok(Response::new(pb::DeleteTabletResponse {}))
    }

    async fn write(
        &self,
        request: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let req = request.into_inner();
        let t = self.state.tablet(&req.tablet_id)?;
        let span = info_span!("write", tablet = %req.tablet_id, ops = req.ops.len());
        let st = self.state.clone();
        st.hlc
            .update_remote(HybridTime(req.propagated_ht))
            .map_err(Error::InvalidArgument)?;
        let ht = blocking(move || t.write(&st.hlc, req.catalog_version, &req.ops))
            .instrument(span)
            .await?;
        Ok(Response::new(pb::WriteResponse { hybrid_time: ht.0 }))
    }

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let req = request.into_inner();
        let t = self.state.tablet(&req.tablet_id)?;
        let st = self.state.clone();
        let at = st.read_time(req.read_ht, req.propagated_ht)?;
        let key = req
            .key
            .ok_or_else(|| Status::invalid_argument("read without a key"))?;
        let span = info_span!("read", tablet = %req.tablet_id);
        let found = blocking(move || {
            t.wait_safe(&st.hlc, at);
            t.read(&key, at)
        })
        .instrument(span)
        .await?;
        let hybrid_time = self.state.hlc.peek().0;
        Ok(Response::new(match found {
            Some((row, ht)) => pb::ReadResponse {
                found: true,
                row: Some(row),
                version_ht: ht.0,
                hybrid_time,
            },
            None => pb::ReadResponse {
                hybrid_time,
                ..Default::default()
            },
        }))
    }

    type ScanStream = ReceiverStream<Result<pb::ScanResponse, Status>>;

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<Self::ScanStream>, Status> {
        let req = request.into_inner();
        let t = self.state.tablet(&req.tablet_id)?;
        let st = self.state.clone();
        let at = st.read_time(req.read_ht, req.propagated_ht)?;
        let limit = if req.limit == 0 { u64::MAX } else { req.limit };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let span = info_span!("scan", tablet = %req.tablet_id, read_ht = at.0);
        tokio::task::spawn_blocking(move || {
            let _g = span.entered();
            t.wait_safe(&st.hlc, at);
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            let mut sent = 0u64;
            let res = t.scan(at, |row, ht| {
                bytes += prost::Message::encoded_len(&row);
                batch.push(pb::RowVersion {
                    row: Some(row),
                    version_ht: ht.0,
                });
                sent += 1;
                if batch.len() >= 1024 || bytes >= (1 << 20) {
                    let msg = pb::ScanResponse {
                        rows: std::mem::take(&mut batch),
                        read_ht: at.0,
                    };
                    bytes = 0;
                    if tx.blocking_send(Ok(msg)).is_err() {
                        return false; // client went away
                    }
                }
                sent < limit
            });
            let last = match res {
                Ok(()) => Ok(pb::ScanResponse {
                    rows: batch,
                    read_ht: at.0,
                }),
                Err(e) => Err(Status::from(e)),
            };
            let _ = tx.blocking_send(last);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn snapshot_tablets(
        &self,
        request: Request<pb::SnapshotTabletsRequest>,
    ) -> Result<Response<pb::SnapshotTabletsResponse>, Status> {
        let req = request.into_inner();
        types::check_id("snapshot", &req.snapshot_id)?;
        let at = HybridTime(req.hybrid_time);
        self.state
            .hlc
            .update_remote(at)
            .map_err(Error::InvalidArgument)?;
        let cutoff = self.state.policy.window_start();
        if at == HybridTime::MIN || at < cutoff {
            return Err(Error::FailedPrecondition(format!(
                "snapshot time {at} is outside node {}'s history window (cut-off {cutoff}); \
                 pick a later time, or keep a longer window: `snapfleet pitr schedule create --retention` (or the node's --history-retention)",
                self.state.node_id
            ))
            .into());
        }
        let tablets = req
            .tablet_ids
            .iter()
            .map(|id| self.state.tablet(id))
            .collect::<Result<Vec<_>>>()?;
        let span =
            info_span!("snapshot_tablets", snapshot = %req.snapshot_id, tablets = tablets.len());
        let st = self.state.clone();
        let snap_id = req.snapshot_id.clone();
        let out = blocking(move || {
            tablets
                .iter()
                .map(|t| t.snapshot(&st.hlc, &snap_id, at))
                .collect::<Result<Vec<_>>>()
        })
        .instrument(span)
        .await?;
        Ok(Response::new(pb::SnapshotTabletsResponse { tablets: out }))
    }

    async fn delete_tablet_snapshots(
        &self,
        request: Request<pb::DeleteTabletSnapshotsRequest>,
    ) -> Result<Response<pb::DeleteTabletSnapshotsResponse>, Status> {
        let id = request.into_inner().snapshot_id;
        types::check_id("snapshot", &id)?;
        let data = self.state.data_dir.clone();
        let span = info_span!("delete_tablet_snapshots", snapshot = %id);
        let deleted = blocking(move || {
            let dirs = find_snapshot_dirs(&data, &id);
            for d in &dirs {
                std::fs::remove_dir_all(d).map_err(|e| Error::io(d, e))?;
            }
            Ok(dirs.len() as u32)
        })
        .instrument(span)
        .await?;
        Ok(Response::new(pb::DeleteTabletSnapshotsResponse { deleted }))
    }

    async fn import_tablet(
        &self,
        request: Request<pb::ImportTabletRequest>,
    ) -> Result<Response<pb::ImportTabletResponse>, Status> {
        let req = request.into_inner();
        let meta = req_meta(req.meta)?;
        // Idempotent: a tablet this node already holds was imported by an earlier attempt
        // (whose staged directory was moved in and is gone), so a retry succeeds at once.
        if self.state.tablet(&meta.tablet_id).is_ok() {
            return Ok(Response::new(pb::ImportTabletResponse {
                hybrid_time: self.state.hlc.now().0,
            }));
        }
        let staged = PathBuf::from(&req.staged_dir);
        if !staged.is_absolute()
            || staged
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(Status::invalid_argument(format!(
                "staged_dir {:?} must be an absolute path without '..'",
                req.staged_dir
            )));
        }
        // Only directories staged under this node's own staging area may be moved in: never
        // another tablet's live directory or anything else on the host.
        let staging_root = self.state.data_dir.join("staging");
        let canon = staged.canonicalize().map_err(|e| {
            Status::invalid_argument(format!("staged_dir {}: {e}", staged.display()))
        })?;
        let root = staging_root.canonicalize().map_err(|_| {
            Status::invalid_argument(format!(
                "staged_dir must be under {} (nothing is staged there)",
                staging_root.display()
            ))
        })?;
        if !canon.starts_with(&root) || canon == root || canon != staged {
            return Err(Status::invalid_argument(format!(
                "staged_dir {} must be a real directory (no symlinks) under {}",
                staged.display(),
                staging_root.display()
            )));
        }
        let restore_ht = HybridTime(req.restore_ht);
        let span = info_span!("import_tablet", tablet = %meta.tablet_id);
        let ht = self
            .state
            .clone()
            .import_staged(meta, restore_ht, span, move |_| Ok(staged))
            .await?;
        Ok(Response::new(pb::ImportTabletResponse {
            hybrid_time: ht.0,
        }))
    }

    async fn clone_tablet(
        &self,
        request: Request<pb::CloneTabletRequest>,
    ) -> Result<Response<pb::ImportTabletResponse>, Status> {
        let req = request.into_inner();
        types::check_id("snapshot", &req.snapshot_id)?;
        types::check_id("tablet", &req.source_tablet_id)?;
        let meta = req_meta(req.meta)?;
        let restore_ht = HybridTime(req.restore_ht);
        let span =
            info_span!("clone_tablet", source = %req.source_tablet_id, tablet = %meta.tablet_id);
        let tablet_id = meta.tablet_id.clone();
        let ht = self
            .state
            .clone()
            .import_staged(meta, restore_ht, span, move |st: &NodeState| {
                let suffix = format!("tablet-{}.snapshots", req.source_tablet_id);
                let src = find_snapshot_dirs(&st.data_dir, &req.snapshot_id)
                    .into_iter()
                    .find(|d| {
                        d.parent()
                            .and_then(|p| p.file_name())
                            .is_some_and(|n| n == suffix.as_str())
                    })
                    .ok_or_else(|| {
                        Error::NotFound(format!(
                            "snapshot {} of tablet {} on node {}",
                            req.snapshot_id, req.source_tablet_id, st.node_id
                        ))
                    })?;
                let staged = st
                    .data_dir
                    .join("staging")
                    .join(format!("clone-{tablet_id}"));
                if staged.exists() {
                    std::fs::remove_dir_all(&staged).map_err(|e| Error::io(&staged, e))?;
                }
                std::fs::create_dir_all(&staged).map_err(|e| Error::io(&staged, e))?;
                for e in std::fs::read_dir(&src).map_err(|e| Error::io(&src, e))? {
                    let e = e.map_err(|e| Error::io(&src, e))?;
                    let to = staged.join(e.file_name());
                    // Immutable SSTs are shared as hard links (O(1) in data size); the small
                    // mutable files (MANIFEST, CURRENT, OPTIONS, metadata) are copied.
                    let is_sst = e.path().extension().is_some_and(|x| x == "sst");
                    let r = if is_sst {
                        std::fs::hard_link(e.path(), &to)
                    } else {
                        std::fs::copy(e.path(), &to).map(|_| ())
                    };
                    r.map_err(|err| Error::io(e.path(), err))?;
                }
                Ok(staged)
            })
            .await?;
        Ok(Response::new(pb::ImportTabletResponse {
            hybrid_time: ht.0,
        }))
    }

    async fn hide_versions(
        &self,
        request: Request<pb::HideVersionsRequest>,
    ) -> Result<Response<pb::HideVersionsResponse>, Status> {
        let req = request.into_inner();
        let tablets = req
            .tablet_ids
            .iter()
            .map(|id| self.state.tablet(id))
            .collect::<Result<Vec<_>>>()?;
        let t = HybridTime(req.after_ht);
        let cutoff = self.state.policy.window_start();
        if t < cutoff || t > self.state.hlc.now() {
            return Err(Error::FailedPrecondition(format!(
                "time {t} ({}) is outside node {}'s history window [{cutoff} ({}), now]; \
                 pick a time inside it, or keep a longer window: `snapfleet pitr schedule create --retention` (or the node's --history-retention)",
                t.to_rfc3339(),
                self.state.node_id,
                cutoff.to_rfc3339()
            ))
            .into());
        }
        if req.dry_run {
            return Ok(Response::new(pb::HideVersionsResponse { until_ht: 0 }));
        }
        let span = info_span!("hide_versions", after = t.0, tablets = tablets.len());
        let st = self.state.clone();
        let until = blocking(move || {
            let mut until = HybridTime::MIN;
            for tb in &tablets {
                until = until.max(tb.hide_after(&st.hlc, t)?);
            }
            Ok(until)
        })
        .instrument(span)
        .await?;
        Ok(Response::new(pb::HideVersionsResponse {
            until_ht: until.0,
        }))
    }

    async fn compact_tablet(
        &self,
        request: Request<pb::CompactTabletRequest>,
    ) -> Result<Response<pb::CompactTabletResponse>, Status> {
        let id = request.into_inner().tablet_id;
        let t = self.state.tablet(&id)?;
        let span = info_span!("compact_tablet", tablet = %id);
        blocking(move || t.compact()).instrument(span).await?;
        Ok(Response::new(pb::CompactTabletResponse {}))
    }

    async fn read_change_log(
        &self,
        request: Request<pb::ReadChangeLogRequest>,
    ) -> Result<Response<pb::ReadChangeLogResponse>, Status> {
        let req = request.into_inner();
        let t = self.state.tablet(&req.tablet_id)?;
        let st = self.state.clone();
        // Answers stay well under gRPC's 4 MiB message limit.
        let max_bytes = req.max_bytes.clamp(1, 2 << 20);
        let span = info_span!("read_change_log", tablet = %req.tablet_id, after = req.after_ht);
        let r = blocking(move || {
            // The safe time: every write at or before it has been appended (writes take
            // their time and append under the tablet's write lock).
            let safe = st.hlc.now();
            t.wait_safe(&st.hlc, safe);
            crate::changelog::read_after(
                &t.paths().changelog,
                HybridTime(req.after_ht),
                crate::changelog::Cursor {
                    segment: req.cursor_segment,
                    offset: req.cursor_offset,
                },
                safe,
                max_bytes,
            )
        })
        .instrument(span)
        .await?;
        Ok(Response::new(pb::ReadChangeLogResponse {
            records: r.records,
            count: r.count,
            covered_ht: r.covered.0,
            more: r.more,
            cursor_segment: r.cursor.segment,
            cursor_offset: r.cursor.offset,
            gap: r.gap,
            truncated_through: r.truncated_through.0,
        }))
    }

    async fn node_status(
        &self,
        _request: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        // The time first: a tablet missing from the list was created after it.
        let hybrid_time = self.state.hlc.now().0;
        let mut tablets: Vec<pb::TabletStatus> = self
            .state
            .all_tablets()
            .iter()
            .map(|t| pb::TabletStatus {
                tablet_id: t.meta().tablet_id.clone(),
                table_id: t.meta().table_id.clone(),
                database_id: t.meta().database_id.clone(),
                dir: t.paths().dir.display().to_string(),
                snapshots: t.snapshots(),
                hidden: t.current_meta().hidden,
            })
            .collect();
        tablets.sort_by(|a, b| a.tablet_id.cmp(&b.tablet_id));
        Ok(Response::new(pb::NodeStatusResponse {
            node_id: self.state.node_id,
            hybrid_time,
            data_dir: self.state.data_dir.display().to_string(),
            tablets,
            history_retention_secs: self
                .state
                .policy
                .retention_micros
                .load(std::sync::atomic::Ordering::Relaxed)
                / 1_000_000,
        }))
    }
}

/// Writes `addr` to `path` atomically (harnesses wait for this file).
pub fn write_addr_file(path: &Path, addr: &str) -> Result<()> {
    let tmp = path.with_extension("addr.tmp");
    std::fs::write(&tmp, addr).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

const HISTORY_FILE: &str = "history.json";

fn read_history_state(dir: &Path) -> Option<(u64, u64)> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(HISTORY_FILE)).ok()?).ok()?;
    Some((v["floor_micros"].as_u64()?, v["complete_since"].as_u64()?))
}

fn write_history_state(dir: &Path, floor: u64, since: u64) -> Result<()> {
    let path = dir.join(HISTORY_FILE);
    let tmp = dir.join("history.json.tmp");
    let body = serde_json::json!({"floor_micros": floor, "complete_since": since}).to_string();
    std::fs::write(&tmp, body).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

async fn heartbeat_loop(state: Arc<NodeState>, master: String, advertise: String) {
    let mut client: Option<MasterClient<tonic::transport::Channel>> = None;
    let mut warned = false;
    loop {
        if client.is_none() {
            client = crate::client::connect_master(&master).await.ok();
        }
        if let Some(c) = client.as_mut() {
            let req = pb::RegisterNodeRequest {
                node_id: state.node_id,
                address: advertise.clone(),
                tablet_ids: state.tablet_ids(),
                hybrid_time: state.hlc.now().0,
            };
            match c.register_node(req).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    state.hlc.update(HybridTime(resp.hybrid_time));
                    if state
                        .policy
                        .set_floor(Duration::from_secs(resp.history_floor_secs))
                    {
                        let (floor, since) = state.policy.saved();
                        if let Err(e) = write_history_state(&state.data_dir, floor, since) {
                            warn!(error = %e, "persisting the history floor");
                        }
                        info!(
                            floor_secs = resp.history_floor_secs,
                            "history retention follows the cluster's floor"
                        );
                    }
                    warned = false;
                }
                Err(s) => {
                    if !warned {
                        warn!(master = %master, error = %from_status(&master, s), "heartbeat failed");
                        warned = true;
                    }
                    client = None;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn housekeeping_loop(state: Arc<NodeState>) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        for t in state.all_tablets() {
            let r = tokio::task::spawn_blocking(move || t.truncate_changelog()).await;
            if let Ok(Err(e)) = r {
                warn!(error = %e, "change-log truncation failed");
            }
        }
    }
}

/// Runs a node until `shutdown` resolves. Writes the bound address to `<data>/node.addr`.
/// Raises this process's limit on open files as far as it may: to the kernel's ceiling
/// (`fs.nr_open`) when the process may raise its hard limit (root, CAP_SYS_RESOURCE), else
/// the soft limit to the hard one. Every tablet is a RocksDB database holding about seven
/// descriptors (WAL, MANIFEST, LOG, LOCK, directory, SSTs, its change log), so a node
/// with thousands of tablets passes the usual limits long before memory or disk is a
/// concern. Logs the limit it runs with. (The systemd units set `LimitNOFILE`.)
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
            .unwrap_or(lim.rlim_max)
            .min(1 << 20);
        for want in [ceiling.max(lim.rlim_max), lim.rlim_max] {
            if lim.rlim_cur >= want {
                break;
            }
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: want.max(lim.rlim_max),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
                break;
            }
        }
    }
    tracing::info!(open_files = lim.rlim_cur, "open-file limit");
}

pub async fn run_node(cfg: NodeConfig, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    raise_open_file_limit();
    let builder = crate::security::server("node", cfg.listen, cfg.tls.as_deref(), cfg.insecure)?;
    if let Some(t) = &cfg.tls {
        // The node dials the master (heartbeats) with its node identity.
        crate::security::use_client_tls(t, true);
    }
    let state = Arc::new(NodeState::open(
        cfg.node_id,
        &cfg.data_dir,
        cfg.history_retention,
    )?);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| Error::io(cfg.listen.to_string(), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io(cfg.listen.to_string(), e))?;
    let advertise = cfg.advertise.clone().unwrap_or_else(|| bound.to_string());
    info!(node_id = cfg.node_id, address = %advertise, data = %cfg.data_dir.display(), "tablet server listening");
    let hb = tokio::spawn(heartbeat_loop(
        state.clone(),
        cfg.master.clone(),
        advertise.clone(),
    ));
    let hk = tokio::spawn(housekeeping_loop(state.clone()));
    write_addr_file(&cfg.data_dir.join("node.addr"), &advertise)?;
    let node_id = cfg.node_id;
    let res = builder
        .trace_fn(move |req| tracing::info_span!("rpc", node = node_id, method = %req.uri().path()))
        .add_service(
            TabletServerServer::new(TabletService::new(state))
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    hb.abort();
    hk.abort();
    res.map_err(|e| Error::Unavailable(format!("tablet server stopped: {e}")))
}

/// Exposed for tests: a node's tablets directory listing helper.
pub fn snapshot_dirs(data_dir: &Path, snapshot_id: &str) -> Vec<PathBuf> {
    find_snapshot_dirs(data_dir, snapshot_id)
}

/// Exposed for restores: the snapshot metadata stored beside a tablet snapshot.
pub fn read_snapshot_meta(dir: &Path) -> Result<tablet::SnapshotMeta> {
    let p = dir.join(tablet::SNAPSHOT_META_FILE);
    let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        what: p.display().to_string(),
        detail: e.to_string(),
    })
}
