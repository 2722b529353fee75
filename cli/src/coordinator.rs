//! `snapfleet coordinator` (run a Raft replica of the control plane, or join a running
//! group), `snapfleet cluster status` (replicas, leader, term, commit index, agents) and
//! `snapfleet cluster add-replica` / `remove-replica` (membership changes).

use crate::coord::CoordArg;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use snapfleet_agent::{Passphrase, Repos};
use snapfleet_coordinator::pb;
use snapfleet_coordinator::pb::coordinator_client::CoordinatorClient;
use snapfleet_coordinator::{run_coordinator, CancellationToken, Config, Drivers};
use snapfleet_jobs::DatabaseDrivers;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct CoordinatorArgs {
    /// This replica's id (1, 2, 3, …).
    #[arg(long)]
    id: u64,
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: String,
    /// Every replica including this one: `1=host:port,2=host:port,3=host:port`.
    /// Absent: single-replica mode (the embedded default). Only read when the data directory
    /// is new: after a membership change, the replicated member list wins.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Join a running group instead: addresses of any of its replicas (HOST:PORT,...).
    /// The replica starts with an empty --data directory and no vote, and waits until
    /// `snapfleet cluster add-replica --id ID --addr LISTEN` adds it; it then catches up from
    /// the leader's snapshot and log. Keep the flag when restarting it.
    #[arg(long, value_delimiter = ',', conflicts_with = "peers")]
    join: Vec<String>,
    /// Raft log, hard state and state machine (sled).
    #[arg(long)]
    data: PathBuf,
    /// File holding the repository passphrase, for writing backup ROOTs and reading them at
    /// restore (also: $SNAPFLEET_PASSWORD_FILE, $SNAPFLEET_PASSWORD).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (`/metrics`): Raft state, active jobs, and
    /// each change-log archive's checkpoint and lag (`snapfleet_archive_lag_seconds`).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Allow serving plaintext without roles (no --certs) on an address other than loopback,
    /// and /metrics on a non-loopback address. Without it, such a replica refuses to start:
    /// anyone who reaches it could submit jobs.
    #[arg(long)]
    insecure: bool,
}

/// Whether `addr` (HOST:PORT) binds only loopback.
fn is_loopback(addr: &str) -> bool {
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(addr)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Replicas, leader, term, commit index, agents and their last heartbeat.
    Status {
        #[command(flatten)]
        c: CoordArg,
    },
    /// Add a coordinator replica to the group. Start it first with
    /// `snapfleet coordinator --id ID --listen ADDR --join A,B,C --data DIR`; it becomes a
    /// voter at once and catches up from the leader. One change at a time.
    AddReplica {
        #[command(flatten)]
        c: CoordArg,
        /// The new replica's id (unused in the group so far).
        #[arg(long)]
        id: u64,
        /// HOST:PORT the other replicas reach it at (its --listen address).
        #[arg(long)]
        addr: String,
        /// Add it even if no replica waiting to join answers there. Dangerous: until it
        /// answers, the group may be unable to commit anything (only for recovery by hand).
        #[arg(long)]
        force: bool,
    },
    /// Remove a coordinator replica from the group (the leader too: it hands leadership
    /// over first). Stop the removed replica's process afterwards. One change at a time;
    /// the last replica cannot be removed.
    RemoveReplica {
        #[command(flatten)]
        c: CoordArg,
        /// The replica's id (see `snapfleet cluster status`).
        #[arg(long)]
        id: u64,
    },
}

fn parse_peers(peers: &[String]) -> Result<Vec<(u64, String)>> {
    peers
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (id, addr) = p
                .split_once('=')
                .with_context(|| format!("peer {p:?} is not ID=HOST:PORT"))?;
            Ok((
                id.trim()
                    .parse()
                    .with_context(|| format!("peer id in {p:?}"))?,
                addr.trim().to_string(),
            ))
        })
        .collect()
}

pub async fn run_replica(a: CoordinatorArgs) -> Result<()> {
    let peers = parse_peers(&a.peers)?;
    if !peers.is_empty() && !peers.iter().any(|(id, _)| *id == a.id) {
        bail!("--peers must include this replica (id {})", a.id);
    }
    if crate::certs::certs().is_none() && !a.insecure && !is_loopback(&a.listen) {
        bail!(
            "refusing to serve plaintext without roles on {}: pass --certs DIR (mutual TLS, \
             `snapfleet certs init`), listen on loopback, or pass --insecure if the network is \
             private",
            a.listen
        );
    }
    if let Some(m) = a.metrics_listen {
        if !a.insecure && !m.ip().is_loopback() {
            bail!(
                "refusing to serve unauthenticated /metrics on {m}: use a loopback address (and \
                 a scraper on the host or a proxy with TLS), or pass --insecure"
            );
        }
    }
    let token = CancellationToken::new();
    crate::coord::cancel_on_signal(token.clone());
    let mut config = Config::new(a.id, a.listen, peers, a.data);
    // --certs (global): serve mutual TLS with node.pem and enforce each caller's role;
    // replicas and the job drivers (towards tabletdb) dial with the same node identity.
    config.tls = crate::certs::load_tls(true)?;
    config.join = a.join;
    config.metrics = a.metrics_listen;
    let repos = Repos::new(Passphrase {
        file: a.password_file,
    });
    config.drivers = Drivers(vec![DatabaseDrivers::new(
        Arc::new(repos),
        snapfleet_adapter_tabletdb::TabletdbAdapter::new(),
    )]);
    run_coordinator(config, token)
        .await
        .context("coordinator replica stopped")
}

pub async fn run_cluster(cmd: ClusterCmd, json: bool) -> Result<()> {
    let c = match cmd {
        ClusterCmd::Status { c } => c,
        ClusterCmd::AddReplica { c, id, addr, force } => {
            let leader = c.leader()?;
            let m = leader
                .call(move |ch| {
                    let address = addr.clone();
                    async move {
                        CoordinatorClient::new(ch)
                            .add_replica(pb::AddReplicaRequest { id, address, force })
                            .await
                    }
                })
                .await
                .map_err(|s| anyhow::anyhow!("adding replica {id}: {}", s.message()))?
                .into_inner();
            return print_membership(&format!("replica {id} added"), &m, json);
        }
        ClusterCmd::RemoveReplica { c, id } => {
            let leader = c.leader()?;
            let m = leader
                .call(move |ch| async move {
                    CoordinatorClient::new(ch)
                        .remove_replica(pb::RemoveReplicaRequest { id })
                        .await
                })
                .await
                .map_err(|s| anyhow::anyhow!("removing replica {id}: {}", s.message()))?
                .into_inner();
            return print_membership(
                &format!("replica {id} removed (stop its process now)"),
                &m,
                json,
            );
        }
    };
    // The replica asked answers for itself (role, indexes): no leader following.
    let tls = c.tls()?;
    let addr = c.coordinator.split(',').next().unwrap_or_default().trim();
    let channel = snapfleet_coordinator::tls::endpoint(addr, tls.as_deref(), false)
        .with_context(|| format!("coordinator address {addr:?}"))?
        .connect()
        .await
        .with_context(|| {
            format!(
                "connecting to the coordinator at {addr} (start one with `snapfleet coordinator`)"
            )
        })?;
    let s = CoordinatorClient::new(channel)
        .cluster_status(snapfleet_coordinator::pb::Empty {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "id": s.id, "role": s.role, "leader_id": s.leader_id, "leader_address": s.leader_address,
                "term": s.term, "commit_index": s.commit_index, "applied_index": s.applied_index,
                "snapshot_index": s.snapshot_index, "log_entries": s.log_entries,
                "replicas": s.replicas.iter().map(|r| serde_json::json!({"id": r.id, "address": r.address})).collect::<Vec<_>>(),
                "agents": s.agents.iter().map(|a| serde_json::json!({
                    "id": a.id, "node": a.node, "address": a.address, "version": a.version,
                    "last_heartbeat_ms": a.last_heartbeat_ms,
                })).collect::<Vec<_>>(),
                "archives": s.archives.iter().map(crate::pitr::archive_json).collect::<Vec<_>>(),
            }))?
        );
        return Ok(());
    }
    println!(
        "replica {} ({}); leader {} {}; term {}; commit {} applied {} snapshot {}; {} log entries",
        s.id,
        s.role,
        s.leader_id,
        s.leader_address,
        s.term,
        s.commit_index,
        s.applied_index,
        s.snapshot_index,
        s.log_entries
    );
    for r in &s.replicas {
        println!(
            "  replica {} at {}{}",
            r.id,
            r.address,
            if r.id == s.leader_id {
                "  (leader)"
            } else {
                ""
            }
        );
    }
    for a in &s.agents {
        println!(
            "  agent {} on node {} at {} (v{}), last heartbeat {} ms",
            a.id, a.node, a.address, a.version, a.last_heartbeat_ms
        );
    }
    for a in &s.archives {
        crate::pitr::print_archive(a);
    }
    Ok(())
}

fn print_membership(what: &str, m: &pb::MembershipResponse, json: bool) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "index": m.index,
                "replicas": m.replicas.iter().map(|r| serde_json::json!({"id": r.id, "address": r.address})).collect::<Vec<_>>(),
            }))?
        );
        return Ok(());
    }
    println!("{what} at log index {}; members now:", m.index);
    for r in &m.replicas {
        println!("  replica {} at {}", r.id, r.address);
    }
    Ok(())
}
