//! tabletdb behind the adapter boundary: [`TabletdbAdapter`] opens a [`TabletdbDatabase`]
//! (the master: catalog, snapshots, restores, clones) and a [`TabletdbNodeStore`] (one
//! tablet server and its data directory on this host).
//!
//! The modules: [`convert`] maps tabletdb's protocol types and errors to the domain types,
//! [`staging`] is the staging path convention shared by both sides, [`database`] and
//! [`node`] implement the traits. This is one of the only crates that may import
//! `snapfleet_tabletdb`; it must never leak its types (`pb::*`, node ids, data dirs) through
//! the traits.

pub mod convert;
pub mod database;
pub mod node;
pub mod staging;

pub use database::TabletdbDatabase;
pub use node::TabletdbNodeStore;

use snapfleet_adapter::{Adapter, Database, NodeStore, Result, SnapshotInfo};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The ROOT `kind` of backups of tabletdb (unchanged from before the adapter boundary).
pub const SNAPSHOT_KIND: &str = "tabletdb-snapshot/v1";

/// The tabletdb adapter. Caches one control connection per master address: connecting
/// downloads the whole catalog, which at 10,000 tablets is not free.
#[derive(Default)]
pub struct TabletdbAdapter {
    databases: Mutex<HashMap<String, Arc<TabletdbDatabase>>>,
}

impl TabletdbAdapter {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

#[async_trait::async_trait]
impl Adapter for TabletdbAdapter {
    fn snapshot_kind(&self) -> &'static str {
        SNAPSHOT_KIND
    }

    fn decode_snapshot(&self, native: &serde_json::Value) -> Result<SnapshotInfo> {
        let pb: snapfleet_tabletdb::pb::SnapshotInfo = serde_json::from_value(native.clone())
            .map_err(|e| {
                snapfleet_adapter::AdapterError::corrupt("tabletdb snapshot description", e)
            })?;
        convert::snapshot(&pb, native.clone())
    }

    async fn connect(&self, cluster: &str) -> Result<Arc<dyn Database>> {
        if let Some(d) = self.databases.lock().expect("adapter cache").get(cluster) {
            return Ok(d.clone());
        }
        let d = Arc::new(TabletdbDatabase::connect(cluster).await?);
        let d = self
            .databases
            .lock()
            .expect("adapter cache")
            .entry(cluster.to_string())
            .or_insert(d)
            .clone();
        Ok(d)
    }

    async fn open_node(&self, node: &str) -> Result<Arc<dyn NodeStore>> {
        Ok(Arc::new(TabletdbNodeStore::open(node).await?))
    }
}
