//! The coordinator as an operator runs it: three `snapfleet coordinator` processes elect a
//! leader, `cluster status --json` reports it, and killing the leader (kill -9) elects
//! another; killing all three (kill -9) and starting them again on their data directories
//! keeps jobs, tasks, leases and agents. (Job/task failover mid-job is covered in-process by
//! coordinator/tests/failover.rs.)

use snapfleet_coordinator::client::Leader;
use snapfleet_coordinator::pb;
use snapfleet_coordinator::pb::agent_service_client::AgentServiceClient;
use snapfleet_coordinator::pb::coordinator_client::CoordinatorClient;
use snapfleet_localfleet::cluster::ChildProcess;
use snapfleet_tests::snapfleet_bin;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn status(addr: &str) -> Option<serde_json::Value> {
    let out = Command::new(snapfleet_bin())
        .args(["--json", "cluster", "status", "--coordinator", addr])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn wait_leader(addrs: &[String], not: u64) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for a in addrs {
            if let Some(s) = status(a) {
                let leader = s["leader_id"].as_u64().unwrap_or(0);
                if leader != 0 && leader != not && s["role"] == "leader" {
                    return (leader, s["term"].as_u64().unwrap());
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader elected within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_addrs(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect()
}

/// Starts replica `id` of the group `addrs` (ids 1..) with its data in `dir/c<id>`.
fn start_replica(dir: &Path, id: u64, addrs: &[String]) -> ChildProcess {
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("c{id}.log")))
        .unwrap();
    let child = Command::new(snapfleet_bin())
        .args([
            "coordinator",
            "--id",
            &id.to_string(),
            "--listen",
            &addrs[id as usize - 1],
            "--peers",
            &peers,
            "--data",
        ])
        .arg(dir.join(format!("c{id}")))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    ChildProcess::new(format!("coordinator {id}"), child)
}

#[test]
fn three_replica_processes_elect_and_fail_over() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = free_addrs(3);
    let mut procs: Vec<Option<ChildProcess>> = (1..=3)
        .map(|id| Some(start_replica(dir.path(), id, &addrs)))
        .collect();
    let (leader, term) = wait_leader(&addrs, 0);
    assert!(term >= 1);
    // kill -9 the leader: another replica takes over with a higher term.
    procs[leader as usize - 1].take().unwrap().kill();
    let rest: Vec<String> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as u64 + 1 != leader)
        .map(|(_, a)| a.clone())
        .collect();
    let (new_leader, new_term) = wait_leader(&rest, leader);
    assert_ne!(new_leader, leader);
    assert!(new_term > term);
}

async fn get_job(leader: &Leader, id: u64) -> pb::JobInfo {
    leader
        .call(|ch| async move {
            Ok(CoordinatorClient::new(ch)
                .get_job(pb::JobRef { id })
                .await?
                .into_inner())
        })
        .await
        .unwrap()
}

async fn acquire(leader: &Leader, max: u32) -> Vec<pb::TaskLease> {
    leader
        .call(|ch| async move {
            Ok(AgentServiceClient::new(ch)
                .acquire_tasks(pb::AcquireTasksRequest {
                    agent_id: "a1".into(),
                    max,
                    lease_ms: 600_000,
                    wait_ms: 0,
                })
                .await?
                .into_inner()
                .tasks)
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_three_killed_and_restarted_keep_jobs_and_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = free_addrs(3);
    let mut procs: Vec<ChildProcess> = (1..=3)
        .map(|id| start_replica(dir.path(), id, &addrs))
        .collect();
    let leader = Leader::new(&addrs);
    let tasks = (0..20)
        .map(|i| pb::TaskSpec {
            payload_json: format!(r#"{{"tablet":"t{i}"}}"#),
            ..Default::default()
        })
        .collect::<Vec<_>>();
    let job = leader
        .call(|ch| {
            let tasks = tasks.clone();
            async move {
                Ok(CoordinatorClient::new(ch)
                    .submit_job(pb::SubmitJobRequest {
                        kind: "verify".into(),
                        spec_json: r#"{"db":"d"}"#.into(),
                        tasks,
                        retry_budget: 2,
                        ..Default::default()
                    })
                    .await?
                    .into_inner())
            }
        })
        .await
        .unwrap();
    leader
        .call(|ch| async move {
            AgentServiceClient::new(ch)
                .register(pb::RegisterRequest {
                    agent_id: "a1".into(),
                    node: "n1".into(),
                    address: "127.0.0.1:1".into(),
                    version: "test".into(),
                    ..Default::default()
                })
                .await
        })
        .await
        .unwrap();
    // Lease 5 tasks, finish 3, report progress on a fourth: every kind of task state.
    let leased = acquire(&leader, 5).await;
    assert_eq!(leased.len(), 5);
    for t in &leased[..3] {
        let task_id = t.task_id;
        leader
            .call(|ch| async move {
                AgentServiceClient::new(ch)
                    .complete_task(pb::CompleteTaskRequest {
                        agent_id: "a1".into(),
                        task_id,
                        result_json: "{}".into(),
                    })
                    .await
            })
            .await
            .unwrap();
    }
    let task_id = leased[3].task_id;
    leader
        .call(|ch| async move {
            AgentServiceClient::new(ch)
                .report_progress(pb::ReportProgressRequest {
                    agent_id: "a1".into(),
                    task_id,
                    bytes_done: 100,
                    bytes_total: 1000,
                    ..Default::default()
                })
                .await
        })
        .await
        .unwrap();
    let before = get_job(&leader, job.id).await;
    let p = before.progress.unwrap();
    assert_eq!(
        (
            p.tasks_total,
            p.tasks_succeeded,
            p.tasks_running,
            p.tasks_pending
        ),
        (20, 3, 2, 15)
    );

    // kill -9 all three, start them again on the same ports and data directories.
    for p in &mut procs {
        p.kill();
    }
    drop(leader);
    let procs: Vec<ChildProcess> = (1..=3)
        .map(|id| start_replica(dir.path(), id, &addrs))
        .collect();
    let leader = Leader::new(&addrs);
    let after = get_job(&leader, job.id).await;
    assert_eq!(before, after, "job changed across a full restart");
    // The two unfinished leases are still held: only the 15 pending tasks can be leased.
    let again = acquire(&leader, 100).await;
    let old: Vec<u64> = leased.iter().map(|t| t.task_id).collect();
    assert_eq!(again.len(), 15);
    assert!(again.iter().all(|t| !old.contains(&t.task_id)));
    let status = leader
        .call(|ch| async move {
            Ok(CoordinatorClient::new(ch)
                .cluster_status(pb::Empty {})
                .await?
                .into_inner())
        })
        .await
        .unwrap();
    assert!(status.agents.iter().any(|a| a.id == "a1"));
    drop(procs);
}
