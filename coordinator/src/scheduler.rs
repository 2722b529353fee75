//! The leader-only scheduler: expires leases with the leader's clock (so their tasks are
//! reassigned) and, after a failover, logs which in-flight jobs the new leader picked up.
//! All decisions go through the log; this file must never change state directly, and does
//! nothing on a follower.

use crate::command::{Command, Response};
use crate::ids::LeaderTime;
use crate::raft_loop::RaftHandle;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub async fn run(raft: RaftHandle, interval: Duration, shutdown: CancellationToken) {
    let mut was_leader = false;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let leader = raft.require_leader().is_ok();
        if leader && !was_leader {
            // Make sure everything committed by earlier leaders is applied here first.
            if raft.read_index().await.is_err() {
                continue;
            }
            let (jobs, tasks) = raft.read(|sm| {
                let jobs: Vec<_> = sm.in_flight_jobs().map(|j| j.id).collect();
                let tasks: u64 = sm
                    .in_flight_jobs()
                    .map(|j| j.progress.tasks_pending + j.progress.tasks_running)
                    .sum();
                (jobs, tasks)
            });
            info!(
                term = raft.status().term,
                jobs = ?jobs,
                unfinished_tasks = tasks,
                "became leader: picking up in-flight jobs"
            );
        }
        was_leader = leader;
        if !leader {
            continue;
        }
        let now = LeaderTime::now();
        if let Some(schedule) = raft.read(|sm| sm.due_schedule(now)) {
            match raft
                .propose(Command::FireSchedule {
                    schedule: schedule.clone(),
                    now,
                })
                .await
            {
                Ok(Response::JobSubmitted(job)) => {
                    info!(schedule = %schedule, job = job.0, "schedule fired")
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, schedule = %schedule, "firing a schedule"),
            }
        }
        let due = raft.read(|sm| sm.earliest_lease_expiry().is_some_and(|t| t <= now));
        if !due {
            continue;
        }
        match raft.propose(Command::ExpireLeases { now }).await {
            Ok(Response::Expired(tasks)) if !tasks.is_empty() => {
                info!(?tasks, "leases expired; tasks are runnable again")
            }
            Ok(_) => {}
            Err(e) if e.is_retryable() => debug!(error = %e, "expire leases"),
            Err(e) => warn!(error = %e, "expire leases"),
        }
    }
}
