//! Raft messages between replicas over tonic gRPC: one sender task per peer drains a bounded
//! queue into `RaftTransport.Send` batches, reconnecting after failures; the server side
//! decodes batches into the Raft loop's input. The peer set follows membership changes: a
//! sender starts for a new member and stops for a removed one. Raft tolerates loss, so when a peer is down
//! messages are dropped (and reported unreachable), never buffered without bound. This file
//! must never block the Raft loop.

use crate::ids::ReplicaId;
use crate::pb::raft_transport_client::RaftTransportClient;
use crate::pb::raft_transport_server::RaftTransport;
use crate::pb::{Empty, RaftBatch};
use crate::raft_loop::{decode_message, encode_message, is_snapshot, Input, InputSender, Outbox};
use crate::tls::Tls;
use raft::eraftpb::Message;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::{debug, warn};

const QUEUE: usize = 4096;
const BATCH: usize = 512;

/// The client side: routes outgoing messages to per-peer queues. Its sender tasks stop when
/// `shutdown` is cancelled, when their peer is removed, or when the outbox is dropped.
pub struct GrpcOutbox {
    me: u64,
    input: InputSender,
    shutdown: CancellationToken,
    peers: HashMap<u64, PeerQueue>,
    tasks: JoinSet<()>,
    tls: Option<Arc<Tls>>,
}

struct PeerQueue {
    addr: String,
    queue: mpsc::Sender<Message>,
    stop: CancellationToken,
}

impl GrpcOutbox {
    /// Starts one sender task per peer (other than `me`).
    pub fn start(
        me: u64,
        peers: &BTreeMap<u64, String>,
        input: InputSender,
        shutdown: CancellationToken,
        tls: Option<Arc<Tls>>,
    ) -> Self {
        let mut outbox = Self {
            me,
            input,
            shutdown,
            peers: HashMap::new(),
            tasks: JoinSet::new(),
            tls,
        };
        outbox.set_peers(peers);
        outbox
    }

    fn start_peer(&mut self, id: u64, addr: &str) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stop = self.shutdown.child_token();
        self.tasks.spawn(peer_sender(
            self.me,
            id,
            addr.to_string(),
            rx,
            self.input.clone(),
            stop.clone(),
            self.tls.clone(),
        ));
        self.peers.insert(
            id,
            PeerQueue {
                addr: addr.to_string(),
                queue: tx,
                stop,
            },
        );
    }
}

impl Outbox for GrpcOutbox {
    fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            if let Some(p) = self.peers.get(&m.to) {
                if p.queue.try_send(m).is_err() {
                    debug!("raft queue full or closed; message dropped (raft will retry)");
                }
            }
        }
    }

    fn set_peers(&mut self, peers: &BTreeMap<u64, String>) {
        let gone: Vec<u64> = self
            .peers
            .iter()
            .filter(|(id, p)| peers.get(id) != Some(&p.addr))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(p) = self.peers.remove(&id) {
                debug!(peer = id, addr = %p.addr, "raft sender stopped");
                p.stop.cancel();
            }
        }
        for (&id, addr) in peers {
            if id != self.me && !self.peers.contains_key(&id) {
                debug!(peer = id, %addr, "raft sender started");
                self.start_peer(id, addr);
            }
        }
        // Reap the senders that have finished.
        while self.tasks.try_join_next().is_some() {}
    }
}

async fn connect(
    addr: &str,
    tls: Option<&Tls>,
) -> Result<RaftTransportClient<Channel>, tonic::transport::Error> {
    let ep = crate::tls::endpoint(addr, tls, true)?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    Ok(RaftTransportClient::new(ep.connect().await?))
}

async fn peer_sender(
    me: u64,
    peer: u64,
    addr: String,
    mut rx: mpsc::Receiver<Message>,
    input: InputSender,
    shutdown: CancellationToken,
    tls: Option<Arc<Tls>>,
) {
    let span = tracing::info_span!("raft_peer", peer, %addr);
    let _ = span.enter();
    let mut client: Option<RaftTransportClient<Channel>> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let snapshots: Vec<u64> = batch
            .iter()
            .filter(|m| is_snapshot(m))
            .map(|m| m.to)
            .collect();
        if client.is_none() {
            match connect(&addr, tls.as_deref()).await {
                Ok(c) => {
                    client = Some(c);
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    debug!(error = %e, "replica {peer} unreachable; dropping {} messages", batch.len());
                    report(&input, peer, &snapshots, false).await;
                    // Drain what piled up meanwhile: raft resends what matters.
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    continue;
                }
            }
        }
        let messages = batch
            .iter()
            .filter_map(|m| encode_message(m).ok())
            .collect();
        let req = RaftBatch { from: me, messages };
        let c = client.as_mut().expect("connected above");
        match c.send(req).await {
            Ok(_) => report(&input, peer, &snapshots, true).await,
            Err(st) => {
                debug!(status = %st, "send to replica {peer} failed; reconnecting");
                client = None;
                report(&input, peer, &snapshots, false).await;
            }
        }
    }
}

async fn report(input: &InputSender, peer: u64, snapshots: &[u64], ok: bool) {
    if !ok {
        let _ = input.try_send(Input::Unreachable(peer));
    }
    for &to in snapshots {
        let _ = input.send(Input::SnapshotSent { to, ok }).await;
    }
}

/// The server side of the transport: hands decoded messages to the Raft loop.
pub struct TransportService {
    pub me: ReplicaId,
    pub input: InputSender,
}

#[tonic::async_trait]
impl RaftTransport for TransportService {
    async fn send(&self, req: Request<RaftBatch>) -> Result<Response<Empty>, Status> {
        let batch = req.into_inner();
        for b in &batch.messages {
            let m = decode_message(b).map_err(|e| Status::invalid_argument(e.to_string()))?;
            if m.to != self.me.0 {
                warn!(
                    to = m.to,
                    from = batch.from,
                    "raft message for another replica: check --peers on every replica"
                );
                continue;
            }
            self.input
                .send(Input::Raft(m))
                .await
                .map_err(|_| Status::unavailable(format!("{} is shutting down", self.me)))?;
        }
        Ok(Response::new(Empty {}))
    }
}
