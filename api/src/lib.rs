//! The contract the coordinator, the leader-side job drivers and the agents share.
//!
//! Both ends of the wire depend on this crate; neither depends on the other. It holds only
//! plain data and the checks that make it safe to use: every id that arrives in a task
//! payload, comes out of the Raft log or out of a manifest is one of the validated types in
//! [`ids`] before it can become a path, an object key or a size.
//!
//! This crate must never do I/O.

pub mod ids;

pub use ids::{DatabaseId, IdError, NodeName, RestoreId, SnapshotId, TableId, TabletId};
