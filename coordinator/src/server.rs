//! `run_coordinator`: one replica process. Opens sled storage, starts the Raft loop, the
//! transport senders and the leader-only scheduler, and serves the Raft transport, client and
//! agent gRPC services on one listener; writes the bound address to
//! `<data_dir>/coordinator.addr`. Every task it spawns is owned by a `JoinSet` and stops with
//! `shutdown` (or when this future is dropped). This file must never contain business logic:
//! that is the state machine's.

use crate::agent_api::AgentApi;
use crate::client_api::ClientApi;
use crate::driver::JobDriver;
use crate::error::{CoordinatorError, Result};
use crate::ids::ReplicaId;
use crate::pb::agent_service_server::AgentServiceServer;
use crate::pb::coordinator_server::CoordinatorServer;
use crate::pb::raft_transport_server::RaftTransportServer;
use crate::raft_loop::{self, Bootstrap, RaftHandle};
use crate::shared::{Shared, Tuning};
use crate::storage::SledStorage;
use crate::transport::{GrpcOutbox, TransportService};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, Instrument};

/// One replica's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub id: u64,
    /// Address to bind (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Every replica including this one, as `(id, address)`. Empty = single-replica mode
    /// (unless `join` is set).
    pub peers: Vec<(u64, String)>,
    /// Join an existing group through any of these replicas (`peers` must be empty): the
    /// replica starts with no voters and waits until the leader adds it
    /// (`snapfleet cluster add-replica`), then catches up from the leader's snapshot and log.
    pub join: Vec<String>,
    pub data_dir: PathBuf,
    pub tuning: Tuning,
    /// Leader-side runners of job phases (backup, restore…); none = tasks-only jobs.
    pub drivers: Drivers,
    /// Mutual TLS with roles on every RPC (`--certs DIR`); None = plaintext (local demo).
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// Serve Prometheus metrics here (`/metrics`).
    pub metrics: Option<std::net::SocketAddr>,
}

/// The job drivers a replica runs (see [`crate::driver`]).
#[derive(Clone, Default)]
pub struct Drivers(pub Vec<Arc<dyn JobDriver>>);

impl std::fmt::Debug for Drivers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Drivers({})", self.0.len())
    }
}

impl Config {
    pub fn new(
        id: u64,
        listen: impl Into<String>,
        peers: Vec<(u64, String)>,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            id,
            listen: listen.into(),
            peers,
            join: Vec::new(),
            data_dir: data_dir.into(),
            tuning: Tuning::default(),
            drivers: Drivers::default(),
            tls: None,
            metrics: None,
        }
    }
}

/// Binds `config.listen` and runs the replica until `shutdown` is cancelled.
pub async fn run_coordinator(config: Config, shutdown: CancellationToken) -> Result<()> {
    let listener =
        TcpListener::bind(&config.listen)
            .await
            .map_err(|source| CoordinatorError::Io {
                path: format!("listen address {}", config.listen),
                source,
            })?;
    run_coordinator_on(listener, config, shutdown).await
}

/// Like `run_coordinator`, on a listener the caller bound (lets a harness learn every
/// replica's port before any replica starts).
pub async fn run_coordinator_on(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map_err(|source| CoordinatorError::Io {
            path: "listener".into(),
            source,
        })?;
    let span = tracing::info_span!("coordinator", replica = config.id, %addr);
    async move {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| CoordinatorError::Io {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let storage = SledStorage::open(&config.data_dir)?;
        let (peers, bootstrap) = if !config.join.is_empty() {
            if !config.peers.is_empty() {
                return Err(CoordinatorError::Config(
                    "--join and --peers exclude each other: a joining replica learns its peers \
                     from the group"
                        .into(),
                ));
            }
            let fresh = !storage.is_initialized()?;
            let peers = if fresh || storage.conf_state()?.voters.is_empty() {
                discover_members(
                    config.id,
                    &config.listen,
                    &config.join,
                    fresh,
                    config.tls.clone(),
                    &shutdown,
                )
                .await?
            } else {
                // Restarted after it was added: the addresses come from its snapshot and log.
                BTreeMap::from([(config.id, config.listen.clone())])
            };
            (peers, Bootstrap::Join)
        } else if config.peers.is_empty() {
            (
                BTreeMap::from([(config.id, addr.to_string())]),
                Bootstrap::NewGroup,
            )
        } else {
            (config.peers.iter().cloned().collect(), Bootstrap::NewGroup)
        };
        let inner = shutdown.child_token();
        let mut tasks = JoinSet::new();
        let (lp, raft) = raft_loop::open(
            config.id,
            peers,
            bootstrap,
            storage,
            |input, peers| {
                GrpcOutbox::start(config.id, peers, input, inner.clone(), config.tls.clone())
            },
            config.tuning.raft.clone(),
        )?;
        let peers = raft.peers();
        let input = raft_input(&raft);
        let loop_token = inner.clone();
        let (loop_done_tx, loop_done) = tokio::sync::oneshot::channel();
        tasks.spawn(
            async move {
                let r = lp.run(loop_token).await;
                let _ = loop_done_tx.send(r);
            }
            .in_current_span(),
        );
        tasks.spawn(
            crate::scheduler::run(
                raft.clone(),
                config.tuning.scheduler_interval,
                inner.clone(),
            )
            .in_current_span(),
        );
        tasks.spawn(
            crate::driver::run(
                raft.clone(),
                config.drivers.0.clone(),
                config.tuning.scheduler_interval,
                inner.clone(),
            )
            .in_current_span(),
        );
        if let Some(addr) = config.metrics {
            crate::metrics::install(addr).map_err(CoordinatorError::Config)?;
            info!(%addr, "metrics at http://{addr}/metrics");
            tasks.spawn(crate::metrics::run(raft.clone(), inner.clone()).in_current_span());
        }
        let shared = Arc::new(Shared {
            raft: raft.clone(),
            heartbeats: Mutex::new(HashMap::new()),
            tuning: config.tuning.clone(),
            shutdown: inner.clone(),
            drivers: config.drivers.0.clone(),
            tls: config.tls.clone(),
        });
        write_addr_file(&config.data_dir, &addr.to_string())?;
        info!(peers = ?peers, "coordinator replica serving");

        let serve_token = inner.clone();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &config.tls {
            let cfg = tls
                .server_config()
                .map_err(|e| CoordinatorError::Config(e.to_string()))?;
            builder = builder
                .tls_config(cfg)
                .map_err(|e| CoordinatorError::Config(format!("TLS: {e}")))?;
        }
        let server = builder
            .layer(crate::tls::AuthLayer {
                enforce: config.tls.is_some(),
            })
            .add_service(
                // Snapshots carry the whole (small) state machine in one message.
                RaftTransportServer::new(TransportService {
                    me: ReplicaId(config.id),
                    input,
                })
                .max_decoding_message_size(256 << 20),
            )
            .add_service(CoordinatorServer::new(ClientApi(shared.clone())))
            .add_service(AgentServiceServer::new(AgentApi(shared)))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move { serve_token.cancelled().await },
            );
        let result = tokio::select! {
            r = server => r.map_err(|e| CoordinatorError::Io {
                path: format!("gRPC server on {addr}"),
                source: std::io::Error::other(e),
            }),
            r = loop_done => match r {
                Ok(r) => r,
                Err(_) => Err(CoordinatorError::Stopped),
            },
        };
        inner.cancel();
        while tasks.join_next().await.is_some() {}
        info!("coordinator replica stopped");
        result
    }
    .instrument(span)
    .await
}

/// A joining replica learns every member's id and address from any replica of the group
/// (retrying until one answers or `shutdown`) and, on a `fresh` data directory, checks that
/// its id is free.
async fn discover_members(
    id: u64,
    listen: &str,
    join: &[String],
    fresh: bool,
    tls: Option<Arc<crate::tls::Tls>>,
    shutdown: &CancellationToken,
) -> Result<BTreeMap<u64, String>> {
    use crate::pb::coordinator_client::CoordinatorClient;
    let group = crate::client::Leader::new(join).with_tls(tls);
    let status = loop {
        let r = group
            .call(|ch| async move {
                Ok(CoordinatorClient::new(ch)
                    .cluster_status(crate::pb::Empty {})
                    .await?
                    .into_inner())
            })
            .await;
        match r {
            Ok(s) => break s,
            Err(e)
                if matches!(
                    e.code(),
                    tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                ) =>
            {
                return Err(CoordinatorError::Config(format!(
                    "joining via {}: {} (a joining replica needs a node identity in --certs)",
                    join.join(","),
                    e.message()
                )));
            }
            Err(e) => {
                tracing::warn!(join = ?join, error = %e.message(), "no replica to join yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(CoordinatorError::Stopped),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    if let Some(r) = status.replicas.iter().find(|r| r.id == id && fresh) {
        return Err(CoordinatorError::Config(format!(
            "replica id {id} is already a member of the group (at {}): a member's data \
             directory must never be wiped; remove it first (`snapfleet cluster remove-replica \
             --id {id}`) or pick another id",
            r.address
        )));
    }
    let mut peers: BTreeMap<u64, String> = status
        .replicas
        .into_iter()
        .map(|r| (r.id, r.address))
        .collect();
    peers.insert(id, listen.to_string());
    info!(peers = ?peers, "joining: waiting to be added with `snapfleet cluster add-replica`");
    Ok(peers)
}

fn raft_input(raft: &RaftHandle) -> raft_loop::InputSender {
    raft.input()
}

fn write_addr_file(dir: &std::path::Path, addr: &str) -> Result<()> {
    let tmp = dir.join("coordinator.addr.tmp");
    let dst = dir.join("coordinator.addr");
    std::fs::write(&tmp, addr)
        .and_then(|_| std::fs::rename(&tmp, &dst))
        .map_err(|source| CoordinatorError::Io {
            path: dst.display().to_string(),
            source,
        })
}
