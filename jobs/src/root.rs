//! Reading a backup's ROOT metadata (what the backup driver committed): the restore driver,
//! restore-to-time planning and `repo forget` all start here. A leaf module.

use crate::error::{JobError, Result};
use crate::spec::{RootMeta, ROOT_KIND};
use snapfleet_repository::BackupId;
use snapfleet_repository::Repos;

/// Reads and decodes the ROOT of `backup_id` in the repository at `url`.
pub(crate) async fn read_root_meta(repos: &Repos, url: &str, backup_id: &str) -> Result<RootMeta> {
    let repo = repos.get(url).await?;
    let root = repo
        .read_root(&BackupId::new(backup_id.to_string())?)
        .await?;
    root_meta(backup_id, &root)
}

/// Decodes a ROOT's metadata, refusing a backup of another kind.
pub(crate) fn root_meta(backup_id: &str, root: &snapfleet_repository::Root) -> Result<RootMeta> {
    let meta: RootMeta = serde_json::from_value(root.meta.clone()).map_err(|e| {
        JobError::invalid(
            format!("backup {backup_id}"),
            format!("not a tabletdb backup ({e})"),
        )
    })?;
    if meta.kind != ROOT_KIND {
        return Err(JobError::invalid(
            format!("backup {backup_id}"),
            format!(
                "kind {:?}, this snapfleet restores {ROOT_KIND:?}",
                meta.kind
            ),
        ));
    }
    Ok(meta)
}
