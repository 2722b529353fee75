//! An archive job's checkpoint as operators see it: an agent reports its node's archived
//! time with each lease renewal; `ClusterStatus` shows the global checkpoint (the oldest
//! node's, 0 while a node has not reported) and the Prometheus endpoint exports the lag.

use snapfleet_coordinator::pb::agent_service_client::AgentServiceClient;
use snapfleet_coordinator::pb::coordinator_client::CoordinatorClient;
use snapfleet_coordinator::pb::{self, Empty};
use snapfleet_coordinator::{run_coordinator_on, CancellationToken, Config};
use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tonic::transport::Endpoint;

fn ht_secs_ago(secs: u64) -> u64 {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
        - secs * 1_000_000;
    micros << 12
}

fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_checkpoints_show_in_cluster_status_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = Config::new(1, addr.clone(), vec![], tmp.path().join("c1"));
    cfg.metrics = Some(metrics_addr);
    let token = CancellationToken::new();
    let server = tokio::spawn(run_coordinator_on(listener, cfg, token.clone()));
    let ch = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut c = CoordinatorClient::new(ch.clone());
    let mut a = AgentServiceClient::new(ch);
    // Single replica: leader within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    let job = loop {
        let task = |n: &str| pb::TaskSpec {
            payload_json: "{}".into(),
            agent: String::new(),
            node: n.into(),
        };
        match c
            .submit_job(pb::SubmitJobRequest {
                kind: "archive".into(),
                spec_json: r#"{"database":"app","repo":"file:///r"}"#.into(),
                tasks: vec![task("1"), task("2")],
                retry_budget: 3,
                ..Default::default()
            })
            .await
        {
            Ok(j) => break j.into_inner(),
            Err(e) => {
                assert!(Instant::now() < deadline, "no leader: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let mut leased = Vec::new();
    for (agent, node) in [("agent-1", "1"), ("agent-2", "2")] {
        a.register(pb::RegisterRequest {
            agent_id: agent.into(),
            node: node.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let t = a
            .acquire_tasks(pb::AcquireTasksRequest {
                agent_id: agent.into(),
                max: 1,
                lease_ms: 30_000,
                wait_ms: 5_000,
            })
            .await
            .unwrap()
            .into_inner()
            .tasks;
        assert_eq!(t.len(), 1);
        leased.push((agent, t[0].task_id));
    }
    let report = |agent: &str, task: u64, checkpoint_ht: u64| pb::ReportProgressRequest {
        agent_id: agent.into(),
        task_id: task,
        checkpoint_ht,
        lease_ms: 30_000,
        ..Default::default()
    };
    // Only node 1 has reported: no global checkpoint yet.
    a.report_progress(report(leased[0].0, leased[0].1, ht_secs_ago(3)))
        .await
        .unwrap();
    let s = c.cluster_status(Empty {}).await.unwrap().into_inner();
    assert_eq!(s.archives.len(), 1);
    assert_eq!(s.archives[0].job_id, job.id);
    assert_eq!(s.archives[0].database, "app");
    assert_eq!(s.archives[0].checkpoint_ht, 0, "{:?}", s.archives[0]);
    // Node 2 is 60 s behind: it holds the global checkpoint back.
    let behind = ht_secs_ago(60);
    a.report_progress(report(leased[1].0, leased[1].1, behind))
        .await
        .unwrap();
    let s = c.cluster_status(Empty {}).await.unwrap().into_inner();
    assert_eq!(s.archives[0].checkpoint_ht, behind);
    assert_eq!(s.archives[0].nodes.len(), 2);
    assert!(s.archives[0].nodes.iter().all(|n| !n.agent.is_empty()));

    // The exporter shows the lag (refreshed every second).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = tokio::task::spawn_blocking(move || scrape(metrics_addr))
            .await
            .unwrap();
        let lag = body
            .lines()
            .find(|l| l.starts_with("snapfleet_archive_lag_seconds{database=\"app\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(lag) = lag {
            assert!((59.0..120.0).contains(&lag), "lag {lag}\n{body}");
            assert!(body.contains("snapfleet_coordinator_is_leader 1"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no archive lag exported:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    token.cancel();
    let _ = server.await;
}
