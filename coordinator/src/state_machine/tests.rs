//! Tests of the state machine: lease exclusivity (also under random interleavings),
//! affinity, fencing, retries with backoff, cancel, progress, snapshots, schedules.

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

fn complete(sm: &mut StateMachine, a: &str, t: TaskId, now: u64) -> Result<Response, Rejection> {
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
/// The job's counters, kept in step one task event at a time, equal a count of its tasks.
fn assert_counters_match_tasks(sm: &StateMachine, job: JobId) {
    let mut want = JobProgress::default();
    for t in sm.tasks_of(job) {
        want.tasks_total += 1;
        *match t.state {
            TaskState::Pending => &mut want.tasks_pending,
            TaskState::Leased => &mut want.tasks_running,
            TaskState::Succeeded => &mut want.tasks_succeeded,
            TaskState::Failed => &mut want.tasks_failed,
            TaskState::Cancelled => &mut want.tasks_cancelled,
        } += 1;
        want.bytes_done += t.progress.bytes_done;
        want.bytes_total += t.progress.bytes_total;
    }
    assert_eq!(sm.job(job).unwrap().progress, want);
}

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
        match rnd(6) {
            5 => {
                if let Some((&t, _)) = holder.iter().find(|(_, h)| **h == a) {
                    let total = 1 + rnd(1 << 20);
                    let r = sm.apply(Command::ReportProgress {
                        agent: AgentId(a.into()),
                        task: t,
                        progress: TaskProgress {
                            bytes_done: rnd(total),
                            bytes_total: total,
                            ..Default::default()
                        },
                        now: LeaderTime(now),
                        lease_ms: 1_000,
                    });
                    assert!(r.result.is_ok(), "{r:?}");
                }
            }
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
        assert_counters_match_tasks(&sm, job);
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
