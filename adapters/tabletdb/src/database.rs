//! [`TabletdbDatabase`]: the control side of a tabletdb cluster, over its master (and, for
//! activating a restore, its nodes' `ImportTablet`). Each operation is what the job drivers
//! and the CLI did with `snapfleet_tabletdb::Client` before the adapter boundary.
//!
//! It must never hand a node id, a data directory or a `pb` type to its caller. It never
//! touches a filesystem: staged files live on the nodes' hosts, where each agent's janitor
//! removes those of ended restores.

use crate::convert::{self, error, status};
use crate::staging;
use futures::StreamExt;
use snapfleet_adapter::{
    Activation, AdapterError, CloneReport, Database, DatabaseInfo, HybridTime,
    InPlaceRestoreReport, NodeInfo, PreparedRestore, RestoreId, RestorePlacement, RestoreRequest,
    RestoredTable, Result, SnapshotId, SnapshotInfo, SnapshotRequest, SnapshotSummary, TableId,
    TableRows, TabletId,
};
use snapfleet_tabletdb::client::Client;
use snapfleet_tabletdb::restore::{create_restoring_table, import_meta};
use snapfleet_tabletdb::{pb, HybridTime as TdbTime};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;
use tracing::{info, warn};

/// Tablet imports in flight at once during an activation, over all nodes.
const IMPORTS_AT_ONCE: usize = 16;

/// A connection to a tabletdb master (catalog cached, refreshed by every operation that
/// needs it current).
pub struct TabletdbDatabase {
    client: Client,
}

/// What a live node said about itself.
struct NodeState {
    data_dir: PathBuf,
    tablets: BTreeSet<String>,
}

impl TabletdbDatabase {
    pub async fn connect(master: &str) -> Result<Self> {
        let client = Client::connect(master)
            .await
            .map_err(|e| error(format!("tabletdb master at {master}"), e))?;
        Ok(Self { client })
    }

    fn master_what(&self) -> String {
        format!("tabletdb master at {}", self.client.master_addr())
    }

    async fn catalog(&self) -> Result<std::sync::Arc<pb::Catalog>> {
        self.client
            .refresh()
            .await
            .map_err(|e| error(self.master_what(), e))
    }

    /// Data directory and tablets of every live node (their own `NodeStatus`).
    async fn live_nodes(&self, cat: &pb::Catalog) -> Result<HashMap<u32, NodeState>> {
        let mut out = HashMap::new();
        for n in cat.nodes.iter().filter(|n| n.live) {
            let what = format!("tabletdb node {} at {}", n.node_id, n.address);
            let mut c = self
                .client
                .node_at(&n.address)
                .await
                .map_err(|e| error(&what, e))?;
            let st = c
                .node_status(pb::NodeStatusRequest {})
                .await
                .map_err(|s| status(&what, &format!("node {}", n.node_id), s))?
                .into_inner();
            out.insert(
                n.node_id,
                NodeState {
                    data_dir: PathBuf::from(st.data_dir),
                    tablets: st.tablets.into_iter().map(|t| t.tablet_id).collect(),
                },
            );
        }
        Ok(out)
    }

    /// Drops the tables of `tables` that are still hidden in `database`.
    async fn drop_hidden(&self, database: &str, tables: &[RestoredTable]) -> Result<()> {
        let cat = self.catalog().await?;
        for t in tables {
            let hidden = cat.tables.iter().any(|e| {
                e.table_id == t.id.as_str() && e.state == pb::TableState::Restoring as i32
            });
            if hidden {
                self.client
                    .drop_table(database, &t.name)
                    .await
                    .map_err(|e| {
                        error(
                            format!(
                                "dropping hidden table {:?} of database {database:?}",
                                t.name
                            ),
                            e,
                        )
                    })?;
            }
        }
        Ok(())
    }

    async fn prepare_inner(
        &self,
        req: &RestoreRequest<'_>,
        chosen: &[&pb::TableInfo],
        created: &mut Vec<RestoredTable>,
        tablets: &mut Vec<RestorePlacement>,
    ) -> Result<()> {
        let db = req.database;
        for src in chosen {
            let t = create_restoring_table(&self.client, db, src)
                .await
                .map_err(|e| error(format!("table {:?} in database {db:?}", src.name), e))?;
            created.push(RestoredTable {
                id: TableId::new(t.table_id.clone())?,
                name: t.name.clone(),
            });
            if t.tablets.len() != src.tablets.len() {
                return Err(AdapterError::Internal {
                    what: format!("restoring table {:?}", src.name),
                    detail: format!(
                        "the master made {} tablets, the snapshot has {}",
                        t.tablets.len(),
                        src.tablets.len()
                    ),
                });
            }
            for (s, d) in src.tablets.iter().zip(&t.tablets) {
                tablets.push(RestorePlacement {
                    source_tablet: TabletId::new(s.tablet_id.clone())?,
                    target_tablet: TabletId::new(d.tablet_id.clone())?,
                    node: convert::leader(d)?,
                });
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Database for TabletdbDatabase {
    async fn now(&self) -> Result<HybridTime> {
        let t = self
            .client
            .now()
            .await
            .map_err(|e| error(self.master_what(), e))?;
        Ok(HybridTime(t.0))
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        let cat = self.catalog().await?;
        Ok(cat
            .nodes
            .iter()
            .map(|n| NodeInfo {
                name: convert::node_name(n.node_id),
                live: n.live,
            })
            .collect())
    }

    async fn describe(&self, database: &str) -> Result<DatabaseInfo> {
        let cat = self.catalog().await?;
        let d = cat
            .databases
            .iter()
            .find(|d| d.name == database)
            .ok_or_else(|| {
                AdapterError::not_found(
                    format!("database {database:?}"),
                    "check the name (it is case-sensitive)",
                )
            })?;
        let mut tables = cat
            .tables
            .iter()
            .filter(|t| t.database_id == d.database_id)
            .map(convert::table)
            .collect::<Result<Vec<_>>>()?;
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(DatabaseInfo {
            id: snapfleet_adapter::DatabaseId::new(d.database_id.clone())?,
            name: d.name.clone(),
            tables,
        })
    }

    async fn create_snapshot(&self, req: SnapshotRequest<'_>) -> Result<SnapshotInfo> {
        let what = format!("snapshot of database {:?}", req.database);
        let s = self
            .client
            .create_labeled_snapshot(
                req.database,
                req.at.map(|t| TdbTime(t.0)),
                req.ddl_retries,
                req.label.unwrap_or(""),
            )
            .await
            .map_err(|e| match error(&what, e) {
                AdapterError::Fenced { what, detail, .. } => AdapterError::Fenced {
                    what,
                    attempts: req.ddl_retries + 1,
                    detail,
                },
                e => e,
            })?;
        let native = serde_json::to_value(&s).expect("protocol types serialise");
        convert::snapshot(&s, native)
    }

    async fn list_snapshots(&self, database: &str) -> Result<Vec<SnapshotSummary>> {
        let list = self
            .client
            .master()
            .list_snapshots(pb::ListSnapshotsRequest {
                database: database.to_string(),
            })
            .await
            .map_err(|s| status(format!("snapshots of database {database:?}"), "master", s))?
            .into_inner()
            .snapshots;
        list.iter().map(convert::summary).collect()
    }

    async fn delete_snapshot(&self, id: &SnapshotId) -> Result<()> {
        self.client
            .delete_snapshot(id)
            .await
            .map_err(|e| error(format!("deleting snapshot {id}"), e))
    }

    async fn set_history_floor(&self, holder: &str, min: Duration) -> Result<Duration> {
        let secs = min.as_secs() + u64::from(min.subsec_nanos() > 0);
        let r = self
            .client
            .master()
            .set_history_floor(pb::SetHistoryFloorRequest {
                holder: holder.to_string(),
                min_secs: secs,
            })
            .await
            .map_err(|s| status(format!("history floor of {holder:?}"), "master", s))?
            .into_inner();
        Ok(Duration::from_secs(r.floor_secs))
    }

    async fn prepare_restore(&self, req: RestoreRequest<'_>) -> Result<PreparedRestore> {
        let db = req.database;
        let snap = convert::native_snapshot(req.snapshot)?;
        if let Some(missing) = req
            .tables
            .iter()
            .find(|n| !snap.tables.iter().any(|t| &t.name == *n))
        {
            return Err(AdapterError::not_found(
                format!("table {missing:?} in snapshot {}", req.snapshot.id),
                format!(
                    "it has: {}",
                    snap.tables
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let chosen: Vec<&pb::TableInfo> = snap
            .tables
            .iter()
            .filter(|t| req.tables.is_empty() || req.tables.contains(&t.name))
            .collect();
        let target = format!("database {db:?}");
        self.client
            .create_database(db, true)
            .await
            .map_err(|e| error(&target, e))?;
        let db_id = self
            .client
            .database(db)
            .await
            .map_err(|e| error(&target, e))?
            .database_id;
        let existing: Vec<pb::TableInfo> = self
            .catalog()
            .await?
            .tables
            .iter()
            .filter(|t| t.database_id == db_id)
            .cloned()
            .collect();
        // Refuse before changing anything: a restore never overwrites.
        if let Some(e) = existing.iter().find(|e| {
            e.state != pb::TableState::Restoring as i32 && chosen.iter().any(|c| c.name == e.name)
        }) {
            return Err(AdapterError::AlreadyExists {
                what: format!("table {:?} in database {db:?}", e.name),
                detail: "restore under another database name or drop it first".into(),
            });
        }
        for e in existing
            .iter()
            .filter(|e| chosen.iter().any(|c| c.name == e.name))
        {
            // Hidden, left by an earlier attempt of a restore (a leader failed over before
            // logging it): start that table again.
            info!(table = %e.name, database = db, "replacing a hidden table left by an earlier restore attempt");
            self.client
                .drop_table(db, &e.name)
                .await
                .map_err(|err| error(format!("hidden table {:?} in {target}", e.name), err))?;
        }
        let mut tables = Vec::new();
        let mut tablets = Vec::new();
        match self
            .prepare_inner(&req, &chosen, &mut tables, &mut tablets)
            .await
        {
            Ok(()) => Ok(PreparedRestore { tables, tablets }),
            Err(e) => {
                // Leave the target as it was.
                if let Err(d) = self.drop_hidden(db, &tables).await {
                    warn!(error = %d, "dropping the tables of a failed restore preparation");
                }
                Err(e)
            }
        }
    }

    async fn activate_restore(&self, a: Activation<'_>) -> Result<()> {
        let cat = self.catalog().await?;
        let nodes = self.live_nodes(&cat).await?;
        // Every placement is checked before any import starts; then the imports run
        // IMPORTS_AT_ONCE at a time across the nodes (one after another, 1,000 tablets took
        // ten seconds of round trips). Each import is idempotent on its node.
        let by_tablet: HashMap<&str, (&pb::TableInfo, &pb::TabletInfo)> = cat
            .tables
            .iter()
            .flat_map(|t| {
                t.tablets
                    .iter()
                    .map(move |d| (d.tablet_id.as_str(), (t, d)))
            })
            .collect();
        let mut imports = Vec::new();
        for p in a.tablets {
            let node = convert::node_id(&p.node)?;
            let (table, tablet) = by_tablet
                .get(p.target_tablet.as_str())
                .copied()
                .ok_or_else(|| {
                    AdapterError::not_found(
                        format!(
                            "target tablet {} of restore {}",
                            p.target_tablet, a.restore_id
                        ),
                        "its table was dropped: abort the restore and run it again",
                    )
                })?;
            let n = nodes.get(&node).ok_or_else(|| AdapterError::Unavailable {
                what: format!("tabletdb node {node}"),
                detail: "it is not live; the restore finishes when it is back".into(),
            })?;
            if n.tablets.contains(p.target_tablet.as_str()) {
                // Imported by an earlier attempt (its staged files are gone: moved in).
                continue;
            }
            let staged = staging::tablet_dir(&n.data_dir, a.restore_id, &p.source_tablet);
            let what = format!(
                "importing tablet {} (from {}) on node {node}",
                p.target_tablet, p.source_tablet
            );
            imports.push((
                node,
                what,
                pb::ImportTabletRequest {
                    meta: Some(import_meta(table, tablet)),
                    staged_dir: staged.display().to_string(),
                    restore_ht: a.restore_ht.0,
                },
            ));
        }
        futures::stream::iter(imports)
            .map(|(node, what, req)| async move {
                let mut c = self.client.node(node).await.map_err(|e| error(&what, e))?;
                c.import_tablet(req)
                    .await
                    .map_err(|s| status(&what, &format!("node {node}"), s))?;
                Ok::<(), AdapterError>(())
            })
            .buffer_unordered(IMPORTS_AT_ONCE)
            // Every import under way runs to its end even when another failed: one dropped
            // half-way would still be moving its staged files in on its node while the
            // retry of this activation asks for it again.
            .collect::<Vec<Result<()>>>()
            .await
            .into_iter()
            .collect::<Result<()>>()?;
        self.client
            .master()
            .activate_table(pb::ActivateTableRequest {
                table_id: String::new(),
                table_ids: a.tables.iter().map(|t| t.id.to_string()).collect(),
            })
            .await
            .map_err(|s| {
                status(
                    format!("activating the tables of restore {}", a.restore_id),
                    "master",
                    s,
                )
            })?;
        let _ = self.client.refresh().await;
        info!(restore = %a.restore_id, database = a.database, tables = a.tables.len(), "restore activated");
        Ok(())
    }

    async fn abort_restore(
        &self,
        restore_id: &RestoreId,
        database: &str,
        tables: &[RestoredTable],
    ) -> Result<()> {
        // The staged files are removed by the agents on their hosts (agent/src/janitor.rs).
        let _ = restore_id;
        self.drop_hidden(database, tables).await
    }

    async fn clone_database(
        &self,
        source: &str,
        target: &str,
        at: Option<HybridTime>,
        ddl_retries: u32,
    ) -> Result<CloneReport> {
        let what = format!("clone of database {source:?} as {target:?}");
        let mut attempt = 0;
        loop {
            let r = self
                .client
                .master()
                .clone_database(pb::CloneDatabaseRequest {
                    source: source.to_string(),
                    target: target.to_string(),
                    hybrid_time: at.map(|t| t.0).unwrap_or(0),
                })
                .await;
            match r {
                Ok(r) => {
                    let r = r.into_inner();
                    let _ = self.client.refresh().await;
                    return Ok(CloneReport {
                        hybrid_time: HybridTime(r.hybrid_time),
                        tables: r.tables,
                        tablets: r.tablets,
                        files: r.files,
                        bytes: r.bytes,
                    });
                }
                Err(s) if s.code() == tonic::Code::Aborted && attempt < ddl_retries => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
                }
                Err(s) => {
                    return Err(match status(&what, "master", s) {
                        AdapterError::Fenced { what, detail, .. } => AdapterError::Fenced {
                            what,
                            attempts: attempt + 1,
                            detail,
                        },
                        e => e,
                    })
                }
            }
        }
    }

    async fn restore_to_time(
        &self,
        database: &str,
        at: HybridTime,
        dry_run: bool,
    ) -> Result<InPlaceRestoreReport> {
        let r = self
            .client
            .master()
            .restore_to_time(pb::RestoreToTimeRequest {
                database: database.to_string(),
                hybrid_time: at.0,
                dry_run,
            })
            .await
            .map_err(|s| {
                status(
                    format!("restore of database {database:?} to {at}"),
                    "master",
                    s,
                )
            })?
            .into_inner();
        let mut rows = Vec::new();
        if dry_run {
            // What the operator is about to lose: each table's rows now and at the time.
            let now = self
                .client
                .now()
                .await
                .map_err(|e| error(format!("now of {database:?}"), e))?;
            for t in r.restored.iter().filter(|t| !r.revived.contains(t)) {
                let mut counts = [0u64; 2];
                for (i, when) in [now, TdbTime(at.0)].into_iter().enumerate() {
                    self.client
                        .scan_table(database, t, Some(when), |_, batch| {
                            counts[i] += batch.len() as u64;
                            Ok(())
                        })
                        .await
                        .map_err(|e| error(format!("counting the rows of {database}.{t}"), e))?;
                }
                rows.push(TableRows {
                    table: t.clone(),
                    now: counts[0],
                    at_time: counts[1],
                });
            }
        } else {
            let _ = self.client.refresh().await;
        }
        Ok(InPlaceRestoreReport {
            hybrid_time: HybridTime(r.hybrid_time),
            restored: r.restored,
            removed: r.removed,
            revived: r.revived,
            rows,
        })
    }
}
