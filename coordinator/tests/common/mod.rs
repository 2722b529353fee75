//! Test harness: a `Cluster` of coordinator replicas running as tokio tasks in this process
//! (each with its own sled dir and loopback port), clients that follow the leader, and fake
//! agents that lease and complete tasks over real gRPC. Must never share state with the
//! replicas other than through gRPC and their data directories.
#![allow(dead_code)]

use snapfleet_coordinator::pb::agent_service_client::AgentServiceClient;
use snapfleet_coordinator::pb::coordinator_client::CoordinatorClient;
use snapfleet_coordinator::pb::{self, Empty};
use snapfleet_coordinator::{run_coordinator_on, CancellationToken, Config, RaftTuning, Tuning};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

pub fn tuning(snapshot_every: u64) -> Tuning {
    Tuning {
        raft: RaftTuning {
            tick: Duration::from_millis(50),
            election_tick: 10,
            heartbeat_tick: 2,
            snapshot_every,
            request_timeout: Duration::from_secs(3),
        },
        scheduler_interval: Duration::from_millis(100),
        max_poll: Duration::from_secs(5),
    }
}

pub struct Replica {
    pub id: u64,
    pub addr: String,
    pub dir: PathBuf,
    token: CancellationToken,
    task: Option<JoinHandle<snapfleet_coordinator::Result<()>>>,
}

pub struct Cluster {
    pub replicas: Vec<Replica>,
    pub peers: Vec<(u64, String)>,
    tuning: Tuning,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    pub async fn start(n: u64, tuning: Tuning) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let peers: Vec<(u64, String)> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (i as u64 + 1, l.local_addr().unwrap().to_string()))
            .collect();
        let mut c = Cluster {
            replicas: Vec::new(),
            peers: peers.clone(),
            tuning,
            _tmp: tmp,
        };
        for (l, (id, addr)) in listeners.into_iter().zip(peers) {
            let dir = c._tmp.path().join(format!("replica-{id}"));
            c.replicas.push(Replica {
                id,
                addr,
                dir,
                token: CancellationToken::new(),
                task: None,
            });
            c.spawn(id, l);
        }
        c
    }

    fn spawn(&mut self, id: u64, listener: TcpListener) {
        let peers = if self.peers.len() == 1 {
            vec![]
        } else {
            self.peers.clone()
        };
        let r = &mut self.replicas[id as usize - 1];
        let mut cfg = Config::new(id, r.addr.clone(), peers, r.dir.clone());
        cfg.tuning = self.tuning.clone();
        r.token = CancellationToken::new();
        r.task = Some(tokio::spawn(run_coordinator_on(
            listener,
            cfg,
            r.token.clone(),
        )));
    }

    /// Starts a stopped replica again on its old port and data directory.
    pub async fn restart(&mut self, id: u64) {
        let addr = self.replicas[id as usize - 1].addr.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        let l = loop {
            match TcpListener::bind(&addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("rebinding {addr}: {e}"),
            }
        };
        self.spawn(id, l);
    }

    /// As close to kill -9 as in-process allows: abort the replica's task (its raft loop,
    /// transport and scheduler are aborted with it; its listener is closed).
    pub async fn kill(&mut self, id: u64) {
        let r = &mut self.replicas[id as usize - 1];
        if let Some(t) = r.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Graceful stop of one replica.
    pub async fn stop(&mut self, id: u64) {
        let r = &mut self.replicas[id as usize - 1];
        r.token.cancel();
        if let Some(t) = r.task.take() {
            t.await.unwrap().unwrap();
        }
    }

    pub fn alive(&self) -> Vec<&Replica> {
        self.replicas.iter().filter(|r| r.task.is_some()).collect()
    }

    pub fn addrs(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.addr.clone()).collect()
    }

    pub async fn status(&self, id: u64) -> Result<pb::ClusterStatusResponse, Status> {
        let addr = &self.replicas[id as usize - 1].addr;
        let mut c = CoordinatorClient::new(channel(addr));
        Ok(c.cluster_status(Empty {}).await?.into_inner())
    }

    /// Waits until every live replica agrees on one live leader; returns its id.
    pub async fn wait_leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let mut leaders = Vec::new();
            for r in self.alive() {
                if let Ok(s) = self.status(r.id).await {
                    leaders.push(s.leader_id);
                }
            }
            let live: Vec<u64> = self.alive().iter().map(|r| r.id).collect();
            if leaders.len() == live.len()
                && leaders[0] != 0
                && live.contains(&leaders[0])
                && leaders.iter().all(|l| *l == leaders[0])
            {
                return leaders[0];
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {within:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Polls replica `id`'s own status until it answers (10 s at most).
pub async fn eventually_status(c: &Cluster, id: u64) -> pb::ClusterStatusResponse {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.status(id).await {
            Ok(s) => return s,
            Err(e) => assert!(
                Instant::now() < deadline,
                "replica {id} did not answer within 10 s: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

/// Follows the leader: redirects on "not leader; leader is N at ADDR", rotates replicas on
/// transport errors.
pub struct LeaderFollower {
    addrs: Vec<String>,
    current: Mutex<String>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl LeaderFollower {
    pub fn new(addrs: Vec<String>) -> Self {
        Self {
            current: Mutex::new(addrs[0].clone()),
            addrs,
            channels: Mutex::new(HashMap::new()),
        }
    }

    pub fn channel(&self) -> Channel {
        let addr = self.current.lock().unwrap().clone();
        self.channels
            .lock()
            .unwrap()
            .entry(addr.clone())
            .or_insert_with(|| channel(&addr))
            .clone()
    }

    /// Whether to retry after `st` (and where).
    pub fn should_retry(&self, st: &Status) -> bool {
        let msg = st.message();
        if st.code() == Code::FailedPrecondition && msg.starts_with("not leader; leader is") {
            if let Some(addr) = msg.rsplit(" at ").next() {
                *self.current.lock().unwrap() = addr.trim().to_string();
                return true;
            }
        }
        if matches!(
            st.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::Unknown
                | Code::Cancelled
                | Code::Internal
        ) {
            let mut cur = self.current.lock().unwrap();
            let i = self.addrs.iter().position(|a| *a == *cur).unwrap_or(0);
            *cur = self.addrs[(i + 1) % self.addrs.len()].clone();
            self.channels.lock().unwrap().clear();
            return true;
        }
        false
    }
}

/// Runs `$call` (using `$c`, a client built on the follower's current channel) until it
/// succeeds, fails permanently, or 30 s pass.
#[macro_export]
macro_rules! on_leader {
    ($lf:expr, $client:ident, |$c:ident| $call:expr) => {{
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let mut $c = $client::new($lf.channel());
            match $call.await {
                Ok(r) => break Ok(r.into_inner()),
                Err(st) => {
                    if !$lf.should_retry(&st) || std::time::Instant::now() > deadline {
                        break Err(st);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                }
            }
        }
    }};
}

#[allow(unused_imports)]
pub use snapfleet_coordinator::pb::agent_service_client::AgentServiceClient as AgentClient;
#[allow(unused_imports)]
pub use snapfleet_coordinator::pb::coordinator_client::CoordinatorClient as Client;

pub fn _unused(_: AgentServiceClient<Channel>) {}
