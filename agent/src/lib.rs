//! The per-node agent runtime: one agent runs beside each database node.
//!
//! - [`worker`]: the agent process (`snapfleet agent`): registers with the coordinator,
//!   leases tasks, uploads tablet snapshots into the repository and downloads them into
//!   staging directories, reporting progress as it goes.
//! - [`archive`]: ships the node's change log into the repository (off-cluster PITR) and
//!   replays archived records into a staged tablet (restore to a time).
//! - [`journal`]: the local sled journal of finished files that lets a restarted agent
//!   resume an upload instead of reading every file again.
//! - [`local`]: a local fleet (coordinators + agents as child processes) for the demo,
//!   benches and tests.
//!
//! Repositories are opened through `snapfleet_repository::Repos` (once per process, with the
//! retry layer and the adaptive rate that backs off when the object store throttles).
//! The task payloads it runs are `snapfleet_api::tasks`; the leader-side drivers that make
//! them live in the `jobs` crate. This crate depends on neither the coordinator nor the jobs.
//! It must never hold a per-file list beyond the file being sent, and never read a
//! passphrase from the coordinator's log.

pub mod archive;
pub mod counters;
pub mod error;
pub mod janitor;
pub mod journal;
pub mod worker;

pub use error::{AgentError, Result};
pub use snapfleet_repository::{Passphrase, Repos};
pub use worker::{run_agent, AgentConfig};
