//! A local fleet beside a local tabletdb cluster: one coordinator replica and one agent per
//! node, as real `snapfleet` processes with log files, killed when dropped. Used by
//! `snapfleet demo`, the benches and the end-to-end tests, which tell one shared story
//! ([`scenario`]).

pub mod cluster;
pub mod scenario;

use crate::cluster::{spawn, wait_for_file, ChildProcess, LocalCluster};
use snapfleet_tabletdb::{Error, Result};
use std::path::{Path, PathBuf};

pub struct LocalFleet {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub password_file: PathBuf,
    /// Replica `i` has id `i + 1`.
    pub coordinators: Vec<Option<ChildProcess>>,
    /// Replica addresses, comma-separated (what `--coordinator` takes).
    pub coordinator_addr: String,
    replica_addrs: Vec<String>,
    /// Index `i` serves node id `i + 1`.
    pub agents: Vec<Option<ChildProcess>>,
    /// Extra arguments for agents started from now on (e.g. drill flags in tests).
    pub agent_args: Vec<String>,
    /// The cluster's `certs init` directory when it runs mutual TLS: coordinators serve
    /// with its node identity, each agent gets its own `agent-<node id>` identity.
    pub certs: Option<PathBuf>,
}

/// A free loopback port, for replicas that must know each other's address before starting.
fn free_addr() -> Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("127.0.0.1:0", e))?;
    let a = l.local_addr().map_err(|e| Error::io("127.0.0.1:0", e))?;
    Ok(a.to_string())
}

impl LocalFleet {
    /// Starts a coordinator under `dir` and an agent for every running node of `cluster`.
    pub fn start(
        bin: &Path,
        dir: &Path,
        password_file: &Path,
        cluster: &LocalCluster,
    ) -> Result<Self> {
        Self::start_with(bin, dir, password_file, cluster, 1)
    }

    /// Like `start`, with `replicas` coordinator replicas (1, 3, 5).
    pub fn start_with(
        bin: &Path,
        dir: &Path,
        password_file: &Path,
        cluster: &LocalCluster,
        replicas: usize,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let replica_addrs = if replicas <= 1 {
            vec![String::new()]
        } else {
            (0..replicas)
                .map(|_| free_addr())
                .collect::<Result<Vec<_>>>()?
        };
        let mut f = Self {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            password_file: password_file.to_path_buf(),
            coordinators: (0..replicas.max(1)).map(|_| None).collect(),
            coordinator_addr: String::new(),
            replica_addrs,
            agents: Vec::new(),
            agent_args: Vec::new(),
            certs: cluster.opts.certs.clone(),
        };
        for id in 1..=f.coordinators.len() {
            f.start_coordinator(id)?;
        }
        f.coordinator_addr = f.replica_addrs.join(",");
        for (i, n) in cluster.nodes.iter().enumerate() {
            if n.is_some() {
                f.start_agent(cluster, i as u32 + 1)?;
            }
        }
        Ok(f)
    }

    /// Starts (or restarts, on the same port and data) coordinator replica `id` (1-based).
    pub fn start_coordinator(&mut self, id: usize) -> Result<()> {
        let data = self.dir.join(format!("coordinator-{id}"));
        std::fs::create_dir_all(&data).map_err(|e| Error::io(&data, e))?;
        let addr_file = data.join("coordinator.addr");
        let _ = std::fs::remove_file(&addr_file);
        let single = self.replica_addrs.len() == 1;
        let listen = if self.replica_addrs[id - 1].is_empty() {
            "127.0.0.1:0".to_string()
        } else {
            self.replica_addrs[id - 1].clone()
        };
        let log = self.dir.join(format!("coordinator-{id}.log"));
        let mut args: Vec<String> = vec![
            "coordinator".into(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            listen,
            "--data".into(),
            data.display().to_string(),
            "--password-file".into(),
            self.password_file.display().to_string(),
        ];
        if let Some(c) = &self.certs {
            args.push("--certs".into());
            args.push(c.display().to_string());
        }
        if !single {
            args.push("--peers".into());
            args.push(
                self.replica_addrs
                    .iter()
                    .enumerate()
                    .map(|(i, a)| format!("{}={a}", i + 1))
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        let mut child = spawn(&self.bin, &format!("coordinator {id}"), &args, &log)?;
        let addr = wait_for_file(&addr_file, &mut child, &log)?;
        if single {
            self.replica_addrs[0] = addr.clone();
            self.coordinator_addr = addr;
        }
        self.coordinators[id - 1] = Some(child);
        Ok(())
    }

    /// Starts (or restarts) the agent of node `id`.
    pub fn start_agent(&mut self, cluster: &LocalCluster, id: u32) -> Result<()> {
        let node_addr = std::fs::read_to_string(cluster.node_dir(id).join("node.addr"))
            .map_err(|e| Error::io(cluster.node_dir(id), e))?;
        let data = self.dir.join(format!("agent-{id}"));
        let log = self.dir.join(format!("agent-{id}.log"));
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--coordinator".into(),
            self.coordinator_addr.clone(),
            "--db-node".into(),
            node_addr.trim().to_string(),
            "--data".into(),
            data.display().to_string(),
            "--password-file".into(),
            self.password_file.display().to_string(),
        ];
        if let Some(ca) = &self.certs {
            // The agent's own identity, signed by the cluster's CA: it serves node `id` only.
            let dir = self.dir.join(format!("certs-agent-{id}"));
            if !dir.join("client.pem").exists() {
                let name = format!("agent-{id}");
                snapfleet_api::tls::issue_into(
                    ca,
                    &dir,
                    snapfleet_api::tls::Role::Agent,
                    &name,
                    &[],
                    30,
                )
                .map_err(|e| {
                    Error::InvalidArgument(format!("issuing {name}'s certificate: {e}"))
                })?;
            }
            args.push("--certs".into());
            args.push(dir.display().to_string());
        }
        args.extend(self.agent_args.iter().cloned());
        let child = spawn(&self.bin, &format!("agent {id}"), &args, &log)?;
        let idx = id as usize - 1;
        if self.agents.len() <= idx {
            self.agents.resize_with(idx + 1, || None);
        }
        self.agents[idx] = Some(child);
        Ok(())
    }

    /// kill -9 of node `id`'s agent.
    pub fn kill_agent(&mut self, id: u32) {
        if let Some(mut c) = self.agents.get_mut(id as usize - 1).and_then(Option::take) {
            c.kill();
        }
    }

    /// kill -9 of coordinator replica `id` (1-based).
    pub fn kill_coordinator(&mut self, id: usize) {
        if let Some(mut c) = self.coordinators.get_mut(id - 1).and_then(Option::take) {
            c.kill();
        }
    }

    /// The address of replica `id`.
    pub fn replica_addr(&self, id: usize) -> &str {
        &self.replica_addrs[id - 1]
    }
}
