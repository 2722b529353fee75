//! Mutual TLS and roles, as an operator sets them up: `snapfleet certs init` makes a CA with a
//! node and an admin identity, `certs issue` one identity per role, three coordinator
//! replicas serve with `--certs` (and replicate to each other over TLS with the node
//! identity). Every RPC is checked: no certificate, a certificate from another CA, or the
//! wrong role is refused; each role can do exactly its part.

use snapfleet_coordinator::client::Leader;
use snapfleet_coordinator::pb;
use snapfleet_coordinator::pb::agent_service_client::AgentServiceClient;
use snapfleet_coordinator::pb::coordinator_client::CoordinatorClient;
use snapfleet_coordinator::tls::Tls;
use snapfleet_tabletdb::local::ChildProcess;
use snapfleet_tests::snapfleet_bin;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", l.local_addr().unwrap().port())
}

fn snapfleet(args: &[&str]) -> Output {
    Command::new(snapfleet_bin()).args(args).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(addr: &str, certs: &Path) -> Output {
    snapfleet(&[
        "--json",
        "cluster",
        "status",
        "--coordinator",
        addr,
        "--certs",
        certs.to_str().unwrap(),
    ])
}

fn submit(n: usize) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        kind: "verify".into(),
        spec_json: r#"{"db":"d"}"#.into(),
        tasks: (0..n)
            .map(|i| pb::TaskSpec {
                payload_json: format!(r#"{{"tablet":"t{i}"}}"#),
                ..Default::default()
            })
            .collect(),
        retry_budget: 2,
        ..Default::default()
    }
}

fn leader_with(addrs: &[String], certs: Option<&Path>) -> Leader {
    let mut l = Leader::new(addrs).with_tls(certs.map(|c| Tls::load(c).unwrap()));
    l.patience = Duration::from_secs(20);
    l
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_roles_guards_every_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let certs = d.join("certs");
    ok(&snapfleet(&[
        "certs",
        "init",
        "--out",
        certs.to_str().unwrap(),
    ]));
    let c = certs.to_str().unwrap();
    for (role, name) in [
        ("read-only", "auditor"),
        ("operator", "ops"),
        ("agent", "agent-1"),
    ] {
        let out = d.join(name);
        ok(&snapfleet(&[
            "certs",
            "issue",
            "--certs",
            c,
            "--role",
            role,
            "--name",
            name,
            "--out",
            out.to_str().unwrap(),
        ]));
    }
    // A second, unrelated CA with its own admin: unknown to the coordinators.
    let stranger = d.join("stranger");
    ok(&snapfleet(&[
        "certs",
        "init",
        "--out",
        stranger.to_str().unwrap(),
    ]));
    // Issuing over existing files is refused and changes nothing.
    let before = std::fs::read(d.join("ops/client.pem")).unwrap();
    let again = snapfleet(&[
        "certs",
        "issue",
        "--certs",
        c,
        "--role",
        "admin",
        "--name",
        "x",
        "--out",
        d.join("ops").to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read(d.join("ops/client.pem")).unwrap(), before);

    // Three replicas over mutual TLS.
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let _procs: Vec<ChildProcess> = (1..=3)
        .map(|id| {
            let log = std::fs::File::create(d.join(format!("c{id}.log"))).unwrap();
            let child = Command::new(snapfleet_bin())
                .args(["coordinator", "--id", &id.to_string(), "--listen"])
                .arg(&addrs[id - 1])
                .args(["--peers", &peers, "--certs", c, "--data"])
                .arg(d.join(format!("c{id}")))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            ChildProcess::new(format!("coordinator {id}"), child)
        })
        .collect();
    // A leader is elected: Raft messages flow between replicas over TLS.
    let deadline = Instant::now() + Duration::from_secs(60);
    let leader_id = loop {
        let found = addrs.iter().find_map(|a| {
            let o = status(a, &certs);
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
            (v["role"] == "leader").then(|| v["leader_id"].as_u64().unwrap())
        });
        if let Some(l) = found {
            break l;
        }
        assert!(Instant::now() < deadline, "no leader over TLS within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!((1..=3).contains(&leader_id));

    // No certificate (plaintext) and a stranger's certificate: refused.
    let plain = snapfleet(&["--json", "cluster", "status", "--coordinator", &addrs[0]]);
    assert!(!plain.status.success(), "plaintext was served");
    let o = status(&addrs[0], &stranger);
    assert!(
        !o.status.success(),
        "a certificate from another CA was accepted"
    );

    // Through the client library, a stranger's certificate is a TLS failure that says to
    // check --certs, not a 30-second "no leader reachable".
    let e = leader_with(&addrs, Some(&stranger))
        .call(|ch| async move {
            CoordinatorClient::new(ch)
                .list_jobs(pb::ListJobsRequest::default())
                .await
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("--certs"), "{e:?}");

    // read-only: may read, may not submit.
    let ro = leader_with(&addrs, Some(&d.join("auditor")));
    ro.call(|ch| async move {
        CoordinatorClient::new(ch)
            .list_jobs(pb::ListJobsRequest::default())
            .await
    })
    .await
    .expect("read-only may list jobs");
    let e = ro
        .call(|ch| async move { CoordinatorClient::new(ch).submit_job(submit(1)).await })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("auditor") && e.message().contains("read-only"),
        "the refusal names the certificate and its role: {}",
        e.message()
    );

    // operator: submits driven jobs (whose tasks the leader makes), but not raw task
    // payloads, which agents would run as they are; may not act as an agent.
    let op = leader_with(&addrs, Some(&d.join("ops")));
    let e = op
        .call(|ch| async move { CoordinatorClient::new(ch).submit_job(submit(3)).await })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("admin role"), "{e:?}");
    op.call(|ch| async move {
        CoordinatorClient::new(ch)
            .submit_job(pb::SubmitJobRequest {
                kind: "backup".into(),
                spec_json: "{}".into(),
                driven: true,
                ..Default::default()
            })
            .await
    })
    .await
    .expect("an operator may submit a driven job");
    // admin (the certificate directory `certs init` wrote): may submit raw tasks.
    let admin = leader_with(&addrs, Some(&certs));
    let job = admin
        .call(|ch| async move { CoordinatorClient::new(ch).submit_job(submit(3)).await })
        .await
        .expect("admin may submit raw tasks")
        .into_inner();
    let e = op
        .call(|ch| async move {
            AgentServiceClient::new(ch)
                .register(pb::RegisterRequest {
                    agent_id: "fake".into(),
                    ..Default::default()
                })
                .await
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // agent: registers, leases and completes the operator's tasks; may not submit.
    let ag = leader_with(&addrs, Some(&d.join("agent-1")));
    ag.call(|ch| async move {
        AgentServiceClient::new(ch)
            .register(pb::RegisterRequest {
                agent_id: "agent-1".into(),
                node: "1".into(),
                address: "127.0.0.1:1".into(),
                version: "test".into(),
                ..Default::default()
            })
            .await
    })
    .await
    .expect("agent may register");
    // ...for the node its certificate names only.
    let e = ag
        .call(|ch| async move {
            AgentServiceClient::new(ch)
                .register(pb::RegisterRequest {
                    agent_id: "agent-1".into(),
                    node: "2".into(),
                    address: "127.0.0.1:1".into(),
                    version: "test".into(),
                    ..Default::default()
                })
                .await
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("agent-2"), "{e:?}");
    // ...but only as itself: its certificate names agent-1.
    let e = ag
        .call(|ch| async move {
            AgentServiceClient::new(ch)
                .register(pb::RegisterRequest {
                    agent_id: "agent-2".into(),
                    node: "n2".into(),
                    address: "127.0.0.1:2".into(),
                    version: "test".into(),
                    ..Default::default()
                })
                .await
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("--id agent-1"), "{e:?}");
    let leased = ag
        .call(|ch| async move {
            AgentServiceClient::new(ch)
                .acquire_tasks(pb::AcquireTasksRequest {
                    agent_id: "agent-1".into(),
                    max: 10,
                    lease_ms: 60_000,
                    wait_ms: 0,
                })
                .await
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(leased.len(), 3);
    for t in leased {
        ag.call(|ch| async move {
            AgentServiceClient::new(ch)
                .complete_task(pb::CompleteTaskRequest {
                    agent_id: "agent-1".into(),
                    task_id: t.task_id,
                    result_json: "{}".into(),
                })
                .await
        })
        .await
        .unwrap();
    }
    let e = ag
        .call(|ch| async move { CoordinatorClient::new(ch).submit_job(submit(1)).await })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // The job the admin submitted is done, as the read-only auditor sees it through the
    // CLI with its own certificate directory.
    let id = job.id;
    let out = ok(&snapfleet(&[
        "--json",
        "job",
        "list",
        "--all",
        "--coordinator",
        &addrs.join(","),
        "--certs",
        d.join("auditor").to_str().unwrap(),
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let listed = v
        .as_array()
        .or_else(|| v["jobs"].as_array())
        .unwrap_or_else(|| panic!("job list: {v}"))
        .iter()
        .find(|j| j["id"].as_u64() == Some(id))
        .unwrap_or_else(|| panic!("job {id} not listed: {v}"))
        .clone();
    assert_eq!(listed["state"], "succeeded", "{listed}");
}
