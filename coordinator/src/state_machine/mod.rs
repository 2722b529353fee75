//! The replicated state machine: applies a `Command` to the coordinator's state and returns
//! the response plus the effects (which jobs changed, whether work became runnable). Pure and
//! deterministic: it must never read a clock, do I/O, or know anything about Raft.
//!
//! This file holds the state, its queries and `apply`, which dispatches each command;
//! `jobs.rs` the job lifecycle (submit, schedules, advance, finish, cancel, progress), and
//! `leases.rs` the task leases agents hold (acquire, progress, complete, fail, release).

use crate::command::{Command, Grant, Rejection, Response, TaskSpec};
use crate::ids::{AgentId, JobId, LeaderTime, RepoId, ScheduleId, TaskId};
use crate::model::{
    Agent, Job, JobKind, JobProgress, JobState, Lease, Repository, Schedule, Task, TaskProgress,
    TaskState,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod jobs;
mod leases;
#[cfg(test)]
mod tests;

/// First retry waits this long; each further failure doubles it, up to `BACKOFF_MAX_MS`.
pub const BACKOFF_BASE_MS: u64 = 1_000;
pub const BACKOFF_MAX_MS: u64 = 60_000;

/// What an applied command changed, for watchers and long polls (not replicated state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    JobChanged(JobId),
    /// Some task became runnable (new job, released lease, retry).
    TasksRunnable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub result: Result<Response, Rejection>,
    pub effects: Vec<Effect>,
}

/// The whole coordinator state. Serialised as JSON for Raft snapshots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateMachine {
    agents: BTreeMap<AgentId, Agent>,
    repositories: BTreeMap<RepoId, Repository>,
    schedules: BTreeMap<ScheduleId, Schedule>,
    jobs: BTreeMap<JobId, Job>,
    tasks: BTreeMap<TaskId, Task>,
    next_job: u64,
    next_task: u64,
    next_lease_seq: u64,
    /// Number of commands applied (including refused ones); handy for tests and status.
    applied_commands: u64,
    /// Every coordinator replica's address after the latest membership change (empty until
    /// the first change: then the replicas' `--peers` are the membership). Set by the Raft
    /// loop when it applies a membership change; travels in snapshots.
    #[serde(default)]
    members: BTreeMap<u64, String>,
}

impl StateMachine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serialises the whole state (for a Raft snapshot).
    pub fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("the state machine always serialises")
    }

    /// Replaces the whole state with a snapshot taken by `snapshot`.
    pub fn restore(data: &[u8]) -> Result<Self, serde_json::Error> {
        if data.is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_slice(data)
    }

    pub fn agent(&self, id: &AgentId) -> Option<&Agent> {
        self.agents.get(id)
    }
    pub fn agents(&self) -> impl Iterator<Item = &Agent> {
        self.agents.values()
    }
    pub fn repositories(&self) -> impl Iterator<Item = &Repository> {
        self.repositories.values()
    }
    pub fn schedules(&self) -> impl Iterator<Item = &Schedule> {
        self.schedules.values()
    }
    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }
    pub fn jobs(&self) -> impl DoubleEndedIterator<Item = &Job> {
        self.jobs.values()
    }
    pub fn task(&self, id: TaskId) -> Option<&Task> {
        self.tasks.get(&id)
    }
    pub fn tasks_of(&self, job: JobId) -> impl Iterator<Item = &Task> {
        self.jobs
            .get(&job)
            .into_iter()
            .flat_map(|j| j.tasks.iter())
            .filter_map(|t| self.tasks.get(t))
    }
    pub fn applied_commands(&self) -> u64 {
        self.applied_commands
    }

    /// Replica id → address as of the latest membership change (empty if none yet).
    pub fn members(&self) -> &BTreeMap<u64, String> {
        &self.members
    }

    /// Records the membership a committed change produced.
    pub fn set_members(&mut self, members: BTreeMap<u64, String>) {
        self.members = members;
    }

    /// Jobs not yet finished (what a new leader must keep driving).
    pub fn in_flight_jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values().filter(|j| !j.state.is_terminal())
    }

    /// Whether `AcquireTasks` for this agent at `now` would grant anything (lets the long
    /// poll avoid proposing empty acquisitions).
    pub fn has_runnable_for(&self, agent: &AgentId, node: &str, now: LeaderTime) -> bool {
        self.runnable_for(agent, node, now).next().is_some()
    }

    /// The earliest lease expiry among leased tasks (the scheduler's next deadline).
    /// The bandwidth share of the node running `task`: its job's `spec.rate_limit`
    /// (bytes/s, 0 = unlimited) split evenly among the nodes with unfinished tasks.
    pub fn rate_share(&self, task: TaskId) -> u64 {
        let Some(job) = self.tasks.get(&task).and_then(|t| self.jobs.get(&t.job)) else {
            return 0;
        };
        let budget = job
            .spec
            .get("rate_limit")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        if budget == 0 {
            return 0;
        }
        let mut nodes: Vec<Option<&str>> = job
            .tasks
            .iter()
            .map(|t| &self.tasks[t])
            .filter(|t| !t.state.is_terminal())
            .map(|t| t.affinity.node.as_deref())
            .collect();
        nodes.sort();
        nodes.dedup();
        budget / nodes.len().max(1) as u64
    }

    pub fn earliest_lease_expiry(&self) -> Option<LeaderTime> {
        self.in_flight_tasks()
            .filter_map(|t| t.lease.as_ref().map(|l| l.expires_at))
            .min()
    }

    fn in_flight_tasks(&self) -> impl Iterator<Item = &Task> {
        self.in_flight_jobs()
            .flat_map(|j| j.tasks.iter())
            .filter_map(|t| self.tasks.get(t))
    }

    fn runnable_for<'a>(
        &'a self,
        agent: &'a AgentId,
        node: &'a str,
        now: LeaderTime,
    ) -> impl Iterator<Item = TaskId> + 'a {
        self.in_flight_tasks()
            .filter(move |t| {
                t.state == TaskState::Pending
                    && t.lease.is_none()
                    && t.backoff_until <= now
                    && t.affinity.matches(agent, node)
            })
            .map(|t| t.id)
    }

    /// Applies one command. The same command on the same state always gives the same result.
    pub fn apply(&mut self, cmd: Command) -> Applied {
        self.applied_commands += 1;
        let mut effects = Vec::new();
        let result = match cmd {
            Command::Noop => Ok(Response::Ok),
            Command::RegisterAgent(agent) => {
                self.agents.insert(agent.id.clone(), agent);
                effects.push(Effect::TasksRunnable);
                Ok(Response::Ok)
            }
            Command::PutRepository(repo) => {
                self.repositories.insert(repo.id.clone(), repo);
                Ok(Response::Ok)
            }
            Command::PutSchedule(s) => {
                self.schedules.insert(s.id.clone(), s);
                Ok(Response::Ok)
            }
            Command::DeleteSchedule(id) => {
                self.schedules.remove(&id);
                Ok(Response::Ok)
            }
            Command::SubmitJob {
                kind,
                spec,
                repository,
                tasks,
                retry_budget,
                now,
                driven,
            } => Ok(self.submit_job(
                kind,
                spec,
                repository,
                tasks,
                retry_budget,
                now,
                driven,
                &mut effects,
            )),
            Command::AdvanceJob {
                job,
                phase,
                data,
                tasks,
                retry_budget,
                now: _,
            } => self.advance_job(job, phase, data, tasks, retry_budget, &mut effects),
            Command::FinishJob {
                job,
                failure,
                result,
                now,
            } => self.finish_driven(job, failure, result, now, &mut effects),
            Command::CancelJob { job, reason, now } => {
                self.cancel_job(job, reason, now, &mut effects)
            }
            Command::AcquireTasks {
                agent,
                node,
                now,
                lease_ms,
                max,
            } => self.acquire(agent, node, now, lease_ms, max, &mut effects),
            Command::RenewLease {
                agent,
                task,
                now,
                lease_ms,
            } => self.held_mut(&agent, task).map(|t| {
                let lease = t.lease.as_mut().expect("held implies leased");
                lease.expires_at = now.plus_ms(lease_ms);
                Response::LeaseRenewed {
                    expires_at: lease.expires_at,
                }
            }),
            Command::ReportProgress {
                agent,
                task,
                progress,
                now,
                lease_ms,
            } => self.report_progress(agent, task, progress, now, lease_ms, &mut effects),
            Command::CompleteTask {
                agent,
                task,
                result,
                now,
            } => self.complete(agent, task, result, now, &mut effects),
            Command::FailTask {
                agent,
                task,
                reason,
                retryable,
                now,
            } => self.fail(agent, task, reason, retryable, now, &mut effects),
            Command::ExpireLeases { now } => Ok(self.release(now, None, &mut effects)),
            Command::FireSchedule { schedule, now } => {
                self.fire_schedule(schedule, now, &mut effects)
            }
            Command::ReleaseLeases { agent, now } => {
                Ok(self.release(now, Some(&agent), &mut effects))
            }
        };
        Applied { result, effects }
    }
}
