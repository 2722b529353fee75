//! `snapfleet pitr restore`: brings a database back, in place, to any time inside the
//! history-retention window (metadata only: versions after the time are hidden for ever;
//! tables created after it are dropped). `--dry-run` shows what would change.
//! `snapfleet pitr schedule create|list|delete`: snapshot schedules kept in the coordinator;
//! the leader snapshots on time, keeps history for the window and expires old snapshots.

use crate::coord::CoordArg;
use crate::db::MasterArg;
use crate::schedule::{list_schedules, put_schedule, schedule_json};
use crate::util::{human_duration, parse_duration, parse_time};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use snapfleet_coordinator::pb::coordinator_client::CoordinatorClient;
use snapfleet_coordinator::pb::{self as cpb};
use snapfleet_jobs::spec::{pitr_label, PitrSpec};
use snapfleet_tabletdb::HybridTime;
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum PitrCmd {
    /// Restore a database in place to TIME (inside the history window).
    Restore(RestoreArgs),
    /// Snapshot schedules that keep a PITR window (run by the coordinator leader).
    #[command(subcommand)]
    Schedule(ScheduleCmd),
    /// Continuous change-log archiving into a repository (off-cluster PITR): then
    /// `snapfleet restore --db D --to TIME` rebuilds D as of TIME in any cluster.
    #[command(subcommand)]
    Archive(ArchiveCmd),
}

#[derive(Subcommand)]
pub enum ArchiveCmd {
    /// Start archiving D's change log into --repo (every agent ships its node's tablets).
    /// Restores need a base backup (`snapfleet backup create`) taken after this.
    Enable {
        #[command(flatten)]
        c: CoordArg,
        #[command(flatten)]
        m: MasterArg,
        #[command(flatten)]
        r: crate::repo::RepoArgs,
        #[arg(long)]
        db: String,
        /// The PITR window `repo forget` keeps restorable, e.g. `7d`.
        #[arg(long, default_value = "7d")]
        retention: String,
        /// How often agents ship new changes (the recovery point under load is about this).
        #[arg(long, default_value = "1s")]
        interval: String,
        /// zstd level for archived changes (0 = off).
        #[arg(long, default_value_t = 3)]
        compression: i32,
    },
    /// Stop archiving D (what is archived stays restorable).
    Disable {
        #[command(flatten)]
        c: CoordArg,
        #[arg(long)]
        db: String,
    },
    /// Running archives: global checkpoint (newest time restorable), lag, per-node state.
    Status {
        #[command(flatten)]
        c: CoordArg,
        /// Only this database.
        #[arg(long)]
        db: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum ScheduleCmd {
    /// Snapshot D every --interval and keep --retention of history: D can then be restored
    /// or cloned as of any time inside that window.
    Create {
        #[command(flatten)]
        c: CoordArg,
        #[command(flatten)]
        m: MasterArg,
        #[arg(long)]
        db: String,
        /// Time between snapshots, e.g. `1h`, `15m`.
        #[arg(long, default_value = "1h")]
        interval: String,
        /// The PITR window, e.g. `7d`: every node keeps this much MVCC history (plus one
        /// interval) and the schedule's snapshots live this long.
        #[arg(long, default_value = "7d")]
        retention: String,
        /// Schedule id (default: generated).
        #[arg(long)]
        id: Option<String>,
    },
    /// The PITR schedules.
    List {
        #[command(flatten)]
        c: CoordArg,
    },
    /// Stop a schedule: withdraws its history claim and deletes its snapshots.
    Delete {
        #[command(flatten)]
        c: CoordArg,
        id: String,
        /// Finish an interrupted delete whose schedule is already gone from the coordinator:
        /// release the claim and snapshots of schedule ID on this database (with --master).
        #[arg(long)]
        db: Option<String>,
        #[command(flatten)]
        m: MasterArg,
    },
}

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    m: MasterArg,
    #[arg(long)]
    db: String,
    /// RFC 3339, a hybrid time, or "5m ago".
    #[arg(long)]
    to: String,
    /// Show what would change (tables, row counts now and at TIME) and change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// The cluster behind `master`, through the database adapter (as the job drivers see it).
async fn database(master: &str) -> Result<std::sync::Arc<dyn snapfleet_adapter::Database>> {
    let adapter = snapfleet_adapter_tabletdb::TabletdbAdapter::new();
    snapfleet_adapter::Adapter::connect(&*adapter, master)
        .await
        .with_context(|| format!("connecting to the database cluster at {master}"))
}

pub async fn run(cmd: PitrCmd, json: bool) -> Result<()> {
    let a = match cmd {
        PitrCmd::Restore(a) => a,
        PitrCmd::Schedule(s) => return run_schedule(s, json).await,
        PitrCmd::Archive(a) => return run_archive(a, json).await,
    };
    // Through the database adapter, as the job drivers do: a dry run also counts each
    // table's rows now and at the time.
    let cluster = database(&a.m.master).await?;
    let now = cluster.now().await?;
    let to = parse_time(&a.to, HybridTime(now.0))?;
    let start = Instant::now();
    let what = || {
        format!(
            "restoring database {:?} to {} ({})",
            a.db,
            to,
            to.to_rfc3339()
        )
    };
    let r = cluster
        .restore_to_time(&a.db, snapfleet_adapter::HybridTime(to.0), a.dry_run)
        .await
        .with_context(what)?;
    let counts: Vec<(String, u64, u64)> = r
        .rows
        .iter()
        .map(|t| (t.table.clone(), t.now, t.at_time))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "database": a.db, "to": to.0, "to_rfc3339": to.to_rfc3339(), "dry_run": a.dry_run,
                "restored": r.restored, "removed": r.removed, "revived": r.revived,
                "row_counts": counts.iter().map(|(t, n, m)| serde_json::json!({"table": t, "now": n, "at_time": m})).collect::<Vec<_>>(),
            }))?
        );
        return Ok(());
    }
    let verb = if a.dry_run {
        "would restore"
    } else {
        "restored"
    };
    eprintln!(
        "{verb} database {:?} to {} ({})",
        a.db,
        to,
        HybridTime(to.0).to_rfc3339()
    );
    for (t, n, m) in &counts {
        eprintln!("  table {t}: {n} rows now → {m} rows at that time");
    }
    if !a.dry_run {
        for t in r.restored.iter().filter(|t| !r.revived.contains(t)) {
            eprintln!("  table {t}: back to that time");
        }
    }
    for t in &r.revived {
        eprintln!(
            "  table {t}: dropped after that time, {}",
            if a.dry_run { "would come back" } else { "back" }
        );
    }
    for t in &r.removed {
        eprintln!(
            "  table {t}: created after that time, {}",
            if a.dry_run {
                "would be dropped"
            } else {
                "dropped"
            }
        );
    }
    if !a.dry_run {
        eprintln!("done in {}", human_duration(start.elapsed()));
    }
    Ok(())
}

async fn list_pitr_schedules(c: &CoordArg) -> Result<Vec<cpb::ScheduleInfo>> {
    Ok(list_schedules(c)
        .await?
        .into_iter()
        .filter(|s| s.kind == "pitr")
        .collect())
}

async fn run_schedule(cmd: ScheduleCmd, json: bool) -> Result<()> {
    match cmd {
        ScheduleCmd::Create {
            c,
            m,
            db,
            interval,
            retention,
            id,
        } => {
            let every = parse_duration(&interval)?;
            let window = parse_duration(&retention)?;
            if every < Duration::from_secs(1) {
                bail!("--interval {interval} is too short: at least 1s");
            }
            if window < every {
                bail!("--retention {retention} is shorter than --interval {interval}: the window must hold at least one snapshot");
            }
            // Fail now, not at the first firing, if the database does not exist.
            database(&m.master)
                .await?
                .describe(&db)
                .await
                .with_context(|| format!("scheduling PITR snapshots on {}", m.master))?;
            let spec = PitrSpec {
                master: m.master.clone(),
                database: db.clone(),
                interval_ms: every.as_millis() as u64,
                window_ms: window.as_millis() as u64,
                schedule_id: String::new(),
                due_ms: 0,
            };
            let req = cpb::ScheduleInfo {
                id: id.unwrap_or_default(),
                kind: "pitr".into(),
                spec_json: serde_json::to_string(&spec)?,
                interval_ms: spec.interval_ms,
                retention: 0,
                next_due_ms: 0,
            };
            let s = put_schedule(&c, req).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&schedule_json(&s))?);
            } else {
                println!("{}", s.id);
                eprintln!(
                    "PITR schedule {}: database {db:?} snapshotted every {interval}; from now on it can be restored or cloned to any time in the last {retention} (the window fills up over {retention})",
                    s.id
                );
            }
            Ok(())
        }
        ScheduleCmd::List { c } => {
            let list = list_pitr_schedules(&c).await?;
            if json {
                let v: Vec<_> = list.iter().map(schedule_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            for s in &list {
                let spec: Option<PitrSpec> = serde_json::from_str(&s.spec_json).ok();
                let (db, window) = spec
                    .map(|p| {
                        (
                            p.database,
                            humantime::format_duration(Duration::from_millis(p.window_ms))
                                .to_string(),
                        )
                    })
                    .unwrap_or_default();
                println!(
                    "{}  db {db}  every {}  window {window}  next {}",
                    s.id,
                    humantime::format_duration(Duration::from_millis(s.interval_ms)),
                    HybridTime::from_micros(s.next_due_ms * 1000).to_rfc3339()
                );
            }
            Ok(())
        }
        ScheduleCmd::Delete { c, id, db, m } => {
            let found = list_pitr_schedules(&c)
                .await?
                .into_iter()
                .find(|s| s.id == id);
            let leader = c.leader()?;
            let (spec, found) = match (found, db) {
                (Some(s), _) => (
                    serde_json::from_str::<PitrSpec>(&s.spec_json).context("schedule spec")?,
                    true,
                ),
                (None, Some(db)) => (
                    PitrSpec {
                        master: m.master.clone(),
                        database: db,
                        interval_ms: 0,
                        window_ms: 0,
                        schedule_id: id.clone(),
                        due_ms: 0,
                    },
                    false,
                ),
                (None, None) => bail!(
                    "no PITR schedule {id:?} (see `snapfleet pitr schedule list`); to release \
                     what an interrupted delete left, add --db DB [--master ADDR]"
                ),
            };
            let rid = id.clone();
            if found {
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
                    .map_err(|s| anyhow::anyhow!("deleting schedule {id}: {}", s.message()))?;
            }
            // A firing under way could claim history and add a snapshot after we clean up:
            // wait for it to finish first.
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let active = leader
                    .call(|ch| async move {
                        CoordinatorClient::new(ch)
                            .list_jobs(cpb::ListJobsRequest {
                                include_finished: false,
                                ..Default::default()
                            })
                            .await
                    })
                    .await
                    .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                    .into_inner()
                    .jobs
                    .into_iter()
                    .filter(|j| j.kind == "pitr")
                    .any(|j| {
                        serde_json::from_str::<PitrSpec>(&j.spec_json)
                            .is_ok_and(|p| p.schedule_id == id)
                    });
                if !active {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "a snapshot of schedule {id} is still running after 2 minutes; the \
                         schedule is gone: once `snapfleet job list` shows it finished, run \
                         `snapfleet pitr schedule delete {id} --db {} --master {}`",
                        spec.database,
                        spec.master
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // Its history claim and snapshots go with it.
            let retry = format!(
                "; the schedule is gone: retry with `snapfleet pitr schedule delete {id} --db {} \
                 --master {}`",
                spec.database, spec.master
            );
            let cluster = database(&spec.master)
                .await
                .with_context(|| retry.clone())?;
            let label = pitr_label(&id);
            cluster
                .set_history_floor(&label, Duration::ZERO)
                .await
                .map_err(|e| anyhow::anyhow!("withdrawing the history claim: {e}{retry}"))?;
            let snaps = cluster
                .list_snapshots(&spec.database)
                .await
                .map_err(|e| anyhow::anyhow!("{e}{retry}"))?;
            let mut deleted = 0;
            for sn in snaps.into_iter().filter(|sn| sn.label == label) {
                cluster
                    .delete_snapshot(&sn.id)
                    .await
                    .map_err(|e| anyhow::anyhow!("deleting snapshot {}: {e}{retry}", sn.id))?;
                deleted += 1;
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": id, "snapshots_deleted": deleted})
                );
            } else {
                eprintln!("PITR schedule {id} deleted with its {deleted} snapshot(s)");
            }
            Ok(())
        }
    }
}

async fn running_archives(c: &CoordArg) -> Result<Vec<cpb::ArchiveStatus>> {
    archives_of(&c.leader()?).await
}

/// The running change-log archives as the coordinator reports them.
pub async fn archives_of(
    leader: &snapfleet_coordinator::client::Leader,
) -> Result<Vec<cpb::ArchiveStatus>> {
    Ok(leader
        .call(|ch| async move {
            CoordinatorClient::new(ch)
                .cluster_status(cpb::Empty {})
                .await
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .archives)
}

/// Polls job `id` every 100 ms until `done` holds (an error from `done` ends it at once),
/// for at most 2 minutes.
async fn poll_job(
    leader: &snapfleet_coordinator::client::Leader,
    id: u64,
    done: impl Fn(&cpb::JobInfo) -> Result<bool>,
) -> Result<cpb::JobInfo> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let j =
            leader
                .call(move |ch| async move {
                    CoordinatorClient::new(ch).get_job(cpb::JobRef { id }).await
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
        if done(&j)? {
            return Ok(j);
        }
        if Instant::now() > deadline {
            bail!(
                "job {id} still {} in phase {:?} after 2 minutes",
                j.state,
                j.phase
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Seconds between now (this machine's clock) and a hybrid time.
fn lag_secs(ht: u64) -> f64 {
    let now = HybridTime::wall_now().physical_micros() as i128;
    (now - HybridTime(ht).physical_micros() as i128) as f64 / 1e6
}

pub fn archive_json(a: &cpb::ArchiveStatus) -> serde_json::Value {
    serde_json::json!({
        "job_id": a.job_id,
        "database": a.database,
        "repository": a.repository,
        "checkpoint_ht": a.checkpoint_ht,
        "checkpoint": (a.checkpoint_ht > 0).then(|| HybridTime(a.checkpoint_ht).to_rfc3339()),
        "lag_secs": (a.checkpoint_ht > 0).then(|| lag_secs(a.checkpoint_ht)),
        "nodes": a.nodes.iter().map(|n| serde_json::json!({
            "node": n.node,
            "checkpoint_ht": n.checkpoint_ht,
            "lag_secs": (n.checkpoint_ht > 0).then(|| lag_secs(n.checkpoint_ht)),
            "agent": (!n.agent.is_empty()).then(|| n.agent.clone()),
            "last_error": (!n.last_error.is_empty()).then(|| n.last_error.clone()),
        })).collect::<Vec<_>>(),
    })
}

pub fn print_archive(a: &cpb::ArchiveStatus) {
    let cp = if a.checkpoint_ht == 0 {
        "none yet (a node has not reported)".to_string()
    } else {
        format!(
            "{} ({} behind)",
            HybridTime(a.checkpoint_ht).to_rfc3339(),
            human_duration(Duration::from_secs_f64(lag_secs(a.checkpoint_ht).max(0.0)))
        )
    };
    println!(
        "  archive of {} into {} (job {}): global checkpoint {cp}",
        a.database, a.repository, a.job_id
    );
    for n in &a.nodes {
        let state = if n.agent.is_empty() {
            "NO AGENT: holding the checkpoint back".to_string()
        } else {
            format!("agent {}", n.agent)
        };
        let lag = if n.checkpoint_ht == 0 {
            "not reported".to_string()
        } else {
            format!(
                "{} behind",
                human_duration(Duration::from_secs_f64(lag_secs(n.checkpoint_ht).max(0.0)))
            )
        };
        let err = if n.last_error.is_empty() {
            String::new()
        } else {
            format!("; last error: {}", n.last_error)
        };
        println!("    node {}: {lag}, {state}{err}", n.node);
    }
}

async fn run_archive(cmd: ArchiveCmd, json: bool) -> Result<()> {
    match cmd {
        ArchiveCmd::Enable {
            c,
            m,
            r,
            db,
            retention,
            interval,
            compression,
        } => {
            if running_archives(&c).await?.iter().any(|a| a.database == db) {
                bail!(
                    "database {db:?} is already being archived (see `snapfleet pitr archive \
                     status`); disable it first to change its settings"
                );
            }
            let retention = parse_duration(&retention)?;
            let interval = parse_duration(&interval)?;
            if interval < Duration::from_millis(100) {
                bail!("--interval must be at least 100ms");
            }
            let spec = snapfleet_jobs::archive::ArchiveSpec {
                master: m.master.clone(),
                database: db.clone(),
                repo: r.url()?.to_string(),
                retention_secs: retention.as_secs(),
                interval_ms: interval.as_millis() as u64,
                compression,
            };
            let leader = c.leader()?;
            let job =
                crate::coord::submit(&leader, "archive", serde_json::to_value(&spec)?).await?;
            // Wait until the archive is recorded and its tasks exist: a base backup taken
            // after this command returns is usable for restores to a time.
            let id = job.id;
            let job = poll_job(&leader, id, |j| {
                if j.state == "failed" || j.state == "cancelled" {
                    bail!("archive job {id} {}: {}", j.state, j.failure);
                }
                Ok(j.phase == "archive")
            })
            .await
            .context("waiting for the archive to start (see `snapfleet job list` and the coordinator's log)")?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"job_id": job.id, "database": db})
                    )?
                );
            } else {
                println!(
                    "archiving {db:?} into {} (job {}); `snapfleet pitr archive status` shows the \
                     checkpoint. Take a base backup now: restores to a time need one taken after \
                     archiving began.",
                    spec.repo, job.id
                );
            }
            Ok(())
        }
        ArchiveCmd::Disable { c, db } => {
            let Some(a) = running_archives(&c)
                .await?
                .into_iter()
                .find(|a| a.database == db)
            else {
                bail!(
                    "database {db:?} is not being archived (see `snapfleet pitr archive status`)"
                );
            };
            let leader = c.leader()?;
            let id = a.job_id;
            leader
                .call(move |ch| async move {
                    CoordinatorClient::new(ch)
                        .cancel_job(cpb::CancelJobRequest {
                            id,
                            reason: "archive disabled by the operator".into(),
                        })
                        .await
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            // Wait for the agents to stop (the job ends once its driver has seen the cancel).
            poll_job(&leader, id, |j| {
                Ok(snapfleet_coordinator::client::job_state_is_terminal(
                    &j.state,
                ))
            })
            .await
            .context("waiting for the archive to stop (see `snapfleet job list`)")?;
            if json {
                println!("{}", serde_json::json!({"job_id": id, "disabled": true}));
            } else {
                println!(
                    "archiving of {db:?} stopped (job {id}); what was archived stays restorable"
                );
            }
            Ok(())
        }
        ArchiveCmd::Status { c, db } => {
            let list: Vec<_> = running_archives(&c)
                .await?
                .into_iter()
                .filter(|a| db.as_ref().is_none_or(|d| &a.database == d))
                .collect();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &list.iter().map(archive_json).collect::<Vec<_>>()
                    )?
                );
            } else if list.is_empty() {
                println!("no archive running");
            } else {
                for a in &list {
                    print_archive(a);
                }
            }
            Ok(())
        }
    }
}
