//! The commands stored (as JSON) in Raft log entries, and what applying each returns.
//! A command carries every input it needs, including the leader's time: this file must never
//! hold anything that would make two replicas apply the same command differently.

use crate::ids::{AgentId, JobId, LeaderTime, ScheduleId, TaskId};
use crate::model::{Affinity, Agent, Job, JobKind, Repository, Schedule, TaskProgress};
use serde::{Deserialize, Serialize};

/// A task as requested in `SubmitJob`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub payload: serde_json::Value,
    #[serde(default)]
    pub affinity: Affinity,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Does nothing; used as a barrier.
    Noop,
    RegisterAgent(Agent),
    PutRepository(Repository),
    PutSchedule(Schedule),
    DeleteSchedule(ScheduleId),
    SubmitJob {
        kind: JobKind,
        spec: serde_json::Value,
        repository: Option<crate::ids::RepoId>,
        tasks: Vec<TaskSpec>,
        /// Failures allowed per task before the job fails.
        retry_budget: u32,
        now: LeaderTime,
        /// Phases run by the leader's job driver (see `Job::driven`).
        #[serde(default)]
        driven: bool,
    },
    /// A driver moves its job to `phase`, records `data` and adds `tasks`.
    AdvanceJob {
        job: JobId,
        phase: String,
        data: serde_json::Value,
        tasks: Vec<TaskSpec>,
        retry_budget: u32,
        now: LeaderTime,
    },
    /// A driver finishes its job: succeeded with `result`, or failed with `failure`.
    FinishJob {
        job: JobId,
        failure: Option<String>,
        result: serde_json::Value,
        now: LeaderTime,
    },
    CancelJob {
        job: JobId,
        reason: String,
        now: LeaderTime,
    },
    AcquireTasks {
        agent: AgentId,
        node: String,
        now: LeaderTime,
        lease_ms: u64,
        max: u32,
    },
    RenewLease {
        agent: AgentId,
        task: TaskId,
        now: LeaderTime,
        lease_ms: u64,
    },
    /// Updates counters and renews the lease (progress is proof of life).
    ReportProgress {
        agent: AgentId,
        task: TaskId,
        progress: TaskProgress,
        now: LeaderTime,
        lease_ms: u64,
    },
    CompleteTask {
        agent: AgentId,
        task: TaskId,
        result: serde_json::Value,
        now: LeaderTime,
    },
    FailTask {
        agent: AgentId,
        task: TaskId,
        reason: String,
        /// false: the failure will not go away by retrying (the job fails now).
        retryable: bool,
        now: LeaderTime,
    },
    /// Submits the due schedule's job (driven; spec = template + `schedule_id` + `due_ms`,
    /// `retention`) and moves its `next_due` past `now`.
    FireSchedule {
        schedule: ScheduleId,
        now: LeaderTime,
    },
    /// Releases every lease held by `agent` (its process restarted: the old one is dead).
    ReleaseLeases {
        agent: AgentId,
        now: LeaderTime,
    },
    /// Releases every lease that expired at `now` so the task can be leased again.
    ExpireLeases {
        now: LeaderTime,
    },
}

impl Command {
    /// Short name for logs and spans.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Noop => "noop",
            Command::RegisterAgent(_) => "register_agent",
            Command::PutRepository(_) => "put_repository",
            Command::PutSchedule(_) => "put_schedule",
            Command::DeleteSchedule(_) => "delete_schedule",
            Command::SubmitJob { .. } => "submit_job",
            Command::AdvanceJob { .. } => "advance_job",
            Command::FinishJob { .. } => "finish_job",
            Command::CancelJob { .. } => "cancel_job",
            Command::AcquireTasks { .. } => "acquire_tasks",
            Command::RenewLease { .. } => "renew_lease",
            Command::ReportProgress { .. } => "report_progress",
            Command::CompleteTask { .. } => "complete_task",
            Command::FailTask { .. } => "fail_task",
            Command::ExpireLeases { .. } => "expire_leases",
            Command::ReleaseLeases { .. } => "release_leases",
            Command::FireSchedule { .. } => "fire_schedule",
        }
    }
}

/// A lease handed to an agent by `AcquireTasks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub task: TaskId,
    pub job: JobId,
    pub job_kind: JobKind,
    pub payload: serde_json::Value,
    pub lease_seq: u64,
    pub granted_at: LeaderTime,
    pub expires_at: LeaderTime,
    pub attempt: u32,
}

/// The successful outcome of applying a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Ok,
    JobSubmitted(JobId),
    Job(Box<Job>),
    Granted(Vec<Grant>),
    LeaseRenewed { expires_at: LeaderTime },
    Expired(Vec<TaskId>),
}

/// Why the state machine refused a command. Deterministic: every replica refuses alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("{0} does not exist: list jobs with `snapfleet job list`")]
    JobNotFound(JobId),
    #[error("{0} does not exist (it may belong to a job that was removed)")]
    TaskNotFound(TaskId),
    #[error("{0} is already {1}: nothing to do")]
    JobFinished(JobId, String),
    #[error("{task} is not leased to {agent} (holder: {holder}): stop working on it and acquire new tasks")]
    LeaseNotHeld {
        task: TaskId,
        agent: AgentId,
        holder: String,
    },
    #[error("{0} is not registered: call Register before acquiring tasks")]
    AgentNotRegistered(AgentId),
    #[error("invalid request: {0}")]
    Invalid(String),
}
