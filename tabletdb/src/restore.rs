//! Restoring a distributed snapshot into a cluster of any size, from copies of the tablet
//! snapshot directories. This is the database side of a restore (the agents will bring the
//! files from the repository instead of a local directory): create each table hidden
//! (RESTORING) with the source's tablet count and hash ranges, stage every tablet's files on
//! its new node, import them hiding versions newer than the snapshot time, and only when all
//! tablets of all tables are in, activate the tables. A failure before activation drops the
//! hidden tables again, so the target is left as it was.

use crate::client::Client;
use crate::error::{from_status, Error, Result};
use crate::tablet::dir_size;
use snapfleet_proto::tabletdb as pb;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What a restore did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreReport {
    pub database: String,
    pub tables: usize,
    pub tablets: usize,
    pub files: u64,
    pub bytes: u64,
    pub restore_ht: u64,
}

/// Copies the files of a directory (one level: RocksDB checkpoints are flat).
fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    for e in std::fs::read_dir(src).map_err(|e| Error::io(src, e))? {
        let e = e.map_err(|e| Error::io(src, e))?;
        let ft = e.file_type().map_err(|err| Error::io(e.path(), err))?;
        if !ft.is_file() {
            return Err(Error::InvalidArgument(format!(
                "{} is not a regular file; a tablet snapshot holds only files",
                e.path().display()
            )));
        }
        std::fs::copy(e.path(), dst.join(e.file_name())).map_err(|err| Error::io(e.path(), err))?;
    }
    Ok(())
}

/// Restores `snapshot` into database `target_db` of the cluster behind `client`.
/// `source_dir(tablet_id)` gives the local directory holding that source tablet's
/// snapshot files. `tables` limits the restore to some tables (empty = all).
pub async fn restore_snapshot(
    client: &Client,
    snapshot: &pb::SnapshotInfo,
    target_db: &str,
    tables: &[String],
    source_dir: impl Fn(&str) -> PathBuf,
) -> Result<RestoreReport> {
    let restore_id = uuid::Uuid::new_v4().simple().to_string();
    client.create_database(target_db, true).await?;
    let existing = client.tables(target_db).await?;
    let chosen: Vec<&pb::TableInfo> = snapshot
        .tables
        .iter()
        .filter(|t| tables.is_empty() || tables.contains(&t.name))
        .collect();
    if let Some(missing) = tables
        .iter()
        .find(|n| !snapshot.tables.iter().any(|t| &t.name == *n))
    {
        return Err(Error::NotFound(format!(
            "table {missing:?} is not in snapshot {}",
            snapshot.snapshot_id
        )));
    }
    if let Some(clash) = chosen
        .iter()
        .find(|t| existing.iter().any(|e| e.name == t.name))
    {
        return Err(Error::AlreadyExists(format!(
            "table {:?} already exists in database {target_db:?}; restore under another \
             database name or drop it first",
            clash.name
        )));
    }
    // Node data directories, for staging next to where the tablets will live.
    let node_dirs: HashMap<u32, PathBuf> = node_data_dirs(client).await?.into_iter().collect();
    let mut created: Vec<pb::TableInfo> = Vec::new();
    let result = async {
        let mut report = RestoreReport {
            database: target_db.to_string(),
            restore_ht: snapshot.hybrid_time,
            ..Default::default()
        };
        for src in &chosen {
            let t = create_restoring_table(client, target_db, src).await?;
            created.push(t.clone());
            for (s, d) in src.tablets.iter().zip(&t.tablets) {
                debug_assert_eq!((s.hash_start, s.hash_end), (d.hash_start, d.hash_end));
                let node = d.replicas[0];
                let node_dir = node_dirs.get(&node).ok_or_else(|| {
                    Error::Unavailable(format!("node {node} is not live; cannot stage tablet"))
                })?;
                let staged = node_dir
                    .join("staging")
                    .join(&restore_id)
                    .join(&d.tablet_id);
                let src_dir = source_dir(&s.tablet_id);
                let (files, bytes) = dir_size(&src_dir)?;
                copy_dir(&src_dir, &staged)?;
                let mut c = client.node(node).await?;
                c.import_tablet(pb::ImportTabletRequest {
                    meta: Some(import_meta(&t, d)),
                    staged_dir: staged.display().to_string(),
                    restore_ht: snapshot.hybrid_time,
                })
                .await
                .map_err(|s| from_status(&format!("node {node}"), s))?;
                report.tablets += 1;
                report.files += files;
                report.bytes += bytes;
            }
            report.tables += 1;
        }
        Ok::<_, Error>(report)
    }
    .await;
    match result {
        Ok(report) => {
            // All tables become visible in one catalog change.
            client
                .master()
                .activate_table(pb::ActivateTableRequest {
                    table_id: String::new(),
                    table_ids: created.iter().map(|t| t.table_id.clone()).collect(),
                })
                .await
                .map_err(|s| from_status("master", s))?;
            client.refresh().await?;
            for dir in node_dirs.values() {
                let _ = std::fs::remove_dir_all(dir.join("staging").join(&restore_id));
            }
            Ok(report)
        }
        Err(e) => {
            // Leave the target as it was: drop the hidden tables and their imported tablets.
            for t in &created {
                let _ = client.drop_table(target_db, &t.name).await;
            }
            for dir in node_dirs.values() {
                let _ = std::fs::remove_dir_all(dir.join("staging").join(&restore_id));
            }
            Err(e)
        }
    }
}

/// The data directory of every live node of the cluster behind `client` (from each node's
/// own status), where restores stage tablets before importing them.
pub async fn node_data_dirs(client: &Client) -> Result<Vec<(u32, PathBuf)>> {
    let mut out = Vec::new();
    for n in client.catalog().nodes.iter().filter(|n| n.live) {
        let mut c = client.node_at(&n.address).await?;
        let st = c
            .node_status(pb::NodeStatusRequest {})
            .await
            .map_err(|s| from_status(&format!("node {}", n.node_id), s))?
            .into_inner();
        out.push((n.node_id, PathBuf::from(st.data_dir)));
    }
    Ok(out)
}

/// Creates table `src` (from a snapshot's catalog) in `db` hidden (RESTORING), with the
/// source's tablet count and hash ranges, placed by the master over the live nodes.
pub async fn create_restoring_table(
    client: &Client,
    db: &str,
    src: &pb::TableInfo,
) -> Result<pb::TableInfo> {
    client
        .create_table(pb::CreateTableRequest {
            database: db.to_string(),
            name: src.name.clone(),
            schema: src.schema.clone(),
            num_tablets: src.tablets.len() as u32,
            if_not_exists: false,
            for_restore: true,
            hidden: false,
            placement: vec![],
        })
        .await
}

/// What `ImportTablet` needs to know of target tablet `d` of table `t`.
pub fn import_meta(t: &pb::TableInfo, d: &pb::TabletInfo) -> pb::TabletMeta {
    pb::TabletMeta {
        tablet_id: d.tablet_id.clone(),
        table_id: t.table_id.clone(),
        table_name: t.name.clone(),
        database_id: t.database_id.clone(),
        schema: t.schema.clone(),
        schema_version: t.schema_version,
        hash_start: d.hash_start,
        hash_end: d.hash_end,
        hidden: vec![],
    }
}

/// Where a source tablet's snapshot files are under its node's data directory.
pub fn tablet_snapshot_dir(
    node_data_dir: &Path,
    snapshot: &pb::SnapshotInfo,
    tablet_id: &str,
) -> Result<PathBuf> {
    let table = snapshot
        .tables
        .iter()
        .find(|t| t.tablets.iter().any(|tb| tb.tablet_id == tablet_id))
        .ok_or_else(|| {
            Error::NotFound(format!(
                "tablet {tablet_id} in snapshot {}",
                snapshot.snapshot_id
            ))
        })?;
    let meta = pb::TabletMeta {
        tablet_id: tablet_id.to_string(),
        table_id: table.table_id.clone(),
        database_id: table.database_id.clone(),
        ..Default::default()
    };
    crate::tablet::TabletPaths::new(node_data_dir, &meta)?.snapshot_dir(&snapshot.snapshot_id)
}

/// The node (first replica) that held `tablet_id` when the snapshot was taken.
pub fn tablet_node(snapshot: &pb::SnapshotInfo, tablet_id: &str) -> Option<u32> {
    snapshot
        .tables
        .iter()
        .flat_map(|t| &t.tablets)
        .find(|tb| tb.tablet_id == tablet_id)
        .and_then(|tb| tb.replicas.first().copied())
}
