//! Three replicas in one process: kill the leader while fake agents run a 60-task job; a new
//! leader takes over, the job completes, no task is held by two agents at once, nothing is
//! lost; then all three restart from their sled dirs with the state intact.

mod common;

use common::{tuning, AgentClient, Client, Cluster, LeaderFollower};
use snapfleet_coordinator::pb;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;

const TASKS: usize = 60;

#[derive(Debug, Clone)]
struct GrantRec {
    task: u64,
    agent: String,
    seq: u64,
    granted_at: u64,
    expires_at: u64,
}

#[derive(Default)]
struct Log {
    grants: Vec<GrantRec>,
    /// (task, lease_seq) → latest expiry the agent was told.
    renewals: BTreeMap<(u64, u64), u64>,
    completed: Vec<(u64, String)>,
    refused: Vec<(u64, String, String)>,
}

async fn fake_agent(name: String, addrs: Vec<String>, log: Arc<Mutex<Log>>, stop: Arc<AtomicBool>) {
    let lf = LeaderFollower::new(addrs);
    on_leader!(lf, AgentClient, |c| c.register(pb::RegisterRequest {
        agent_id: name.clone(),
        node: format!("node-{name}"),
        address: format!("{name}:0"),
        labels: Default::default(),
        version: "test".into(),
        restarted: false,
    }))
    .expect("register");
    while !stop.load(Ordering::SeqCst) {
        let r = on_leader!(lf, AgentClient, |c| c.acquire_tasks(
            pb::AcquireTasksRequest {
                agent_id: name.clone(),
                max: 2,
                lease_ms: 2_000,
                wait_ms: 300,
            }
        ));
        let Ok(r) = r else { continue };
        for t in r.tasks {
            log.lock().unwrap().grants.push(GrantRec {
                task: t.task_id,
                agent: name.clone(),
                seq: t.lease_seq,
                granted_at: t.granted_at_ms,
                expires_at: t.expires_at_ms,
            });
            let p = on_leader!(lf, AgentClient, |c| c.report_progress(
                pb::ReportProgressRequest {
                    agent_id: name.clone(),
                    task_id: t.task_id,
                    bytes_done: 50,
                    bytes_total: 100,
                    items_done: 1,
                    items_total: 2,
                    lease_ms: 2_000,
                    checkpoint_ht: 0,
                }
            ));
            if let Ok(p) = &p {
                log.lock()
                    .unwrap()
                    .renewals
                    .insert((t.task_id, t.lease_seq), p.expires_at_ms);
            }
            // Simulated work.
            tokio::time::sleep(Duration::from_millis(15)).await;
            match on_leader!(lf, AgentClient, |c| c.complete_task(
                pb::CompleteTaskRequest {
                    agent_id: name.clone(),
                    task_id: t.task_id,
                    result_json: "{\"ok\":true}".into(),
                }
            )) {
                Ok(_) => log
                    .lock()
                    .unwrap()
                    .completed
                    .push((t.task_id, name.clone())),
                Err(st) => {
                    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
                    log.lock().unwrap().refused.push((
                        t.task_id,
                        name.clone(),
                        st.message().to_string(),
                    ))
                }
            }
        }
    }
}

async fn get_job(lf: &LeaderFollower, id: u64) -> pb::JobInfo {
    on_leader!(lf, Client, |c| c.get_job(pb::JobRef { id })).expect("get job")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_job_then_full_restart() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "snapfleet_coordinator=info".into()),
        )
        .with_test_writer()
        .try_init();
    let t0 = Instant::now();
    let mut cluster = Cluster::start(3, tuning(200)).await;
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let first_election = t0.elapsed();

    let lf = LeaderFollower::new(cluster.addrs());
    let tasks: Vec<pb::TaskSpec> = (0..TASKS)
        .map(|i| pb::TaskSpec {
            payload_json: format!("{{\"tablet\":{i}}}"),
            ..Default::default()
        })
        .collect();
    let job = on_leader!(lf, Client, |c| c.submit_job(pb::SubmitJobRequest {
        kind: "backup".into(),
        spec_json: "{\"db\":\"shop\"}".into(),
        repository: String::new(),
        tasks: tasks.clone(),
        retry_budget: 3,
        driven: false,
    }))
    .expect("submit");
    assert_eq!(job.state, "pending");
    assert_eq!(job.progress.as_ref().unwrap().tasks_total, TASKS as u64);

    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut agents = tokio::task::JoinSet::new();
    for a in ["a1", "a2", "a3"] {
        agents.spawn(fake_agent(
            a.into(),
            cluster.addrs(),
            log.clone(),
            stop.clone(),
        ));
    }

    // Let a third of the work finish, then kill the leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = get_job(&lf, job.id).await;
        if j.progress.unwrap().tasks_succeeded >= (TASKS / 3) as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "job made no progress: {j:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done_before_kill = log.lock().unwrap().completed.len();
    let killed_at = Instant::now();
    cluster.kill(leader).await;
    let new_leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let failover = killed_at.elapsed();
    assert_ne!(new_leader, leader);

    // The job completes under the new leader.
    let deadline = Instant::now() + Duration::from_secs(60);
    let final_job = loop {
        let j = get_job(&lf, job.id).await;
        if j.state != "pending" && j.state != "running" {
            break j;
        }
        assert!(Instant::now() < deadline, "job did not finish: {j:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let job_time = killed_at.elapsed();
    stop.store(true, Ordering::SeqCst);
    while let Some(r) = agents.join_next().await {
        r.unwrap();
    }
    assert_eq!(final_job.state, "succeeded", "{final_job:?}");
    let p = final_job.progress.unwrap();
    assert_eq!(p.tasks_succeeded, TASKS as u64, "nothing lost: {p:?}");
    assert_eq!(p.bytes_done, 100 * TASKS as u64);

    let log = std::mem::take(&mut *log.lock().unwrap());
    assert!(
        log.completed.len() > done_before_kill,
        "new leader served completions"
    );
    // Every task completed (as acknowledged to some agent, or committed with the ack lost).
    let completed: BTreeSet<u64> = log.completed.iter().map(|c| c.0).collect();
    let mut per_task: BTreeMap<u64, Vec<&GrantRec>> = BTreeMap::new();
    for g in &log.grants {
        per_task.entry(g.task).or_default().push(g);
    }
    assert_eq!(per_task.len(), TASKS, "every task was leased");
    // Lease sequence numbers are unique fencing tokens.
    let seqs: BTreeSet<u64> = log.grants.iter().map(|g| g.seq).collect();
    assert_eq!(seqs.len(), log.grants.len());
    // No task was held by two agents at once: a re-grant starts only after the previous
    // lease (including every renewal its holder was told about) expired.
    let mut regrants = 0;
    for (task, gs) in &mut per_task {
        gs.sort_by_key(|g| g.seq);
        for w in gs.windows(2) {
            regrants += 1;
            let prev_end = log
                .renewals
                .get(&(*task, w[0].seq))
                .copied()
                .unwrap_or(0)
                .max(w[0].expires_at);
            assert!(
                w[1].granted_at >= prev_end,
                "task {task} granted to {} at {} while {}'s lease ran until {prev_end}",
                w[1].agent,
                w[1].granted_at,
                w[0].agent
            );
        }
    }
    // Each successful completion was by the lease holder of its latest grant.
    let mut seen = BTreeSet::new();
    for (task, agent) in &log.completed {
        assert!(seen.insert(*task), "task {task} completed twice");
        let last = per_task[task].last().unwrap();
        assert_eq!(&last.agent, agent, "task {task} completed by a non-holder");
    }
    eprintln!(
        "first election {first_election:?}; failover (kill -> agreed leader) {failover:?}; \
         kill -> job done {job_time:?}; grants {}, re-grants {regrants}, acked completions {}, \
         refused {} ({:?})",
        log.grants.len(),
        completed.len(),
        log.refused.len(),
        log.refused.iter().take(3).collect::<Vec<_>>()
    );

    // Restart all three from their sled dirs: the state is intact.
    cluster.restart(leader).await;
    cluster.wait_leader(Duration::from_secs(15)).await;
    let before = get_job(&lf, job.id).await;
    for id in 1..=3 {
        cluster.stop(id).await;
    }
    for id in 1..=3 {
        cluster.restart(id).await;
    }
    cluster.wait_leader(Duration::from_secs(15)).await;
    let after = get_job(&lf, job.id).await;
    assert_eq!(before, after);
    let jobs = on_leader!(lf, Client, |c| c.list_jobs(pb::ListJobsRequest {
        include_finished: true,
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(jobs.jobs.len(), 1);
    let st = on_leader!(lf, Client, |c| c.cluster_status(pb::Empty {})).unwrap();
    let agents: BTreeSet<String> = st.agents.iter().map(|a| a.id.clone()).collect();
    assert_eq!(
        agents,
        BTreeSet::from(["a1".into(), "a2".into(), "a3".into()])
    );
    // A new job still works after the restart.
    let j2 = on_leader!(lf, Client, |c| c.submit_job(pb::SubmitJobRequest {
        kind: "verify".into(),
        tasks: vec![],
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(j2.id, job.id + 1);
    for id in 1..=3 {
        cluster.stop(id).await;
    }
}
