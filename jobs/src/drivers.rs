//! The leader's backup and restore job drivers (plugged into the coordinator, which runs
//! them only on the leader; see `snapfleet_coordinator::driver` for the contract).
//!
//! Backup: `""` take a distributed snapshot at hybrid time T (retried across DDL) → log
//! one upload task per tablet for the agent on its node → `upload` when every task is
//! done, write ROOT (the commit point; idempotent: an existing ROOT is read back) →
//! `release` delete the tablet snapshots (unless kept) → finish.
//!
//! Restore (from the repository alone): `""` read ROOT, log a restore id → `prepare`
//! create the schema as hidden tables with the source's tablet ranges, place tablets on the
//! target's nodes (balanced by the master), log one download task per tablet → `download`
//! agents fetch and verify into staging → `activate` (logged before acting, so a new
//! leader rolls forward) import every tablet (idempotent on the node), then reveal all
//! tables in one catalog change. Until `activate` a failure or cancel drops the hidden
//! tables: the target is left as it was.

use crate::error::{JobError, Result};
use crate::root::read_root_meta;
use crate::spec::*;
use crate::step::{coord, notes, spec, Step};
use serde_json::json;
use snapfleet_adapter::{
    Activation, Adapter, AdapterError, HybridTime, RestoreRequest, SnapshotRequest,
};
use snapfleet_api::tasks::{
    DownloadTask, ReplaySpec, TabletPages, ThrottleStats, UploadResult, UploadTask,
};
use snapfleet_api::{RestoreId, SnapshotId, TabletId};
use snapfleet_coordinator::command::TaskSpec;
use snapfleet_coordinator::model::{Affinity, Job, JobKind, Task, TaskState};
use snapfleet_coordinator::{DriveFuture, JobCtl, JobDriver};
use snapfleet_repository::Repos;
use snapfleet_repository::{
    commit_backup, BackupId, Error as RepoError, Lease, LeaseKind, PartSummary,
};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Task retries (each on a fresh lease, possibly another agent) before the job fails.
pub const TASK_RETRIES: u32 = 3;
/// Transient failures of one driver step (a node or the master unreachable, one per second)
/// before the job fails; the activation of a restore is exempt: it only rolls forward.
pub const STEP_RETRIES: u32 = 60;

/// Backup, restore, archive and PITR drivers sharing one set of opened repositories, for
/// the database behind `adapter` (the only way they reach it).
pub struct DatabaseDrivers {
    repos: Arc<Repos>,
    adapter: Arc<dyn Adapter>,
}

impl DatabaseDrivers {
    pub fn new(repos: Arc<Repos>, adapter: Arc<dyn Adapter>) -> Arc<Self> {
        Arc::new(Self { repos, adapter })
    }
}

impl JobDriver for DatabaseDrivers {
    fn handles(&self, kind: JobKind) -> bool {
        matches!(
            kind,
            JobKind::Backup | JobKind::Restore | JobKind::Pitr | JobKind::Archive
        )
    }

    fn drive(&self, ctl: JobCtl) -> DriveFuture {
        let repos = self.repos.clone();
        let adapter = self.adapter.clone();
        Box::pin(async move {
            let adapter: &dyn Adapter = &*adapter;
            let mut transient = 0u32;
            // A backup's writer lease, held by this leader from before the snapshot to ROOT;
            // dropped (and its object deleted) with this future when leadership moves.
            let mut lease: Option<Lease> = None;
            // The phase in which the last step waited for its tasks: until one more of
            // them succeeds (or the job is aborted, cancelled, or moves on) there is nothing
            // to decide, and the cheap summary says so without copying every task.
            let mut waiting_in: Option<String> = None;
            loop {
                if let Some(phase) = &waiting_in {
                    match ctl.summary() {
                        None => return,
                        Some(s)
                            if !s.state.is_terminal()
                                && !s.aborting
                                && &s.phase == phase
                                && s.progress.tasks_succeeded < s.progress.tasks_total =>
                        {
                            ctl.changed(Duration::from_secs(2)).await;
                            continue;
                        }
                        Some(_) => waiting_in = None,
                    }
                }
                let Some((job, tasks)) = ctl.job() else {
                    return;
                };
                if job.state.is_terminal() {
                    return;
                }
                let r = match job.kind {
                    JobKind::Backup => {
                        backup_step(&ctl, adapter, &repos, &job, &tasks, &mut lease).await
                    }
                    JobKind::Restore => restore_step(&ctl, adapter, &repos, &job, &tasks).await,
                    JobKind::Pitr => crate::pitr::pitr_step(&ctl, adapter, &job).await,
                    JobKind::Archive => {
                        crate::archive::archive_step(&ctl, adapter, &repos, &job, &tasks).await
                    }
                    _ => return,
                };
                match r {
                    Ok(Step::Again) => {}
                    Ok(Step::Wait) => {
                        if waits_for_tasks(&job) {
                            waiting_in = Some(job.phase.clone());
                        }
                        ctl.changed(Duration::from_secs(2)).await
                    }
                    Ok(Step::Done) => return,
                    // Past the point of no return a restore rolls forward through any number
                    // of transient failures (a node down for an hour), but a permanent one
                    // (a table dropped under it, a refused import) ends the job.
                    Err(e)
                        if e.is_retryable()
                            && (in_point_of_no_return(&job) || transient < STEP_RETRIES) =>
                    {
                        transient += 1;
                        warn!(error = %e, phase = %job.phase, transient, "job step failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => {
                        warn!(error = %e, phase = %job.phase, "job failed");
                        let why = e.to_string();
                        transient += 1;
                        if let Err(c) = abort(&ctl, adapter, &job, why.clone()).await {
                            if transient >= 2 * STEP_RETRIES {
                                // Never leave a job running forever: say what is left over.
                                let _ = ctl
                                    .finish(
                                        Some(format!(
                                            "{why}; cleanup incomplete ({c}): drop the hidden \
                                             tables / snapshots of this job by hand"
                                        )),
                                        json!({}),
                                    )
                                    .await;
                                return;
                            }
                            warn!(error = %c, "cleaning up after the failure; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        })
    }
}

/// Phases whose step waits for exactly one thing: every task succeeded.
fn waits_for_tasks(job: &Job) -> bool {
    matches!(
        (job.kind, job.phase.as_str()),
        (JobKind::Backup, "upload") | (JobKind::Restore, "download")
    )
}

/// After this, a restore only rolls forward.
fn in_point_of_no_return(job: &Job) -> bool {
    job.kind == JobKind::Restore && job.phase == "activate"
}

fn all_succeeded(tasks: &[Task]) -> bool {
    tasks.iter().all(|t| t.state == TaskState::Succeeded)
}

/// Stops a job that failed in its driver: cleans up like an abort, then finishes it failed.
async fn abort(ctl: &JobCtl, adapter: &dyn Adapter, job: &Job, why: String) -> Result<()> {
    cleanup(adapter, job).await?;
    ctl.finish(Some(why), json!({})).await.map_err(coord)
}

/// Undoes what a job left behind before its point of no return.
async fn cleanup(adapter: &dyn Adapter, job: &Job) -> Result<()> {
    match job.kind {
        JobKind::Backup => {
            if job.phase.is_empty() {
                return Ok(());
            }
            let spec: BackupSpec = spec(job)?;
            let n: BackupNotes = notes(job)?;
            if !spec.keep_snapshot {
                let snap = adapter.decode_snapshot(&n.snapshot)?;
                delete_snapshot(adapter, &spec.master, &snap.id).await?;
            }
            Ok(())
        }
        JobKind::Restore => {
            if job.phase.is_empty() {
                return Ok(());
            }
            let spec: RestoreSpec = spec(job)?;
            let n: RestoreNotes = notes(job)?;
            // The staged files are on the nodes' hosts: each agent's janitor removes them
            // once this job has ended (agent/src/janitor.rs).
            adapter
                .connect(&spec.master)
                .await?
                .abort_restore(&n.restore_id, &n.database, &n.tables)
                .await?;
            Ok(())
        }
        _ => Ok(()),
    }
}

async fn delete_snapshot(adapter: &dyn Adapter, master: &str, id: &SnapshotId) -> Result<()> {
    Ok(adapter.connect(master).await?.delete_snapshot(id).await?)
}

// ---------------------------------------------------------------- backup

/// Holds the job's writer lease (acquiring it on the first step this leader runs): from
/// before the snapshot to ROOT no gc can run, so no chunk an agent found and reused can be
/// swept before the commit names it. A leader that takes over mid-job acquires its own;
/// the gap between the two is covered by gc's grace period (see the lease protocol in
/// `snapfleet_repository::lease`).
async fn hold_lease(
    slot: &mut Option<Lease>,
    repo: &Arc<snapfleet_repository::repo::Repository>,
    id: &BackupId,
) -> Result<()> {
    if slot.is_none() {
        let purpose = format!("backup {id} (commit, coordinator)");
        *slot = Some(Lease::acquire(repo, LeaseKind::Writer, &purpose).await?);
    }
    Ok(())
}

async fn backup_step(
    ctl: &JobCtl,
    adapter: &dyn Adapter,
    repos: &Repos,
    job: &Job,
    tasks: &[Task],
    lease: &mut Option<Lease>,
) -> Result<Step> {
    let spec: BackupSpec = spec(job)?;
    if job.aborting.is_some() {
        cleanup(adapter, job).await?;
        ctl.finish(None, json!({})).await.map_err(coord)?;
        return Ok(Step::Done);
    }
    match job.phase.as_str() {
        "" => {
            // Fail before touching the database if the repository is unusable.
            let repo = repos.get(&spec.repo).await?;
            let id = BackupId::new(spec.id())?;
            if repo.read_root(&id).await.is_ok() {
                return Err(JobError::invalid(
                    format!("backup {id}"),
                    "already exists in the repository; pick another id",
                ));
            }
            hold_lease(lease, &repo, &id).await?;
            let db = adapter.connect(&spec.master).await?;
            let snap = match db
                .create_snapshot(SnapshotRequest {
                    database: &spec.database,
                    at: None,
                    label: None,
                    ddl_retries: spec.ddl_retries,
                })
                .await
            {
                Ok(s) => s,
                // A DDL kept racing: a clear, final answer (retrying the step would not help).
                Err(e @ AdapterError::Fenced { .. }) => {
                    return Err(JobError::invalid("snapshot", e))
                }
                Err(e) => return Err(e.into()),
            };
            info!(snapshot = %snap.id, ht = snap.hybrid_time.0, "snapshot taken");
            let nodes: std::collections::BTreeSet<&str> = snap
                .tables
                .iter()
                .flat_map(|t| t.tablets.iter().map(|tb| tb.node.as_str()))
                .collect();
            let share = spec.rate_limit / nodes.len().max(1) as u64;
            let mut specs = Vec::new();
            for t in &snap.tables {
                for tb in &t.tablets {
                    let task = UploadTask {
                        repo: spec.repo.clone(),
                        backup_id: spec.id(),
                        snapshot_id: snap.id.clone(),
                        database_id: snap.database_id.clone(),
                        table_id: t.id.clone(),
                        tablet_id: tb.id.clone(),
                        compression: spec.compression,
                        rate_limit: share,
                    };
                    specs.push(TaskSpec {
                        payload: serde_json::to_value(task).expect("serialisable"),
                        affinity: Affinity {
                            agent: None,
                            node: Some(tb.node.to_string()),
                        },
                    });
                }
            }
            let notes = serde_json::to_value(BackupNotes {
                snapshot: snap.catalog.clone(),
            })
            .expect("json");
            ctl.advance("upload", notes, specs, TASK_RETRIES)
                .await
                .map_err(coord)?;
            Ok(Step::Again)
        }
        "upload" => {
            if !all_succeeded(tasks) {
                return Ok(Step::Wait);
            }
            let n: BackupNotes = notes(job)?;
            let repo = repos.get(&spec.repo).await?;
            let id = BackupId::new(spec.id())?;
            hold_lease(lease, &repo, &id).await?;
            let mut results: Vec<UploadResult> = Vec::with_capacity(tasks.len());
            for t in tasks {
                let r = t.result.clone().unwrap_or_default();
                results.push(
                    serde_json::from_value(r)
                        .map_err(|e| JobError::invalid(format!("result of {}", t.id), e))?,
                );
            }
            let root = match repo.read_root(&id).await {
                Ok(root) => root, // committed by an earlier leader
                Err(RepoError::BackupNotFound { .. }) => {
                    let mut tablet_pages = Vec::new();
                    let mut parts: Vec<PartSummary> = Vec::new();
                    let mut at = 0usize;
                    for (t, r) in tasks.iter().zip(&results) {
                        let tablet = TabletId::new(
                            t.payload
                                .get("tablet_id")
                                .and_then(|v| v.as_str())
                                .unwrap_or_default(),
                        )?;
                        let part: PartSummary =
                            serde_json::from_value(r.part.clone()).map_err(|e| {
                                JobError::invalid(format!("part summary of {}", t.id), e)
                            })?;
                        let n = part.pages.len();
                        tablet_pages.push(TabletPages {
                            tablet_id: tablet,
                            start: at,
                            end: at + n,
                            bytes: r.tablet_bytes(),
                        });
                        at += n;
                        parts.push(part);
                    }
                    let meta = RootMeta {
                        kind: adapter.snapshot_kind().into(),
                        source_master: spec.master.clone(),
                        snapshot: n.snapshot.clone(),
                        tablet_pages,
                        schedule_id: spec.schedule_id.clone(),
                    };
                    let meta = serde_json::to_value(meta).expect("json");
                    // A lapse of the lease at any time since it was taken means a gc may
                    // have swept chunks the parts reuse: refuse to commit (final).
                    if let Some(l) = lease.as_ref() {
                        l.check()?;
                    }
                    commit_backup(&repo, &id, meta, parts).await?
                }
                Err(e) => return Err(e.into()),
            };
            info!(backup = %id, pages = root.pages.len(), "ROOT written: backup committed");
            let mut data = job.data.clone();
            // Tablets whose upload was retried (agent killed, lease lost): what the final
            // attempt read and sent shows how much earlier attempts had already stored.
            let retried: Vec<&UploadResult> = tasks
                .iter()
                .zip(&results)
                .filter(|(t, _)| t.attempts > 1)
                .map(|(_, r)| r)
                .collect();
            let mut throttle = ThrottleStats::default();
            for r in &results {
                throttle.add(&r.throttle);
            }
            data["stats"] = json!({
                "files": results.iter().map(|r| r.files).sum::<u64>(),
                "bytes": results.iter().map(UploadResult::tablet_bytes).sum::<u64>(),
                "bytes_read": results.iter().map(|r| r.bytes_read).sum::<u64>(),
                "bytes_uploaded": results.iter().map(|r| r.bytes_uploaded).sum::<u64>(),
                "retried_tablets": retried.len(),
                "retried_bytes": retried.iter().map(|r| r.tablet_bytes()).sum::<u64>(),
                "retried_bytes_read": retried.iter().map(|r| r.bytes_read).sum::<u64>(),
                "retried_bytes_uploaded": retried.iter().map(|r| r.bytes_uploaded).sum::<u64>(),
                "journal_files": results.iter().map(|r| r.journal_files).sum::<u64>(),
                "journal_bytes": results.iter().map(|r| r.journal_bytes).sum::<u64>(),
                "throttled": throttle.throttled,
                "throttled_lowest_rate": throttle.throttled_lowest_rate,
            });
            if let Some(note) = throttle_note(&throttle) {
                warn!(backup = %id, "{note}");
                data["stats"]["throttle_note"] = json!(note);
            }
            ctl.advance("release", data, vec![], 0)
                .await
                .map_err(coord)?;
            if let Some(l) = lease.take() {
                if let Err(e) = l.release().await {
                    warn!(error = %e, "could not release the backup's lease; it will expire");
                }
            }
            Ok(Step::Again)
        }
        "release" => {
            let n: BackupNotes = notes(job)?;
            let snap = adapter.decode_snapshot(&n.snapshot)?;
            if !spec.keep_snapshot {
                delete_snapshot(adapter, &spec.master, &snap.id).await?;
            }
            let mut result = job.data.get("stats").cloned().unwrap_or_else(|| json!({}));
            result["backup_id"] = json!(spec.id());
            result["database"] = json!(spec.database);
            result["hybrid_time"] = json!(snap.hybrid_time.0);
            result["snapshot_id"] = json!(snap.id.to_string());
            result["tablets"] = json!(tasks.len());
            if let (Some(schedule), true) = (&spec.schedule_id, spec.retention > 0) {
                let repo = repos.get(&spec.repo).await?;
                let removed =
                    apply_retention(adapter, &repo, schedule, spec.retention as usize).await?;
                result["retention_removed"] = json!(removed);
            }
            ctl.finish(None, result).await.map_err(coord)?;
            Ok(Step::Done)
        }
        other => Err(JobError::invalid("backup phase", other)),
    }
}

/// Keeps the newest `keep` backups made by `schedule`; removes the older ones (ROOT first,
/// so each disappears at once; their chunks are left to `repo gc`). Returns the removed ids.
async fn apply_retention(
    adapter: &dyn Adapter,
    repo: &snapfleet_repository::Repository,
    schedule: &str,
    keep: usize,
) -> Result<Vec<String>> {
    let mut mine = Vec::new();
    for id in repo.list_backups().await? {
        let root = match repo.read_root(&id).await {
            Ok(r) => r,
            Err(RepoError::BackupNotFound { .. }) => continue, // removed meanwhile
            Err(e) => return Err(e.into()),
        };
        let from = root.meta.get("schedule_id").and_then(|v| v.as_str());
        if from == Some(schedule) {
            mine.push((root.created, id));
        }
    }
    mine.sort();
    // Never the base backup an archive's PITR window needs.
    let needs = crate::archive::pitr_needs(adapter, repo).await?;
    mine.retain(|(_, id)| !needs.protect.contains(id));
    let excess = mine.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for (_, id) in mine.into_iter().take(excess) {
        snapfleet_repository::remove_backup(repo, &id).await?;
        info!(backup = %id, schedule, "removed by the schedule's retention");
        removed.push(id.to_string());
    }
    Ok(removed)
}

// ---------------------------------------------------------------- restore

async fn restore_step(
    ctl: &JobCtl,
    adapter: &dyn Adapter,
    repos: &Repos,
    job: &Job,
    tasks: &[Task],
) -> Result<Step> {
    let spec: RestoreSpec = spec(job)?;
    if job.aborting.is_some() && !in_point_of_no_return(job) {
        cleanup(adapter, job).await?;
        ctl.finish(None, json!({})).await.map_err(coord)?;
        return Ok(Step::Done);
    }
    match job.phase.as_str() {
        "" => {
            let (backup_id, pitr) = if spec.to_ht != 0 {
                let plan = crate::archive::plan_restore_to(adapter, repos, &spec).await?;
                (plan.backup_id.clone(), Some(plan))
            } else {
                (spec.backup_id.clone(), None)
            };
            let b = read_root_meta(adapter, repos, &spec.repo, &backup_id).await?;
            let snap = &b.snapshot;
            for t in &spec.tables {
                if !snap.tables.iter().any(|s| &s.name == t) {
                    return Err(JobError::invalid(
                        format!("table {t:?}"),
                        format!(
                            "not in backup {} (it has: {})",
                            backup_id,
                            snap.tables
                                .iter()
                                .map(|t| t.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
            let database = if spec.database.is_empty() {
                snap.database_name.clone()
            } else {
                spec.database.clone()
            };
            let mut notes = RestoreNotes {
                restore_id: RestoreId::new(format!("restore-{}", job.id.0))?,
                database,
                restore_ht: snap.hybrid_time.0,
                backup_id: backup_id.clone(),
                skip_tables: Vec::new(),
                replay: None,
                replay_tablets: Default::default(),
                tables: Vec::new(),
                tablets: Vec::new(),
            };
            if let Some(plan) = pitr {
                notes.restore_ht = spec.to_ht;
                notes.skip_tables = plan.skip_tables;
                notes.replay_tablets = plan.tablets;
                notes.replay = Some(ReplaySpec {
                    database_id: snap.database_id.to_string(),
                    from_ht: snap.hybrid_time.0,
                    to_ht: spec.to_ht,
                    tablet: Default::default(),
                });
            }
            ctl.advance(
                "prepare",
                serde_json::to_value(notes).expect("json"),
                vec![],
                0,
            )
            .await
            .map_err(coord)?;
            Ok(Step::Again)
        }
        "prepare" => {
            let mut n: RestoreNotes = notes(job)?;
            if n.backup_id.is_empty() {
                n.backup_id = spec.backup_id.clone();
            }
            let b = read_root_meta(adapter, repos, &spec.repo, &n.backup_id).await?;
            // The tables to restore, by name: the chosen ones (or all), less those a restore
            // to a time leaves out (dropped before the time).
            let chosen: Vec<String> = b
                .snapshot
                .tables
                .iter()
                .map(|t| t.name.clone())
                .filter(|name| spec.tables.is_empty() || spec.tables.contains(name))
                .filter(|name| !n.skip_tables.contains(name))
                .collect();
            if chosen.is_empty() {
                return Err(JobError::invalid(
                    format!("restore of backup {}", n.backup_id),
                    "no table is left to restore at that time",
                ));
            }
            let db = adapter.connect(&spec.master).await?;
            // Creates the hidden tables (replacing this job's own leftovers after a leader
            // failover; refusing a visible table of the same name) and places the tablets.
            // Logged only with the next phase: if this step fails after it, undo it now so a
            // failed restore leaves the target as it was.
            let prepared = match db
                .prepare_restore(RestoreRequest {
                    restore_id: &n.restore_id,
                    database: &n.database,
                    snapshot: &b.snapshot,
                    tables: &chosen,
                })
                .await
            {
                Ok(p) => p,
                Err(e @ AdapterError::AlreadyExists { .. }) => {
                    return Err(JobError::invalid(
                        format!("restore into database {:?}", n.database),
                        format!("{e}; restore under another name (--db NEW) or drop it first"),
                    ))
                }
                Err(e) => return Err(e.into()),
            };
            n.tables = prepared.tables;
            n.tablets = prepared.tablets;
            let specs: Result<Vec<TaskSpec>> = n
                .tablets
                .iter()
                .map(|p| {
                    let pages = b
                        .meta
                        .tablet_pages
                        .iter()
                        .find(|tp| tp.tablet_id == p.source_tablet)
                        .cloned()
                        .ok_or_else(|| {
                            JobError::invalid(
                                format!("backup {}", n.backup_id),
                                format!("ROOT has no pages for tablet {}", p.source_tablet),
                            )
                        })?;
                    let task = DownloadTask {
                        repo: spec.repo.clone(),
                        backup_id: n.backup_id.clone(),
                        restore_id: n.restore_id.clone(),
                        replay: n.replay.clone().map(|mut r| {
                            r.tablet = n
                                .replay_tablets
                                .get(p.source_tablet.as_str())
                                .cloned()
                                .unwrap_or_default();
                            r
                        }),
                        source_tablet: p.source_tablet.clone(),
                        pages,
                        rate_limit: 0,
                    };
                    Ok(TaskSpec {
                        payload: serde_json::to_value(task).expect("json"),
                        affinity: Affinity {
                            agent: None,
                            node: Some(p.node.to_string()),
                        },
                    })
                })
                .collect();
            let mut specs = match specs {
                Ok(s) => s,
                Err(e) => {
                    if let Err(d) = db
                        .abort_restore(&n.restore_id, &n.database, &n.tables)
                        .await
                    {
                        warn!(error = %d, "dropping the tables of a failed prepare step");
                    }
                    return Err(e);
                }
            };
            let nodes: std::collections::BTreeSet<&str> =
                n.tablets.iter().map(|p| p.node.as_str()).collect();
            let share = spec.rate_limit / nodes.len().max(1) as u64;
            for t in &mut specs {
                t.payload["rate_limit"] = json!(share);
            }
            ctl.advance(
                "download",
                serde_json::to_value(&n).expect("json"),
                specs,
                TASK_RETRIES,
            )
            .await
            .map_err(coord)?;
            Ok(Step::Again)
        }
        "download" => {
            if !all_succeeded(tasks) {
                return Ok(Step::Wait);
            }
            ctl.advance("activate", job.data.clone(), vec![], 0)
                .await
                .map_err(coord)?;
            Ok(Step::Again)
        }
        "activate" => {
            let n: RestoreNotes = notes(job)?;
            // Imports every staged tablet on its node (idempotent), then reveals every table
            // in one catalog change; a node that is down makes this retry until it is back.
            adapter
                .connect(&spec.master)
                .await?
                .activate_restore(Activation {
                    restore_id: &n.restore_id,
                    database: &n.database,
                    restore_ht: HybridTime(n.restore_ht),
                    tables: &n.tables,
                    tablets: &n.tablets,
                })
                .await?;
            // The staging directories are left to each agent's janitor, on its own host.
            let bytes: u64 = tasks
                .iter()
                .filter_map(|t| t.result.as_ref())
                .filter_map(|r| r.get("bytes").and_then(|b| b.as_u64()))
                .sum();
            let files: u64 = tasks
                .iter()
                .filter_map(|t| t.result.as_ref())
                .filter_map(|r| r.get("files").and_then(|b| b.as_u64()))
                .sum();
            let sum = |field: &str| -> u64 {
                tasks
                    .iter()
                    .filter_map(|t| t.result.as_ref())
                    .filter_map(|r| r.get(field).and_then(|b| b.as_u64()))
                    .sum()
            };
            let mut throttle = ThrottleStats::default();
            for r in tasks.iter().filter_map(|t| t.result.as_ref()) {
                if let Ok(r) = serde_json::from_value::<ThrottleStats>(r.clone()) {
                    throttle.add(&r);
                }
            }
            info!(database = %n.database, tables = n.tables.len(), "restore activated");
            let mut result = json!({
                "backup_id": if n.backup_id.is_empty() { &spec.backup_id } else { &n.backup_id },
                "skipped_tables": n.skip_tables,
                "replayed": sum("replayed"),
                "database": n.database,
                "tables": n.tables.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
                "tablets": n.tablets.len(),
                "files": files,
                "bytes": bytes,
                "restore_ht": n.restore_ht,
                "resumed_files": sum("resumed_files"),
                "resumed_bytes": sum("resumed_bytes"),
                "throttled": throttle.throttled,
                "throttled_lowest_rate": throttle.throttled_lowest_rate,
            });
            if let Some(note) = throttle_note(&throttle) {
                warn!(database = %n.database, "{note}");
                result["throttle_note"] = json!(note);
            }
            ctl.finish(None, result).await.map_err(coord)?;
            Ok(Step::Done)
        }
        other => Err(JobError::invalid("restore phase", other)),
    }
}

/// A line for operators about the object store's throttling, or None when there was none.
fn throttle_note(s: &ThrottleStats) -> Option<String> {
    (s.throttled > 0).then(|| {
        let lowered = if s.throttled_lowest_rate > 0 {
            format!(
                "; agents lowered their rate, down to {} at the lowest",
                snapfleet_repository::layers::fmt_rate(s.throttled_lowest_rate)
            )
        } else {
            String::new()
        };
        format!(
            "the object store throttled {} requests (retried){lowered}",
            s.throttled
        )
    })
}
