//! DDL on the master: creating a table (placing its tablets on live nodes and creating them
//! there), dropping one, and purging dropped tables once no snapshot or history window
//! needs them. Every change bumps the catalog version under the DDL lock; this file must
//! never persist a catalog whose tablets do not exist on their nodes.

use super::*;

impl MasterService {
    pub(super) async fn create_table_locked(
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

    pub(super) async fn drop_table_locked(&self, state: &mut State, table_id: &str) -> Result<()> {
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
    pub(super) async fn delete_tablets(&self, state: &State, table: &pb::TableInfo) -> Result<()> {
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
    pub(super) async fn purge_dropped(&self, state: &mut State) {
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
}
