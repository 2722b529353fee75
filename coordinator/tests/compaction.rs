//! Log compaction keeps the log bounded after many commands, a follower that was down catches
//! up from a snapshot, and (single replica) expired leases are reassigned, followers redirect,
//! and WatchJob streams progress to the end.

mod common;

use common::{tuning, AgentClient, Client, Cluster, LeaderFollower};
use snapfleet_coordinator::pb;
use std::time::{Duration, Instant};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_stays_bounded_and_lagging_follower_catches_up_by_snapshot() {
    let mut cluster = Cluster::start(3, tuning(50)).await;
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    cluster.kill(follower).await;
    let lf = LeaderFollower::new(cluster.addrs());
    for i in 0..400 {
        on_leader!(lf, AgentClient, |c| c.register(pb::RegisterRequest {
            agent_id: format!("agent-{i}"),
            node: format!("n{}", i % 7),
            ..Default::default()
        }))
        .unwrap();
    }
    let st = cluster.status(leader).await.unwrap();
    assert!(st.applied_index >= 400, "{st:?}");
    assert!(st.snapshot_index >= 350, "{st:?}");
    assert!(st.log_entries <= 60, "log not bounded: {st:?}");

    // The follower comes back; the entries it missed are compacted away, so it needs a snapshot.
    cluster.restart(follower).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader_st = cluster.status(leader).await.unwrap();
        if let Ok(f) = cluster.status(follower).await {
            if f.applied_index >= leader_st.commit_index && f.agents.len() == 400 {
                assert!(f.snapshot_index >= 350, "{f:?}");
                break;
            }
        }
        assert!(Instant::now() < deadline, "follower did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in 1..=3 {
        cluster.stop(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_replica_expiry_redirect_and_watch() {
    let mut cluster = Cluster::start(1, tuning(1000)).await;
    cluster.wait_leader(Duration::from_secs(10)).await;
    let addr = cluster.replicas[0].addr.clone();
    assert_eq!(
        std::fs::read_to_string(cluster.replicas[0].dir.join("coordinator.addr")).unwrap(),
        addr
    );
    let mut client = Client::new(common::channel(&addr));
    let mut agent = AgentClient::new(common::channel(&addr));
    for a in ["slow", "fast"] {
        agent
            .register(pb::RegisterRequest {
                agent_id: a.into(),
                node: "n1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let job = client
        .submit_job(pb::SubmitJobRequest {
            kind: "restore".into(),
            tasks: vec![pb::TaskSpec {
                payload_json: "{\"tablet\":\"t1\"}".into(),
                node: "n1".into(),
                ..Default::default()
            }],
            retry_budget: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut watch = client
        .watch_job(pb::JobRef { id: job.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().state, "pending");

    // "slow" leases the task and goes silent; its lease expires and "fast" gets it.
    let g = agent
        .acquire_tasks(pb::AcquireTasksRequest {
            agent_id: "slow".into(),
            max: 1,
            lease_ms: 300,
            wait_ms: 1000,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.tasks.len(), 1);
    let t = g.tasks[0].clone();
    let g2 = agent
        .acquire_tasks(pb::AcquireTasksRequest {
            agent_id: "fast".into(),
            max: 1,
            lease_ms: 5_000,
            wait_ms: 5_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g2.tasks.len(), 1, "long poll returns the re-leased task");
    assert_eq!(g2.tasks[0].task_id, t.task_id);
    assert!(g2.tasks[0].granted_at_ms >= t.expires_at_ms);
    assert_eq!(g2.tasks[0].attempt, 2);
    // The old holder is fenced.
    let err = agent
        .complete_task(pb::CompleteTaskRequest {
            agent_id: "slow".into(),
            task_id: t.task_id,
            result_json: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("not leased to"), "{}", err.message());
    agent
        .complete_task(pb::CompleteTaskRequest {
            agent_id: "fast".into(),
            task_id: t.task_id,
            result_json: String::new(),
        })
        .await
        .unwrap();
    let mut last = None;
    while let Some(m) = watch.message().await.unwrap() {
        last = Some(m);
    }
    assert_eq!(last.unwrap().state, "succeeded");
    cluster.stop(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_name_the_leader() {
    let mut cluster = Cluster::start(3, tuning(1000)).await;
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let mut c = Client::new(common::channel(
        &cluster.replicas[follower as usize - 1].addr,
    ));
    let err = c.get_job(pb::JobRef { id: 1 }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let leader_addr = &cluster.replicas[leader as usize - 1].addr;
    assert_eq!(
        err.message(),
        format!("not leader; leader is {leader} at {leader_addr}")
    );
    let st = c.cluster_status(pb::Empty {}).await.unwrap().into_inner();
    assert_eq!(st.leader_id, leader);
    assert_eq!(st.replicas.len(), 3);
    let mut l = Client::new(common::channel(leader_addr));
    let err = l.get_job(pb::JobRef { id: 42 }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("job-42"), "{}", err.message());
    for id in 1..=3 {
        cluster.stop(id).await;
    }
}
