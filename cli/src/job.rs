//! `snapfleet job list|watch|cancel`: the coordinator's jobs of every kind.

use crate::coord::*;
use crate::util::human_bytes;
use anyhow::{bail, Result};
use clap::Subcommand;
use snapfleet_coordinator::pb::coordinator_client::CoordinatorClient;
use snapfleet_coordinator::pb::{self as cpb};

#[derive(Subcommand)]
pub enum JobCmd {
    /// Jobs, newest first.
    List {
        #[command(flatten)]
        c: CoordArg,
        /// Include finished jobs.
        #[arg(long)]
        all: bool,
        /// Jobs to show, newest first (the coordinator sends at most 1,000 per page).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only jobs older than this id: the next page (printed when there is one).
        #[arg(long, default_value_t = 0)]
        before: u64,
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

pub async fn run_job(cmd: JobCmd, json: bool) -> Result<()> {
    match cmd {
        JobCmd::List {
            c,
            all,
            limit,
            before,
        } => {
            let leader = c.leader()?;
            let page = leader
                .call(move |ch| async move {
                    CoordinatorClient::new(ch)
                        .list_jobs(cpb::ListJobsRequest {
                            include_finished: all,
                            limit: limit.max(1),
                            before_id: before,
                        })
                        .await
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            let jobs = page.jobs;
            if page.next_before_id != 0 {
                eprintln!(
                    "older jobs: snapfleet job list{} --before {}",
                    if all { " --all" } else { "" },
                    page.next_before_id
                );
            }
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
