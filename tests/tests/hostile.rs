//! Hostile input through the real API: task payloads whose ids would become paths outside
//! the agent's data directory. A raw (non-driven) restore job is submitted straight to the
//! coordinator, the real agent leases its tasks, and nothing outside the node's staging area
//! may change: the payload is refused when it is decoded, and the job fails saying why.

use snapfleet_coordinator::client::Leader;
use snapfleet_coordinator::pb;
use snapfleet_coordinator::pb::coordinator_client::CoordinatorClient;
use snapfleet_tabletdb::workload;
use snapfleet_tests::{eventually, init_repo, TestFleet};
use std::sync::Arc;
use std::time::Duration;

const DB: &str = "app";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_ids_in_task_payloads_change_nothing_outside_the_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, pass) = init_repo(tmp.path()).await;
    let f = TestFleet::start(1, &pass).await;
    let client = Arc::new(f.cluster.client().await.unwrap());
    client.create_database(DB, false).await.unwrap();
    workload::run_load(
        client.clone(),
        workload::LoadOptions {
            db: DB.into(),
            tables: 1,
            tablets: 1,
            rows: Some(50),
            row_size: 64,
            ..Default::default()
        },
        Arc::new(workload::Progress::default()),
    )
    .await
    .expect("load");
    // A real backup, so that the download gets past reading ROOT to the paths.
    let v = f.backup_wait(DB, &url, pass.to_str().unwrap(), &[]);
    let backup_id = v["result"]["backup_id"].as_str().unwrap().to_string();

    // Two directories outside the node's data directory, each holding a file.
    let node_dir = f.cluster.node_dir(1);
    let outside = tmp.path().join("precious");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("keep.txt"), b"mine").unwrap();
    // `staging/<restore_id>/<tablet>` with restore_id `../../precious2` lands beside the
    // node's data directory.
    let beside = node_dir.parent().unwrap().join("precious2");
    std::fs::create_dir_all(beside.join("t")).unwrap();
    std::fs::write(beside.join("t").join("keep.txt"), b"mine").unwrap();

    let task = |restore_id: &str, source_tablet: &str| pb::TaskSpec {
        payload_json: serde_json::json!({
            "repo": url,
            "backup_id": backup_id,
            "restore_id": restore_id,
            "source_tablet": source_tablet,
            "pages": {"tablet_id": "x", "start": 0, "end": 0},
            // A restore to a time removes a failed attempt's directory first: the most
            // destructive path through the download.
            "replay": {"database_id": "d", "from_ht": 0, "to_ht": 1},
        })
        .to_string(),
        node: "1".into(),
        ..Default::default()
    };
    let tasks = vec![
        task("r1", outside.to_str().unwrap()),
        task("../../precious2", "t"),
        task("r2", "../../../precious2/t"),
    ];
    let leader = Leader::new([f.fleet.coordinator_addr.as_str()]);
    // One job per task, so that each hostile payload surely reaches the agent (a job stops
    // its other tasks once one fails for good).
    for t in tasks {
        let job = leader
            .call(|ch| {
                let t = t.clone();
                async move {
                    Ok(CoordinatorClient::new(ch)
                        .submit_job(pb::SubmitJobRequest {
                            kind: "restore".into(),
                            spec_json: "{}".into(),
                            tasks: vec![t],
                            retry_budget: 0,
                            ..Default::default()
                        })
                        .await?
                        .into_inner())
                }
            })
            .await
            .expect("submit");
        let done = eventually(Duration::from_secs(60), "the hostile job ends", || {
            let leader = &leader;
            async move {
                let j = leader
                    .call(move |ch| async move {
                        Ok(CoordinatorClient::new(ch)
                            .get_job(pb::JobRef { id: job.id })
                            .await?
                            .into_inner())
                    })
                    .await
                    .ok()?;
                matches!(j.state.as_str(), "failed" | "succeeded" | "cancelled").then_some(j)
            }
        })
        .await;
        assert_eq!(
            std::fs::read(outside.join("keep.txt")).ok().as_deref(),
            Some(&b"mine"[..]),
            "a file outside the agent's data directory was removed (job {}: {})",
            done.id,
            done.failure
        );
        assert_eq!(
            std::fs::read(beside.join("t").join("keep.txt"))
                .ok()
                .as_deref(),
            Some(&b"mine"[..]),
            "a file beside the node's data directory was removed (job {}: {})",
            done.id,
            done.failure
        );
        assert_eq!(done.state, "failed", "{done:?}");
        assert!(
            done.failure.contains("not a valid id"),
            "the failure should name the bad id: {}",
            done.failure
        );
    }
}

/// Hostile numbers through the real API: an agent reporting absurd progress on two tasks
/// (their sum overflows u64) and schedules with absurd intervals or ids. The coordinator
/// refuses what it can check at proposal, saturates what agents report, and stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_numbers_leave_the_coordinator_running() {
    use snapfleet_coordinator::pb::agent_service_client::AgentServiceClient;
    let tmp = tempfile::tempdir().unwrap();
    let (_url, pass) = init_repo(tmp.path()).await;
    let f = TestFleet::start(1, &pass).await;
    let leader = Leader::new([f.fleet.coordinator_addr.as_str()]);

    // A fake agent on a node no real agent serves, so only it leases these tasks.
    leader
        .call(|ch| async move {
            AgentServiceClient::new(ch)
                .register(pb::RegisterRequest {
                    agent_id: "rogue".into(),
                    node: "nowhere".into(),
                    address: "127.0.0.1:1".into(),
                    version: "test".into(),
                    ..Default::default()
                })
                .await
        })
        .await
        .expect("register");
    let tasks: Vec<pb::TaskSpec> = (0..2)
        .map(|i| pb::TaskSpec {
            payload_json: format!(r#"{{"n":{i}}}"#),
            node: "nowhere".into(),
            ..Default::default()
        })
        .collect();
    let job = leader
        .call(|ch| {
            let tasks = tasks.clone();
            async move {
                Ok(CoordinatorClient::new(ch)
                    .submit_job(pb::SubmitJobRequest {
                        kind: "verify".into(),
                        spec_json: "{}".into(),
                        tasks,
                        retry_budget: 0,
                        ..Default::default()
                    })
                    .await?
                    .into_inner())
            }
        })
        .await
        .expect("submit");
    let leased = leader
        .call(|ch| async move {
            AgentServiceClient::new(ch)
                .acquire_tasks(pb::AcquireTasksRequest {
                    agent_id: "rogue".into(),
                    max: 2,
                    lease_ms: 60_000,
                    wait_ms: 5_000,
                })
                .await
        })
        .await
        .expect("acquire")
        .into_inner()
        .tasks;
    assert_eq!(leased.len(), 2);
    for t in &leased {
        let task_id = t.task_id;
        leader
            .call(move |ch| async move {
                AgentServiceClient::new(ch)
                    .report_progress(pb::ReportProgressRequest {
                        agent_id: "rogue".into(),
                        task_id,
                        bytes_done: u64::MAX,
                        bytes_total: u64::MAX,
                        lease_ms: 60_000,
                        ..Default::default()
                    })
                    .await
            })
            .await
            .expect("progress");
    }
    // Still serving, with the sum saturated.
    let info = leader
        .call(move |ch| async move {
            CoordinatorClient::new(ch)
                .get_job(pb::JobRef { id: job.id })
                .await
        })
        .await
        .expect("the coordinator still answers")
        .into_inner();
    let p = info.progress.unwrap();
    assert_eq!(p.bytes_done, u64::MAX, "{p:?}");
    assert_eq!(info.nodes[0].bytes_done, u64::MAX, "{:?}", info.nodes);

    // Schedules: absurd intervals and ids are refused at proposal.
    for (interval_ms, id) in [
        (u64::MAX, "s1"),
        (0, "s2"),
        (60_000, "../x"),
        (60_000, "a/b"),
    ] {
        let e = leader
            .call(move |ch| async move {
                CoordinatorClient::new(ch)
                    .put_schedule(pb::ScheduleInfo {
                        id: id.into(),
                        kind: "backup".into(),
                        spec_json: "{}".into(),
                        interval_ms,
                        ..Default::default()
                    })
                    .await
            })
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            tonic::Code::InvalidArgument,
            "{interval_ms} {id}: {e:?}"
        );
    }
    // And the coordinator is still up and leading.
    let (ok, v, err) = f.snapfleet(&["cluster", "status"]);
    assert!(ok && v["role"] == "leader", "{v} {err}");
}
