//! `repo verify`: checks that every committed backup can be restored. Quick mode checks that
//! every referenced object exists with the size the manifest recorded; deep mode downloads,
//! decrypts and re-hashes every chunk. The report names each damaged or missing object and
//! the backups it breaks.
//!
//! Verification must never modify the repository, and must never report a transient store
//! failure as damage: those abort the run with a retryable error instead.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::ids::{BackupId, ChunkId};
use crate::manifest::{page_key, read_page, root_key};
use crate::repo::Repository;

/// How thoroughly to check.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    pub deep: bool,
    pub concurrency: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            deep: false,
            concurrency: 8,
        }
    }
}

/// What is wrong with an object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    Missing,
    WrongSize { expected: u64, found: u64 },
    Corrupt { detail: String },
}

/// One damaged object and the backups that need it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Damage {
    pub key: String,
    #[serde(flatten)]
    pub problem: Problem,
    pub backups: Vec<BackupId>,
}

/// Result of a verification run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub deep: bool,
    pub backups: u64,
    pub pages: u64,
    pub chunks: u64,
    pub bytes_checked: u64,
    pub damaged: Vec<Damage>,
    pub broken_backups: Vec<BackupId>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.damaged.is_empty()
    }
}

fn classify(e: Error) -> Result<Problem> {
    match e {
        Error::MissingObject { .. } | Error::BackupNotFound { .. } => Ok(Problem::Missing),
        Error::CorruptObject { detail, .. } => Ok(Problem::Corrupt { detail }),
        Error::UnsupportedFormat { found, supported } => Ok(Problem::Corrupt {
            detail: format!("format version {found}, this build supports {supported}"),
        }),
        other => Err(other),
    }
}

/// Verifies every committed backup.
pub async fn verify(repo: &Arc<Repository>, opts: &VerifyOptions) -> Result<VerifyReport> {
    let backups = repo.list_backups().await?;
    verify_backups(repo, &backups, opts).await
}

/// Verifies the given backups.
pub async fn verify_backups(
    repo: &Arc<Repository>,
    backups: &[BackupId],
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    let mut report = VerifyReport {
        deep: opts.deep,
        backups: backups.len() as u64,
        ..Default::default()
    };
    let mut damaged: BTreeMap<String, (Problem, BTreeSet<BackupId>)> = BTreeMap::new();
    // Unique chunks: id -> (stored size recorded, backups using it). Bounded by the number of
    // distinct chunks (packs make that small even for millions of files), not of files.
    let mut chunks: HashMap<ChunkId, (u64, BTreeSet<BackupId>)> = HashMap::new();

    for backup in backups {
        let root = match repo.read_root(backup).await {
            Ok(r) => r,
            Err(e) => {
                let problem = classify(e)?;
                damaged
                    .entry(root_key(backup))
                    .or_insert((problem, BTreeSet::new()))
                    .1
                    .insert(backup.clone());
                continue;
            }
        };
        for page in &root.pages {
            report.pages += 1;
            let entries = match read_page(repo, backup, page).await {
                Ok(e) => e,
                Err(e) => {
                    let problem = classify(e)?;
                    let key = page_key(backup, &page.name);
                    damaged
                        .entry(key)
                        .or_insert((problem, BTreeSet::new()))
                        .1
                        .insert(backup.clone());
                    continue;
                }
            };
            for entry in entries {
                for r in entry.chunks {
                    chunks
                        .entry(r.id)
                        .or_insert((r.stored, BTreeSet::new()))
                        .1
                        .insert(backup.clone());
                }
            }
        }
    }

    report.chunks = chunks.len() as u64;
    let deep = opts.deep;
    let results: Vec<(ChunkId, u64, Option<Problem>)> =
        futures::stream::iter(chunks.iter().map(|(id, (stored, _))| (*id, *stored)))
            .map(|(id, stored)| {
                let repo = repo.clone();
                async move {
                    let problem = if deep {
                        match repo.read_chunk(&id).await {
                            Ok(_) => None,
                            Err(e) => Some(classify(e)?),
                        }
                    } else {
                        match repo.head_size(&id.object_key()).await? {
                            None => Some(Problem::Missing),
                            Some(found) if found != stored => Some(Problem::WrongSize {
                                expected: stored,
                                found,
                            }),
                            Some(_) => None,
                        }
                    };
                    Ok::<_, Error>((id, stored, problem))
                }
            })
            .buffer_unordered(opts.concurrency.max(1))
            .try_collect()
            .await?;
    for (id, stored, problem) in results {
        match problem {
            None => report.bytes_checked += if deep { stored } else { 0 },
            Some(p) => {
                let users = chunks.get(&id).map(|(_, b)| b.clone()).unwrap_or_default();
                damaged.insert(id.object_key(), (p, users));
            }
        }
    }

    let mut broken = BTreeSet::new();
    for (key, (problem, users)) in damaged {
        broken.extend(users.iter().cloned());
        tracing::warn!(%key, ?problem, backups = users.len(), "damaged object");
        report.damaged.push(Damage {
            key,
            problem,
            backups: users.into_iter().collect(),
        });
    }
    report.broken_backups = broken.into_iter().collect();
    Ok(report)
}
