//! tabletdb: the reference tablet-sharded database snapfleet backs up and restores,
//! modelled on YugabyteDB's DocDB. A master holds the catalog; tablet servers hold tablets,
//! each a RocksDB instance with MVCC versions stamped by a hybrid logical clock.
//!
//! The modules, in the order a request meets them: [`client`] routes by [`encoding`]'s
//! partition hash to a [`node`], which applies it to a [`tablet`] (and its [`changelog`]);
//! the [`master`] owns the catalog and orchestrates distributed snapshots; [`restore`]
//! imports snapshot copies into a cluster of any size; [`workload`] and [`verify`] drive and
//! check data; [`sql`] is a small SQL subset. (A local cluster of real processes lives in
//! the `snapfleet-localfleet` harness, not here.)

pub mod changelog;
pub mod client;
pub mod encoding;
pub mod error;
pub mod hlc;
pub mod master;
pub mod node;
pub mod restore;
pub mod security;
pub mod sql;
pub mod tablet;
pub mod types;
pub mod verify;
pub mod workload;

pub use client::Client;
pub use error::{Error, Result};
pub use hlc::HybridTime;
pub use snapfleet_proto::tabletdb as pb;
