//! Conversions between prost messages and domain types, and from `CoordinatorError` to
//! `tonic::Status`. Protocol types stop here: this file must never hold logic.

use crate::command::{Grant, Rejection};
use crate::error::{CoordinatorError, MembershipRefusal};
use crate::model::{Agent, Job, JobProgress, Schedule, Task, TaskState};
use crate::pb;
use tonic::{Code, Status};

impl From<CoordinatorError> for Status {
    fn from(e: CoordinatorError) -> Self {
        let code = match &e {
            CoordinatorError::NotLeader { .. } => Code::FailedPrecondition,
            CoordinatorError::NoLeader
            | CoordinatorError::Stopped
            | CoordinatorError::Unreachable { .. }
            | CoordinatorError::NotMember(_) => Code::Unavailable,
            CoordinatorError::Membership(r) => match r {
                MembershipRefusal::InvalidId | MembershipRefusal::InvalidAddress(_) => {
                    Code::InvalidArgument
                }
                MembershipRefusal::AlreadyMember { .. }
                | MembershipRefusal::AddressInUse { .. } => Code::AlreadyExists,
                MembershipRefusal::NotMember(_) => Code::NotFound,
                MembershipRefusal::LastVoter(_)
                | MembershipRefusal::Pending { .. }
                | MembershipRefusal::RemoveLeader => Code::FailedPrecondition,
            },
            CoordinatorError::ProposalDropped(_) => Code::Aborted,
            CoordinatorError::Timeout(_) => Code::DeadlineExceeded,
            CoordinatorError::Rejected(r) => match r {
                Rejection::JobNotFound(_) | Rejection::TaskNotFound(_) => Code::NotFound,
                Rejection::Invalid(_) => Code::InvalidArgument,
                Rejection::AgentNotRegistered(_) => Code::FailedPrecondition,
                Rejection::LeaseNotHeld { .. } | Rejection::JobFinished(..) => {
                    Code::FailedPrecondition
                }
            },
            CoordinatorError::Config(_) => Code::InvalidArgument,
            _ => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

pub fn progress(p: &JobProgress) -> pb::JobProgress {
    pb::JobProgress {
        tasks_total: p.tasks_total,
        tasks_pending: p.tasks_pending,
        tasks_running: p.tasks_running,
        tasks_succeeded: p.tasks_succeeded,
        tasks_failed: p.tasks_failed,
        tasks_cancelled: p.tasks_cancelled,
        bytes_done: p.bytes_done,
        bytes_total: p.bytes_total,
    }
}

/// A job with its tasks' progress summed per node.
pub fn job_with_tasks<'a>(j: &Job, tasks: impl Iterator<Item = &'a Task>) -> pb::JobInfo {
    let mut info = job(j);
    let mut nodes: std::collections::BTreeMap<String, pb::NodeProgress> = Default::default();
    for t in tasks {
        let Some(node) = &t.affinity.node else {
            continue;
        };
        let n = nodes
            .entry(node.clone())
            .or_insert_with(|| pb::NodeProgress {
                node: node.clone(),
                ..Default::default()
            });
        n.bytes_done = n.bytes_done.saturating_add(t.progress.bytes_done);
        n.bytes_total = n.bytes_total.saturating_add(t.progress.bytes_total);
        n.tasks_total += 1;
        if t.state == TaskState::Succeeded {
            n.tasks_done += 1;
        }
    }
    info.nodes = nodes.into_values().collect();
    info
}

pub fn job(j: &Job) -> pb::JobInfo {
    pb::JobInfo {
        id: j.id.0,
        kind: j.kind.as_str().into(),
        state: j.state.as_str().into(),
        spec_json: j.spec.to_string(),
        repository: j
            .repository
            .as_ref()
            .map(|r| r.0.clone())
            .unwrap_or_default(),
        progress: Some(progress(&j.progress)),
        failure: j.failure.clone().unwrap_or_default(),
        created_at_ms: j.created_at.0,
        finished_at_ms: j.finished_at.map(|t| t.0).unwrap_or(0),
        phase: j.phase.clone(),
        result_json: j.result.as_ref().map(|r| r.to_string()).unwrap_or_default(),
        aborting: j.aborting.is_some(),
        nodes: vec![],
    }
}

pub fn schedule(s: &Schedule) -> pb::ScheduleInfo {
    pb::ScheduleInfo {
        id: s.id.0.clone(),
        kind: s.kind.as_str().into(),
        spec_json: s.spec.to_string(),
        interval_ms: s.interval_ms,
        retention: s.retention,
        next_due_ms: s.next_due.0,
    }
}

pub fn grant(g: &Grant) -> pb::TaskLease {
    pb::TaskLease {
        task_id: g.task.0,
        job_id: g.job.0,
        job_kind: g.job_kind.as_str().into(),
        payload_json: g.payload.to_string(),
        lease_seq: g.lease_seq,
        granted_at_ms: g.granted_at.0,
        expires_at_ms: g.expires_at.0,
        attempt: g.attempt,
    }
}

pub fn agent(a: &Agent, last_heartbeat_ms: u64) -> pb::AgentStatus {
    pb::AgentStatus {
        id: a.id.0.clone(),
        node: a.node.clone(),
        address: a.address.clone(),
        labels: a.labels.clone().into_iter().collect(),
        version: a.version.clone(),
        last_heartbeat_ms,
    }
}

/// Parses a JSON field of a request; empty means `null`.
pub fn json(field: &str, s: &str) -> Result<serde_json::Value, Status> {
    if s.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(s)
        .map_err(|e| Status::invalid_argument(format!("{field} is not valid JSON: {e}")))
}

/// The running change-log archives (for `ClusterStatus` and the metrics).
pub fn archives(sm: &crate::state_machine::StateMachine) -> Vec<pb::ArchiveStatus> {
    sm.jobs()
        .filter(|j| j.kind == crate::model::JobKind::Archive && !j.state.is_terminal())
        .map(|j| archive(j, sm.tasks_of(j.id)))
        .collect()
}

/// A running archive job's checkpoint: the oldest of its nodes' (0 while any node has not
/// reported, so the checkpoint never passes a node that archived nothing yet).
pub fn archive<'a>(job: &Job, tasks: impl Iterator<Item = &'a Task>) -> pb::ArchiveStatus {
    let nodes: Vec<pb::ArchiveNode> = tasks
        .map(|t| pb::ArchiveNode {
            node: t.affinity.node.clone().unwrap_or_default(),
            checkpoint_ht: t.progress.checkpoint,
            agent: t
                .lease
                .as_ref()
                .map(|l| l.agent.0.clone())
                .unwrap_or_default(),
            last_error: t.last_error.clone().unwrap_or_default(),
        })
        .collect();
    let checkpoint_ht = nodes.iter().map(|n| n.checkpoint_ht).min().unwrap_or(0);
    pb::ArchiveStatus {
        job_id: job.id.0,
        database: job
            .spec
            .get("database")
            .and_then(|d| d.as_str())
            .unwrap_or_default()
            .to_string(),
        repository: job
            .spec
            .get("repo")
            .and_then(|d| d.as_str())
            .unwrap_or_default()
            .to_string(),
        checkpoint_ht,
        nodes,
    }
}
