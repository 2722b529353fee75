//! The coordinator group under network partitions and membership changes, with real
//! `snapfleet coordinator` processes:
//! - a replica cut off from the other two (TCP proxies between every directed pair of
//!   replicas) refuses writes with a clear error while the majority keeps committing, and
//!   catches up once the partition heals;
//! - a fourth replica joins (`--join`, `cluster add-replica`) and catches up, the leader is
//!   removed (`cluster remove-replica`: it hands over first), another original is killed -9,
//!   and the remaining two of three still commit; a restarted replica keeps the new membership
//!   instead of its `--peers`.

use snapfleet_coordinator::client::Leader;
use snapfleet_coordinator::ids::JobId;
use snapfleet_coordinator::pb;
use snapfleet_coordinator::pb::coordinator_client::CoordinatorClient;
use snapfleet_localfleet::cluster::ChildProcess;
use snapfleet_tests::{eventually, snapfleet_bin, terminate, TcpProxy};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Endpoint;

const PATIENCE: Duration = Duration::from_secs(60);

fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// Starts `snapfleet coordinator --id <id> --listen <listen> <args…> --data dir/c<id>`.
fn spawn_replica(dir: &Path, id: u64, listen: &str, args: &[String]) -> ChildProcess {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("c{id}.log")))
        .unwrap();
    let child = Command::new(snapfleet_bin())
        .args(["coordinator", "--id", &id.to_string(), "--listen", listen])
        .args(args)
        .arg("--data")
        .arg(dir.join(format!("c{id}")))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    ChildProcess::new(format!("coordinator {id}"), child)
}

/// Prints the tail of every replica log in `dir` if the test is failing (kept in CI output).
struct LogsOnFailure<'a>(&'a Path);

impl Drop for LogsOnFailure<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(self.0) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("==== {} (last 60 lines)", p.display());
                for l in &lines[lines.len().saturating_sub(60)..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}

fn peers_arg(peers: &[(u64, String)]) -> Vec<String> {
    let list = peers
        .iter()
        .map(|(id, a)| format!("{id}={a}"))
        .collect::<Vec<_>>()
        .join(",");
    vec!["--peers".into(), list]
}

/// One replica's own view (`ClusterStatus` is answered by any replica, no redirect).
async fn status(addr: &str) -> Option<pb::ClusterStatusResponse> {
    let ch = Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()?;
    CoordinatorClient::new(ch)
        .cluster_status(pb::Empty {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// `snapfleet --json <args>`, off the async runtime; returns (success, stdout JSON, stderr).
async fn cli(args: Vec<String>) -> (bool, serde_json::Value, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(snapfleet_bin())
            .arg("--json")
            .args(&args)
            .output()
            .expect("running snapfleet");
        (
            out.status.success(),
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn replica_ids(v: &serde_json::Value) -> BTreeSet<u64> {
    v["replicas"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// Waits until one of `addrs` says it leads (and is not `not`); returns its status.
async fn wait_leader(addrs: &[String], not: u64) -> pb::ClusterStatusResponse {
    eventually(PATIENCE, "a coordinator leader", || async move {
        for a in addrs {
            if let Some(s) = status(a).await {
                if s.role == "leader" && s.id != not {
                    return Some(s);
                }
            }
        }
        None
    })
    .await
}

fn job_request(tag: &str) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        kind: "verify".into(),
        spec_json: format!(r#"{{"tag":"{tag}"}}"#),
        tasks: vec![pb::TaskSpec {
            payload_json: r#"{"tablet":"t0"}"#.into(),
            ..Default::default()
        }],
        retry_budget: 1,
        ..Default::default()
    }
}

async fn submit(leader: &Leader, tag: &str) -> pb::JobInfo {
    let req = job_request(tag);
    leader
        .call(|ch| {
            let req = req.clone();
            async move {
                Ok(CoordinatorClient::new(ch)
                    .submit_job(req)
                    .await?
                    .into_inner())
            }
        })
        .await
        .unwrap_or_else(|s| panic!("submitting job {tag}: {}", s.message()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_replica_refuses_writes_and_catches_up_after_the_partition_heals() {
    let dir = tempfile::tempdir().unwrap();
    let _logs = LogsOnFailure(dir.path());
    // Hold the replicas' ports until the proxies have theirs (no port handed out twice).
    let reserved: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<String> = reserved
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    // proxies[i][j]: replica i+1's way to replica j+1.
    let proxies: Vec<Vec<Option<TcpProxy>>> = (0..3)
        .map(|i| {
            (0..3)
                .map(|j| (i != j).then(|| TcpProxy::start(&addrs[j])))
                .collect()
        })
        .collect();
    drop(reserved);
    let mut procs = Vec::new();
    for i in 0..3 {
        let peers: Vec<(u64, String)> = (0..3)
            .map(|j| {
                let a = match &proxies[i][j] {
                    Some(p) => p.addr.clone(),
                    None => addrs[j].clone(),
                };
                (j as u64 + 1, a)
            })
            .collect();
        procs.push(spawn_replica(
            dir.path(),
            i as u64 + 1,
            &addrs[i],
            &peers_arg(&peers),
        ));
    }
    let all = Leader::new(&addrs);
    let before = submit(&all, "before").await;

    // Cut the leader off from the other two, both directions.
    let victim = wait_leader(&addrs, 0).await.id;
    let v = victim as usize - 1;
    for (i, row) in proxies.iter().enumerate() {
        for (j, p) in row.iter().enumerate() {
            if let Some(p) = p {
                if i == v || j == v {
                    p.cut();
                }
            }
        }
    }
    let majority: Vec<String> = (0..3)
        .filter(|i| *i != v)
        .map(|i| addrs[i].clone())
        .collect();
    let new_leader = wait_leader(&majority, victim).await;
    assert!(new_leader.term > 0);

    // The majority keeps serving.
    let majority_client = Leader::new(&majority);
    let during = submit(&majority_client, "during").await;
    let committed = status(&addrs[new_leader.id as usize - 1])
        .await
        .expect("majority leader status")
        .commit_index;

    // The cut-off replica refuses writes, quickly and clearly (no redirect to follow: the
    // client talks to it alone).
    let started = Instant::now();
    let mut minority = CoordinatorClient::new(
        Endpoint::from_shared(format!("http://{}", addrs[v]))
            .unwrap()
            .connect_lazy(),
    );
    let refused = tokio::time::timeout(
        Duration::from_secs(20),
        minority.submit_job(job_request("minority")),
    )
    .await
    .expect("a write to the cut-off replica hung for 20 s")
    .expect_err("the cut-off replica accepted a write");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "refusal took {took:?}: {refused:?}"
    );
    assert!(
        matches!(
            refused.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Aborted
        ),
        "{refused:?}"
    );
    eprintln!(
        "cut-off replica refused a write after {took:?}: {}",
        refused.message()
    );
    // Once it has stepped down (check-quorum) it refuses at once, saying why.
    let va = addrs[v].clone();
    let st = eventually(PATIENCE, "the cut-off replica to step down", || {
        let va = va.clone();
        async move { status(&va).await.filter(|s| s.role != "leader") }
    })
    .await;
    assert!(st.commit_index < committed, "{st:?} vs commit {committed}");
    let started = Instant::now();
    let refused = tokio::time::timeout(
        Duration::from_secs(20),
        minority.submit_job(job_request("minority")),
    )
    .await
    .expect("a write to the cut-off replica hung for 20 s")
    .expect_err("the cut-off replica accepted a write");
    assert!(started.elapsed() < Duration::from_secs(2), "{refused:?}");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("cannot reach a majority"),
        "{refused:?}"
    );

    // Heal: the cut-off replica follows the new leader and applies the job submitted
    // during the cut (seen through `snapfleet cluster status --json`).
    for row in &proxies {
        for p in row.iter().flatten() {
            p.heal();
        }
    }
    let victim_addr = addrs[v].clone();
    let caught_up = eventually(PATIENCE, "the healed replica to catch up", || {
        let args = vec![
            "cluster".into(),
            "status".into(),
            "--coordinator".into(),
            victim_addr.clone(),
        ];
        async move {
            let (ok, s, _) = cli(args).await;
            (ok && s["applied_index"].as_u64()? >= committed && s["leader_id"].as_u64()? != 0)
                .then_some(s)
        }
    })
    .await;
    assert_eq!(caught_up["role"], "follower", "{caught_up}");
    // Everyone serves again.
    let after = submit(&all, "after").await;

    // Ask the healed replica's own state (stopped gracefully so everything is on disk).
    let proc = procs.remove(v);
    tokio::task::spawn_blocking(move || terminate(proc))
        .await
        .unwrap();
    let sm = snapfleet_coordinator::raft_loop::read_state(&dir.path().join(format!("c{victim}")))
        .unwrap();
    for j in [&before, &during, &after] {
        assert!(sm.job(JobId(j.id)).is_some(), "job {} missing", j.id);
    }
    assert!(sm.jobs().all(|j| j.spec["tag"] != "minority"));
    drop(procs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_replica_catches_up_and_the_group_survives_removing_the_leader_and_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let _logs = LogsOnFailure(dir.path());
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let peers: Vec<(u64, String)> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (i as u64 + 1, a.clone()))
        .collect();
    let mut procs: Vec<Option<ChildProcess>> = (0..3)
        .map(|i| {
            Some(spawn_replica(
                dir.path(),
                i as u64 + 1,
                &addrs[i],
                &peers_arg(&peers),
            ))
        })
        .collect();
    let group = Leader::new(&addrs);
    let early = submit(&group, "early").await;

    // A fourth replica joins through two of the three and waits to be added.
    let addr4 = free_addr();
    let join = vec!["--join".to_string(), format!("{},{}", addrs[0], addrs[1])];
    let p4 = spawn_replica(dir.path(), 4, &addr4, &join);
    let a4 = addr4.clone();
    eventually(PATIENCE, "replica 4 waiting to join", || {
        let a4 = a4.clone();
        async move { (status(&a4).await?.role == "joining").then_some(()) }
    })
    .await;
    let coordinators = addrs.join(",");
    let (ok, added, err) = cli(vec![
        "cluster".into(),
        "add-replica".into(),
        "--id".into(),
        "4".into(),
        "--addr".into(),
        addr4.clone(),
        "--coordinator".into(),
        coordinators.clone(),
    ])
    .await;
    assert!(ok, "add-replica failed: {err}");
    assert_eq!(replica_ids(&added), BTreeSet::from([1, 2, 3, 4]), "{added}");
    // Adding it twice is refused.
    let (ok, _, err) = cli(vec![
        "cluster".into(),
        "add-replica".into(),
        "--id".into(),
        "4".into(),
        "--addr".into(),
        addr4.clone(),
        "--coordinator".into(),
        coordinators.clone(),
    ])
    .await;
    assert!(!ok && err.contains("already a member"), "{err}");

    // Replica 4 catches up (from the leader's snapshot) and knows every member.
    let add_index = added["index"].as_u64().unwrap();
    let a4 = addr4.clone();
    eventually(PATIENCE, "replica 4 to catch up", || {
        let a4 = a4.clone();
        async move {
            let s = status(&a4).await?;
            (s.role == "follower" && s.applied_index >= add_index && s.replicas.len() == 4)
                .then_some(())
        }
    })
    .await;

    // Remove the leader: it hands over, another replica removes it.
    let old_leader = wait_leader(&addrs, 0).await.id;
    let (ok, removed, err) = cli(vec![
        "cluster".into(),
        "remove-replica".into(),
        "--id".into(),
        old_leader.to_string(),
        "--coordinator".into(),
        coordinators.clone(),
    ])
    .await;
    assert!(ok, "remove-replica failed: {err}");
    let mut members = BTreeSet::from([1, 2, 3, 4]);
    members.remove(&old_leader);
    assert_eq!(replica_ids(&removed), members, "{removed}");
    let survivors: Vec<u64> = members.iter().copied().collect();
    let addr_of = |id: u64| {
        if id == 4 {
            addr4.clone()
        } else {
            addrs[id as usize - 1].clone()
        }
    };
    let survivor_addrs: Vec<String> = survivors.iter().map(|id| addr_of(*id)).collect();
    let leader = wait_leader(&survivor_addrs, old_leader).await;
    assert_ne!(leader.id, old_leader);
    procs[old_leader as usize - 1].take().unwrap().kill();

    // kill -9 one more original: two of the three voters remain, a quorum.
    let victim = survivors.iter().copied().find(|id| *id != 4).unwrap();
    procs[victim as usize - 1].take().unwrap().kill();
    let remaining: Vec<String> = survivors
        .iter()
        .filter(|id| **id != victim)
        .map(|id| addr_of(*id))
        .collect();
    let late = submit(&Leader::new(&remaining), "late").await;

    // The killed replica restarts with its original --peers and keeps the new membership.
    procs[victim as usize - 1] = Some(spawn_replica(
        dir.path(),
        victim,
        &addrs[victim as usize - 1],
        &peers_arg(&peers),
    ));
    let late_index = wait_leader(&remaining, 0).await.commit_index;
    let va = addr_of(victim);
    let want: Vec<u64> = survivors.clone();
    eventually(PATIENCE, "the restarted replica to catch up", || {
        let va = va.clone();
        let want = want.clone();
        async move {
            let s = status(&va).await?;
            let ids: Vec<u64> = s.replicas.iter().map(|r| r.id).collect();
            (ids == want && s.applied_index >= late_index && s.role == "follower").then_some(())
        }
    })
    .await;

    // Replica 4's own state holds the jobs from before it joined and after the kill.
    tokio::task::spawn_blocking(move || terminate(p4))
        .await
        .unwrap();
    let sm = snapfleet_coordinator::raft_loop::read_state(&dir.path().join("c4")).unwrap();
    assert!(
        sm.job(JobId(early.id)).is_some(),
        "job from before the join"
    );
    assert!(sm.job(JobId(late.id)).is_some(), "job from after the kill");
    assert_eq!(sm.members().keys().copied().collect::<Vec<_>>(), survivors);

    // Restarted with the same --join, replica 4 is a member again straight away.
    let _p4 = spawn_replica(dir.path(), 4, &addr4, &join);
    let again = submit(&Leader::new(&remaining), "again").await;
    // While replica 4 was down, the restarted victim may have been elected: the leader can
    // be any survivor now (waiting on `remaining` alone timed out when it was the victim).
    let index = wait_leader(&survivor_addrs, 0).await.commit_index;
    let a4 = addr4.clone();
    eventually(PATIENCE, "restarted replica 4 to catch up", || {
        let a4 = a4.clone();
        let want = want.clone();
        async move {
            let s = status(&a4).await?;
            let ids: Vec<u64> = s.replicas.iter().map(|r| r.id).collect();
            (ids == want && s.applied_index >= index && s.leader_id != 0).then_some(())
        }
    })
    .await;
    assert!(again.id > late.id);
    drop(procs);
}
