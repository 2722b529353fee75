//! The replicated records: agents, repositories, jobs, tasks and schedules. Small state only:
//! a task carries a small JSON payload and counters, never a per-file list (those live in the
//! repository). Plain data: this file must never read a clock or do I/O.

use crate::ids::{AgentId, JobId, LeaderTime, RepoId, ScheduleId, TaskId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An agent as registered (through the log). Heartbeats are not here: they live in leader memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub id: AgentId,
    /// The database node this agent runs beside.
    pub node: String,
    pub address: String,
    pub labels: BTreeMap<String, String>,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repository {
    pub id: RepoId,
    pub url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Backup,
    Restore,
    Clone,
    Pitr,
    Verify,
    Gc,
    Copy,
    /// Continuous change-log archiving (off-cluster PITR): one never-ending task per node.
    Archive,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Restore => "restore",
            JobKind::Clone => "clone",
            JobKind::Pitr => "pitr",
            JobKind::Verify => "verify",
            JobKind::Gc => "gc",
            JobKind::Copy => "copy",
            JobKind::Archive => "archive",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "backup" => JobKind::Backup,
            "restore" => JobKind::Restore,
            "clone" => JobKind::Clone,
            "pitr" => JobKind::Pitr,
            "verify" => JobKind::Verify,
            "gc" => JobKind::Gc,
            "copy" => JobKind::Copy,
            "archive" => JobKind::Archive,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// Counters summed over a job's tasks (kept up to date on every task transition).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    pub tasks_total: u64,
    pub tasks_pending: u64,
    pub tasks_running: u64,
    pub tasks_succeeded: u64,
    pub tasks_failed: u64,
    pub tasks_cancelled: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub kind: JobKind,
    pub state: JobState,
    /// Kind-specific small description (database, target time, ...).
    pub spec: serde_json::Value,
    pub repository: Option<RepoId>,
    pub tasks: Vec<TaskId>,
    pub progress: JobProgress,
    /// Set when the job failed or was cancelled: what happened and what to do about it.
    pub failure: Option<String>,
    pub created_at: LeaderTime,
    pub finished_at: Option<LeaderTime>,
    /// Driven jobs have phases run by the leader's job driver (snapshot, commit, activate…):
    /// they are finished only by `FinishJob`, never by their last task.
    #[serde(default)]
    pub driven: bool,
    /// The driver's current phase ("" = not started).
    #[serde(default)]
    pub phase: String,
    /// The driver's durable notes (snapshot id, tables created, …): small JSON.
    #[serde(default)]
    pub data: serde_json::Value,
    /// A driven job that must stop (a task failed for good, or it was cancelled): the
    /// outcome it will get once the driver has cleaned up.
    #[serde(default)]
    pub aborting: Option<Abort>,
    /// What the job produced (backup id, sizes, …), set by `FinishJob`.
    #[serde(default)]
    pub result: Option<serde_json::Value>,
}

/// Why a driven job is being stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Abort {
    pub state: JobState,
    pub reason: String,
}

/// Which agent may run a task: a specific agent, any agent on a node, or anyone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affinity {
    pub agent: Option<AgentId>,
    pub node: Option<String>,
}

impl Affinity {
    pub fn matches(&self, agent: &AgentId, node: &str) -> bool {
        self.agent.as_ref().is_none_or(|a| a == agent)
            && self.node.as_deref().is_none_or(|n| n == node)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Pending,
    Leased,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Leased => "leased",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }
}

/// The one lease a task may have. `seq` is a fencing token, unique across all grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub agent: AgentId,
    pub seq: u64,
    pub granted_at: LeaderTime,
    pub expires_at: LeaderTime,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskProgress {
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub items_done: u64,
    pub items_total: u64,
    /// Archive tasks: every change up to this hybrid time is archived (0 = not yet).
    #[serde(default)]
    pub checkpoint: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub job: JobId,
    /// Kind-specific small payload (tablet id, snapshot id, target directory, ...).
    pub payload: serde_json::Value,
    pub affinity: Affinity,
    pub state: TaskState,
    pub lease: Option<Lease>,
    /// Attempts started so far (each lease grant is one attempt).
    pub attempts: u32,
    /// Failures still allowed before the task (and its job) fails.
    pub retries_left: u32,
    /// Not runnable before this time (after a failure).
    pub backoff_until: LeaderTime,
    pub progress: TaskProgress,
    pub last_error: Option<String>,
    /// Opaque small result reported on completion.
    pub result: Option<serde_json::Value>,
}

/// A recurring job template. Stored and listed; firing is the scheduler's job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: ScheduleId,
    pub kind: JobKind,
    pub spec: serde_json::Value,
    pub repository: Option<RepoId>,
    pub interval_ms: u64,
    pub retention: u32,
    pub next_due: LeaderTime,
}
