//! The boundary between snapfleet and the database it backs up.
//!
//! Two traits split a database the way snapfleet's processes are split: [`Database`] is the
//! control side the coordinator's job drivers use (describe schema and placement, take a
//! distributed snapshot at a hybrid time, prepare, activate or abort a restore, clone), and
//! [`NodeStore`] is the node side an agent uses on the host it serves (list a tablet
//! snapshot's files, say where a restore stages a tablet, replay archived change-log records
//! into a staged copy, read the change log). [`Adapter`] opens both for one kind of database.
//! Everything crossing the boundary is a domain type of [`types`] with validated ids from
//! `snapfleet_api`, and every failure is an [`AdapterError`] that says whether a retry can
//! help.
//!
//! With the `conformance` feature, [`conformance`] holds the cases every adapter must pass,
//! written only against these traits and a small test [`conformance::Harness`].
//!
//! This crate must never depend on a database's client, on tonic or on the agent, jobs or
//! coordinator: adapters depend on it, not the other way round.

pub mod database;
pub mod error;
pub mod factory;
pub mod node_store;
pub mod time;
pub mod types;

#[cfg(feature = "conformance")]
pub mod conformance;

/// The attribute the traits are declared with; implementations use the same one.
pub use async_trait::async_trait;
pub use database::Database;
pub use error::{AdapterError, Result};
pub use factory::Adapter;
pub use node_store::{NodeStore, StagedReplay};
pub use snapfleet_api::{DatabaseId, NodeName, RestoreId, SnapshotId, TableId, TabletId};
pub use time::HybridTime;
pub use types::*;
