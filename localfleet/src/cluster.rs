//! A local tabletdb cluster of real processes (`snapfleet db master` and `snapfleet db
//! node`), each on a free loopback port with its own data directory and log file. Used by
//! `snapfleet db up`, the scenario (demo, benches) and the end-to-end tests; children are
//! killed when the cluster is dropped. [`spawn`] is the one way a snapfleet process is
//! started from Rust: the fleet's coordinators and agents go through it too.

use snapfleet_tabletdb::types::NodeId;
use snapfleet_tabletdb::{Client, Error, Result};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process that is killed (SIGKILL) and reaped on drop.
pub struct ChildProcess {
    pub name: String,
    child: Child,
}

impl ChildProcess {
    /// Takes ownership of a spawned process (killed on drop).
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        Self {
            name: name.into(),
            child,
        }
    }

    /// Sends SIGKILL and waits for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// True while the process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Settings of a local cluster.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub nodes: u32,
    /// Passed to nodes as `--history-retention` (e.g. `15m`, `0s` = keep all).
    pub history_retention: String,
    pub default_tablets: u32,
    /// Where the master listens (`127.0.0.1:0` = any free port).
    pub master_listen: String,
    /// A `snapfleet certs init` directory: the master and nodes serve mutual TLS with its
    /// node identity, and [`LocalCluster::client`] dials with its admin identity.
    pub certs: Option<PathBuf>,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            history_retention: "15m".into(),
            default_tablets: 6,
            master_listen: "127.0.0.1:0".into(),
            certs: None,
        }
    }
}

/// A running local cluster.
pub struct LocalCluster {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub opts: LocalOptions,
    pub master: Option<ChildProcess>,
    pub master_addr: String,
    /// Index `i` is node id `i + 1`.
    pub nodes: Vec<Option<ChildProcess>>,
}

/// Waits until `child` has written a non-empty `path` (its address file); a child that exits
/// first is reported with the tail of its `log`.
pub fn wait_for_file(path: &Path, child: &mut ChildProcess, log: &Path) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.trim().is_empty() {
                return Ok(s.trim().to_string());
            }
        }
        if !child.is_running() {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            return Err(Error::Unavailable(format!(
                "{} exited during start-up; last log lines ({}):\n{}",
                child.name,
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        if Instant::now() > deadline {
            return Err(Error::Unavailable(format!(
                "{} did not start within 60 s (see {})",
                child.name,
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Spawns `bin args…` with stdout and stderr into `log`, killed if this process dies.
pub fn spawn(bin: &Path, name: &str, args: &[String], log: &Path) -> Result<ChildProcess> {
    let out = std::fs::File::create(log).map_err(|e| Error::io(log, e))?;
    let err = out.try_clone().map_err(|e| Error::io(log, e))?;
    let mut cmd = Command::new(bin);
    // If this process dies without dropping the cluster (SIGTERM, a killed test), the
    // kernel kills the children too: no orphaned databases left running.
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.args(args)
        .env(
            "RUST_LOG",
            std::env::var("SNAPFLEET_CHILD_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let child = spawn_from_keeper(cmd).map_err(|e| Error::io(bin, e))?;
    Ok(ChildProcess {
        name: name.to_string(),
        child,
    })
}

type SpawnRequest = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);

/// Runs `cmd.spawn()` on one thread that lives as long as this process. The kernel sends
/// `PR_SET_PDEATHSIG` when the *thread* that forked the child exits, not the process: a
/// child spawned from a pooled thread (tokio's `spawn_blocking` retires idle threads after
/// 10 s) was killed in the middle of a test.
fn spawn_from_keeper(cmd: Command) -> std::io::Result<Child> {
    static KEEPER: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<SpawnRequest>>> =
        std::sync::OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("localfleet-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("starting the process-spawning thread");
        std::sync::Mutex::new(tx)
    });
    let (reply, answer) = std::sync::mpsc::channel();
    keeper
        .lock()
        .expect("spawner lock")
        .send((cmd, reply))
        .map_err(|_| std::io::Error::other("the process-spawning thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the process-spawning thread is gone"))?
}

impl LocalCluster {
    /// Starts a master and `opts.nodes` nodes under `dir`, using the `snapfleet` binary `bin`.
    pub fn start(bin: &Path, dir: &Path, opts: LocalOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut c = Self {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            opts: opts.clone(),
            master: None,
            master_addr: String::new(),
            nodes: (0..opts.nodes).map(|_| None).collect(),
        };
        c.start_master()?;
        for id in 1..=opts.nodes {
            c.start_node(id)?;
        }
        Ok(c)
    }

    pub fn master_dir(&self) -> PathBuf {
        self.dir.join("master")
    }

    pub fn node_dir(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}"))
    }

    /// Starts (or restarts) the master on a free port (the same one when restarting).
    pub fn start_master(&mut self) -> Result<()> {
        let data = self.master_dir();
        std::fs::create_dir_all(&data).map_err(|e| Error::io(&data, e))?;
        let addr_file = data.join("master.addr");
        let listen = if self.master_addr.is_empty() {
            self.opts.master_listen.clone()
        } else {
            self.master_addr.clone()
        };
        let _ = std::fs::remove_file(&addr_file);
        let log = self.dir.join("master.log");
        let mut args: Vec<String> = vec![
            "db".into(),
            "master".into(),
            "--data".into(),
            data.display().to_string(),
            "--listen".into(),
            listen,
            "--default-tablets".into(),
            self.opts.default_tablets.to_string(),
        ];
        args.extend(self.certs_args());
        let mut child = spawn(&self.bin, "master", &args, &log)?;
        self.master_addr = wait_for_file(&addr_file, &mut child, &log)?;
        self.master = Some(child);
        Ok(())
    }

    fn certs_args(&self) -> Vec<String> {
        match &self.opts.certs {
            Some(c) => vec!["--certs".into(), c.display().to_string()],
            None => Vec::new(),
        }
    }

    /// Starts (or restarts) node `id` (1-based) on a free port.
    pub fn start_node(&mut self, id: NodeId) -> Result<()> {
        let data = self.node_dir(id);
        std::fs::create_dir_all(&data).map_err(|e| Error::io(&data, e))?;
        let addr_file = data.join("node.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = self.dir.join(format!("node-{id}.log"));
        let mut args: Vec<String> = vec![
            "db".into(),
            "node".into(),
            "--id".into(),
            id.to_string(),
            "--data".into(),
            data.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--master".into(),
            self.master_addr.clone(),
            "--history-retention".into(),
            self.opts.history_retention.clone(),
        ];
        args.extend(self.certs_args());
        let mut child = spawn(&self.bin, &format!("node {id}"), &args, &log)?;
        wait_for_file(&addr_file, &mut child, &log)?;
        let idx = id as usize - 1;
        if self.nodes.len() <= idx {
            self.nodes.resize_with(idx + 1, || None);
        }
        self.nodes[idx] = Some(child);
        Ok(())
    }

    /// kill -9 of node `id`.
    pub fn kill_node(&mut self, id: NodeId) {
        if let Some(mut c) = self.nodes.get_mut(id as usize - 1).and_then(Option::take) {
            c.kill();
        }
    }

    /// kill -9 of the master.
    pub fn kill_master(&mut self) {
        if let Some(mut c) = self.master.take() {
            c.kill();
        }
    }

    /// Connects a client and waits until every started node has registered and is live.
    pub async fn client(&self) -> Result<Client> {
        if let Some(dir) = &self.opts.certs {
            let tls = snapfleet_api::tls::Tls::load(dir)
                .map_err(|e| Error::InvalidArgument(format!("certificates: {e}")))?;
            snapfleet_tabletdb::security::use_client_tls(&tls, false);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let want: Vec<NodeId> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.is_some())
            .map(|(i, _)| i as NodeId + 1)
            .collect();
        loop {
            let attempt = async {
                let c = Client::connect(&self.master_addr).await?;
                let cat = c.catalog();
                let ok = want.iter().all(|id| {
                    cat.nodes.iter().any(|n| {
                        n.node_id == *id && n.live && {
                            // A restarted node must have re-registered its new address.
                            let f = self.node_dir(*id).join("node.addr");
                            std::fs::read_to_string(f).is_ok_and(|a| a.trim() == n.address)
                        }
                    })
                });
                Ok::<_, Error>((c, ok))
            };
            match attempt.await {
                Ok((c, true)) => return Ok(c),
                Ok((_, false)) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Ok((_, false)) => {
                    return Err(Error::Unavailable(format!(
                    "nodes {want:?} did not all register with the master within 60 s (logs in {})",
                    self.dir.display()
                )))
                }
                Err(e) => return Err(e),
            }
        }
    }
}
