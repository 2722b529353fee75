//! The replicated state machine: applies a `Command` to the coordinator's state and returns
//! the response plus the effects (which jobs changed, whether work became runnable). Pure and
//! deterministic: it must never read a clock, do I/O, or know anything about Raft.

use crate::command::{Command, Grant, Rejection, Response, TaskSpec};
use crate::ids::{AgentId, JobId, LeaderTime, RepoId, ScheduleId, TaskId};
use crate::model::{
    Agent, Job, JobKind, JobProgress, JobState, Lease, Repository, Schedule, Task, TaskProgress,
    TaskState,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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

    #[allow(clippy::too_many_arguments)]
    fn submit_job(
        &mut self,
        kind: JobKind,
        spec: serde_json::Value,
        repository: Option<RepoId>,
        specs: Vec<TaskSpec>,
        retry_budget: u32,
        now: LeaderTime,
        driven: bool,
        effects: &mut Vec<Effect>,
    ) -> Response {
        self.next_job += 1;
        let id = JobId(self.next_job);
        let task_ids = self.new_tasks(id, specs, retry_budget);
        let empty = task_ids.is_empty() && !driven;
        self.jobs.insert(
            id,
            Job {
                id,
                kind,
                state: if empty {
                    JobState::Succeeded
                } else if driven {
                    JobState::Running
                } else {
                    JobState::Pending
                },
                spec,
                repository,
                tasks: task_ids,
                progress: JobProgress::default(),
                failure: None,
                created_at: now,
                finished_at: empty.then_some(now),
                driven,
                phase: String::new(),
                data: serde_json::Value::Null,
                aborting: None,
                result: None,
            },
        );
        self.recount(id);
        effects.push(Effect::JobChanged(id));
        effects.push(Effect::TasksRunnable);
        Response::JobSubmitted(id)
    }

    fn fire_schedule(
        &mut self,
        id: ScheduleId,
        now: LeaderTime,
        effects: &mut Vec<Effect>,
    ) -> Result<Response, Rejection> {
        let s = self
            .schedules
            .get(&id)
            .cloned()
            .ok_or_else(|| Rejection::Invalid(format!("{id} does not exist")))?;
        if s.next_due > now {
            return Err(Rejection::Invalid(format!("{id} is not due yet")));
        }
        let mut spec = s.spec.clone();
        if let Some(obj) = spec.as_object_mut() {
            obj.insert("schedule_id".into(), serde_json::json!(id.0));
            obj.insert("due_ms".into(), serde_json::json!(s.next_due.0));
            obj.insert("retention".into(), serde_json::json!(s.retention));
        }
        // Missed firings (coordinator down) are not made up: the next one is the first
        // multiple of the interval after now.
        // Saturating: a committed schedule with an absurd interval must not panic every
        // replica (on apply and again on every replay of the log).
        let interval = s.interval_ms.max(1);
        let behind = (now.0.saturating_sub(s.next_due.0) / interval).saturating_add(1);
        self.schedules.get_mut(&id).expect("exists").next_due =
            LeaderTime(s.next_due.0.saturating_add(behind.saturating_mul(interval)));
        Ok(self.submit_job(s.kind, spec, s.repository, vec![], 0, now, true, effects))
    }

    /// The schedule due first, if any is due at `now`.
    pub fn due_schedule(&self, now: LeaderTime) -> Option<ScheduleId> {
        self.schedules
            .values()
            .filter(|s| s.next_due <= now)
            .min_by_key(|s| s.next_due)
            .map(|s| s.id.clone())
    }

    fn new_tasks(&mut self, job: JobId, specs: Vec<TaskSpec>, retry_budget: u32) -> Vec<TaskId> {
        let mut task_ids = Vec::with_capacity(specs.len());
        for spec in specs {
            self.next_task += 1;
            let tid = TaskId(self.next_task);
            task_ids.push(tid);
            self.tasks.insert(
                tid,
                Task {
                    id: tid,
                    job,
                    payload: spec.payload,
                    affinity: spec.affinity,
                    state: TaskState::Pending,
                    lease: None,
                    attempts: 0,
                    retries_left: retry_budget,
                    backoff_until: LeaderTime(0),
                    progress: TaskProgress::default(),
                    last_error: None,
                    result: None,
                },
            );
        }
        task_ids
    }

    fn advance_job(
        &mut self,
        id: JobId,
        phase: String,
        data: serde_json::Value,
        specs: Vec<TaskSpec>,
        retry_budget: u32,
        effects: &mut Vec<Effect>,
    ) -> Result<Response, Rejection> {
        let job = self.jobs.get(&id).ok_or(Rejection::JobNotFound(id))?;
        if job.state.is_terminal() {
            return Err(Rejection::JobFinished(id, job.state.as_str().into()));
        }
        if !job.driven {
            return Err(Rejection::Invalid(format!("{id} has no driver phases")));
        }
        if job.aborting.is_some() && !specs.is_empty() {
            return Err(Rejection::Invalid(format!(
                "{id} is being stopped: no new tasks"
            )));
        }
        let new = self.new_tasks(id, specs, retry_budget);
        let job = self.jobs.get_mut(&id).expect("exists");
        job.phase = phase;
        job.data = data;
        let added = !new.is_empty();
        job.tasks.extend(new);
        self.recount(id);
        effects.push(Effect::JobChanged(id));
        if added {
            effects.push(Effect::TasksRunnable);
        }
        Ok(Response::Ok)
    }

    fn finish_driven(
        &mut self,
        id: JobId,
        failure: Option<String>,
        result: serde_json::Value,
        now: LeaderTime,
        effects: &mut Vec<Effect>,
    ) -> Result<Response, Rejection> {
        let job = self.jobs.get(&id).ok_or(Rejection::JobNotFound(id))?;
        if job.state.is_terminal() {
            return Err(Rejection::JobFinished(id, job.state.as_str().into()));
        }
        let (state, failure) = match (failure, &job.aborting) {
            (f, Some(a)) => (a.state, Some(f.unwrap_or_else(|| a.reason.clone()))),
            (None, None) => (JobState::Succeeded, None),
            (Some(f), None) => (JobState::Failed, Some(f)),
        };
        self.jobs.get_mut(&id).expect("exists").result = Some(result);
        self.close_job(id, state, failure, now);
        effects.push(Effect::JobChanged(id));
        Ok(Response::Ok)
    }

    fn cancel_job(
        &mut self,
        id: JobId,
        reason: String,
        now: LeaderTime,
        effects: &mut Vec<Effect>,
    ) -> Result<Response, Rejection> {
        let job = self.jobs.get(&id).ok_or(Rejection::JobNotFound(id))?;
        if job.state.is_terminal() {
            return Err(Rejection::JobFinished(id, job.state.as_str().into()));
        }
        self.finish_job(
            id,
            JobState::Cancelled,
            Some(format!("cancelled: {reason}")),
            now,
        );
        effects.push(Effect::JobChanged(id));
        Ok(Response::Job(Box::new(self.jobs[&id].clone())))
    }

    fn acquire(
        &mut self,
        agent: AgentId,
        node: String,
        now: LeaderTime,
        lease_ms: u64,
        max: u32,
        effects: &mut Vec<Effect>,
    ) -> Result<Response, Rejection> {
        if !self.agents.contains_key(&agent) {
            return Err(Rejection::AgentNotRegistered(agent));
        }
        if lease_ms == 0 {
            return Err(Rejection::Invalid("lease_ms must be positive".into()));
        }
        let chosen: Vec<TaskId> = self
            .runnable_for(&agent, &node, now)
            .take(max as usize)
            .collect();
        let mut grants = Vec::with_capacity(chosen.len());
        for tid in chosen {
            self.next_lease_seq += 1;
            let seq = self.next_lease_seq;
            let task = self.tasks.get_mut(&tid).expect("runnable task exists");
            debug_assert!(task.lease.is_none(), "{tid} leased twice");
            task.state = TaskState::Leased;
            task.attempts += 1;
            task.lease = Some(Lease {
                agent: agent.clone(),
                seq,
                granted_at: now,
                expires_at: now.plus_ms(lease_ms),
            });
            let job_id = task.job;
            let job = self.jobs.get_mut(&job_id).expect("task's job exists");
            if job.state == JobState::Pending {
                job.state = JobState::Running;
            }
            grants.push(Grant {
                task: tid,
                job: job_id,
                job_kind: job.kind,
                payload: task.payload.clone(),
                lease_seq: seq,
                granted_at: now,
                expires_at: now.plus_ms(lease_ms),
                attempt: task.attempts,
            });
            self.recount(job_id);
            if !effects.contains(&Effect::JobChanged(job_id)) {
                effects.push(Effect::JobChanged(job_id));
            }
        }
        Ok(Response::Granted(grants))
    }

    /// The task, if `agent` holds its lease and its job is still in flight.
    fn held_mut(&mut self, agent: &AgentId, tid: TaskId) -> Result<&mut Task, Rejection> {
        let task = self.tasks.get(&tid).ok_or(Rejection::TaskNotFound(tid))?;
        let job = &self.jobs[&task.job];
        if job.state.is_terminal() {
            return Err(Rejection::JobFinished(job.id, job.state.as_str().into()));
        }
        match &task.lease {
            Some(l) if &l.agent == agent => Ok(self.tasks.get_mut(&tid).expect("exists")),
            other => Err(Rejection::LeaseNotHeld {
                task: tid,
                agent: agent.clone(),
                holder: other
                    .as_ref()
                    .map(|l| l.agent.0.clone())
                    .unwrap_or_else(|| format!("none, task is {}", task.state.as_str())),
            }),
        }
    }

    fn report_progress(
        &mut self,
        agent: AgentId,
        tid: TaskId,
        progress: TaskProgress,
        now: LeaderTime,
        lease_ms: u64,
        effects: &mut Vec<Effect>,
    ) -> Result<Response, Rejection> {
        let task = self.held_mut(&agent, tid)?;
        task.progress = progress;
        let lease = task.lease.as_mut().expect("held implies leased");
        if lease_ms > 0 {
            lease.expires_at = lease.expires_at.max(now.plus_ms(lease_ms));
        }
        let expires_at = lease.expires_at;
        let job = task.job;
        self.recount(job);
        effects.push(Effect::JobChanged(job));
        Ok(Response::LeaseRenewed { expires_at })
    }

    fn complete(
        &mut self,
        agent: AgentId,
        tid: TaskId,
        result: serde_json::Value,
        now: LeaderTime,
        effects: &mut Vec<Effect>,
    ) -> Result<Response, Rejection> {
        let task = self.held_mut(&agent, tid)?;
        task.state = TaskState::Succeeded;
        task.lease = None;
        task.result = Some(result);
        if task.progress.bytes_total > task.progress.bytes_done {
            task.progress.bytes_done = task.progress.bytes_total;
        }
        let job = task.job;
        self.recount(job);
        let j = &self.jobs[&job];
        let p = &j.progress;
        if p.tasks_succeeded == p.tasks_total && !j.driven {
            self.finish_job(job, JobState::Succeeded, None, now);
        }
        effects.push(Effect::JobChanged(job));
        Ok(Response::Ok)
    }

    fn fail(
        &mut self,
        agent: AgentId,
        tid: TaskId,
        reason: String,
        retryable: bool,
        now: LeaderTime,
        effects: &mut Vec<Effect>,
    ) -> Result<Response, Rejection> {
        let task = self.held_mut(&agent, tid)?;
        task.lease = None;
        task.last_error = Some(format!("{agent}: {reason}"));
        let job = task.job;
        if retryable && task.retries_left > 0 {
            task.retries_left -= 1;
            task.state = TaskState::Pending;
            let exp = task.attempts.saturating_sub(1).min(16);
            let backoff = (BACKOFF_BASE_MS << exp).min(BACKOFF_MAX_MS);
            task.backoff_until = now.plus_ms(backoff);
            effects.push(Effect::TasksRunnable);
            self.recount(job);
        } else {
            task.state = TaskState::Failed;
            let attempts = task.attempts;
            let why = if retryable {
                format!(
                    "{tid} of {job} failed {attempts} time(s), retry budget spent; last error from {agent}: {reason}. \
                     Fix the cause and resubmit the job"
                )
            } else {
                format!(
                    "{tid} of {job} failed permanently on {agent}: {reason}. Fix the cause and resubmit the job"
                )
            };
            self.recount(job);
            self.finish_job(job, JobState::Failed, Some(why), now);
        }
        effects.push(Effect::JobChanged(job));
        Ok(Response::Ok)
    }

    /// Releases the leases that expired at `now`, or (with `holder`) every lease that agent holds.
    fn release(
        &mut self,
        now: LeaderTime,
        holder: Option<&AgentId>,
        effects: &mut Vec<Effect>,
    ) -> Response {
        let expired: Vec<TaskId> = self
            .in_flight_tasks()
            .filter(|t| {
                t.lease.as_ref().is_some_and(|l| match holder {
                    Some(a) => &l.agent == a,
                    None => l.expires_at <= now,
                })
            })
            .map(|t| t.id)
            .collect();
        for tid in &expired {
            let task = self.tasks.get_mut(tid).expect("exists");
            let holder_name = task.lease.take().map(|l| l.agent.0).unwrap_or_default();
            task.state = TaskState::Pending;
            task.last_error = Some(match holder {
                Some(_) => format!("agent {holder_name:?} restarted while holding the lease"),
                None => format!("lease held by agent {holder_name:?} expired"),
            });
            let job = task.job;
            self.recount(job);
            if !effects.contains(&Effect::JobChanged(job)) {
                effects.push(Effect::JobChanged(job));
            }
        }
        if !expired.is_empty() {
            effects.push(Effect::TasksRunnable);
        }
        Response::Expired(expired)
    }

    /// Puts a job in a terminal state; its unfinished tasks are cancelled and lose their leases.
    /// A driven job instead records why it must stop and waits for its driver to clean up
    /// and call `FinishJob`.
    fn finish_job(&mut self, id: JobId, state: JobState, failure: Option<String>, now: LeaderTime) {
        let job = self.jobs.get_mut(&id).expect("exists");
        if job.driven && state != JobState::Succeeded {
            if job.aborting.is_none() {
                job.aborting = Some(crate::model::Abort {
                    state,
                    reason: failure.unwrap_or_default(),
                });
            }
            self.cancel_tasks(id);
            self.recount(id);
            return;
        }
        self.close_job(id, state, failure, now);
    }

    fn cancel_tasks(&mut self, id: JobId) {
        let task_ids = self.jobs[&id].tasks.clone();
        for tid in task_ids {
            let t = self.tasks.get_mut(&tid).expect("job's task exists");
            if !t.state.is_terminal() {
                t.state = TaskState::Cancelled;
                t.lease = None;
            }
        }
    }

    fn close_job(&mut self, id: JobId, state: JobState, failure: Option<String>, now: LeaderTime) {
        self.cancel_tasks(id);
        let job = self.jobs.get_mut(&id).expect("exists");
        job.state = state;
        job.failure = failure;
        job.finished_at = Some(now);
        self.recount(id);
    }

    fn recount(&mut self, id: JobId) {
        let mut p = JobProgress::default();
        for t in self.jobs[&id].tasks.iter().map(|t| &self.tasks[t]) {
            p.tasks_total += 1;
            match t.state {
                TaskState::Pending => p.tasks_pending += 1,
                TaskState::Leased => p.tasks_running += 1,
                TaskState::Succeeded => p.tasks_succeeded += 1,
                TaskState::Failed => p.tasks_failed += 1,
                TaskState::Cancelled => p.tasks_cancelled += 1,
            }
            // Agents report these: saturate, never overflow in the apply path.
            p.bytes_done = p.bytes_done.saturating_add(t.progress.bytes_done);
            p.bytes_total = p.bytes_total.saturating_add(t.progress.bytes_total);
        }
        self.jobs.get_mut(&id).expect("exists").progress = p;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Affinity;
    use serde_json::json;

    fn agent(id: &str, node: &str) -> Command {
        Command::RegisterAgent(Agent {
            id: AgentId(id.into()),
            node: node.into(),
            address: format!("{id}:1"),
            labels: Default::default(),
            version: "test".into(),
        })
    }

    fn sm_with_job(tasks: usize, budget: u32) -> (StateMachine, JobId) {
        let mut sm = StateMachine::new();
        sm.apply(agent("a1", "n1"));
        sm.apply(agent("a2", "n2"));
        let specs = (0..tasks)
            .map(|i| TaskSpec {
                payload: json!({ "tablet": i }),
                affinity: Affinity::default(),
            })
            .collect();
        let r = sm.apply(Command::SubmitJob {
            kind: JobKind::Backup,
            spec: json!({"db": "d"}),
            repository: None,
            tasks: specs,
            retry_budget: budget,
            now: LeaderTime(0),
            driven: false,
        });
        let Ok(Response::JobSubmitted(id)) = r.result else {
            panic!("{r:?}")
        };
        (sm, id)
    }

    fn acquire(sm: &mut StateMachine, a: &str, node: &str, now: u64, max: u32) -> Vec<Grant> {
        match sm
            .apply(Command::AcquireTasks {
                agent: AgentId(a.into()),
                node: node.into(),
                now: LeaderTime(now),
                lease_ms: 1_000,
                max,
            })
            .result
        {
            Ok(Response::Granted(g)) => g,
            other => panic!("{other:?}"),
        }
    }

    fn complete(
        sm: &mut StateMachine,
        a: &str,
        t: TaskId,
        now: u64,
    ) -> Result<Response, Rejection> {
        sm.apply(Command::CompleteTask {
            agent: AgentId(a.into()),
            task: t,
            result: json!(null),
            now: LeaderTime(now),
        })
        .result
    }

    fn fail(sm: &mut StateMachine, a: &str, t: TaskId, now: u64) -> Result<Response, Rejection> {
        sm.apply(Command::FailTask {
            agent: AgentId(a.into()),
            task: t,
            reason: "disk full on /data".into(),
            retryable: true,
            now: LeaderTime(now),
        })
        .result
    }

    #[test]
    fn a_task_is_never_leased_to_two_agents() {
        let (mut sm, job) = sm_with_job(5, 3);
        let g1 = acquire(&mut sm, "a1", "n1", 0, 3);
        let g2 = acquire(&mut sm, "a2", "n2", 0, 10);
        assert_eq!(g1.len(), 3);
        assert_eq!(g2.len(), 2);
        let mut all: Vec<TaskId> = g1.iter().chain(&g2).map(|g| g.task).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 5, "every task granted exactly once");
        assert!(acquire(&mut sm, "a2", "n2", 500, 10).is_empty());
        // Someone else's lease cannot be completed.
        let err = complete(&mut sm, "a2", g1[0].task, 10).unwrap_err();
        assert!(matches!(err, Rejection::LeaseNotHeld { .. }), "{err}");
        assert_eq!(sm.job(job).unwrap().state, JobState::Running);
        assert_eq!(sm.job(job).unwrap().progress.tasks_running, 5);
    }

    #[test]
    fn affinity_restricts_who_gets_a_task() {
        let mut sm = StateMachine::new();
        sm.apply(agent("a1", "n1"));
        sm.apply(agent("a2", "n2"));
        sm.apply(Command::SubmitJob {
            kind: JobKind::Restore,
            spec: json!({}),
            repository: None,
            tasks: vec![TaskSpec {
                payload: json!(1),
                affinity: Affinity {
                    agent: None,
                    node: Some("n2".into()),
                },
            }],
            retry_budget: 0,
            now: LeaderTime(0),
            driven: false,
        });
        assert!(acquire(&mut sm, "a1", "n1", 0, 10).is_empty());
        assert!(!sm.has_runnable_for(&AgentId("a1".into()), "n1", LeaderTime(0)));
        assert_eq!(acquire(&mut sm, "a2", "n2", 0, 10).len(), 1);
    }

    #[test]
    fn unregistered_agents_are_refused() {
        let (mut sm, _) = sm_with_job(1, 0);
        let r = sm.apply(Command::AcquireTasks {
            agent: AgentId("ghost".into()),
            node: "n9".into(),
            now: LeaderTime(0),
            lease_ms: 10,
            max: 1,
        });
        assert!(matches!(r.result, Err(Rejection::AgentNotRegistered(_))));
    }

    #[test]
    fn expired_leases_are_reassigned_and_old_holder_is_fenced() {
        let (mut sm, job) = sm_with_job(2, 3);
        let g = acquire(&mut sm, "a1", "n1", 0, 10);
        assert_eq!(g.len(), 2);
        // Renewal of one task keeps it; the other expires.
        sm.apply(Command::RenewLease {
            agent: AgentId("a1".into()),
            task: g[0].task,
            now: LeaderTime(900),
            lease_ms: 1_000,
        })
        .result
        .unwrap();
        let r = sm.apply(Command::ExpireLeases {
            now: LeaderTime(1_000),
        });
        assert_eq!(r.result, Ok(Response::Expired(vec![g[1].task])));
        assert!(r.effects.contains(&Effect::TasksRunnable));
        let g2 = acquire(&mut sm, "a2", "n2", 1_001, 10);
        assert_eq!(g2.len(), 1);
        assert_eq!(g2[0].task, g[1].task);
        assert_eq!(g2[0].attempt, 2);
        assert!(g2[0].lease_seq > g[1].lease_seq);
        // The old holder can no longer complete it; the new one can.
        assert!(complete(&mut sm, "a1", g[1].task, 1_002).is_err());
        complete(&mut sm, "a2", g[1].task, 1_002).unwrap();
        complete(&mut sm, "a1", g[0].task, 1_003).unwrap();
        let j = sm.job(job).unwrap();
        assert_eq!(j.state, JobState::Succeeded);
        assert_eq!(j.progress.tasks_succeeded, 2);
    }

    #[test]
    fn retry_budget_with_backoff_then_actionable_failure() {
        let (mut sm, job) = sm_with_job(1, 2);
        let mut now = 0;
        for attempt in 1..=3u32 {
            let g = acquire(&mut sm, "a1", "n1", now, 1);
            assert_eq!(g.len(), 1, "attempt {attempt} at {now}");
            assert_eq!(g[0].attempt, attempt);
            fail(&mut sm, "a1", g[0].task, now).unwrap();
            if attempt < 3 {
                let t = sm.task(g[0].task).unwrap();
                assert_eq!(t.state, TaskState::Pending);
                assert!(t.backoff_until > LeaderTime(now));
                let until = t.backoff_until.0;
                // Not runnable during backoff.
                assert!(acquire(&mut sm, "a1", "n1", now + 1, 1).is_empty());
                now = until;
            }
        }
        let j = sm.job(job).unwrap();
        assert_eq!(j.state, JobState::Failed);
        let why = j.failure.as_deref().unwrap();
        assert!(why.contains("retry budget spent"), "{why}");
        assert!(why.contains("disk full on /data"), "{why}");
        assert!(why.contains("resubmit"), "{why}");
    }

    #[test]
    fn backoff_doubles() {
        let (mut sm, _) = sm_with_job(1, 5);
        let g = acquire(&mut sm, "a1", "n1", 0, 1);
        fail(&mut sm, "a1", g[0].task, 0).unwrap();
        assert_eq!(sm.task(g[0].task).unwrap().backoff_until, LeaderTime(1_000));
        acquire(&mut sm, "a1", "n1", 1_000, 1);
        fail(&mut sm, "a1", g[0].task, 1_000).unwrap();
        assert_eq!(sm.task(g[0].task).unwrap().backoff_until, LeaderTime(3_000));
    }

    #[test]
    fn cancel_releases_leases_and_refuses_further_work() {
        let (mut sm, job) = sm_with_job(3, 1);
        let g = acquire(&mut sm, "a1", "n1", 0, 2);
        let r = sm.apply(Command::CancelJob {
            job,
            reason: "operator asked".into(),
            now: LeaderTime(5),
        });
        assert!(r.result.is_ok());
        let j = sm.job(job).unwrap();
        assert_eq!(j.state, JobState::Cancelled);
        assert_eq!(j.progress.tasks_cancelled, 3);
        assert!(sm.tasks_of(job).all(|t| t.lease.is_none()));
        assert!(matches!(
            complete(&mut sm, "a1", g[0].task, 6),
            Err(Rejection::JobFinished(..))
        ));
        assert!(acquire(&mut sm, "a2", "n2", 6, 10).is_empty());
        assert!(matches!(
            sm.apply(Command::CancelJob {
                job,
                reason: "again".into(),
                now: LeaderTime(7)
            })
            .result,
            Err(Rejection::JobFinished(..))
        ));
    }

    #[test]
    fn progress_is_summed_and_renews() {
        let (mut sm, job) = sm_with_job(2, 0);
        let g = acquire(&mut sm, "a1", "n1", 0, 2);
        let r = sm.apply(Command::ReportProgress {
            agent: AgentId("a1".into()),
            task: g[0].task,
            progress: TaskProgress {
                bytes_done: 10,
                bytes_total: 100,
                items_done: 1,
                items_total: 3,
                checkpoint: 0,
            },
            now: LeaderTime(500),
            lease_ms: 1_000,
        });
        assert_eq!(
            r.result,
            Ok(Response::LeaseRenewed {
                expires_at: LeaderTime(1_500)
            })
        );
        assert_eq!(sm.job(job).unwrap().progress.bytes_done, 10);
        assert_eq!(sm.job(job).unwrap().progress.bytes_total, 100);
    }

    #[test]
    fn snapshot_round_trips() {
        let (mut sm, _) = sm_with_job(4, 2);
        acquire(&mut sm, "a1", "n1", 0, 2);
        let data = sm.snapshot();
        let back = StateMachine::restore(&data).unwrap();
        assert_eq!(back, sm);
        assert_eq!(StateMachine::restore(&[]).unwrap(), StateMachine::new());
    }

    /// Randomised walk: whatever the interleaving, at most one lease per task, and a lease
    /// is only ever granted on a task that had none.
    #[test]
    fn lease_exclusivity_under_random_interleavings() {
        let (mut sm, job) = sm_with_job(20, 2);
        sm.apply(agent("a3", "n3"));
        let agents = ["a1", "a2", "a3"];
        let mut seed: u64 = 0x9E3779B97F4A7C15;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut now = 0u64;
        let mut holder: BTreeMap<TaskId, &str> = BTreeMap::new();
        for _ in 0..2_000 {
            now += rnd(300);
            let a = agents[rnd(3) as usize];
            match rnd(5) {
                0 | 1 => {
                    for g in acquire(&mut sm, a, "n", now, 2) {
                        let prev = holder.insert(g.task, a);
                        assert!(
                            prev.is_none(),
                            "{} leased to {a} while held by {prev:?}",
                            g.task
                        );
                    }
                }
                2 => {
                    if let Some((&t, _)) = holder.iter().find(|(_, h)| **h == a) {
                        if complete(&mut sm, a, t, now).is_ok() {
                            holder.remove(&t);
                        }
                    }
                }
                3 => {
                    if let Some((&t, _)) = holder.iter().find(|(_, h)| **h == a) {
                        fail(&mut sm, a, t, now).unwrap();
                        holder.remove(&t);
                    }
                }
                _ => {
                    if let Ok(Response::Expired(ts)) = sm
                        .apply(Command::ExpireLeases {
                            now: LeaderTime(now),
                        })
                        .result
                    {
                        for t in ts {
                            holder.remove(&t);
                        }
                    }
                }
            }
            if sm.job(job).unwrap().state.is_terminal() {
                assert!(sm.tasks_of(job).all(|t| t.lease.is_none()));
                break;
            }
            // The model and the state machine agree on every holder.
            for t in sm.tasks_of(job) {
                assert_eq!(
                    t.lease.as_ref().map(|l| l.agent.0.as_str()),
                    holder.get(&t.id).copied(),
                    "{}",
                    t.id
                );
            }
        }
    }

    #[test]
    fn schedules_fire_once_per_due_time_and_skip_missed_ones() {
        let mut sm = StateMachine::new();
        sm.apply(Command::PutSchedule(Schedule {
            id: ScheduleId("s".into()),
            kind: JobKind::Backup,
            spec: json!({"database": "d"}),
            repository: None,
            interval_ms: 1_000,
            retention: 3,
            next_due: LeaderTime(10_000),
        }));
        assert_eq!(sm.due_schedule(LeaderTime(9_999)), None);
        let fire = |sm: &mut StateMachine, now| {
            sm.apply(Command::FireSchedule {
                schedule: ScheduleId("s".into()),
                now: LeaderTime(now),
            })
            .result
        };
        assert!(fire(&mut sm, 9_999).is_err(), "not due yet");
        let Ok(Response::JobSubmitted(j)) = fire(&mut sm, 10_000) else {
            panic!()
        };
        let job = sm.job(j).unwrap();
        assert!(job.driven);
        assert_eq!(job.spec["schedule_id"], "s");
        assert_eq!(job.spec["due_ms"], 10_000);
        assert_eq!(job.spec["retention"], 3);
        // Fired again at the same time: refused (not due), so a retried proposal makes no twin.
        assert!(fire(&mut sm, 10_500).is_err());
        // Down for 5.5 intervals: one firing, then the next multiple after now.
        assert!(matches!(
            fire(&mut sm, 16_500),
            Ok(Response::JobSubmitted(_))
        ));
        assert_eq!(sm.schedules().next().unwrap().next_due, LeaderTime(17_000));

        // A committed schedule with an absurd interval (an older leader did not check it)
        // fires without overflowing: next_due saturates instead of panicking every replica.
        sm.apply(Command::PutSchedule(Schedule {
            id: ScheduleId("huge".into()),
            kind: JobKind::Backup,
            spec: json!({"database": "d"}),
            repository: None,
            interval_ms: u64::MAX,
            retention: 0,
            next_due: LeaderTime(1),
        }));
        let due = sm.due_schedule(LeaderTime(u64::MAX - 1)).unwrap();
        sm.apply(Command::FireSchedule {
            schedule: due,
            now: LeaderTime(u64::MAX - 1),
        });
        assert!(sm.schedules().any(|s| s.next_due == LeaderTime(u64::MAX)));
    }
}
