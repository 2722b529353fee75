//! `snapfleet agent`: run the agent of one database node (it leases that node's tasks
//! from the coordinator, uploads and downloads its tablets).

use crate::coord::*;
use anyhow::{Context, Result};
use clap::Args;
use snapfleet_agent::{run_agent, AgentConfig, Passphrase};
use snapfleet_coordinator::CancellationToken;
use std::path::PathBuf;

#[derive(Args)]
pub struct AgentArgs {
    #[command(flatten)]
    c: CoordArg,
    /// The tabletdb node this agent serves (its gRPC address).
    #[arg(long)]
    db_node: String,
    /// The agent's state directory.
    #[arg(long)]
    data: PathBuf,
    /// Agent id (default: agent-<node id>).
    #[arg(long)]
    id: Option<String>,
    /// Tasks (tablets) processed at once.
    #[arg(long, default_value_t = 2)]
    max_tasks: usize,
    /// Chunks in flight per task (memory ≈ tasks × streams × chunk size).
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// File holding the repository passphrase (also: $SNAPFLEET_PASSWORD_FILE, $SNAPFLEET_PASSWORD).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Drills and tests only: the object store answers `503 SlowDown` beyond this rate
    /// (e.g. `2MiB/s`), to exercise the agent's adaptive rate.
    #[arg(long, hide = true)]
    drill_store_capacity: Option<String>,
    /// Drills and tests only: share of object-store requests that fail transiently (0–1).
    #[arg(long, hide = true)]
    drill_store_faults: Option<f64>,
}

pub async fn run_agent_cmd(a: AgentArgs) -> Result<()> {
    let token = CancellationToken::new();
    crate::coord::cancel_on_signal(token.clone());
    let tls = a.c.tls()?;
    let capacity = a
        .drill_store_capacity
        .as_deref()
        .map(crate::util::parse_rate)
        .transpose()
        .context("--drill-store-capacity")?;
    let store_faults = (capacity.is_some() || a.drill_store_faults.is_some()).then(|| {
        snapfleet_repository::layers::FaultConfig {
            failure_rate: a.drill_store_faults.unwrap_or(0.0),
            capacity: capacity.unwrap_or(0),
        }
    });
    run_agent(
        AgentConfig {
            coordinator: vec![a.c.coordinator],
            tls,
            db_node: a.db_node,
            adapter: snapfleet_adapter_tabletdb::TabletdbAdapter::new(),
            data: a.data,
            id: a.id,
            max_tasks: a.max_tasks,
            streams: a.streams,
            passphrase: Passphrase {
                file: a.password_file,
            },
            store_faults,
        },
        token,
    )
    .await
    .context("agent stopped")
}
