//! snapfleet's Raft-replicated control plane: it assigns work (tasks with leases) to agents,
//! tracks job progress and survives losing a minority of replicas. This crate must never dial
//! agents (agents pull) nor hold per-file state (that lives in the repository).
//!
//! Concepts, one module each:
//! - [`ids`], [`model`], [`command`]: typed ids, replicated records, log commands.
//! - [`state_machine`]: pure `apply(command) -> response + effects`.
//! - [`storage`]: `raft::Storage` over sled.
//! - [`raft_loop`]: the task that owns the `RawNode` (tick, step, ready, apply, advance).
//! - [`transport`]: Raft messages between replicas over gRPC.
//! - `tls`, `client` (re-exported from `snapfleet-api`, which agents and the CLI share):
//!   mutual TLS, certificates and the role check on every RPC; the leader-following client.
//! - [`server`]: `run_coordinator`, the client and agent gRPC services, the leader's scheduler.

mod agent_api;
mod client_api;
pub mod command;
pub mod convert;
pub mod driver;
pub mod error;
pub mod ids;
pub mod metrics;
pub mod model;
pub mod pb;
pub mod raft_loop;
pub mod scheduler;
pub mod server;
mod shared;
pub mod state_machine;
pub mod storage;
pub mod transport;

pub use driver::{DriveFuture, JobCtl, JobDriver, JobSummary};
pub use error::{CoordinatorError, Result};
pub use raft_loop::RaftTuning;
pub use server::{run_coordinator, run_coordinator_on, Config, Drivers};
pub use shared::Tuning;
pub use snapfleet_api::{client, tls};
pub use tokio_util::sync::CancellationToken;
