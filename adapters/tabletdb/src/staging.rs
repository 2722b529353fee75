//! Where a restore stages a tablet on a tabletdb node:
//! `<node data dir>/staging/<restore id>/<source tablet id>`. tabletdb's `ImportTablet`
//! accepts only directories under `<node data dir>/staging`.
//!
//! The node store hands it to the agent, the database names it in `ImportTablet`; the
//! restore's directory is `snapfleet_api::tasks::staging_dir`, the one definition the agent
//! and the job drivers use too. It must never accept a raw string: the ids are validated
//! types, so the path cannot escape the staging area.

use snapfleet_api::tasks::staging_dir;
use snapfleet_api::{RestoreId, TabletId};
use std::path::{Path, PathBuf};

/// Where `source_tablet` is staged for `restore` on a node.
pub fn tablet_dir(node_data_dir: &Path, restore: &RestoreId, source_tablet: &TabletId) -> PathBuf {
    staging_dir(node_data_dir, restore).join(source_tablet)
}
