//! The job lifecycle in the state machine: submitting (and schedules firing), a driver
//! advancing a job's phase with new tasks, finishing, cancelling, and the job's progress as
//! the sum of its tasks'.

use super::*;

/// What one task contributes to its job's progress counters.
#[derive(Debug, Clone, Copy)]
pub(super) struct TaskTally {
    pub state: TaskState,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

impl TaskTally {
    pub fn of(t: &Task) -> Self {
        Self {
            state: t.state,
            bytes_done: t.progress.bytes_done,
            bytes_total: t.progress.bytes_total,
        }
    }
}

impl StateMachine {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn submit_job(
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

    pub(super) fn fire_schedule(
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

    pub(super) fn new_tasks(
        &mut self,
        job: JobId,
        specs: Vec<TaskSpec>,
        retry_budget: u32,
    ) -> Vec<TaskId> {
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

    pub(super) fn advance_job(
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

    pub(super) fn finish_driven(
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

    pub(super) fn cancel_job(
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

    /// Puts a job in a terminal state; its unfinished tasks are cancelled and lose their leases.
    /// A driven job instead records why it must stop and waits for its driver to clean up
    /// and call `FinishJob`.
    pub(super) fn finish_job(
        &mut self,
        id: JobId,
        state: JobState,
        failure: Option<String>,
        now: LeaderTime,
    ) {
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

    pub(super) fn cancel_tasks(&mut self, id: JobId) {
        let task_ids = self.jobs[&id].tasks.clone();
        for tid in task_ids {
            let t = self.tasks.get_mut(&tid).expect("job's task exists");
            if !t.state.is_terminal() {
                t.state = TaskState::Cancelled;
                t.lease = None;
            }
        }
    }

    pub(super) fn close_job(
        &mut self,
        id: JobId,
        state: JobState,
        failure: Option<String>,
        now: LeaderTime,
    ) {
        self.cancel_tasks(id);
        let job = self.jobs.get_mut(&id).expect("exists");
        job.state = state;
        job.failure = failure;
        job.finished_at = Some(now);
        self.recount(id);
    }

    /// Moves task `tid`'s share of its job's counters from `was` (its tally before the
    /// change) to what it is now, in O(1). Every task event (lease, progress, completion,
    /// failure, expiry) goes through here: a full [`recount`](Self::recount) per event made
    /// a job of n tasks cost O(n²) to apply.
    pub(super) fn account(&mut self, tid: TaskId, was: TaskTally) {
        let task = &self.tasks[&tid];
        let now = TaskTally::of(task);
        let p = &mut self
            .jobs
            .get_mut(&task.job)
            .expect("task's job exists")
            .progress;
        fn slot(p: &mut JobProgress, s: TaskState) -> &mut u64 {
            match s {
                TaskState::Pending => &mut p.tasks_pending,
                TaskState::Leased => &mut p.tasks_running,
                TaskState::Succeeded => &mut p.tasks_succeeded,
                TaskState::Failed => &mut p.tasks_failed,
                TaskState::Cancelled => &mut p.tasks_cancelled,
            }
        }
        if was.state != now.state {
            let a = slot(p, was.state);
            *a = a.saturating_sub(1);
            let b = slot(p, now.state);
            *b = b.saturating_add(1);
        }
        // Agents report these: saturate, never overflow in the apply path.
        p.bytes_done = p
            .bytes_done
            .saturating_sub(was.bytes_done)
            .saturating_add(now.bytes_done);
        p.bytes_total = p
            .bytes_total
            .saturating_sub(was.bytes_total)
            .saturating_add(now.bytes_total);
    }

    pub(super) fn recount(&mut self, id: JobId) {
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
