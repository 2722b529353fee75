//! Prometheus metrics of a replica (`snapfleet coordinator --metrics-listen ADDR`, scrape
//! `http://ADDR/metrics`): Raft role, term and commit index, running jobs, and for each
//! change-log archive its global checkpoint and lag (off-cluster PITR's recovery point)
//! with every node's. Refreshed every second from the replicated state, so followers report
//! too (a second behind at most).

use crate::model::JobState;
use crate::raft_loop::RaftHandle;
use metrics::gauge;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Archive checkpoints are hybrid times: microseconds since the epoch in the top 52 bits.
const LOGICAL_BITS: u32 = 12;

fn wall_secs(ht: u64) -> f64 {
    (ht >> LOGICAL_BITS) as f64 / 1e6
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Starts the HTTP exporter on `addr` (needs a Tokio runtime).
pub fn install(addr: SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("metrics listener on {addr}: {e}"))
}

/// Updates the gauges every second until `shutdown`.
pub async fn run(raft: RaftHandle, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let st = raft.status();
        gauge!("snapfleet_coordinator_is_leader").set(if st.is_leader() { 1.0 } else { 0.0 });
        gauge!("snapfleet_coordinator_term").set(st.term as f64);
        gauge!("snapfleet_coordinator_commit_index").set(st.commit_index as f64);
        let now = now_secs();
        let (running, archives) = raft.read(|sm| {
            let running = sm
                .jobs()
                .filter(|j| j.state == JobState::Running || j.state == JobState::Pending)
                .count();
            (running, crate::convert::archives(sm))
        });
        gauge!("snapfleet_jobs_active").set(running as f64);
        for a in archives {
            let db = a.database;
            if a.checkpoint_ht > 0 {
                gauge!("snapfleet_archive_checkpoint_seconds", "database" => db.clone())
                    .set(wall_secs(a.checkpoint_ht));
                gauge!("snapfleet_archive_lag_seconds", "database" => db.clone())
                    .set(now - wall_secs(a.checkpoint_ht));
            }
            for n in a.nodes {
                if n.checkpoint_ht > 0 {
                    gauge!("snapfleet_archive_node_lag_seconds", "database" => db.clone(), "node" => n.node)
                        .set(now - wall_secs(n.checkpoint_ht));
                }
            }
        }
    }
}
