//! The fleet commands: `snapfleet agent` (run the agent of one database node),
//! `snapfleet backup create|list|describe`, `snapfleet restore`, and
//! `snapfleet job list|watch|cancel`. Backups and restores are coordinator jobs: the command
//! submits one and, with `--wait`, follows it (progress per node from WatchJob) until it ends.

use crate::repo::{open_repo, RepoArgs};
use crate::util::{human_bytes, human_duration, parse_rate};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use snapfleet_agent::{run_agent, AgentConfig, Passphrase};
use snapfleet_coordinator::client::Leader;
use snapfleet_coordinator::pb::coordinator_client::CoordinatorClient;
use snapfleet_coordinator::pb::{self as cpb};
use snapfleet_coordinator::tls::Tls;
use snapfleet_coordinator::CancellationToken;
use snapfleet_jobs::spec::{BackupSpec, RestoreSpec, RootMeta};
use snapfleet_repository::BackupId;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Clone)]
pub struct CoordArg {
    /// Coordinator replicas (any; the leader is found): HOST:PORT[,HOST:PORT…].
    #[arg(long, env = "SNAPFLEET_COORDINATOR", default_value = "127.0.0.1:7000")]
    pub coordinator: String,
    /// Certificate directory for mutual TLS (`snapfleet certs init|issue`); absent = plaintext.
    #[arg(long, env = "SNAPFLEET_CERTS")]
    pub certs: Option<PathBuf>,
}

impl CoordArg {
    /// The TLS identity of `--certs`, loaded and checked (None without it).
    pub fn tls(&self) -> Result<Option<Arc<Tls>>> {
        self.certs
            .as_deref()
            .map(Tls::load)
            .transpose()
            .context("--certs")
    }

    /// A leader-following client for `--coordinator`, over TLS with `--certs`.
    pub fn leader(&self) -> Result<Leader> {
        Ok(Leader::new([self.coordinator.as_str()]).with_tls(self.tls()?))
    }
}

#[derive(Args)]
pub struct AgentArgs {
    #[command(flatten)]
    c: CoordArg,
    /// The tabletdb node this agent serves (its gRPC address).
    #[arg(long)]
    db_node: String,
    /// The agent's state directory.
    #[arg(long)]
    data: PathBuf,
    /// Agent id (default: agent-<node id>).
    #[arg(long)]
    id: Option<String>,
    /// Tasks (tablets) processed at once.
    #[arg(long, default_value_t = 2)]
    max_tasks: usize,
    /// Chunks in flight per task (memory ≈ tasks × streams × chunk size).
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// File holding the repository passphrase (also: $SNAPFLEET_PASSWORD_FILE, $SNAPFLEET_PASSWORD).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Drills and tests only: the object store answers `503 SlowDown` beyond this rate
    /// (e.g. `2MiB/s`), to exercise the agent's adaptive rate.
    #[arg(long, hide = true)]
    drill_store_capacity: Option<String>,
    /// Drills and tests only: share of object-store requests that fail transiently (0–1).
    #[arg(long, hide = true)]
    drill_store_faults: Option<f64>,
}

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Back up a database: distributed snapshot, parallel upload by every node's agent,
    /// ROOT written last.
    Create(CreateArgs),
    /// Committed backups in the repository.
    List {
        #[command(flatten)]
        r: RepoArgs,
    },
    /// Recurring backups run by the coordinator, with retention.
    #[command(subcommand)]
    Schedule(ScheduleCmd),
    /// Delete one backup (ROOT first, so it disappears at once; chunks go at `repo gc`).
    Delete {
        #[command(flatten)]
        r: RepoArgs,
        id: String,
    },
    /// One backup: database, hybrid time, tables, tablets, sizes.
    Describe {
        #[command(flatten)]
        r: RepoArgs,
        id: String,
    },
}

#[derive(Subcommand)]
pub enum ScheduleCmd {
    /// Back up a database every interval; keep the newest N backups of this schedule.
    Create {
        #[command(flatten)]
        c: CoordArg,
        #[command(flatten)]
        o: BackupOpts,
        /// Interval: 90s, 15m, 1h, 1d. The first backup starts at once.
        #[arg(long)]
        every: String,
        /// Backups of this schedule to keep in the repository (0 = all); older ones are
        /// forgotten after each successful backup (their chunks go at the next `repo gc`).
        #[arg(long, default_value_t = 0)]
        keep: u32,
        /// Schedule id (default: generated).
        #[arg(long)]
        id: Option<String>,
    },
    /// Schedules with their next due time.
    List {
        #[command(flatten)]
        c: CoordArg,
    },
    /// Stop a schedule (its backups stay).
    Delete {
        #[command(flatten)]
        c: CoordArg,
        id: String,
    },
}

/// What to back up and how: shared by `backup create` and `backup schedule create`.
#[derive(Args)]
pub struct BackupOpts {
    #[command(flatten)]
    r: RepoArgs,
    /// tabletdb master of the cluster to back up.
    #[arg(long, env = "SNAPFLEET_DB_MASTER", default_value = "127.0.0.1:7100")]
    master: String,
    /// The database to back up.
    #[arg(long)]
    db: String,
    /// Cluster-wide bandwidth budget, e.g. 200MiB/s (split among the agents with work left).
    #[arg(long, default_value = "0")]
    rate_limit: String,
    /// Snapshot retries when a schema change races it.
    #[arg(long, default_value_t = 5)]
    ddl_retries: u32,
    /// zstd level (0 = off).
    #[arg(long, default_value_t = 3)]
    compression: i32,
}

impl BackupOpts {
    /// The job spec; `backup_id` empty for a schedule's template.
    fn spec(&self, backup_id: String, keep_snapshot: bool) -> Result<BackupSpec> {
        Ok(BackupSpec {
            master: self.master.clone(),
            database: self.db.clone(),
            repo: self.r.url()?.to_string(),
            backup_id,
            ddl_retries: self.ddl_retries,
            keep_snapshot,
            rate_limit: parse_rate(&self.rate_limit)?,
            compression: self.compression,
            schedule_id: None,
            due_ms: None,
            retention: 0,
        })
    }
}

#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    c: CoordArg,
    #[command(flatten)]
    o: BackupOpts,
    /// Backup id (default: generated, time-ordered).
    #[arg(long)]
    id: Option<String>,
    /// Keep the tablet snapshots on the nodes afterwards (for fast local restore).
    #[arg(long)]
    keep_snapshot: bool,
    /// Follow the job until it ends (progress per node); exit 1 if it fails.
    #[arg(long)]
    wait: bool,
}

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    c: CoordArg,
    #[command(flatten)]
    r: RepoArgs,
    /// The backup to restore (with --to: the base backup to use, default the newest at or
    /// before TIME).
    #[arg(long, required_unless_present = "to")]
    backup: Option<String>,
    /// Restore to this time from a base backup plus the archived change log (off-cluster
    /// PITR, see `snapfleet pitr archive`): RFC 3339, a hybrid time, or "5m ago". Needs --db.
    #[arg(long, requires = "db")]
    to: Option<String>,
    /// tabletdb master of the target cluster (any node count).
    #[arg(long, env = "SNAPFLEET_DB_MASTER", default_value = "127.0.0.1:7100")]
    master: String,
    /// With --backup: restore under this database name (default: the backup's). With
    /// --to: the database to restore (its name in the backups).
    #[arg(long)]
    db: Option<String>,
    /// With --to: restore under this name instead.
    #[arg(long = "as", requires = "to")]
    as_name: Option<String>,
    /// Only these tables.
    #[arg(long, value_delimiter = ',')]
    tables: Vec<String>,
    #[arg(long, default_value = "0")]
    rate_limit: String,
    #[arg(long)]
    wait: bool,
}

#[derive(Subcommand)]
pub enum JobCmd {
    /// Jobs, newest first.
    List {
        #[command(flatten)]
        c: CoordArg,
        /// Include finished jobs.
        #[arg(long)]
        all: bool,
    },
    /// Follow a job until it ends.
    Watch {
        #[command(flatten)]
        c: CoordArg,
        id: u64,
    },
    /// Cancel a job (a restore before activation leaves the target as it was).
    Cancel {
        #[command(flatten)]
        c: CoordArg,
        id: u64,
        #[arg(long, default_value = "cancelled by the operator")]
        reason: String,
    },
}

pub async fn run_agent_cmd(a: AgentArgs) -> Result<()> {
    let token = CancellationToken::new();
    crate::coordinator::cancel_on_signal(token.clone());
    let tls = a.c.tls()?;
    let capacity = a
        .drill_store_capacity
        .as_deref()
        .map(crate::util::parse_rate)
        .transpose()
        .context("--drill-store-capacity")?;
    let store_faults = (capacity.is_some() || a.drill_store_faults.is_some()).then(|| {
        snapfleet_repository::layers::FaultConfig {
            failure_rate: a.drill_store_faults.unwrap_or(0.0),
            capacity: capacity.unwrap_or(0),
        }
    });
    run_agent(
        AgentConfig {
            coordinator: vec![a.c.coordinator],
            tls,
            db_node: a.db_node,
            data: a.data,
            id: a.id,
            max_tasks: a.max_tasks,
            streams: a.streams,
            passphrase: Passphrase {
                file: a.password_file,
            },
            store_faults,
        },
        token,
    )
    .await
    .context("agent stopped")
}

pub async fn submit(leader: &Leader, kind: &str, spec: serde_json::Value) -> Result<cpb::JobInfo> {
    let req = cpb::SubmitJobRequest {
        kind: kind.into(),
        spec_json: spec.to_string(),
        driven: true,
        ..Default::default()
    };
    let info = leader
        .call(move |ch| {
            let req = req.clone();
            async move { CoordinatorClient::new(ch).submit_job(req).await }
        })
        .await
        .map_err(|s| anyhow::anyhow!("submitting the {kind} job: {}", s.message()))?
        .into_inner();
    Ok(info)
}

pub async fn run_backup(cmd: BackupCmd, json: bool) -> Result<()> {
    match cmd {
        BackupCmd::Create(a) => {
            let id =
                a.id.clone()
                    .unwrap_or_else(|| BackupId::generate().to_string());
            BackupId::new(id.clone()).map_err(|e| anyhow::anyhow!("--id: {e}"))?;
            let spec = a.o.spec(id.clone(), a.keep_snapshot)?;
            let leader = a.c.leader()?;
            let job = submit(&leader, "backup", serde_json::to_value(spec)?).await?;
            eprintln!("backup {id}: job {} submitted", job.id);
            finish_command(&leader, job, a.wait, json).await
        }
        BackupCmd::Schedule(c) => run_schedule(c, json).await,
        BackupCmd::Delete { r, id } => {
            let repo = open_repo(&r).await?;
            let bid = BackupId::new(id.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
            // Refuse unknown ids instead of silently deleting nothing.
            repo.read_root(&bid).await?;
            snapfleet_repository::remove_backup(&repo, &bid).await?;
            if json {
                println!("{}", serde_json::json!({ "deleted": id }));
            } else {
                eprintln!("backup {id} deleted; run `snapfleet repo gc` to free its chunks");
            }
            Ok(())
        }
        BackupCmd::List { r } => {
            let repo = open_repo(&r).await?;
            let ids = repo.list_backups().await?;
            let mut out = Vec::new();
            for id in ids {
                let root = repo.read_root(&id).await?;
                let meta: Option<RootMeta> = serde_json::from_value(root.meta.clone()).ok();
                let row = serde_json::json!({
                    "id": id.to_string(),
                    "created": root.created.to_rfc3339(),
                    "database": meta.as_ref().map(|m| m.snapshot.database_name.clone()),
                    "hybrid_time": meta.as_ref().map(|m| m.snapshot.hybrid_time),
                    "tables": meta.as_ref().map(|m| m.snapshot.tables.len()),
                    "stats": root.stats,
                });
                if json {
                    out.push(row);
                } else {
                    println!(
                        "{}  {}  db {}  {} tables  {} in {} files",
                        id,
                        root.created.format("%Y-%m-%d %H:%M:%S"),
                        meta.as_ref()
                            .map(|m| m.snapshot.database_name.as_str())
                            .unwrap_or("-"),
                        meta.as_ref().map(|m| m.snapshot.tables.len()).unwrap_or(0),
                        human_bytes(root.stats.bytes),
                        root.stats.files
                    );
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
            Ok(())
        }
        BackupCmd::Describe { r, id } => {
            let repo = open_repo(&r).await?;
            let root = repo
                .read_root(&BackupId::new(id.clone()).map_err(|e| anyhow::anyhow!("{e}"))?)
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&root)?);
                return Ok(());
            }
            println!("backup {id}, committed {}", root.created.to_rfc3339());
            println!(
                "  {} in {} files; {} new chunks, {} reused; {} uploaded",
                human_bytes(root.stats.bytes),
                root.stats.files,
                root.stats.chunks_new,
                root.stats.chunks_reused,
                human_bytes(root.stats.bytes_uploaded)
            );
            if let Ok(m) = serde_json::from_value::<RootMeta>(root.meta.clone()) {
                println!(
                    "  database {:?} at hybrid time {} (source master {})",
                    m.snapshot.database_name, m.snapshot.hybrid_time, m.source_master
                );
                for t in &m.snapshot.tables {
                    println!("  table {} ({} tablets)", t.name, t.tablets.len());
                }
            }
            Ok(())
        }
    }
}

pub async fn run_restore(a: RestoreArgs, json: bool) -> Result<()> {
    let (to_ht, source_database, database) = match &a.to {
        Some(t) => {
            // "5m ago" counts from this machine's clock.
            let to = crate::util::parse_time(t, snapfleet_tabletdb::HybridTime::wall_now())?;
            let db = a.db.clone().unwrap_or_default();
            (to.0, db.clone(), a.as_name.clone().unwrap_or(db))
        }
        None => (0, String::new(), a.db.clone().unwrap_or_default()),
    };
    let spec = RestoreSpec {
        repo: a.r.url()?.to_string(),
        backup_id: a.backup.clone().unwrap_or_default(),
        master: a.master.clone(),
        database,
        tables: a.tables.clone(),
        rate_limit: parse_rate(&a.rate_limit)?,
        to_ht,
        source_database,
    };
    let leader = a.c.leader()?;
    let job = submit(&leader, "restore", serde_json::to_value(spec)?).await?;
    match (&a.backup, &a.to) {
        (_, Some(t)) => eprintln!(
            "restore of {:?} to {t} ({}): job {} submitted",
            a.db.as_deref().unwrap_or_default(),
            snapfleet_tabletdb::HybridTime(to_ht).to_rfc3339(),
            job.id
        ),
        (Some(b), None) => eprintln!("restore of backup {b}: job {} submitted", job.id),
        (None, None) => unreachable!("clap requires --backup or --to"),
    }
    finish_command(&leader, job, a.wait, json).await
}

async fn finish_command(leader: &Leader, job: cpb::JobInfo, wait: bool, json: bool) -> Result<()> {
    let job = if wait {
        watch(leader, job.id, json).await?
    } else {
        job
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&job_json(&job))?);
    } else if !wait {
        println!("{}", job.id);
    } else if let Some(note) = serde_json::from_str::<serde_json::Value>(&job.result_json)
        .ok()
        .and_then(|r| r["throttle_note"].as_str().map(str::to_string))
    {
        eprintln!("note: {note}");
    }
    if wait && job.state != "succeeded" {
        bail!("job {} {}: {}", job.id, job.state, job.failure);
    }
    Ok(())
}

fn job_json(j: &cpb::JobInfo) -> serde_json::Value {
    let p = j.progress.unwrap_or_default();
    serde_json::json!({
        "id": j.id,
        "kind": j.kind,
        "state": j.state,
        "phase": j.phase,
        "failure": (!j.failure.is_empty()).then(|| j.failure.clone()),
        "result": serde_json::from_str::<serde_json::Value>(&j.result_json).ok(),
        "spec": serde_json::from_str::<serde_json::Value>(&j.spec_json).ok(),
        "tasks_total": p.tasks_total,
        "tasks_succeeded": p.tasks_succeeded,
        "bytes_done": p.bytes_done,
        "bytes_total": p.bytes_total,
        "created_at_ms": j.created_at_ms,
        "finished_at_ms": j.finished_at_ms,
        "nodes": j.nodes.iter().map(|n| serde_json::json!({
            "node": n.node, "bytes_done": n.bytes_done, "bytes_total": n.bytes_total,
            "tasks_done": n.tasks_done, "tasks_total": n.tasks_total,
        })).collect::<Vec<_>>(),
    })
}

fn is_terminal(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
}

/// Follows job `id` (re-attaching after a coordinator failover) until it ends; draws one
/// progress bar per node on a terminal.
pub async fn watch(leader: &Leader, id: u64, quiet_human: bool) -> Result<cpb::JobInfo> {
    let mp = MultiProgress::new();
    if quiet_human {
        mp.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(
        "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta}) {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let head = mp.add(ProgressBar::new_spinner());
    head.enable_steady_tick(Duration::from_millis(200));
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let started = std::time::Instant::now();
    let mut last: Option<cpb::JobInfo> = None;
    loop {
        let stream = leader
            .call(move |ch| async move {
                CoordinatorClient::new(ch)
                    .watch_job(cpb::JobRef { id })
                    .await
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => bail!("{}", s.message()),
            Err(s) => bail!("watching job {id}: {}", s.message()),
        };
        while let Ok(Some(j)) = stream.message().await {
            let p = j.progress.unwrap_or_default();
            head.set_message(format!(
                "job {} {} {}: {}/{} tasks, {} / {}",
                j.id,
                j.kind,
                if j.phase.is_empty() {
                    "starting"
                } else {
                    &j.phase
                },
                p.tasks_succeeded,
                p.tasks_total,
                human_bytes(p.bytes_done),
                human_bytes(p.bytes_total)
            ));
            for n in &j.nodes {
                let b = bars.entry(n.node.clone()).or_insert_with(|| {
                    let b = mp.add(ProgressBar::new(n.bytes_total));
                    b.set_style(style.clone());
                    b.set_prefix(format!("node {}", n.node));
                    b
                });
                b.set_length(n.bytes_total.max(1));
                b.set_position(n.bytes_done);
                b.set_message(format!("{}/{} tablets", n.tasks_done, n.tasks_total));
            }
            let done = is_terminal(&j.state);
            last = Some(j);
            if done {
                break;
            }
        }
        if let Some(j) = &last {
            if is_terminal(&j.state) {
                break;
            }
        }
        // The stream ended without a final state (leader change): attach again.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for b in bars.values() {
        b.finish();
    }
    head.finish_and_clear();
    let j = last.expect("loop ends with a job");
    if !quiet_human {
        eprintln!(
            "job {} {} {} in {}{}",
            j.id,
            j.kind,
            j.state,
            human_duration(started.elapsed()),
            if j.failure.is_empty() {
                String::new()
            } else {
                format!(": {}", j.failure)
            }
        );
    }
    Ok(j)
}

pub async fn run_job(cmd: JobCmd, json: bool) -> Result<()> {
    match cmd {
        JobCmd::List { c, all } => {
            let leader = c.leader()?;
            let jobs = leader
                .call(move |ch| async move {
                    CoordinatorClient::new(ch)
                        .list_jobs(cpb::ListJobsRequest {
                            include_finished: all,
                            limit: 0,
                        })
                        .await
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner()
                .jobs;
            if json {
                let v: Vec<_> = jobs.iter().map(job_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            for j in &jobs {
                let p = j.progress.unwrap_or_default();
                println!(
                    "{:>5}  {:<8} {:<10} {:<9} {}/{} tasks  {} / {}{}",
                    j.id,
                    j.kind,
                    j.state,
                    j.phase,
                    p.tasks_succeeded,
                    p.tasks_total,
                    human_bytes(p.bytes_done),
                    human_bytes(p.bytes_total),
                    if j.failure.is_empty() {
                        String::new()
                    } else {
                        format!("  {}", j.failure)
                    }
                );
            }
            Ok(())
        }
        JobCmd::Watch { c, id } => {
            let leader = c.leader()?;
            let j = watch(&leader, id, json).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job_json(&j))?);
            }
            if j.state != "succeeded" {
                bail!("job {} {}: {}", j.id, j.state, j.failure);
            }
            Ok(())
        }
        JobCmd::Cancel { c, id, reason } => {
            let leader = c.leader()?;
            let j = leader
                .call(move |ch| {
                    let reason = reason.clone();
                    async move {
                        CoordinatorClient::new(ch)
                            .cancel_job(cpb::CancelJobRequest { id, reason })
                            .await
                    }
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            if json {
                println!("{}", serde_json::to_string_pretty(&job_json(&j))?);
            } else {
                eprintln!("job {id}: cancel requested ({})", j.state);
            }
            Ok(())
        }
    }
}

/// Creates or replaces a schedule in the coordinator (backup, pitr…).
pub async fn put_schedule(c: &CoordArg, req: cpb::ScheduleInfo) -> Result<cpb::ScheduleInfo> {
    let kind = req.kind.clone();
    Ok(c.leader()?
        .call(move |ch| {
            let req = req.clone();
            async move { CoordinatorClient::new(ch).put_schedule(req).await }
        })
        .await
        .map_err(|s| anyhow::anyhow!("creating the {kind} schedule: {}", s.message()))?
        .into_inner())
}

/// Every schedule the coordinator holds.
pub async fn list_schedules(c: &CoordArg) -> Result<Vec<cpb::ScheduleInfo>> {
    Ok(c.leader()?
        .call(|ch| async move {
            CoordinatorClient::new(ch)
                .list_schedules(cpb::Empty {})
                .await
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .schedules)
}

pub fn schedule_json(s: &cpb::ScheduleInfo) -> serde_json::Value {
    serde_json::json!({
        "id": s.id,
        "kind": s.kind,
        "interval_ms": s.interval_ms,
        "retention": s.retention,
        "next_due_ms": s.next_due_ms,
        "spec": serde_json::from_str::<serde_json::Value>(&s.spec_json).ok(),
    })
}

async fn run_schedule(cmd: ScheduleCmd, json: bool) -> Result<()> {
    match cmd {
        ScheduleCmd::Create {
            c,
            o,
            every,
            keep,
            id,
        } => {
            let interval = crate::util::parse_duration(&every)?;
            let spec = o.spec(String::new(), false)?;
            let req = cpb::ScheduleInfo {
                id: id.unwrap_or_default(),
                kind: "backup".into(),
                spec_json: serde_json::to_string(&spec)?,
                interval_ms: interval.as_millis() as u64,
                retention: keep,
                next_due_ms: 0,
            };
            let s = put_schedule(&c, req).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&schedule_json(&s))?);
            } else {
                println!("{}", s.id);
                eprintln!(
                    "schedule {}: backup every {}, keeping {}",
                    s.id,
                    every,
                    if keep == 0 {
                        "all".to_string()
                    } else {
                        keep.to_string()
                    }
                );
            }
            Ok(())
        }
        ScheduleCmd::List { c } => {
            let list = list_schedules(&c).await?;
            if json {
                let v: Vec<_> = list.iter().map(schedule_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for s in &list {
                    let spec: Option<BackupSpec> = serde_json::from_str(&s.spec_json).ok();
                    println!(
                        "{}  {} of {} every {}, keep {}, next {}",
                        s.id,
                        s.kind,
                        spec.map(|b| b.database).unwrap_or_default(),
                        human_duration(Duration::from_millis(s.interval_ms)),
                        s.retention,
                        chrono::DateTime::from_timestamp_millis(s.next_due_ms as i64)
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
        ScheduleCmd::Delete { c, id } => {
            let leader = c.leader()?;
            let rid = id.clone();
            leader
                .call(move |ch| {
                    let id = rid.clone();
                    async move {
                        CoordinatorClient::new(ch)
                            .delete_schedule(cpb::ScheduleRef { id })
                            .await
                    }
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            if json {
                println!("{}", serde_json::json!({ "deleted": id }));
            } else {
                eprintln!("schedule {id} deleted (its backups stay)");
            }
            Ok(())
        }
    }
}
