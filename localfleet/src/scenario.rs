//! The one scenario every demo, bench and end-to-end test tells: start a cluster with its
//! fleet and a repository, load data, back up through the coordinator, restore into a
//! brand-new cluster with a fleet that never saw the backup, and check the restored tables
//! against the source at the backup's hybrid time. Each step is one call, so `snapfleet
//! demo`, `snapfleet bench fleet|pitr` and the tests differ only in what they do between
//! the steps and what they print.
//!
//! How a job is followed is the caller's: the CLI draws progress bars ([`Watcher`]), tests
//! and benches use [`Quiet`], which polls `GetJob`.

use crate::cluster::{LocalCluster, LocalOptions};
use crate::LocalFleet;
use snapfleet_api::client::{job_state_is_terminal, Leader};
use snapfleet_api::pb::coordinator_client::CoordinatorClient;
use snapfleet_api::pb::{JobInfo, JobRef, SubmitJobRequest};
use snapfleet_jobs::spec::{BackupSpec, RestoreSpec};
use snapfleet_repository::{open_store, BackupId, InitOptions, KdfParams, Repository};
use snapfleet_tabletdb::{verify, workload, Client, HybridTime};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What can go wrong in a scenario step, naming the step.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{what}: {source}")]
    Db {
        what: String,
        #[source]
        source: snapfleet_tabletdb::Error,
    },
    #[error("{what}: {source}")]
    Repository {
        what: String,
        #[source]
        source: Box<snapfleet_repository::Error>,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {message}")]
    Rpc { what: String, message: String },
    #[error("{kind} job {id} {state}: {failure}")]
    Job {
        kind: String,
        id: u64,
        state: String,
        failure: String,
    },
}

pub type Result<T, E = ScenarioError> = std::result::Result<T, E>;

fn db_err(what: impl Into<String>) -> impl FnOnce(snapfleet_tabletdb::Error) -> ScenarioError {
    let what = what.into();
    move |source| ScenarioError::Db { what, source }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ScenarioError + '_ {
    move |source| ScenarioError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A database cluster with its own fleet (coordinator + one agent per node): the source
/// of a backup, or the brand-new target of a restore.
pub struct Site {
    pub cluster: LocalCluster,
    pub fleet: LocalFleet,
    pub client: Arc<Client>,
    pub leader: Leader,
}

/// The working directory, the repository passphrase, and the `snapfleet` binary that the
/// scenario's processes run.
pub struct Scenario {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub pass_file: PathBuf,
    pub passphrase: String,
    /// Repositories are created with the cheapest key derivation (tests), not the default.
    pub fast_kdf: bool,
}

/// A finished job: its id, its result (the driver's JSON) and how long it took from
/// submission to its end.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub id: u64,
    pub result: serde_json::Value,
    pub seconds: f64,
}

impl JobOutcome {
    /// A number from the result (0 when absent).
    pub fn num(&self, key: &str) -> u64 {
        self.result[key].as_u64().unwrap_or(0)
    }

    /// The hybrid time a backup or restore result reports.
    pub fn hybrid_time(&self) -> HybridTime {
        HybridTime(self.num("hybrid_time"))
    }
}

/// One table of the source at the cut against the same table in the restored cluster.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableCheck {
    pub table: String,
    pub source_rows: u64,
    pub restored_rows: u64,
    pub source_digest: String,
    pub restored_digest: String,
    pub ok: bool,
}

/// Follows a submitted job until it ends.
#[async_trait::async_trait]
pub trait Watcher: Sync {
    async fn watch(&self, leader: &Leader, id: u64) -> Result<JobInfo, String>;
}

/// Follows a job silently, polling `GetJob` every 100 ms.
pub struct Quiet;

#[async_trait::async_trait]
impl Watcher for Quiet {
    async fn watch(&self, leader: &Leader, id: u64) -> Result<JobInfo, String> {
        loop {
            let j =
                leader
                    .call(move |ch| async move {
                        CoordinatorClient::new(ch).get_job(JobRef { id }).await
                    })
                    .await
                    .map_err(|s| format!("following job {id}: {}", s.message()))?
                    .into_inner();
            if job_state_is_terminal(&j.state) {
                return Ok(j);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Submits a driven job and follows it with `watcher` until it ends; anything but
/// `succeeded` is a [`ScenarioError::Job`].
pub async fn run_job(
    leader: &Leader,
    kind: &str,
    spec: &impl serde::Serialize,
    watcher: &dyn Watcher,
) -> Result<JobOutcome> {
    let t = Instant::now();
    let req = SubmitJobRequest {
        kind: kind.into(),
        spec_json: serde_json::to_string(spec).map_err(|e| ScenarioError::Rpc {
            what: format!("encoding the {kind} spec"),
            message: e.to_string(),
        })?,
        driven: true,
        ..Default::default()
    };
    let job = leader
        .call(move |ch| {
            let req = req.clone();
            async move { CoordinatorClient::new(ch).submit_job(req).await }
        })
        .await
        .map_err(|s| ScenarioError::Rpc {
            what: format!("submitting the {kind} job"),
            message: s.message().to_string(),
        })?
        .into_inner();
    let j = watcher
        .watch(leader, job.id)
        .await
        .map_err(|message| ScenarioError::Rpc {
            what: format!("following {kind} job {}", job.id),
            message,
        })?;
    if j.state != "succeeded" {
        return Err(ScenarioError::Job {
            kind: kind.into(),
            id: j.id,
            state: j.state,
            failure: j.failure,
        });
    }
    let result = serde_json::from_str(&j.result_json).unwrap_or(serde_json::Value::Null);
    Ok(JobOutcome {
        id: j.id,
        result,
        seconds: t.elapsed().as_secs_f64(),
    })
}

impl Scenario {
    /// A scenario working in `dir` (created), with a fresh random passphrase in
    /// `dir/repo.pass`.
    pub fn new(bin: &Path, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let pass_file = dir.join("repo.pass");
        let passphrase = format!("{:032x}", rand::random::<u128>());
        std::fs::write(&pass_file, &passphrase).map_err(io_err(&pass_file))?;
        Self::with_pass_file(bin, dir, &pass_file)
    }

    /// A scenario working in `dir` (created) whose repositories and agents use the
    /// passphrase in `pass_file` (its first line).
    pub fn with_pass_file(bin: &Path, dir: &Path, pass_file: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let text = std::fs::read_to_string(pass_file).map_err(io_err(pass_file))?;
        Ok(Self {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            pass_file: pass_file.to_path_buf(),
            passphrase: text.lines().next().unwrap_or_default().to_string(),
            fast_kdf: false,
        })
    }

    /// Initialises a local-directory repository `dir/<name>`; returns its `file://` URL.
    pub async fn repository(&self, name: &str) -> Result<String> {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        let abs = d.canonicalize().map_err(io_err(&d))?;
        let url = format!("file://{}", abs.display());
        let repo_err = |source| ScenarioError::Repository {
            what: format!("initialising the repository {url}"),
            source: Box::new(source),
        };
        let opts = InitOptions {
            kdf: if self.fast_kdf {
                KdfParams::minimum()
            } else {
                InitOptions::default().kdf
            },
            ..Default::default()
        };
        Repository::init(
            open_store(&url).map_err(repo_err)?,
            self.passphrase.as_bytes(),
            opts,
        )
        .await
        .map_err(repo_err)?;
        Ok(url)
    }

    /// Starts a `nodes`-node cluster `dir/<name>` with its fleet in `dir/<name>-fleet`.
    pub async fn site(&self, name: &str, nodes: u32) -> Result<Site> {
        self.site_with(
            name,
            LocalOptions {
                nodes,
                ..Default::default()
            },
            1,
        )
        .await
    }

    /// Like [`site`](Self::site) with cluster options and `replicas` coordinator replicas.
    pub async fn site_with(&self, name: &str, opts: LocalOptions, replicas: usize) -> Result<Site> {
        let nodes = opts.nodes;
        let cluster = LocalCluster::start(&self.bin, &self.dir.join(name), opts)
            .map_err(db_err(format!("starting the {nodes}-node cluster {name}")))?;
        let fleet = LocalFleet::start_with(
            &self.bin,
            &self.dir.join(format!("{name}-fleet")),
            &self.pass_file,
            &cluster,
            replicas,
        )
        .map_err(db_err(format!("starting {name}'s fleet")))?;
        let client = Arc::new(
            cluster
                .client()
                .await
                .map_err(db_err(format!("connecting to {name}'s master")))?,
        );
        let leader = Leader::new([fleet.coordinator_addr.as_str()]).with_tls(match &fleet.certs {
            Some(c) => Some(
                snapfleet_api::tls::Tls::load(c).map_err(|e| ScenarioError::Rpc {
                    what: format!("loading the certificates in {}", c.display()),
                    message: e.to_string(),
                })?,
            ),
            None => None,
        });
        Ok(Site {
            cluster,
            fleet,
            client,
            leader,
        })
    }
}

impl Site {
    /// Starts (or restarts, after `fleet.kill_agent`) the agent of node `id`.
    pub fn start_agent(&mut self, id: u32) -> Result<()> {
        self.fleet
            .start_agent(&self.cluster, id)
            .map_err(db_err(format!("starting the agent of node {id}")))
    }

    /// Creates `db` (if missing) and loads `opts.rows` rows of the bulk workload into it.
    pub async fn load(
        &self,
        mut opts: workload::LoadOptions,
        progress: Arc<workload::Progress>,
    ) -> Result<workload::LoadReport> {
        let db = opts.db.clone();
        self.client
            .create_database(&db, true)
            .await
            .map_err(db_err(format!("creating database {db}")))?;
        if opts.concurrency == 0 {
            opts.concurrency = workload::LoadOptions::default().concurrency;
        }
        workload::run_load(self.client.clone(), opts, progress)
            .await
            .map_err(db_err(format!("loading rows into {db}")))
    }

    /// A backup of `db` into `repo` with the defaults every caller starts from: a new id,
    /// zstd 3, no rate limit, five DDL retries, the snapshot released afterwards.
    pub fn backup_spec(&self, db: &str, repo: &str) -> BackupSpec {
        BackupSpec {
            master: self.cluster.master_addr.clone(),
            database: db.into(),
            repo: repo.into(),
            backup_id: BackupId::generate().to_string(),
            ddl_retries: 5,
            keep_snapshot: false,
            rate_limit: 0,
            compression: 3,
            schedule_id: None,
            due_ms: None,
            retention: 0,
        }
    }

    /// A restore of every table of `backup_id` from `repo` into this (target) cluster,
    /// under the backup's database name.
    pub fn restore_spec(&self, repo: &str, backup_id: &str) -> RestoreSpec {
        RestoreSpec {
            repo: repo.into(),
            backup_id: backup_id.into(),
            master: self.cluster.master_addr.clone(),
            database: String::new(),
            tables: vec![],
            rate_limit: 0,
            to_ht: 0,
            source_database: String::new(),
        }
    }

    /// Runs a backup job on this site's coordinator.
    pub async fn backup(&self, spec: &BackupSpec, watcher: &dyn Watcher) -> Result<JobOutcome> {
        run_job(&self.leader, "backup", spec, watcher).await
    }

    /// Runs a restore job on this site's coordinator (the site is the target).
    pub async fn restore(&self, spec: &RestoreSpec, watcher: &dyn Watcher) -> Result<JobOutcome> {
        run_job(&self.leader, "restore", spec, watcher).await
    }

    /// Every table of `db` in this (source) cluster at `at` against the same table in
    /// `target` now: rows and order-independent digests.
    pub async fn compare(
        &self,
        db: &str,
        at: HybridTime,
        target: &Site,
    ) -> Result<Vec<TableCheck>> {
        compare_tables(&self.client, db, at, &target.client, db).await
    }
}

/// Every table of `db` in `source` at `at` against the table of the same name in
/// `target_db` of `target` now (a table missing there has 0 rows and fails).
pub async fn compare_tables(
    source: &Client,
    db: &str,
    at: HybridTime,
    target: &Client,
    target_db: &str,
) -> Result<Vec<TableCheck>> {
    let tables = source
        .tables(db)
        .await
        .map_err(db_err(format!("listing the tables of {db}")))?;
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        let s = verify::table_checksum(source, db, &t.name, Some(at))
            .await
            .map_err(db_err(format!("checksumming source table {db}.{}", t.name)))?;
        let r = verify::table_checksum(target, target_db, &t.name, None)
            .await
            .map_err(db_err(format!(
                "checksumming restored table {target_db}.{}",
                t.name
            )))?;
        out.push(TableCheck {
            table: t.name,
            source_rows: s.rows,
            restored_rows: r.rows,
            ok: s == r,
            source_digest: s.digest,
            restored_digest: r.digest,
        });
    }
    Ok(out)
}
