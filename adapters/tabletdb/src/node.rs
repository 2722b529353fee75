//! [`TabletdbNodeStore`]: one tabletdb node (tablet server) and its data directory on this
//! host, as the agent beside it uses them; and [`TabletdbReplay`], change-log replay into a
//! staged tablet copy (tabletdb's `StagedReplay`, run on blocking threads).
//!
//! Reads snapshot files in place and writes only under `<data>/staging`. It must never
//! open a live tablet's RocksDB or hand out a path built from an unvalidated id.

use crate::convert::{self, error, status};
use crate::staging;
use snapfleet_adapter::{
    AdapterError, DatabaseId, HiddenRange, HybridTime, LocalTablet, LogChunk, LogCursor, NodeName,
    NodeScan, NodeStore, RestoreId, Result, SnapshotFile, StagedReplay, TableId, TabletId,
    TabletSnapshotRef,
};
use snapfleet_proto::tabletdb::tablet_server_client::TabletServerClient;
use snapfleet_tabletdb::tablet::{StagedReplay as TdbReplay, TabletPaths};
use snapfleet_tabletdb::{changelog, pb, HybridTime as TdbTime};
use std::path::{Path, PathBuf};
use tonic::transport::Channel;

/// A tabletdb node on this host.
pub struct TabletdbNodeStore {
    addr: String,
    name: NodeName,
    data_dir: PathBuf,
    client: TabletServerClient<Channel>,
}

fn blocking_failed(what: &str, e: tokio::task::JoinError) -> AdapterError {
    AdapterError::Internal {
        what: what.to_string(),
        detail: format!("the blocking task failed: {e}"),
    }
}

impl TabletdbNodeStore {
    /// Connects to the node at `addr` and learns its id and data directory.
    pub async fn open(addr: &str) -> Result<Self> {
        let what = format!("tabletdb node at {addr}");
        let mut client = snapfleet_tabletdb::client::connect_node(addr)
            .await
            .map_err(|e| error(&what, e))?;
        let st = client
            .node_status(pb::NodeStatusRequest {})
            .await
            .map_err(|s| status(&what, &format!("node {addr}"), s))?
            .into_inner();
        Ok(Self {
            addr: addr.to_string(),
            name: convert::node_name(st.node_id),
            data_dir: PathBuf::from(st.data_dir),
            client,
        })
    }

    fn what(&self) -> String {
        format!("tabletdb node {} at {}", self.name, self.addr)
    }

    async fn status(&self) -> Result<pb::NodeStatusResponse> {
        Ok(self
            .client
            .clone()
            .node_status(pb::NodeStatusRequest {})
            .await
            .map_err(|s| status(self.what(), &format!("node {}", self.name), s))?
            .into_inner())
    }
}

/// The regular files of a (flat) snapshot directory, sorted by name.
fn list_files(dir: &Path, what: &str) -> Result<Vec<SnapshotFile>> {
    let io = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            AdapterError::not_found(
                what,
                "the snapshot is gone from this node (deleted, or the tablet is on another \
                 node): run the backup again",
            )
        } else {
            AdapterError::Io {
                what: format!("{what} ({})", dir.display()),
                source,
            }
        }
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io)? {
        let e = e.map_err(io)?;
        let metadata = e.metadata().map_err(io)?;
        if !metadata.is_file() {
            return Err(AdapterError::invalid(
                what,
                format!(
                    "{} is not a regular file; a tablet snapshot holds only files",
                    e.path().display()
                ),
            ));
        }
        out.push(SnapshotFile {
            name: e.file_name().to_string_lossy().into_owned(),
            path: e.path(),
            metadata,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[async_trait::async_trait]
impl NodeStore for TabletdbNodeStore {
    fn node(&self) -> &NodeName {
        &self.name
    }

    async fn snapshot_files(&self, s: &TabletSnapshotRef) -> Result<Vec<SnapshotFile>> {
        let what = format!(
            "snapshot {} of tablet {} on node {}",
            s.snapshot, s.tablet, self.name
        );
        let meta = pb::TabletMeta {
            tablet_id: s.tablet.to_string(),
            table_id: s.table.to_string(),
            database_id: s.database.to_string(),
            ..Default::default()
        };
        let dir = TabletPaths::new(&self.data_dir, &meta)
            .and_then(|p| p.snapshot_dir(&s.snapshot))
            .map_err(|e| error(&what, e))?;
        let w = what.clone();
        tokio::task::spawn_blocking(move || list_files(&dir, &w))
            .await
            .map_err(|e| blocking_failed(&what, e))?
    }

    fn staging_dir(&self, restore: &RestoreId, source_tablet: &TabletId) -> PathBuf {
        staging::tablet_dir(&self.data_dir, restore, source_tablet)
    }

    fn staging_root(&self) -> PathBuf {
        snapfleet_api::tasks::staging_root(&self.data_dir)
    }

    async fn open_replay(&self, staged: &Path) -> Result<Box<dyn StagedReplay>> {
        let dir = staged.to_path_buf();
        let what = format!("staged tablet {}", staged.display());
        let r = tokio::task::spawn_blocking(move || TdbReplay::open(&dir))
            .await
            .map_err(|e| blocking_failed(&what, e))?
            .map_err(|e| error(&what, e))?;
        Ok(Box::new(TabletdbReplay {
            what,
            snapshot_ht: HybridTime(r.snapshot_ht().0),
            inner: Some(r),
        }))
    }

    async fn scan_tablets(&self, database: &DatabaseId) -> Result<NodeScan> {
        let st = self.status().await?;
        let tablets = st
            .tablets
            .iter()
            .filter(|t| t.database_id == database.as_str())
            .map(|t| {
                Ok(LocalTablet {
                    tablet: TabletId::new(t.tablet_id.clone())?,
                    table: TableId::new(t.table_id.clone())?,
                    hidden: t.hidden.iter().map(convert::hidden).collect(),
                })
            })
            .collect::<Result<_>>()?;
        Ok(NodeScan {
            at: HybridTime(st.hybrid_time),
            tablets,
        })
    }

    async fn read_change_log(
        &self,
        tablet: &TabletId,
        after: HybridTime,
        cursor: LogCursor,
        max_bytes: u32,
    ) -> Result<LogChunk> {
        let r = self
            .client
            .clone()
            .read_change_log(pb::ReadChangeLogRequest {
                tablet_id: tablet.to_string(),
                after_ht: after.0,
                cursor_segment: cursor.0,
                cursor_offset: cursor.1,
                max_bytes: max_bytes.into(),
            })
            .await
            .map_err(|s| {
                status(
                    format!("change log of tablet {tablet} on node {}", self.name),
                    &format!("tablet {tablet}"),
                    s,
                )
            })?
            .into_inner();
        Ok(LogChunk {
            records: r.records,
            count: r.count,
            covered: HybridTime(r.covered_ht),
            more: r.more,
            cursor: LogCursor(r.cursor_segment, r.cursor_offset),
            gap: r.gap.then_some(HybridTime(r.truncated_through)),
        })
    }
}

/// Change-log replay into a staged tablet copy. The RocksDB work runs on blocking threads;
/// `inner` is `None` only while such a thread has it.
pub struct TabletdbReplay {
    what: String,
    snapshot_ht: HybridTime,
    inner: Option<TdbReplay>,
}

impl TabletdbReplay {
    fn take(&mut self) -> Result<TdbReplay> {
        self.inner.take().ok_or_else(|| AdapterError::Internal {
            what: self.what.clone(),
            detail: "an earlier replay step failed; open the staged copy again".into(),
        })
    }
}

#[async_trait::async_trait]
impl StagedReplay for TabletdbReplay {
    fn snapshot_ht(&self) -> HybridTime {
        self.snapshot_ht
    }

    async fn apply(&mut self, records: Vec<u8>, from: HybridTime, upto: HybridTime) -> Result<u64> {
        let mut r = self.take()?;
        let what = self.what.clone();
        let (r, applied) = tokio::task::spawn_blocking(move || {
            let res = changelog::decode_records(&records).and_then(|all| {
                let chosen: Vec<(TdbTime, pb::RowOp)> = all
                    .into_iter()
                    .filter(|(ht, _)| ht.0 > from.0 && ht.0 <= upto.0)
                    .collect();
                r.apply(&chosen).map(|()| chosen.len() as u64)
            });
            (r, res)
        })
        .await
        .map_err(|e| blocking_failed(&what, e))?;
        // A failed apply leaves nothing half-written (one write batch): keep the handle.
        self.inner = Some(r);
        applied.map_err(|e| error(&what, e))
    }

    async fn finish(mut self: Box<Self>, upto: HybridTime, hidden: &[HiddenRange]) -> Result<u64> {
        let r = self.take()?;
        let what = self.what.clone();
        let hidden: Vec<(u64, u64)> = hidden.iter().map(|h| (h.after.0, h.until.0)).collect();
        tokio::task::spawn_blocking(move || r.finish(TdbTime(upto.0), &hidden))
            .await
            .map_err(|e| blocking_failed(&what, e))?
            .map_err(|e| error(&what, e))
    }
}
