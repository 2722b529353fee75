//! What every service of a replica shares: the Raft handle, the agents' heartbeats (leader
//! memory only, never in the log), timing knobs, the job drivers and this replica's TLS
//! identity. Plain state: the services (`client_api`, `agent_api`) and the server that
//! builds them all import it; it imports none of them.

use crate::driver::JobDriver;
use crate::ids::AgentId;
use crate::raft_loop::{RaftHandle, RaftTuning};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Timing knobs; the defaults suit a LAN.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub raft: RaftTuning,
    /// How often the leader's scheduler looks for expired leases.
    pub scheduler_interval: Duration,
    /// Longest AcquireTasks long poll.
    pub max_poll: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            raft: RaftTuning::default(),
            scheduler_interval: Duration::from_millis(250),
            max_poll: Duration::from_secs(30),
        }
    }
}

/// State shared by the gRPC services of one replica.
pub(crate) struct Shared {
    pub raft: RaftHandle,
    /// Agent heartbeats: leader memory only, never in the log (ms since epoch).
    pub heartbeats: Mutex<HashMap<AgentId, u64>>,
    pub tuning: Tuning,
    pub shutdown: CancellationToken,
    pub drivers: Vec<Arc<dyn JobDriver>>,
    /// This replica's identity for dialing other replicas (membership checks).
    pub tls: Option<Arc<crate::tls::Tls>>,
}
