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
use snapfleet_localfleet::cluster::ChildProcess;
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

/// `snapfleet --json db sql --db app SQL` as the holder of `certs` (None: no certificate).
fn db_sql(master: &str, certs: Option<&Path>, sql: &str) -> Output {
    let mut cmd = Command::new(snapfleet_bin());
    cmd.args([
        "--json", "db", "sql", "--master", master, "--db", "app", sql,
    ])
    .env_remove("SNAPFLEET_CERTS");
    if let Some(c) = certs {
        cmd.arg("--certs").arg(c);
    }
    cmd.output().unwrap()
}

fn err(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// With `--certs`, every process of the fleet talks mutual TLS: the tabletdb master and
/// nodes, the coordinator, the agents and the CLI. A backup and a restore go through all
/// of them; tabletdb refuses a caller without a certificate, with a stranger's, or with a
/// role that may not call the method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_of_the_fleet_talks_mutual_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, pass) = snapfleet_tests::init_repo(tmp.path()).await;
    let f = snapfleet_tests::TestFleet::start_tls(3, &pass).await;
    let ca = f.cluster.opts.certs.clone().unwrap();
    let master = f.cluster.master_addr.clone();

    // The admin identity of `certs init` creates and fills a table over TLS.
    let client = f.cluster.client().await.unwrap();
    client.create_database("app", false).await.unwrap();
    let admin = db_sql(
        &master,
        Some(&ca),
        "CREATE TABLE kv (k int8 PRIMARY KEY, v text) WITH (tablets = 4); \
         INSERT INTO kv VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd'), (5, 'e')",
    );
    ok(&admin);

    // Backup and restore under a new name: coordinator → master (node identity), agents →
    // nodes (agent identities), master → nodes (node identity), all TLS with roles.
    let v = f.backup_wait("app", &url, pass.to_str().unwrap(), &[]);
    let at = snapfleet_tabletdb::HybridTime(v["result"]["hybrid_time"].as_u64().unwrap());
    let id = v["result"]["backup_id"].as_str().unwrap().to_string();
    let (okr, r, e) = f.snapfleet(&[
        "restore",
        "--backup",
        &id,
        "--repo",
        &url,
        "--password-file",
        pass.to_str().unwrap(),
        "--db",
        "copy",
        "--wait",
    ]);
    assert!(okr, "restore over TLS failed: {e}\n{r}");
    let a = snapfleet_tabletdb::verify::table_checksum(&client, "app", "kv", Some(at))
        .await
        .unwrap();
    let b = snapfleet_tabletdb::verify::table_checksum(&client, "copy", "kv", None)
        .await
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.rows, 5);

    // No certificate: plaintext to a TLS master is refused.
    let e = err(&db_sql(&master, None, "SELECT * FROM kv"));
    assert!(e.contains("master"), "{e}");
    // ...and so is plaintext to a node.
    let node = std::fs::read_to_string(f.cluster.node_dir(1).join("node.addr")).unwrap();
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", node.trim()))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = ch {
        let r = snapfleet_tabletdb::pb::tablet_server_client::TabletServerClient::new(ch)
            .node_status(snapfleet_tabletdb::pb::NodeStatusRequest {})
            .await;
        assert!(r.is_err(), "a node answered plaintext: {r:?}");
    }
    // A stranger's CA: the handshake fails.
    let stranger = tmp.path().join("stranger");
    ok(&snapfleet(&[
        "certs",
        "init",
        "--out",
        stranger.to_str().unwrap(),
    ]));
    err(&db_sql(&master, Some(&stranger), "SELECT * FROM kv"));
    // read-only reads rows but may not write them; an agent may not drop a table.
    let issue = |role: &str, name: &str| {
        let out = tmp.path().join(name);
        ok(&snapfleet(&[
            "certs",
            "issue",
            "--certs",
            ca.to_str().unwrap(),
            "--role",
            role,
            "--name",
            name,
            "--out",
            out.to_str().unwrap(),
        ]));
        out
    };
    let auditor = issue("read-only", "auditor");
    let rows = ok(&db_sql(&master, Some(&auditor), "SELECT * FROM kv"));
    assert!(rows.contains("\"e\""), "{rows}");
    let e = err(&db_sql(
        &master,
        Some(&auditor),
        "INSERT INTO kv VALUES (9, 'z')",
    ));
    assert!(
        e.contains("auditor") && e.contains("read-only") && e.contains("Write"),
        "the refusal names the certificate, its role and the method: {e}"
    );
    let agent = issue("agent", "agent-1");
    let e = err(&db_sql(&master, Some(&agent), "DROP TABLE kv"));
    assert!(e.contains("agent-1") && e.contains("DropTable"), "{e}");
    // Without certificates a master or node refuses a non-loopback address.
    for args in [
        vec!["db", "master", "--listen", "0.0.0.0:0"],
        vec!["db", "node", "--id", "1", "--listen", "0.0.0.0:0"],
    ] {
        let out = Command::new(snapfleet_bin())
            .args(&args)
            .arg("--data")
            .arg(tmp.path().join("plain"))
            .env_remove("SNAPFLEET_CERTS")
            .output()
            .unwrap();
        let e = err(&out);
        assert!(
            e.contains("refusing to serve") && e.contains("--insecure"),
            "{e}"
        );
    }
    // Nothing the refused callers tried changed the table.
    let again = snapfleet_tabletdb::verify::table_checksum(&client, "app", "kv", None)
        .await
        .unwrap();
    assert_eq!(again, a);
}
