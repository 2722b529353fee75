//! Job drivers: the leader-side code that runs a job's phases around its tasks (take the
//! database snapshot, then tasks, then write the backup's ROOT; or create hidden tables, then
//! download tasks, then activate). The coordinator knows nothing of databases or
//! repositories: whoever starts a replica plugs drivers in (`Config::drivers`).
//!
//! Contract for a driver:
//! - it runs only on the leader, one future per in-flight driven job; losing leadership
//!   drops the future, and the next leader starts the driver again for the same job;
//! - so every step must be idempotent, and every decision that must survive a failover is
//!   logged first with [`JobCtl::advance`] (phase + small JSON notes + new tasks);
//! - when the job's tasks failed for good or the job was cancelled, `Job::aborting` is set:
//!   the driver cleans up and calls [`JobCtl::finish`];
//! - a driver future that returns while its job is still in flight is started again after
//!   [`RESTART_DELAY`].

use crate::command::{Command, TaskSpec};
use crate::error::Result;
use crate::ids::{JobId, LeaderTime};
use crate::model::{Job, JobKind, JobProgress, JobState, Task};
use crate::raft_loop::RaftHandle;
use crate::state_machine::Effect;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, Mutex};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

/// Wait before starting a driver again after its future returned with the job in flight.
pub const RESTART_DELAY: Duration = Duration::from_secs(2);

pub type DriveFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs the phases of the jobs of some kinds.
pub trait JobDriver: Send + Sync + 'static {
    fn handles(&self, kind: JobKind) -> bool;
    fn drive(&self, job: JobCtl) -> DriveFuture;
}

/// A job as [`JobCtl::summary`] sees it.
#[derive(Debug, Clone)]
pub struct JobSummary {
    pub state: JobState,
    pub phase: String,
    pub aborting: bool,
    pub progress: JobProgress,
}

/// A driver's handle on its job: read it, log its progress, wait for changes.
pub struct JobCtl {
    raft: RaftHandle,
    job: JobId,
    effects: Mutex<broadcast::Receiver<Effect>>,
}

impl JobCtl {
    pub fn new(raft: RaftHandle, job: JobId) -> Self {
        let effects = Mutex::new(raft.subscribe_effects());
        Self { raft, job, effects }
    }

    pub fn id(&self) -> JobId {
        self.job
    }

    /// The job and its tasks as applied on this replica.
    pub fn job(&self) -> Option<(Job, Vec<Task>)> {
        self.raft.read(|sm| {
            sm.job(self.job)
                .map(|j| (j.clone(), sm.tasks_of(self.job).cloned().collect()))
        })
    }

    /// The job's state, phase and counters, without copying its notes or its tasks: what a
    /// driver waiting for thousands of tasks checks on every change ([`job`](Self::job)
    /// copies everything, which made each task event cost O(tasks)).
    pub fn summary(&self) -> Option<JobSummary> {
        self.raft.read(|sm| {
            sm.job(self.job).map(|j| JobSummary {
                state: j.state,
                phase: j.phase.clone(),
                aborting: j.aborting.is_some(),
                progress: j.progress.clone(),
            })
        })
    }

    /// Logs the move to `phase` with `data`, adding `tasks`.
    pub async fn advance(
        &self,
        phase: &str,
        data: serde_json::Value,
        tasks: Vec<TaskSpec>,
        retry_budget: u32,
    ) -> Result<()> {
        self.raft
            .propose(Command::AdvanceJob {
                job: self.job,
                phase: phase.to_string(),
                data,
                tasks,
                retry_budget,
                now: LeaderTime::now(),
            })
            .await
            .map(|_| ())
    }

    /// Finishes the job: succeeded (`failure` None, unless it was aborting) or failed.
    pub async fn finish(&self, failure: Option<String>, result: serde_json::Value) -> Result<()> {
        self.raft
            .propose(Command::FinishJob {
                job: self.job,
                failure,
                result,
                now: LeaderTime::now(),
            })
            .await
            .map(|_| ())
    }

    /// Waits until the job changes, or `timeout` passes.
    pub async fn changed(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.effects.lock().await;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => return,
                Ok(Ok(Effect::JobChanged(j))) if j == self.job => return,
                Ok(Ok(_)) => continue,
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => return,
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    tokio::time::sleep_until(deadline).await;
                    return;
                }
            }
        }
    }
}

/// Leader-only loop: keeps one driver future running per in-flight driven job.
pub async fn run(
    raft: RaftHandle,
    drivers: Vec<Arc<dyn JobDriver>>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    if drivers.is_empty() {
        return;
    }
    let mut running: HashMap<JobId, (tokio::task::JoinHandle<()>, Instant)> = HashMap::new();
    let mut was_leader = false;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let leader = raft.require_leader().is_ok();
        if !leader {
            if was_leader {
                info!("lost leadership: stopping job drivers");
            }
            for (_, (h, _)) in running.drain() {
                h.abort();
            }
            was_leader = false;
            continue;
        }
        if !was_leader {
            // Everything committed by earlier leaders must be applied before we act on it.
            if raft.read_index().await.is_err() {
                continue;
            }
            was_leader = true;
        }
        let jobs: Vec<(JobId, JobKind)> = raft.read(|sm| {
            sm.in_flight_jobs()
                .filter(|j| j.driven)
                .map(|j| (j.id, j.kind))
                .collect()
        });
        running.retain(|id, (h, _)| {
            let keep = jobs.iter().any(|(j, _)| j == id) || !h.is_finished();
            if !keep {
                h.abort();
            }
            keep
        });
        for (id, kind) in jobs {
            if let Some((h, started)) = running.get(&id) {
                if !h.is_finished() || started.elapsed() < RESTART_DELAY {
                    continue;
                }
            }
            let Some(driver) = drivers.iter().find(|d| d.handles(kind)) else {
                warn!(
                    job = id.0,
                    kind = kind.as_str(),
                    "no driver for this job kind"
                );
                continue;
            };
            let span = tracing::info_span!("job_driver", job = id.0, kind = kind.as_str());
            let fut = driver.drive(JobCtl::new(raft.clone(), id));
            running.insert(id, (tokio::spawn(fut.instrument(span)), Instant::now()));
        }
    }
    for (_, (h, _)) in running.drain() {
        h.abort();
    }
}
