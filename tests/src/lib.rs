//! The end-to-end test harness: starts real `snapfleet` processes (tabletdb masters and
//! nodes) on free loopback ports in temporary directories, and kills them when dropped, so
//! a scenario reads like a story:
//! `let mut c = TestCluster::start(3); … c.kill_node(2); c.start_node(2); …`.

pub mod pg;

use snapfleet_localfleet::cluster::{LocalCluster, LocalOptions};
use snapfleet_localfleet::scenario::{Scenario, Site};
use snapfleet_tabletdb::workload;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The `snapfleet` binary under test: `$SNAPFLEET_BIN`, or the one built next to the test
/// executable (`cargo build --bins` puts it in `target/<profile>/`).
pub fn snapfleet_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SNAPFLEET_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/snapfleet
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("snapfleet");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --bins` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A local cluster in a temporary directory.
pub struct TestCluster {
    pub cluster: LocalCluster,
    pub dir: tempfile::TempDir,
}

impl TestCluster {
    pub fn start(nodes: u32) -> Self {
        Self::start_with(LocalOptions {
            nodes,
            ..Default::default()
        })
    }

    pub fn start_with(opts: LocalOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("snapfleet-test-")
            .tempdir()
            .expect("temp dir");
        let cluster = LocalCluster::start(&snapfleet_bin(), &dir.path().join("c"), opts)
            .unwrap_or_else(|e| panic!("starting the cluster: {e}"));
        Self { cluster, dir }
    }
}

impl Deref for TestCluster {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.cluster
    }
}

impl DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut LocalCluster {
        &mut self.cluster
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The consistency workload running in the background of a test: one writer appending
/// counter keys to `db` and logging each key's hybrid time to `log`.
pub struct CounterWriter {
    pub log: PathBuf,
    progress: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<snapfleet_tabletdb::Result<workload::CounterReport>>,
}

impl CounterWriter {
    pub fn start(
        client: std::sync::Arc<snapfleet_tabletdb::Client>,
        db: &str,
        tablets: u32,
        log: PathBuf,
    ) -> Self {
        let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let opts = workload::CounterOptions {
            db: db.into(),
            tablets,
            keys: None,
            duration: None,
            rate: None,
            log: log.clone(),
        };
        let p = progress.clone();
        let task = tokio::spawn(async move {
            workload::run_counter(
                &client,
                opts,
                async {
                    let _ = stop_rx.await;
                },
                &p,
            )
            .await
        });
        Self {
            log,
            progress,
            stop: Some(stop),
            task,
        }
    }

    /// Keys acknowledged so far.
    pub fn keys(&self) -> u64 {
        self.progress.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (60 s at most) until at least `n` keys are acknowledged.
    pub async fn wait_for_keys(&self, n: u64) {
        let p = self.progress.clone();
        eventually(
            Duration::from_secs(60),
            &format!("{n} counter keys"),
            || {
                let p = p.clone();
                async move { (p.load(std::sync::atomic::Ordering::Relaxed) >= n).then_some(()) }
            },
        )
        .await
    }

    /// Stops the writer and returns what it wrote.
    pub async fn stop(mut self) -> workload::CounterReport {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task)
            .await
            .expect("counter task")
            .expect("counter writer")
    }
}

/// A database cluster with its fleet (one coordinator, one agent per node), all real
/// processes: the scenario's [`Site`](snapfleet_localfleet::scenario::Site) (`f.cluster`,
/// `f.fleet`, `f.client`) in a temporary directory.
pub struct TestFleet {
    site: Site,
    /// The CA and admin identity of a `start_tls` fleet (removed after the processes stop).
    pub certs: Option<tempfile::TempDir>,
    _dir: tempfile::TempDir,
}

impl Deref for TestFleet {
    type Target = Site;
    fn deref(&self) -> &Site {
        &self.site
    }
}

impl DerefMut for TestFleet {
    fn deref_mut(&mut self) -> &mut Site {
        &mut self.site
    }
}

pub const TEST_PASSPHRASE: &str = "correct horse battery staple";

/// A repository in `dir/repo` with a passphrase file `dir/pass`: (url, passphrase file).
pub async fn init_repo(dir: &std::path::Path) -> (String, PathBuf) {
    let pass = dir.join("pass");
    std::fs::write(&pass, format!("{TEST_PASSPHRASE}\n")).unwrap();
    let mut s = Scenario::with_pass_file(&snapfleet_bin(), dir, &pass).unwrap();
    s.fast_kdf = true;
    let url = s.repository("repo").await.unwrap();
    (url, pass)
}

impl TestFleet {
    /// `nodes` database nodes plus a fleet whose agents read `password_file`.
    pub async fn start(nodes: u32, password_file: &std::path::Path) -> Self {
        Self::start_with(nodes, password_file, 1).await
    }

    /// With `replicas` coordinator replicas.
    pub async fn start_with(nodes: u32, password_file: &std::path::Path, replicas: usize) -> Self {
        Self::start_opts(
            LocalOptions {
                nodes,
                ..Default::default()
            },
            password_file,
            replicas,
            None,
        )
        .await
    }

    /// Every process with `--certs`: a CA made for this fleet (`certs init` in the
    /// cluster's directory, whose admin identity the tests' CLI calls and clients use).
    pub async fn start_tls(nodes: u32, password_file: &std::path::Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("snapfleet-certs-")
            .tempdir()
            .expect("temp dir");
        snapfleet_api::tls::init_dir(dir.path(), &[], 30).expect("certs init");
        Self::start_opts(
            LocalOptions {
                nodes,
                certs: Some(dir.path().to_path_buf()),
                ..Default::default()
            },
            password_file,
            1,
            Some(dir),
        )
        .await
    }

    async fn start_opts(
        opts: LocalOptions,
        password_file: &std::path::Path,
        replicas: usize,
        certs: Option<tempfile::TempDir>,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("snapfleet-test-")
            .tempdir()
            .expect("temp dir");
        let scenario = Scenario::with_pass_file(&snapfleet_bin(), dir.path(), password_file)
            .unwrap_or_else(|e| panic!("{e}"));
        let site = scenario
            .site_with("c", opts, replicas)
            .await
            .unwrap_or_else(|e| panic!("starting the fleet: {e}"));
        Self {
            site,
            certs,
            _dir: dir,
        }
    }

    /// The id of the coordinator replica that leads now (polls up to 60 s).
    pub fn coordinator_leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for (i, c) in self.fleet.coordinators.iter().enumerate() {
                if c.is_none() {
                    continue;
                }
                let (ok, v, _) = self.snapfleet(&[
                    "cluster",
                    "status",
                    "--coordinator",
                    self.fleet.replica_addr(i + 1),
                ]);
                if ok && v["role"] == "leader" {
                    return i + 1;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no coordinator leader within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `snapfleet --json <args> --coordinator <this fleet>`; returns (success, stdout
    /// JSON or Null, stderr).
    pub fn snapfleet(&self, args: &[&str]) -> (bool, serde_json::Value, String) {
        let out = std::process::Command::new(snapfleet_bin())
            .arg("--json")
            .args(args)
            .env("SNAPFLEET_COORDINATOR", &self.fleet.coordinator_addr)
            .env("SNAPFLEET_DB_MASTER", &self.cluster.master_addr)
            .envs(
                self.cluster
                    .opts
                    .certs
                    .iter()
                    .map(|c| ("SNAPFLEET_CERTS", c)),
            )
            .output()
            .expect("running snapfleet");
        let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (
            out.status.success(),
            v,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `backup create --db DB --repo URL --password-file PASS --wait EXTRA…`, which must
    /// succeed; returns the job as JSON.
    pub fn backup_wait(
        &self,
        db: &str,
        url: &str,
        pass: &str,
        extra: &[&str],
    ) -> serde_json::Value {
        let mut args = vec![
            "backup",
            "create",
            "--db",
            db,
            "--repo",
            url,
            "--password-file",
            pass,
            "--wait",
        ];
        args.extend_from_slice(extra);
        let (ok, v, err) = self.snapfleet(&args);
        assert!(ok, "backup failed: {err}\n{v}");
        assert_eq!(v["state"], "succeeded", "{v}");
        v
    }
}

/// A TCP proxy in front of one address, for network partitions between real processes:
/// `cut` drops every connection through it and refuses new ones (accepted, then closed at
/// once), `heal` lets traffic flow again. Runs on its own threads (independent of any async
/// runtime); stops when dropped.
pub struct TcpProxy {
    pub addr: String,
    state: std::sync::Arc<ProxyState>,
    accept: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct ProxyState {
    cut: std::sync::atomic::AtomicBool,
    stop: std::sync::atomic::AtomicBool,
    /// Both ends of every live connection (clones), to shut them down on `cut`.
    conns: std::sync::Mutex<Vec<std::net::TcpStream>>,
}

impl ProxyState {
    fn drop_all(&self) {
        for s in self.conns.lock().expect("proxy lock").drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub fn start(target: &str) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let state = std::sync::Arc::new(ProxyState::default());
        let target: std::net::SocketAddr = target.parse().expect("proxy target HOST:PORT");
        let st = state.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(SeqCst) {
                    return;
                }
                let Ok(down) = conn else { continue };
                if st.cut.load(SeqCst) {
                    let _ = down.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(up) = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1))
                else {
                    let _ = down.shutdown(std::net::Shutdown::Both);
                    continue;
                };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let (Ok(d2), Ok(u2), Ok(d3), Ok(u3)) = (
                    down.try_clone(),
                    up.try_clone(),
                    down.try_clone(),
                    up.try_clone(),
                ) else {
                    continue;
                };
                {
                    let mut conns = st.conns.lock().expect("proxy lock");
                    conns.push(d3);
                    conns.push(u3);
                }
                // A cut between the check above and the registration must still drop it.
                if st.cut.load(SeqCst) {
                    st.drop_all();
                }
                pipe(down, u2);
                pipe(up, d2);
            }
        });
        Self {
            addr,
            state,
            accept: Some(accept),
        }
    }

    /// Drops every connection and refuses new ones until `heal`.
    pub fn cut(&self) {
        self.state
            .cut
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.state.drop_all();
    }

    pub fn heal(&self) {
        self.state
            .cut
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` into `to` on a thread until either side closes, then closes both.
fn pipe(mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = from.shutdown(std::net::Shutdown::Both);
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.state
            .stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.state.drop_all();
        // Wake the accept loop so that it sees `stop`.
        let _ = std::net::TcpStream::connect(&self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Stops a child gracefully (SIGTERM) and waits (30 s at most) until it has exited.
pub fn terminate(mut child: snapfleet_localfleet::cluster::ChildProcess) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.is_running() {
        assert!(
            Instant::now() < deadline,
            "{} did not stop within 30 s of SIGTERM",
            child.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
