//! Where a restore stages a tablet on a tabletdb node:
//! `<node data dir>/staging/<restore id>/<source tablet id>`. tabletdb's `ImportTablet`
//! accepts only directories under `<node data dir>/staging`.
//!
//! The one definition both sides use: the node store hands it to the agent, the database
//! names it in `ImportTablet`. It must never accept a raw string: the ids are validated
//! types, so the path cannot escape the staging area.

use snapfleet_api::{RestoreId, TabletId};
use std::path::{Path, PathBuf};

/// A restore's staging area on a node.
pub fn restore_dir(node_data_dir: &Path, restore: &RestoreId) -> PathBuf {
    node_data_dir.join("staging").join(restore)
}

/// Where `source_tablet` is staged for `restore` on a node.
pub fn tablet_dir(node_data_dir: &Path, restore: &RestoreId, source_tablet: &TabletId) -> PathBuf {
    restore_dir(node_data_dir, restore).join(source_tablet)
}
