//! The snapfleet repository: a content-addressed, encrypted, versioned store of backups on
//! object storage (local directory, S3 and S3-compatible servers, memory for tests).
//!
//! Layout (see DESIGN.md, "Repository format"): `snapfleet-repo.json` (format version, key
//! slots), `chunks/<aa>/<keyed-blake3>` (zstd + AES-256-GCM), `backups/<id>/manifest/<part>-<n>`
//! (paged file lists), `backups/<id>/ROOT` (the commit point) and `locks/` (leases that keep
//! gc safe against running backups, see [`lease`]). This crate must never
//! return unverified data, never write outside a restore target, and never let a backup
//! without ROOT be seen as existing.
//!
//! Typical use:
//! ```no_run
//! # async fn demo() -> snapfleet_repository::Result<()> {
//! use std::sync::Arc;
//! use snapfleet_repository::*;
//! let store = open_store("file:///srv/backups")?;
//! let repo = Arc::new(Repository::open(store, b"passphrase").await?);
//! let w = BackupWriter::new(repo.clone(), BackupId::generate()).await?;
//! w.put_dir(std::path::Path::new("/data")).await?;
//! let (root, stats) = w.commit(serde_json::json!({})).await?;
//! restore_backup(&repo, &root.backup_id, std::path::Path::new("/restore")).await?;
//! # Ok(()) }
//! ```

pub mod chunk;
pub mod chunker;
pub mod copy;
pub mod crypto;
pub mod error;
pub mod forget;
pub mod format;
pub mod gc;
pub mod ids;
pub mod layers;
pub mod lease;
pub mod manifest;
pub mod pitr;
pub mod pool;
pub mod reader;
pub mod repo;
pub mod store;
pub mod verify;
pub mod writer;

#[cfg(test)]
mod fuzz;

pub use chunker::ChunkerParams;
pub use copy::{copy_backup, copy_backups, CopiedBackup, CopyOptions, CopyReport};
pub use error::{store_error_is_retryable, store_error_is_throttling, Error, Result};
pub use forget::{forget, remove_backup, select, ForgetDecision, ForgetReport, KeepPolicy};
pub use format::{KdfParams, KeyInfo, RepoConfig, FORMAT_VERSION};
pub use gc::{gc, GcOptions, GcReport};
pub use ids::{BackupId, ChunkId, KeyId};
pub use lease::{list_leases, FoundLease, Lease, LeaseInfo, LeaseKind};
pub use manifest::{
    BackupStats, ChunkRef, Entry, EntryKind, ManifestReader, ManifestWriter, PageRef, Root,
};
/// The object store crate, for callers that build or wrap stores.
pub use object_store;
pub use pool::{Passphrase, Repos};
pub use reader::{restore_backup, restore_backup_with, restore_root, RestoreOptions, RestoreStats};
pub use repo::{InitOptions, Repository};
pub use store::{open_store, open_store_with_options, with_layers, StoreLayers};
pub use verify::{verify, verify_backups, Damage, Problem, VerifyOptions, VerifyReport};
pub use writer::{
    commit_backup, BackupWriter, EntryObserver, FileMeta, PartSummary, Progress, WriteStats,
    WriterOptions,
};
