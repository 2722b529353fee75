//! Task leases in the state machine: an agent acquires runnable tasks (one holder at a
//! time, fenced by lease expiry), reports progress (which renews), completes or fails them
//! (a failure retries with backoff within the job's budget), or lets them go.

use super::jobs::TaskTally;
use super::*;

impl StateMachine {
    pub(super) fn acquire(
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
            let was = TaskTally::of(task);
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
            self.account(tid, was);
            if !effects.contains(&Effect::JobChanged(job_id)) {
                effects.push(Effect::JobChanged(job_id));
            }
        }
        Ok(Response::Granted(grants))
    }

    /// The task, if `agent` holds its lease and its job is still in flight.
    pub(super) fn held_mut(
        &mut self,
        agent: &AgentId,
        tid: TaskId,
    ) -> Result<&mut Task, Rejection> {
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

    pub(super) fn report_progress(
        &mut self,
        agent: AgentId,
        tid: TaskId,
        progress: TaskProgress,
        now: LeaderTime,
        lease_ms: u64,
        effects: &mut Vec<Effect>,
    ) -> Result<Response, Rejection> {
        let task = self.held_mut(&agent, tid)?;
        let was = TaskTally::of(task);
        task.progress = progress;
        let lease = task.lease.as_mut().expect("held implies leased");
        if lease_ms > 0 {
            lease.expires_at = lease.expires_at.max(now.plus_ms(lease_ms));
        }
        let expires_at = lease.expires_at;
        let job = task.job;
        self.account(tid, was);
        effects.push(Effect::JobChanged(job));
        Ok(Response::LeaseRenewed { expires_at })
    }

    pub(super) fn complete(
        &mut self,
        agent: AgentId,
        tid: TaskId,
        result: serde_json::Value,
        now: LeaderTime,
        effects: &mut Vec<Effect>,
    ) -> Result<Response, Rejection> {
        let task = self.held_mut(&agent, tid)?;
        let was = TaskTally::of(task);
        task.state = TaskState::Succeeded;
        task.lease = None;
        task.result = Some(result);
        if task.progress.bytes_total > task.progress.bytes_done {
            task.progress.bytes_done = task.progress.bytes_total;
        }
        let job = task.job;
        self.account(tid, was);
        let j = &self.jobs[&job];
        let p = &j.progress;
        if p.tasks_succeeded == p.tasks_total && !j.driven {
            self.finish_job(job, JobState::Succeeded, None, now);
        }
        effects.push(Effect::JobChanged(job));
        Ok(Response::Ok)
    }

    pub(super) fn fail(
        &mut self,
        agent: AgentId,
        tid: TaskId,
        reason: String,
        retryable: bool,
        now: LeaderTime,
        effects: &mut Vec<Effect>,
    ) -> Result<Response, Rejection> {
        let task = self.held_mut(&agent, tid)?;
        let was = TaskTally::of(task);
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
            self.account(tid, was);
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
            self.account(tid, was);
            self.finish_job(job, JobState::Failed, Some(why), now);
        }
        effects.push(Effect::JobChanged(job));
        Ok(Response::Ok)
    }

    /// Releases the leases that expired at `now`, or (with `holder`) every lease that agent holds.
    pub(super) fn release(
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
            let was = TaskTally::of(task);
            let holder_name = task.lease.take().map(|l| l.agent.0).unwrap_or_default();
            task.state = TaskState::Pending;
            task.last_error = Some(match holder {
                Some(_) => format!("agent {holder_name:?} restarted while holding the lease"),
                None => format!("lease held by agent {holder_name:?} expired"),
            });
            let job = task.job;
            self.account(*tid, was);
            if !effects.contains(&Effect::JobChanged(job)) {
                effects.push(Effect::JobChanged(job));
            }
        }
        if !expired.is_empty() {
            effects.push(Effect::TasksRunnable);
        }
        Response::Expired(expired)
    }
}
