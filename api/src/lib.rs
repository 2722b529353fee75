//! The contract the coordinator, the leader-side job drivers and the agents share.
//!
//! Both ends of the wire depend on this crate; neither depends on the other. It holds only
//! plain data and the checks that make it safe to use: every id that arrives in a task
//! payload, comes out of the Raft log or out of a manifest is one of the validated types in
//! [`ids`] before it can become a path, an object key or a size.
//!
//! Also here: the leader-following client ([`client::Leader`]) and mutual-TLS identities and
//! roles ([`tls`]), which the coordinator serves with and every client dials with.
//!
//! This crate must never depend on the coordinator, the agent, the job drivers, the
//! repository or a database.

pub mod client;
pub mod ids;
pub mod tasks;
pub use snapfleet_tls as tls;

/// The coordinator's generated gRPC code (from `proto/proto/coordinator.proto`).
pub use snapfleet_proto::coordinator as pb;

pub use ids::{DatabaseId, IdError, NodeName, RestoreId, SnapshotId, TableId, TabletId};
