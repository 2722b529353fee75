//! `snapfleet backup create|list|describe|schedule`: backups are coordinator jobs; the
//! command submits one and, with `--wait`, follows it until ROOT is committed.

use crate::coord::*;
use crate::repo::{open_repo, RepoArgs};
use crate::schedule::*;
use crate::util::{human_bytes, human_duration, parse_rate};
use anyhow::Result;
use clap::{Args, Subcommand};
use snapfleet_coordinator::pb::coordinator_client::CoordinatorClient;
use snapfleet_coordinator::pb::{self as cpb};
use snapfleet_jobs::spec::BackupSpec;
use snapfleet_repository::BackupId;
use std::time::Duration;

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
            let adapter = snapfleet_adapter_tabletdb::TabletdbAdapter::new();
            for id in ids {
                let root = repo.read_root(&id).await?;
                let meta = snapfleet_jobs::root::root_meta(&*adapter, id.as_str(), &root).ok();
                let row = serde_json::json!({
                    "id": id.to_string(),
                    "created": root.created.to_rfc3339(),
                    "database": meta.as_ref().map(|m| m.snapshot.database_name.clone()),
                    "hybrid_time": meta.as_ref().map(|m| m.snapshot.hybrid_time.0),
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
            let adapter = snapfleet_adapter_tabletdb::TabletdbAdapter::new();
            if let Ok(m) = snapfleet_jobs::root::root_meta(&*adapter, &id, &root) {
                println!(
                    "  database {:?} at hybrid time {} (source master {})",
                    m.snapshot.database_name, m.snapshot.hybrid_time.0, m.meta.source_master
                );
                for t in &m.snapshot.tables {
                    println!("  table {} ({} tablets)", t.name, t.tablets.len());
                }
            }
            Ok(())
        }
    }
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

pub(crate) async fn run_schedule(cmd: ScheduleCmd, json: bool) -> Result<()> {
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
