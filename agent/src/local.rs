//! A local fleet beside a local tabletdb cluster: one coordinator replica and one agent per
//! node, as real `snapfleet` processes with log files, killed when dropped. Used by
//! `snapfleet demo` and the end-to-end tests.

use snapfleet_tabletdb::local::{spawn, wait_for_file, ChildProcess, LocalCluster};
use snapfleet_tabletdb::{Error, Result};
use std::path::{Path, PathBuf};

pub struct LocalFleet {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub password_file: PathBuf,
    pub coordinator: Option<ChildProcess>,
    pub coordinator_addr: String,
    /// Index `i` serves node id `i + 1`.
    pub agents: Vec<Option<ChildProcess>>,
}

impl LocalFleet {
    /// Starts a coordinator under `dir` and an agent for every running node of `cluster`.
    pub fn start(
        bin: &Path,
        dir: &Path,
        password_file: &Path,
        cluster: &LocalCluster,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut f = Self {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            password_file: password_file.to_path_buf(),
            coordinator: None,
            coordinator_addr: String::new(),
            agents: Vec::new(),
        };
        f.start_coordinator()?;
        for (i, n) in cluster.nodes.iter().enumerate() {
            if n.is_some() {
                f.start_agent(cluster, i as u32 + 1)?;
            }
        }
        Ok(f)
    }

    /// Starts (or restarts, on the same port and data) the coordinator.
    pub fn start_coordinator(&mut self) -> Result<()> {
        let data = self.dir.join("coordinator");
        std::fs::create_dir_all(&data).map_err(|e| Error::io(&data, e))?;
        let addr_file = data.join("coordinator.addr");
        let _ = std::fs::remove_file(&addr_file);
        let listen = if self.coordinator_addr.is_empty() {
            "127.0.0.1:0".to_string()
        } else {
            self.coordinator_addr.clone()
        };
        let log = self.dir.join("coordinator.log");
        let mut child = spawn(
            &self.bin,
            "coordinator",
            &[
                "coordinator".into(),
                "--id".into(),
                "1".into(),
                "--listen".into(),
                listen,
                "--data".into(),
                data.display().to_string(),
                "--password-file".into(),
                self.password_file.display().to_string(),
            ],
            &log,
        )?;
        self.coordinator_addr = wait_for_file(&addr_file, &mut child, &log)?;
        self.coordinator = Some(child);
        Ok(())
    }

    /// Starts (or restarts) the agent of node `id`.
    pub fn start_agent(&mut self, cluster: &LocalCluster, id: u32) -> Result<()> {
        let node_addr = std::fs::read_to_string(cluster.node_dir(id).join("node.addr"))
            .map_err(|e| Error::io(cluster.node_dir(id), e))?;
        let data = self.dir.join(format!("agent-{id}"));
        let log = self.dir.join(format!("agent-{id}.log"));
        let child = spawn(
            &self.bin,
            &format!("agent {id}"),
            &[
                "agent".into(),
                "--coordinator".into(),
                self.coordinator_addr.clone(),
                "--db-node".into(),
                node_addr.trim().to_string(),
                "--data".into(),
                data.display().to_string(),
                "--password-file".into(),
                self.password_file.display().to_string(),
            ],
            &log,
        )?;
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

    /// kill -9 of the coordinator.
    pub fn kill_coordinator(&mut self) {
        if let Some(mut c) = self.coordinator.take() {
            c.kill();
        }
    }
}
