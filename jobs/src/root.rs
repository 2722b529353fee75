//! Reading a backup's ROOT metadata (what the backup driver committed): the restore driver,
//! restore-to-time planning and `repo forget` all start here. A leaf module.

use crate::error::{JobError, Result};
use crate::spec::RootMeta;
use snapfleet_adapter::{Adapter, SnapshotInfo};
use snapfleet_repository::BackupId;
use snapfleet_repository::Repos;

/// A committed backup's metadata and its snapshot, decoded by the adapter.
pub struct Backup {
    pub meta: RootMeta,
    pub snapshot: SnapshotInfo,
}

/// Reads and decodes the ROOT of `backup_id` in the repository at `url`.
pub(crate) async fn read_root_meta(
    adapter: &dyn Adapter,
    repos: &Repos,
    url: &str,
    backup_id: &str,
) -> Result<Backup> {
    let repo = repos.get(url).await?;
    let root = repo
        .read_root(&BackupId::new(backup_id.to_string())?)
        .await?;
    root_meta(adapter, backup_id, &root)
}

/// Decodes a ROOT's metadata, refusing a backup of another kind.
pub fn root_meta(
    adapter: &dyn Adapter,
    backup_id: &str,
    root: &snapfleet_repository::Root,
) -> Result<Backup> {
    let kind = adapter.snapshot_kind();
    let meta: RootMeta = serde_json::from_value(root.meta.clone()).map_err(|e| {
        JobError::invalid(
            format!("backup {backup_id}"),
            format!("not a {kind} backup ({e})"),
        )
    })?;
    if meta.kind != kind {
        return Err(JobError::invalid(
            format!("backup {backup_id}"),
            format!("kind {:?}, this snapfleet restores {kind:?}", meta.kind),
        ));
    }
    let snapshot = adapter.decode_snapshot(&meta.snapshot)?;
    Ok(Backup { meta, snapshot })
}
