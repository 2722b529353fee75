//! The coordinator as an operator runs it: three `snapfleet coordinator` processes elect a
//! leader, `cluster status --json` reports it, and killing the leader (kill -9) elects
//! another. (Job/task failover is covered in-process by coordinator/tests/failover.rs.)

use snapfleet_tabletdb::local::ChildProcess;
use snapfleet_tests::snapfleet_bin;
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

#[test]
fn three_replica_processes_elect_and_fail_over() {
    let dir = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs: Vec<Option<ChildProcess>> = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let log = std::fs::File::create(dir.path().join(format!("c{}.log", i + 1))).unwrap();
        let child = Command::new(snapfleet_bin())
            .args([
                "coordinator",
                "--id",
                &(i + 1).to_string(),
                "--listen",
                a,
                "--peers",
                &peers,
                "--data",
            ])
            .arg(dir.path().join(format!("c{}", i + 1)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        procs.push(Some(ChildProcess::new(
            format!("coordinator {}", i + 1),
            child,
        )));
    }
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
