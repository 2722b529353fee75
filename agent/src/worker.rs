//! The agent process: registers with the coordinator as the agent of one database node,
//! heartbeats, long-polls for tasks and runs each one (upload a tablet snapshot, or download
//! a tablet into staging) while reporting progress, which also renews its lease. A lease it
//! loses (expired, job cancelled) stops the task's work at once. The agent never holds a
//! per-file list in memory beyond the file being sent, and its memory is bounded by
//! streams × chunk size whatever the tablet count. Files an upload finished are journaled
//! (`journal.rs`), so a task re-leased after a crash records them without reading them.

use crate::counters::Counters;
use crate::error::{AgentError, Result};
use crate::journal::{Journal, TaskFingerprint};
use snapfleet_adapter::{Adapter, AdapterError, NodeStore, TabletSnapshotRef};
use snapfleet_api::client::Leader;
use snapfleet_api::pb::agent_service_client::AgentServiceClient;
use snapfleet_api::pb::{self as cpb};
use snapfleet_api::tasks::{DownloadResult, DownloadTask, ThrottleStats, UploadResult, UploadTask};
use snapfleet_repository::layers::FaultConfig;
use snapfleet_repository::{
    restore_root, BackupId, BackupWriter, FileMeta, RestoreOptions, WriterOptions,
};
use snapfleet_repository::{Passphrase, Repos};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

/// A lease lasts this long without news from the agent.
pub const LEASE_MS: u64 = 15_000;
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct AgentConfig {
    /// Coordinator replicas (any of them; the agent follows the leader).
    pub coordinator: Vec<String>,
    /// The database node this agent serves (its address, as the adapter takes it).
    pub db_node: String,
    /// The database behind the node: the only way the agent reaches it.
    pub adapter: Arc<dyn Adapter>,
    /// The agent's own state directory.
    pub data: PathBuf,
    /// Agent id; default `agent-<node id>`.
    pub id: Option<String>,
    /// Tasks run at once.
    pub max_tasks: usize,
    /// Chunks in flight per task.
    pub streams: usize,
    pub passphrase: Passphrase,
    /// Mutual TLS towards the coordinator (`--certs DIR`: an agent identity).
    pub tls: Option<Arc<snapfleet_api::tls::Tls>>,
    /// Drills and tests only: object-store faults to inject (see `layers::faults`).
    pub store_faults: Option<FaultConfig>,
}

struct Ctx {
    id: String,
    adapter: Arc<dyn Adapter>,
    node: Arc<dyn NodeStore>,
    leader: Leader,
    repos: Repos,
    streams: usize,
    journal: Journal,
}

/// Runs the agent until `shutdown`.
pub async fn run_agent(cfg: AgentConfig, shutdown: CancellationToken) -> Result<()> {
    std::fs::create_dir_all(&cfg.data).map_err(|source| AgentError::Io {
        what: format!("agent data directory {}", cfg.data.display()),
        source,
    })?;
    let node = open_node(&*cfg.adapter, &cfg.db_node, &shutdown).await?;
    let id = cfg
        .id
        .clone()
        .unwrap_or_else(|| format!("agent-{}", node.node()));
    let ctx = Arc::new(Ctx {
        id: id.clone(),
        adapter: cfg.adapter.clone(),
        node: node.clone(),
        leader: Leader::new(&cfg.coordinator).with_tls(cfg.tls.clone()),
        repos: Repos::new(cfg.passphrase.clone()).with_faults(cfg.store_faults),
        streams: cfg.streams.max(1),
        journal: Journal::open(&cfg.data.join("journal")),
    });
    let span = tracing::info_span!("agent", id = %id, node = %node.node());
    async move {
        register(&ctx, &cfg, true, &shutdown).await?;
        info!(staging = %ctx.node.staging_root().display(), "agent registered");
        let hb = tokio::spawn(heartbeat(ctx.clone(), shutdown.clone()).in_current_span());
        let janitor = {
            let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
            tokio::spawn(
                async move {
                    let staging = ctx.node.staging_root();
                    crate::janitor::run(&ctx.leader, &staging, shutdown).await
                }
                .in_current_span(),
            )
        };
        let slots = Arc::new(Semaphore::new(cfg.max_tasks.max(1)));
        let mut running = tokio::task::JoinSet::new();
        while !shutdown.is_cancelled() {
            while running.try_join_next().is_some() {}
            let free = slots.available_permits() as u32;
            if free == 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = running.join_next() => continue,
                }
            }
            let req = cpb::AcquireTasksRequest {
                agent_id: ctx.id.clone(),
                max: free,
                lease_ms: LEASE_MS,
                wait_ms: 5_000,
            };
            let got = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = ctx.leader.call(move |ch| {
                    let req = req.clone();
                    async move { AgentServiceClient::new(ch).acquire_tasks(req).await }
                }) => r,
            };
            let tasks = match got {
                Ok(r) => r.into_inner().tasks,
                Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                    // e.g. the coordinator lost our registration (new cluster): register again.
                    warn!(status = %s.message(), "acquire refused; registering again");
                    register(&ctx, &cfg, false, &shutdown).await?;
                    continue;
                }
                Err(s) => {
                    warn!(status = %s.message(), "acquire failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            for lease in tasks {
                // Archive tasks never end: they must not hold one of the slots that
                // backups and restores need.
                let permit = if lease.job_kind == "archive" {
                    None
                } else {
                    Some(slots.clone().acquire_owned().await.expect("open"))
                };
                let ctx = ctx.clone();
                let stop = shutdown.child_token();
                let span = tracing::info_span!("task", task = lease.task_id, job = lease.job_id, kind = %lease.job_kind);
                running.spawn(
                    async move {
                        run_task(&ctx, lease, stop).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
        }
        running.shutdown().await;
        hb.abort();
        janitor.abort();
        info!("agent stopped");
        Ok(())
    }
    .instrument(span)
    .await
}

/// Opens the node through the adapter, waiting up to a minute for it to come up.
async fn open_node(
    adapter: &dyn Adapter,
    addr: &str,
    shutdown: &CancellationToken,
) -> Result<Arc<dyn NodeStore>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match adapter.open_node(addr).await {
            Ok(n) => return Ok(n),
            Err(e) if tokio::time::Instant::now() < deadline && !shutdown.is_cancelled() => {
                warn!(error = %e, "database node not reachable yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn register(
    ctx: &Ctx,
    cfg: &AgentConfig,
    restarted: bool,
    shutdown: &CancellationToken,
) -> Result<()> {
    let req = cpb::RegisterRequest {
        restarted,
        agent_id: ctx.id.clone(),
        node: ctx.node.node().to_string(),
        address: cfg.db_node.clone(),
        labels: Default::default(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    loop {
        let r = ctx
            .leader
            .call({
                let req = req.clone();
                move |ch| {
                    let req = req.clone();
                    async move { AgentServiceClient::new(ch).register(req).await }
                }
            })
            .await;
        match r {
            Ok(_) => return Ok(()),
            Err(s) if shutdown.is_cancelled() => {
                return Err(AgentError::Coordinator(s.message().to_string()))
            }
            Err(s) => {
                warn!(status = %s.message(), "cannot register with the coordinator yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn heartbeat(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let req = cpb::HeartbeatRequest {
            agent_id: ctx.id.clone(),
        };
        if let Err(s) = ctx
            .leader
            .call(move |ch| {
                let req = req.clone();
                async move { AgentServiceClient::new(ch).heartbeat(req).await }
            })
            .await
        {
            warn!(status = %s.message(), "heartbeat failed");
        }
    }
}

async fn run_task(ctx: &Arc<Ctx>, lease: cpb::TaskLease, stop: CancellationToken) {
    let counters = Arc::new(Counters::default());
    let archive = lease.job_kind == "archive";
    let reporter = {
        let ctx = ctx.clone();
        let counters = counters.clone();
        let stop = stop.clone();
        let task = lease.task_id;
        tokio::spawn(
            async move {
                let mut tick = tokio::time::interval(PROGRESS_EVERY);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let req = cpb::ReportProgressRequest {
                        agent_id: ctx.id.clone(),
                        task_id: task,
                        bytes_done: counters.bytes_done.load(Ordering::Relaxed),
                        bytes_total: counters.bytes_total.load(Ordering::Relaxed),
                        items_done: counters.items_done.load(Ordering::Relaxed),
                        items_total: counters.items_total.load(Ordering::Relaxed),
                        lease_ms: LEASE_MS,
                        checkpoint_ht: counters.checkpoint.load(Ordering::Relaxed),
                    };
                    match ctx
                        .leader
                        .call(move |ch| {
                            let req = req.clone();
                            async move { AgentServiceClient::new(ch).report_progress(req).await }
                        })
                        .await
                    {
                        // Archive jobs have no budget of their own: never let them lift
                        // a running backup's.
                        Ok(r) if !archive => ctx.repos.set_rate(r.into_inner().rate_limit),
                        Ok(_) => {}
                        Err(s)
                            if matches!(
                                s.code(),
                                tonic::Code::FailedPrecondition | tonic::Code::NotFound
                            ) =>
                        {
                            warn!(status = %s.message(), "lease lost: stopping the task");
                            stop.cancel();
                            return;
                        }
                        Err(s) => warn!(status = %s.message(), "progress report failed"),
                    }
                }
            }
            .in_current_span(),
        )
    };
    let work = do_work(ctx.clone(), &lease, counters.clone(), stop.clone());
    let result: Result<serde_json::Value> = tokio::select! {
        r = work => r,
        _ = stop.cancelled() => Err(AgentError::Cancelled("lease lost or agent stopping".into())),
    };
    stop.cancel();
    let _ = reporter.await;
    match result {
        Ok(v) => {
            let req = cpb::CompleteTaskRequest {
                agent_id: ctx.id.clone(),
                task_id: lease.task_id,
                result_json: v.to_string(),
            };
            match ctx
                .leader
                .call(move |ch| {
                    let req = req.clone();
                    async move { AgentServiceClient::new(ch).complete_task(req).await }
                })
                .await
            {
                Ok(_) => {
                    ctx.journal.remove(lease.job_id, lease.task_id);
                    info!("task done")
                }
                Err(s) => warn!(status = %s.message(), "could not report completion"),
            }
        }
        Err(AgentError::Cancelled(why)) => info!(%why, "task stopped"),
        Err(e) => {
            warn!(error = %e, "task failed");
            if !e.is_retryable() {
                ctx.journal.remove(lease.job_id, lease.task_id);
            }
            let req = cpb::FailTaskRequest {
                agent_id: ctx.id.clone(),
                task_id: lease.task_id,
                reason: e.to_string(),
                // Archiving must outlive any outage: its task is retried (with backoff, the
                // error shown in `pitr archive status`), never given up.
                permanent: !archive && !e.is_retryable(),
            };
            if let Err(s) = ctx
                .leader
                .call(move |ch| {
                    let req = req.clone();
                    async move { AgentServiceClient::new(ch).fail_task(req).await }
                })
                .await
            {
                warn!(status = %s.message(), "could not report the failure");
            }
        }
    }
}

/// Runs one task. `stop` fires when the lease is lost or the agent stops: the repository
/// stops its remote operations at once, uploads on their own tasks included.
async fn do_work(
    ctx: Arc<Ctx>,
    lease: &cpb::TaskLease,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> Result<serde_json::Value> {
    let payload = &lease.payload_json;
    match lease.job_kind.as_str() {
        "backup" => {
            let t: UploadTask = parse(payload)?;
            let r = upload(&ctx, &t, &counters, lease, stop).await?;
            Ok(serde_json::to_value(r).expect("serialisable"))
        }
        "restore" => {
            let t: DownloadTask = parse(payload)?;
            let r = download(&ctx, &t, &counters, stop).await?;
            Ok(serde_json::to_value(r).expect("serialisable"))
        }
        "archive" => {
            let t: snapfleet_api::tasks::ArchiveTask = parse(payload)?;
            let repo = ctx.repos.get(&t.repo).await?;
            crate::archive::run_archive(repo, &*ctx.adapter, &*ctx.node, &t, &counters).await?;
            Ok(serde_json::json!({}))
        }
        other => Err(AgentError::invalid(
            "task",
            format!("this agent does not run {other} tasks; upgrade it"),
        )),
    }
}

fn parse<T: serde::de::DeserializeOwned>(json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| AgentError::invalid("task payload", e))
}

/// Throttling since the last report, as a task result carries it.
fn throttle_stats(ctx: &Ctx) -> ThrottleStats {
    let r = ctx.repos.adaptive().take_report();
    ThrottleStats {
        throttled: r.throttled,
        throttled_lowest_rate: r.lowest_rate,
    }
}

/// Uploads one tablet snapshot as the manifest part named after the tablet. Files the
/// task's journal holds (finished by an earlier attempt) are recorded without reading them.
async fn upload(
    ctx: &Ctx,
    t: &UploadTask,
    c: &Counters,
    lease: &cpb::TaskLease,
    stop: CancellationToken,
) -> Result<UploadResult> {
    let snapshot = TabletSnapshotRef {
        snapshot: t.snapshot_id.clone(),
        database: t.database_id.clone(),
        table: t.table_id.clone(),
        tablet: t.tablet_id.clone(),
    };
    // The snapshot's files, sorted by name; a snapshot that is gone is final for this task.
    let files: Vec<(String, PathBuf, u64, FileMeta)> =
        match ctx.node.snapshot_files(&snapshot).await {
            Ok(f) => f
                .into_iter()
                .map(|f| {
                    let size = f.metadata.len();
                    let meta = FileMeta::from_metadata(&f.metadata);
                    (f.name, f.path, size, meta)
                })
                .collect(),
            Err(e @ AdapterError::NotFound { .. }) => {
                return Err(AgentError::invalid(format!("tablet {}", t.tablet_id), e))
            }
            Err(e) => return Err(e.into()),
        };
    c.items_total.store(files.len() as u64, Ordering::Relaxed);
    c.bytes_total
        .store(files.iter().map(|f| f.2).sum(), Ordering::Relaxed);
    ctx.repos.set_rate(t.rate_limit);
    let repo = ctx.repos.get(&t.repo).await?;
    let w = BackupWriter::with_options(
        repo,
        BackupId::new(t.backup_id.clone())?,
        WriterOptions {
            compression_level: t.compression,
            concurrency: ctx.streams,
            part: Some(t.tablet_id.to_string()),
            cancel: stop,
            ..Default::default()
        },
    )
    .await?;
    let journal = Arc::new(ctx.journal.upload(
        lease.job_id,
        lease.task_id,
        &TaskFingerprint {
            repo: t.repo.clone(),
            backup_id: t.backup_id.clone(),
            snapshot_id: t.snapshot_id.to_string(),
            tablet_id: t.tablet_id.to_string(),
        },
    ));
    w.set_observer(journal.clone());
    info!(files = files.len(), attempt = lease.attempt, tablet = %t.tablet_id, "uploading tablet snapshot");
    // Progress counts files whose every chunk is stored: what a retry would not send again.
    let progress = w.progress();
    let (mut journal_files, mut journal_bytes) = (0u64, 0u64);
    // Files below this wait in a pack of small files before the writer records them.
    let small_file = WriterOptions::default().small_file_threshold;
    for (name, path, size, meta) in &files {
        let rel = format!("{}/{}", t.tablet_id, name);
        let reused = match journal.lookup(&rel, *size, *meta) {
            Some(chunks) => w.put_reused(&rel, *size, *meta, chunks).await?,
            None => false,
        };
        if reused {
            journal_files += 1;
            journal_bytes += size;
        } else {
            w.put_path(&rel, path).await?;
            if *size >= small_file {
                journal.flush().await; // recorded (small files wait in a pack): keep it
            }
        }
        c.items_done.fetch_add(1, Ordering::Relaxed);
        c.bytes_done.fetch_add(*size, Ordering::Relaxed);
    }
    let part = w.finish().await?;
    if journal_files > 0 {
        info!(
            journal_files,
            journal_bytes, "resumed: files finished by an earlier attempt were not read again"
        );
    }
    Ok(UploadResult {
        files: files.len() as u64,
        bytes: files.iter().map(|f| f.2).sum(),
        bytes_read: progress.bytes_read.load(Ordering::Relaxed),
        bytes_uploaded: progress.bytes_uploaded.load(Ordering::Relaxed),
        journal_files,
        journal_bytes,
        throttle: throttle_stats(ctx),
        part: serde_json::to_value(part).expect("a part summary is JSON"),
    })
}

/// Downloads one source tablet's files (every chunk verified) into this node's staging dir.
async fn download(
    ctx: &Ctx,
    t: &DownloadTask,
    c: &Counters,
    stop: CancellationToken,
) -> Result<DownloadResult> {
    ctx.repos.set_rate(t.rate_limit);
    let repo = ctx.repos.get(&t.repo).await?;
    let root = repo
        .read_root_shared(&BackupId::new(t.backup_id.clone())?)
        .await?;
    if t.pages.end > root.pages.len() || t.pages.start > t.pages.end {
        return Err(AgentError::invalid(
            format!(
                "pages of tablet {} in backup {}",
                t.source_tablet, t.backup_id
            ),
            "outside the backup's page list (ROOT and task disagree)",
        ));
    }
    // This tablet's share of the ROOT: its pages (not a copy of every tablet's, nor of
    // the catalog in `meta`).
    let pages = root.pages[t.pages.start..t.pages.end].to_vec();
    let sub = snapfleet_repository::manifest::Root {
        format_version: root.format_version,
        backup_id: root.backup_id.clone(),
        created: root.created,
        meta: serde_json::Value::Null,
        page_count: pages.len() as u64,
        pages,
        stats: root.stats.clone(),
    };
    c.bytes_total.store(t.pages.bytes, Ordering::Relaxed);
    // The manifest names files `<source tablet>/<file>`: they are restored under the
    // restore's directory, so the tablet lands in the node store's staging directory.
    let tablet_dir = ctx.node.staging_dir(&t.restore_id, &t.source_tablet);
    let target = match tablet_dir.parent() {
        Some(p)
            if tablet_dir.file_name() == Some(std::ffi::OsStr::new(t.source_tablet.as_str())) =>
        {
            p.to_path_buf()
        }
        _ => {
            return Err(AgentError::invalid(
                format!("staging directory {}", tablet_dir.display()),
                "the database adapter must stage a tablet in a directory named after it",
            ))
        }
    };
    // A previous attempt killed half-way (agent crash) left the files it had finished in
    // place (each is renamed there only once whole and verified): they are kept if their
    // content still hashes to the manifest's chunk ids, instead of being downloaded again.
    // If this task fails or is stopped (lease lost, job cancelled), its files go.
    // Except for a restore to a time: a failed attempt may have replayed into the staged
    // RocksDB files (new files, compactions), so it starts clean.
    if t.replay.is_some() {
        let _ = std::fs::remove_dir_all(&tablet_dir);
    }
    let mut guard = RemoveOnDrop(Some(tablet_dir.clone()));
    let restore = restore_root(
        &repo,
        &sub,
        &target,
        RestoreOptions {
            concurrency: ctx.streams,
            keep_verified: t.replay.is_none(),
            // Staged files must be durable before the leader activates them.
            sync: true,
            cancel: stop,
        },
    );
    tokio::pin!(restore);
    let stats = loop {
        tokio::select! {
            r = &mut restore => break r,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if let Ok((files, bytes)) = dir_size(&tablet_dir) {
                    c.bytes_done.store(bytes, Ordering::Relaxed);
                    c.items_done.store(files, Ordering::Relaxed);
                }
            }
        }
    };
    let stats = stats?;
    let replayed = match &t.replay {
        Some(r) => {
            crate::archive::replay_staged(&repo, &*ctx.node, &tablet_dir, &t.source_tablet, r)
                .await?
        }
        None => 0,
    };
    guard.0 = None;
    c.bytes_done.store(stats.bytes, Ordering::Relaxed);
    if stats.files_kept > 0 {
        info!(
            files = stats.files_kept,
            bytes = stats.bytes_kept,
            "resumed: files an earlier attempt had staged were verified and kept"
        );
    }
    Ok(DownloadResult {
        files: stats.files,
        bytes: stats.bytes,
        replayed,
        resumed_files: stats.files_kept,
        resumed_bytes: stats.bytes_kept,
        throttle: throttle_stats(ctx),
    })
}

/// Files and bytes under `dir` (download progress; a plain walk).
fn dir_size(dir: &Path) -> std::io::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let m = e.metadata()?;
            if m.is_dir() {
                todo.push(e.path());
            } else {
                files += 1;
                bytes += m.len();
            }
        }
    }
    Ok((files, bytes))
}

/// Removes a directory when dropped (a download that failed or was stopped half-way).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(&p);
            // The restore's staging directory too, once no tablet of it is left here.
            if let Some(parent) = p.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}
