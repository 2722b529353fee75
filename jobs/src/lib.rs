//! The leader-side job drivers, plugged into the coordinator's `JobDriver` seam: they run
//! inside the coordinator process, only on the leader, and make the tasks agents run.
//!
//! - [`drivers`]: backup (snapshot with DDL retries → upload tasks → ROOT commit) and restore
//!   (schema → download tasks → activate), with their cleanup.
//! - [`pitr`]: PITR snapshot schedules that hold the history window.
//! - [`archive`]: the archive job (one never-ending task per node), restore-to-time
//!   planning, and what `repo forget` must keep for the PITR windows.
//! - [`spec`]: job specs, driver notes and ROOT's metadata; `root` reads a ROOT's metadata
//!   and `step` holds what every step shares (leaf modules: nothing imports back).
//!
//! This crate must never put a per-file list into the coordinator's log, never activate a
//! restore before every tablet is staged, and never read a passphrase from the log.

pub mod archive;
pub mod drivers;
pub mod error;
pub mod pitr;
pub mod root;
pub mod spec;
mod step;

pub use drivers::DatabaseDrivers;
