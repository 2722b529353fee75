//! Snapshots on the master: a distributed snapshot at a hybrid time (fenced on the catalog
//! version, so a racing DDL fails it cleanly instead of capturing a half-changed schema),
//! deleting one on every node, restoring a database in place to a time inside the history
//! window, and cloning a database from hard links of a snapshot.

use super::*;

impl MasterService {
    pub(super) async fn delete_snapshot_on_nodes(&self, snapshot_id: &str) {
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

    pub(super) async fn create_snapshot_inner(
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

    pub(super) async fn restore_to_time_inner(
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

    pub(super) async fn clone_inner(
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

    pub(super) async fn clone_from_snapshot(
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
