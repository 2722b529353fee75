//! The snapfleet agent and the backup/restore job drivers.
//!
//! - [`worker`]: the per-node agent process (`snapfleet agent`): registers with the
//!   coordinator, leases tasks, uploads tablet snapshots into the repository and downloads
//!   them into staging directories, reporting progress as it goes.
//! - [`drivers`]: the leader-side phases of backup and restore jobs (snapshot, ROOT commit,
//!   schema creation, activation), plugged into the coordinator.
//! - [`spec`]: the small JSON documents both sides exchange through the coordinator's log.
//! - [`repos`]: repositories opened once per process, with retry and bandwidth layers.
//! - [`aimd`]: the adaptive send rate that backs off when the object store throttles.
//! - [`journal`]: the local sled journal of finished files that lets a restarted agent
//!   resume an upload instead of reading every file again.
//!
//! This crate must never put a per-file list into the coordinator's log, never activate a
//! restore before every tablet is staged, and never read a passphrase from the log.

pub mod aimd;
pub mod archive;
pub mod drivers;
pub mod error;
pub mod journal;
pub mod local;
pub mod pitr;
pub mod repos;
pub mod spec;
pub mod worker;

pub use drivers::TabletdbDrivers;
pub use error::{AgentError, Result};
pub use repos::{Passphrase, Repos};
pub use worker::{run_agent, AgentConfig};
