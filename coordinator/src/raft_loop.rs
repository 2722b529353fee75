//! The one task that owns the raft-rs `RawNode`: tick on a timer, step incoming messages,
//! then `ready()` → send → persist (fsync) → send persisted messages → apply committed
//! entries to the state machine → `advance`, as in raft-rs's `five_mem_node` example.
//! Proposals resolve when their entry is applied; linearizable reads use ReadIndex; every
//! `snapshot_every` applied entries the state machine is snapshotted and the log compacted.
//! Membership changes are raft-rs conf changes (one replica added or removed at a time): the
//! change's context carries every member's address, so when it is applied each replica
//! records the configuration in storage, the addresses in the state machine (and so in
//! snapshots), and points the transport at the new member set.
//! This file must never block on the network (the transport queues) nor interpret commands
//! beyond handing them to the state machine.

use crate::command::{Command, Response};
use crate::error::{CoordinatorError, MembershipRefusal, Result};
use crate::ids::ReplicaId;
use crate::state_machine::{Effect, StateMachine};
use crate::storage::SledStorage;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, Message, MessageType,
};
use raft::{RawNode, SnapshotStatus, StateRole};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Timing and compaction knobs of one replica.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    pub tick: Duration,
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    /// Snapshot the state machine and compact the log every this many applied entries.
    pub snapshot_every: u64,
    /// How long a proposal or a read may wait for the Raft group.
    pub request_timeout: Duration,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 2,
            snapshot_every: 1_000,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// What a replica looks like right now (published after every loop iteration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: u64,
    pub role: &'static str,
    /// 0 = unknown.
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub log_entries: u64,
}

impl RaftStatus {
    pub fn is_leader(&self) -> bool {
        self.leader_id == self.id && self.role == "leader"
    }
}

/// Replica id → address of every member, shared by the loop (which updates it when a
/// membership change is applied), the handle and the gRPC services.
pub type Peers = Arc<RwLock<BTreeMap<u64, String>>>;

/// One membership change (one replica at a time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    Add { id: u64, address: String },
    Remove { id: u64 },
}

/// The membership after an applied change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Log index of the change.
    pub index: u64,
    pub members: BTreeMap<u64, String>,
}

/// What a conf change entry carries in its `context`: the member addresses after the change.
#[derive(Debug, Serialize, Deserialize)]
struct ChangeContext {
    members: BTreeMap<u64, String>,
}

/// The member addresses a committed conf change entry carries (`None` if it carries none).
fn change_members(cc: &ConfChange) -> Option<BTreeMap<u64, String>> {
    serde_json::from_slice::<ChangeContext>(&cc.context)
        .ok()
        .map(|c| c.members)
}

/// `RaftStatus::role` of a replica started with `--join` that has not been added yet.
pub const ROLE_JOINING: &str = "joining";
/// `RaftStatus::role` of a replica that has applied its own removal.
pub const ROLE_REMOVED: &str = "removed";

/// Everything the loop receives.
pub enum Input {
    /// A Raft message from another replica.
    Raft(Message),
    Propose {
        cmd: Command,
        reply: oneshot::Sender<Result<Response>>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<()>>,
    },
    /// Add or remove a replica (leader only).
    ChangeMembership {
        change: MemberChange,
        reply: oneshot::Sender<Result<Membership>>,
    },
    /// Hand leadership to the most up-to-date other voter; replies with its id.
    TransferLeader {
        reply: oneshot::Sender<Result<u64>>,
    },
    /// The transport could not deliver to this replica.
    Unreachable(u64),
    SnapshotSent {
        to: u64,
        ok: bool,
    },
}

/// Outgoing Raft messages; implemented by the gRPC transport (and by tests).
pub trait Outbox: Send + 'static {
    fn send(&self, msgs: Vec<Message>);
    /// The member set changed: start sending to new members, stop for removed ones.
    fn set_peers(&mut self, _peers: &BTreeMap<u64, String>) {}
}

/// A cheap, cloneable handle to a running replica: propose, read, observe.
#[derive(Clone)]
pub struct RaftHandle {
    id: u64,
    tx: mpsc::Sender<Input>,
    status: watch::Receiver<RaftStatus>,
    state: Arc<RwLock<StateMachine>>,
    timeout: Duration,
    peers: Peers,
    effects: broadcast::Sender<Effect>,
}

impl RaftHandle {
    /// The loop's input queue (for the transport's server side).
    pub fn input(&self) -> InputSender {
        self.tx.clone()
    }

    /// Effects of entries applied from now on (lossy: a slow receiver sees `Lagged`).
    pub fn subscribe_effects(&self) -> broadcast::Receiver<Effect> {
        self.effects.subscribe()
    }

    pub fn id(&self) -> ReplicaId {
        ReplicaId(self.id)
    }

    pub fn status(&self) -> RaftStatus {
        self.status.borrow().clone()
    }

    /// Wakes whenever the status changes (a new entry applied, a new leader, ...).
    pub fn watch_status(&self) -> watch::Receiver<RaftStatus> {
        self.status.clone()
    }

    /// Every member's address, as this replica knows it now.
    pub fn peers(&self) -> BTreeMap<u64, String> {
        self.peers.read().expect("peers lock poisoned").clone()
    }

    /// The address of replica `id`, if it is a member.
    pub fn peer_address(&self, id: u64) -> Option<String> {
        self.peers
            .read()
            .expect("peers lock poisoned")
            .get(&id)
            .cloned()
    }

    /// `Ok` if this replica leads; otherwise where the leader is.
    pub fn require_leader(&self) -> Result<()> {
        if self.tx.is_closed() {
            return Err(CoordinatorError::Stopped);
        }
        let st = self.status();
        if st.is_leader() {
            return Ok(());
        }
        if st.role == ROLE_JOINING || st.role == ROLE_REMOVED {
            return Err(CoordinatorError::NotMember(st.id));
        }
        match self.peer_address(st.leader_id) {
            Some(addr) if st.leader_id != 0 => Err(CoordinatorError::NotLeader {
                leader: ReplicaId(st.leader_id),
                address: addr.clone(),
            }),
            _ => Err(CoordinatorError::NoLeader),
        }
    }

    /// Reads the local state machine (call `read_index` first for a linearizable read).
    pub fn read<R>(&self, f: impl FnOnce(&StateMachine) -> R) -> R {
        f(&self.state.read().expect("state machine lock poisoned"))
    }

    /// Replicates `cmd` and resolves once it has been applied here.
    pub async fn propose(&self, cmd: Command) -> Result<Response> {
        let (reply, rx) = oneshot::channel();
        self.call(Input::Propose { cmd, reply }, rx).await
    }

    /// Adds or removes one replica; resolves once the change is applied here (leader only).
    pub async fn change_membership(&self, change: MemberChange) -> Result<Membership> {
        let (reply, rx) = oneshot::channel();
        self.call(Input::ChangeMembership { change, reply }, rx)
            .await
    }

    /// Asks the leader to hand over leadership to the most up-to-date other voter; returns
    /// that voter's id (the transfer completes asynchronously).
    pub async fn transfer_leadership(&self) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.call(Input::TransferLeader { reply }, rx).await
    }

    /// Waits until this replica has applied everything committed before the call, as
    /// confirmed by a quorum (ReadIndex). Leader only.
    pub async fn read_index(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.call(Input::ReadIndex { reply }, rx).await
    }

    async fn call<T>(&self, input: Input, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        self.tx
            .send(input)
            .await
            .map_err(|_| CoordinatorError::Stopped)?;
        match tokio::time::timeout(self.timeout, rx).await {
            Err(_) => Err(CoordinatorError::Timeout(self.timeout)),
            Ok(Err(_)) => Err(CoordinatorError::Stopped),
            Ok(Ok(r)) => r,
        }
    }
}

/// The replica: RawNode, its storage, the state machine and the requests in flight.
pub struct RaftLoop<O: Outbox> {
    raw: RawNode<SledStorage>,
    storage: SledStorage,
    state: Arc<RwLock<StateMachine>>,
    outbox: O,
    rx: mpsc::Receiver<Input>,
    status: watch::Sender<RaftStatus>,
    tuning: RaftTuning,
    next_request: u64,
    proposals: HashMap<u64, oneshot::Sender<Result<Response>>>,
    /// Membership changes proposed here, by request id.
    changes: HashMap<u64, oneshot::Sender<Result<Membership>>>,
    /// Changes that arrived while a just-elected leader's first entry was not yet applied
    /// (raft-rs counts it as a pending configuration change); retried once it is.
    deferred_changes: Vec<(MemberChange, oneshot::Sender<Result<Membership>>)>,
    /// raft-rs's `pending_conf_index` when this replica last became leader.
    election_barrier: u64,
    peers: Peers,
    reads_unconfirmed: HashMap<u64, oneshot::Sender<Result<()>>>,
    reads_confirmed: Vec<(u64, oneshot::Sender<Result<()>>)>,
    applied: u64,
    snapshot_index: u64,
    role: StateRole,
    effects: broadcast::Sender<Effect>,
}

/// The state machine a stopped replica left in `data_dir`: its latest snapshot plus every
/// committed entry after it, applied in order. For inspection and benchmarks; never call it
/// on the directory of a running replica (sled admits one process at a time). After kill -9
/// the commit index on disk may lag the log (it is re-learnt on restart): stop the replica
/// gracefully first to see everything it applied.
pub fn read_state(data_dir: &std::path::Path) -> Result<StateMachine> {
    use raft::Storage as _;
    let storage = SledStorage::open(data_dir)?;
    let mut sm = StateMachine::restore(&storage.snapshot_data()?)
        .map_err(|e| CoordinatorError::corrupt("state-machine snapshot", e))?;
    let first = storage.first_index()?;
    let commit = storage.hard_state()?.commit;
    if commit >= first {
        let entries = storage.entries(
            first,
            commit + 1,
            None,
            raft::GetEntriesContext::empty(false),
        )?;
        for entry in entries {
            if entry.get_entry_type() == EntryType::EntryConfChange {
                let cc = ConfChange::parse_from_bytes(&entry.data)
                    .map_err(|e| CoordinatorError::corrupt("membership change", e))?;
                if let Some(members) = change_members(&cc) {
                    sm.set_members(members);
                }
                continue;
            }
            if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
                continue;
            }
            let cmd: Command = serde_json::from_slice(&entry.data)
                .map_err(|e| CoordinatorError::corrupt("log entry", e))?;
            sm.apply(cmd);
        }
    }
    Ok(sm)
}

/// A sender for the loop's input (the transport's server side uses it).
pub type InputSender = mpsc::Sender<Input>;

/// How a replica with no Raft state yet starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// A new group: every replica in `peers` is a voter.
    NewGroup,
    /// Joining an existing group: no voters until the leader adds this replica.
    Join,
}

/// Opens storage under `data_dir`, restores the state machine from the latest snapshot and
/// returns the loop (to be run) and its handle. `peers` are the addresses known from the
/// command line; once a membership change has been applied, the replicated addresses win.
pub fn open<O: Outbox>(
    id: u64,
    peers: BTreeMap<u64, String>,
    bootstrap: Bootstrap,
    storage: SledStorage,
    outbox: impl FnOnce(InputSender, &BTreeMap<u64, String>) -> O,
    tuning: RaftTuning,
) -> Result<(RaftLoop<O>, RaftHandle)> {
    if id == 0 || (bootstrap == Bootstrap::NewGroup && !peers.contains_key(&id)) {
        return Err(CoordinatorError::Config(format!(
            "replica id {id} must be non-zero and listed in --peers ({:?})",
            peers.keys().collect::<Vec<_>>()
        )));
    }
    match bootstrap {
        Bootstrap::NewGroup => storage.initialize(&peers.keys().copied().collect::<Vec<_>>())?,
        Bootstrap::Join => storage.initialize(&[])?,
    }
    let snap = storage.snapshot_metadata()?;
    let sm = StateMachine::restore(&storage.snapshot_data()?)
        .map_err(|e| CoordinatorError::corrupt("state-machine snapshot", e))?;
    let peers = if sm.members().is_empty() {
        peers
    } else {
        sm.members().clone()
    };
    let sole_voter = storage.conf_state()?.voters == [id];
    let cfg = raft::Config {
        id,
        election_tick: tuning.election_tick,
        heartbeat_tick: tuning.heartbeat_tick,
        applied: snap.index,
        check_quorum: true,
        pre_vote: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        ..Default::default()
    };
    cfg.validate()?;
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let mut raw = RawNode::new(&cfg, storage.clone(), &logger)?;
    if sole_voter {
        // Single-replica mode: no one to wait for.
        raw.campaign()?;
    }
    let (tx, rx) = mpsc::channel(4096);
    let (status_tx, status_rx) = watch::channel(RaftStatus {
        id,
        ..Default::default()
    });
    let (effects_tx, _) = broadcast::channel(1024);
    let state = Arc::new(RwLock::new(sm));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let timeout = tuning.request_timeout;
    let outbox = outbox(tx.clone(), &peers);
    let peers: Peers = Arc::new(RwLock::new(peers));
    let lp = RaftLoop {
        raw,
        storage,
        state: state.clone(),
        outbox,
        rx,
        status: status_tx,
        tuning,
        next_request: seed,
        proposals: HashMap::new(),
        changes: HashMap::new(),
        deferred_changes: Vec::new(),
        election_barrier: 0,
        peers: peers.clone(),
        reads_unconfirmed: HashMap::new(),
        reads_confirmed: Vec::new(),
        applied: snap.index,
        snapshot_index: snap.index,
        role: StateRole::Follower,
        effects: effects_tx.clone(),
    };
    let handle = RaftHandle {
        id,
        tx,
        status: status_rx,
        state,
        timeout,
        peers,
        effects: effects_tx,
    };
    Ok((lp, handle))
}

impl<O: Outbox> RaftLoop<O> {
    /// Runs until `shutdown` is cancelled or a storage error makes continuing unsafe.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        let mut ticker = tokio::time::interval(self.tuning.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => { self.raw.tick(); }
                input = self.rx.recv() => {
                    let Some(input) = input else { break };
                    self.handle(input);
                    // Batch whatever else is queued into the same Ready.
                    for _ in 0..256 {
                        match self.rx.try_recv() {
                            Ok(input) => self.handle(input),
                            Err(_) => break,
                        }
                    }
                }
            }
            if let Err(e) = self.on_ready() {
                error!(error = %e, "raft replica stopping: cannot persist");
                self.fail_all(|| CoordinatorError::Stopped);
                return Err(e);
            }
        }
        self.fail_all(|| CoordinatorError::Stopped);
        self.storage.sync()
    }

    fn request_id(&mut self) -> u64 {
        self.next_request = self.next_request.wrapping_add(1);
        self.next_request
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Raft(m) => {
                if let Err(e) = self.raw.step(m) {
                    debug!(error = %e, "dropping raft message");
                }
            }
            Input::Propose { cmd, reply } => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                let data = match serde_json::to_vec(&cmd) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = reply.send(Err(CoordinatorError::corrupt("command", e)));
                        return;
                    }
                };
                let rid = self.request_id();
                match self.raw.propose(rid.to_be_bytes().to_vec(), data) {
                    Ok(()) => {
                        self.proposals.insert(rid, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(CoordinatorError::ProposalDropped(e.to_string())));
                    }
                }
            }
            Input::ReadIndex { reply } => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                let rid = self.request_id();
                self.reads_unconfirmed.insert(rid, reply);
                self.raw.read_index(rid.to_be_bytes().to_vec());
            }
            Input::ChangeMembership { change, reply } => self.change_membership(change, reply),
            Input::TransferLeader { reply } => {
                let _ = reply.send(self.transfer_leader());
            }
            Input::Unreachable(to) => self.raw.report_unreachable(to),
            Input::SnapshotSent { to, ok } => {
                let st = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, st);
            }
        }
    }

    fn not_leader(&self) -> CoordinatorError {
        let leader = self.raw.raft.leader_id;
        if leader == 0 {
            return CoordinatorError::NoLeader;
        }
        match self.peers.read().expect("peers lock poisoned").get(&leader) {
            Some(address) => CoordinatorError::NotLeader {
                leader: ReplicaId(leader),
                address: address.clone(),
            },
            None => CoordinatorError::ProposalDropped(format!(
                "replica {} is not the leader (leader is {leader})",
                self.raw.raft.id
            )),
        }
    }

    /// Validates a membership change against the current configuration and proposes it.
    fn change_membership(
        &mut self,
        change: MemberChange,
        reply: oneshot::Sender<Result<Membership>>,
    ) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        if self.raw.raft.has_pending_conf() {
            if self.raw.raft.pending_conf_index <= self.election_barrier {
                // Only this term's first entry is in the way: it applies in a moment.
                self.deferred_changes.push((change, reply));
            } else {
                let _ = reply.send(Err(MembershipRefusal::Pending {
                    index: self.raw.raft.pending_conf_index,
                }
                .into()));
            }
            return;
        }
        match self.propose_change(&change) {
            Ok(rid) => {
                self.changes.insert(rid, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn propose_change(&mut self, change: &MemberChange) -> Result<u64> {
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let is_member = |id: &u64| conf.voters.contains(id) || conf.learners.contains(id);
        let mut members = self.peers.read().expect("peers lock poisoned").clone();
        members.retain(|id, _| is_member(id));
        let mut cc = ConfChange::default();
        match change {
            MemberChange::Add { id, address } => {
                if *id == 0 {
                    return Err(MembershipRefusal::InvalidId.into());
                }
                if address.rsplit_once(':').is_none_or(|(h, p)| {
                    h.is_empty() || p.parse::<u16>().is_err() || address.contains('/')
                }) {
                    return Err(MembershipRefusal::InvalidAddress(address.clone()).into());
                }
                if is_member(id) {
                    return Err(MembershipRefusal::AlreadyMember {
                        id: *id,
                        address: members.get(id).cloned().unwrap_or_default(),
                    }
                    .into());
                }
                if let Some((other, _)) = members.iter().find(|(_, a)| *a == address) {
                    return Err(MembershipRefusal::AddressInUse {
                        address: address.clone(),
                        id: *other,
                    }
                    .into());
                }
                members.insert(*id, address.clone());
                cc.set_change_type(ConfChangeType::AddNode);
                cc.node_id = *id;
            }
            MemberChange::Remove { id } => {
                if !is_member(id) {
                    return Err(MembershipRefusal::NotMember(*id).into());
                }
                if conf.voters == [*id] {
                    return Err(MembershipRefusal::LastVoter(*id).into());
                }
                if *id == self.raw.raft.id {
                    return Err(MembershipRefusal::RemoveLeader.into());
                }
                members.remove(id);
                cc.set_change_type(ConfChangeType::RemoveNode);
                cc.node_id = *id;
            }
        }
        cc.context = serde_json::to_vec(&ChangeContext { members })
            .map_err(|e| CoordinatorError::corrupt("membership change", e))?
            .into();
        let rid = self.request_id();
        self.raw
            .propose_conf_change(rid.to_be_bytes().to_vec(), cc)
            .map_err(|e| CoordinatorError::ProposalDropped(e.to_string()))?;
        info!(?change, "membership change proposed");
        Ok(rid)
    }

    /// Changes that waited for the leader's first entry: propose them now if it is applied.
    fn retry_deferred_changes(&mut self) {
        if self.deferred_changes.is_empty() {
            return;
        }
        let leader = self.raw.raft.state == StateRole::Leader;
        if leader
            && self.raw.raft.has_pending_conf()
            && self.raw.raft.pending_conf_index <= self.election_barrier
        {
            return;
        }
        for (change, reply) in std::mem::take(&mut self.deferred_changes) {
            self.change_membership(change, reply);
        }
    }

    fn transfer_leader(&mut self) -> Result<u64> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(self.not_leader());
        }
        if self.raw.raft.has_pending_conf() {
            return Err(MembershipRefusal::Pending {
                index: self.raw.raft.pending_conf_index,
            }
            .into());
        }
        let me = self.raw.raft.id;
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let target = conf
            .voters
            .iter()
            .filter(|v| **v != me)
            .max_by_key(|v| self.raw.raft.prs().get(**v).map(|p| p.matched).unwrap_or(0))
            .copied()
            .ok_or(MembershipRefusal::LastVoter(me))?;
        info!(to = target, "handing leadership over");
        self.raw.transfer_leader(target);
        Ok(target)
    }

    /// Points the transport, the handle and the state machine at a new member set.
    fn set_peers(&mut self, members: BTreeMap<u64, String>) {
        if members.is_empty() {
            return;
        }
        self.outbox.set_peers(&members);
        *self.peers.write().expect("peers lock poisoned") = members;
    }

    fn fail_all(&mut self, err: impl Fn() -> CoordinatorError) {
        for (_, r) in self.proposals.drain() {
            let _ = r.send(Err(err()));
        }
        for (_, r) in self.reads_unconfirmed.drain() {
            let _ = r.send(Err(err()));
        }
        for (_, r) in self.reads_confirmed.drain(..) {
            let _ = r.send(Err(err()));
        }
        for (_, r) in self.changes.drain() {
            let _ = r.send(Err(err()));
        }
        for (_, r) in self.deferred_changes.drain(..) {
            let _ = r.send(Err(err()));
        }
    }

    /// One pass of the raft-rs Ready protocol.
    fn on_ready(&mut self) -> Result<()> {
        if !self.raw.has_ready() {
            self.publish_status();
            return Ok(());
        }
        let mut ready = self.raw.ready();

        if let Some(ss) = ready.ss() {
            if ss.raft_state != self.role {
                info!(
                    replica = self.raw.raft.id,
                    term = self.raw.raft.term,
                    leader = ss.leader_id,
                    role = ?ss.raft_state,
                    "raft role changed"
                );
                if self.role == StateRole::Leader {
                    // Entries we proposed may still commit under the next leader, or not.
                    self.fail_all(|| CoordinatorError::ProposalDropped("leadership lost".into()));
                }
                self.role = ss.raft_state;
                if self.role == StateRole::Leader {
                    self.election_barrier = self.raw.raft.pending_conf_index;
                }
            }
        }

        // 1. Messages that may go out before persistence (leader's appends).
        if !ready.messages().is_empty() {
            self.outbox.send(ready.take_messages());
        }

        // 2. A snapshot from the leader replaces our state machine.
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.storage.apply_snapshot(&snap)?;
            let sm = StateMachine::restore(snap.get_data())
                .map_err(|e| CoordinatorError::corrupt("snapshot from leader", e))?;
            let members = sm.members().clone();
            *self.state.write().expect("lock") = sm;
            self.set_peers(members);
            self.applied = snap.get_metadata().index;
            self.snapshot_index = self.applied;
            info!(index = self.applied, "installed snapshot from leader");
        }

        // 3. Apply what was already committed (and persisted in earlier rounds).
        self.apply(ready.take_committed_entries())?;

        // 4. Persist new entries and hard state, then fsync before acknowledging anything.
        let wrote = !ready.entries().is_empty() || ready.hs().is_some();
        self.storage.append(ready.entries())?;
        if let Some(hs) = ready.hs() {
            self.storage.set_hard_state(hs)?;
        }
        if wrote || ready.must_sync() {
            self.storage.sync()?;
        }
        for rs in ready.take_read_states() {
            let rid = u64::from_be_bytes(rs.request_ctx.as_slice().try_into().unwrap_or([0; 8]));
            if let Some(reply) = self.reads_unconfirmed.remove(&rid) {
                self.reads_confirmed.push((rs.index, reply));
            }
        }

        // 5. Messages that must follow persistence (votes, append responses).
        if !ready.persisted_messages().is_empty() {
            self.outbox.send(ready.take_persisted_messages());
        }

        // 6. Advance, then the light ready.
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.storage.set_commit(commit)?;
        }
        self.outbox.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();

        self.resolve_reads();
        self.retry_deferred_changes();
        self.maybe_compact()?;
        self.publish_status();
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let state = self.state.clone();
        let mut sm = state.write().expect("state machine lock poisoned");
        for entry in entries {
            self.applied = entry.index;
            if entry.get_entry_type() == EntryType::EntryConfChange {
                self.apply_change(&mut sm, &entry)?;
                continue;
            }
            if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
                // The leader's empty entry (or a conf change V2, which we never propose).
                continue;
            }
            let rid = u64::from_be_bytes(entry.context[..].try_into().unwrap_or([0; 8]));
            let reply = self.proposals.remove(&rid);
            let cmd: Command = match serde_json::from_slice(&entry.data) {
                Ok(c) => c,
                Err(e) => {
                    error!(index = entry.index, error = %e, "undecodable log entry skipped");
                    if let Some(r) = reply {
                        let _ = r.send(Err(CoordinatorError::corrupt("log entry", e)));
                    }
                    continue;
                }
            };
            let name = cmd.name();
            let applied = sm.apply(cmd);
            debug!(
                index = entry.index,
                command = name,
                ok = applied.result.is_ok(),
                "applied"
            );
            for eff in applied.effects {
                let _ = self.effects.send(eff);
            }
            if let Some(r) = reply {
                let _ = r.send(applied.result.map_err(CoordinatorError::from));
            }
        }
        Ok(())
    }

    /// A committed membership change: apply it to raft-rs, persist the configuration and
    /// the addresses, and point the transport at the new member set.
    fn apply_change(&mut self, sm: &mut StateMachine, entry: &Entry) -> Result<()> {
        let rid = u64::from_be_bytes(entry.context[..].try_into().unwrap_or([0; 8]));
        let reply = self.changes.remove(&rid);
        let cc = match ConfChange::parse_from_bytes(&entry.data) {
            Ok(cc) => cc,
            Err(e) => {
                error!(index = entry.index, error = %e, "undecodable membership change skipped");
                if let Some(r) = reply {
                    let _ = r.send(Err(CoordinatorError::corrupt("membership change", e)));
                }
                return Ok(());
            }
        };
        let before = self.raw.raft.prs().conf().to_conf_state();
        if before.voters.is_empty() && before.learners.is_empty() {
            // Only a replica that joined and was sent a log without the snapshot holding the
            // group's configuration gets here; applying would make it a group of its own.
            return Err(CoordinatorError::Config(format!(
                "replica {} received membership change at index {} without the group's \
                 configuration; wipe its data directory and add it again",
                self.raw.raft.id, entry.index
            )));
        }
        let cs: ConfState = match self.raw.apply_conf_change(&cc) {
            Ok(cs) => cs,
            Err(e) => {
                error!(index = entry.index, error = %e, "membership change not applied");
                if let Some(r) = reply {
                    let _ = r.send(Err(e.into()));
                }
                return Ok(());
            }
        };
        self.storage.set_conf_state(&cs)?;
        let members = match change_members(&cc) {
            Some(m) => m,
            None => {
                warn!(
                    index = entry.index,
                    "membership change without addresses; keeping the known ones"
                );
                let mut m = self.peers.read().expect("peers lock poisoned").clone();
                m.retain(|id, _| cs.voters.contains(id) || cs.learners.contains(id));
                m
            }
        };
        info!(
            index = entry.index,
            change = ?cc.get_change_type(),
            replica = cc.node_id,
            voters = ?cs.voters,
            "membership changed"
        );
        sm.set_members(members.clone());
        self.set_peers(members.clone());
        let me = self.raw.raft.id;
        if self.raw.raft.state == StateRole::Leader && !cs.voters.contains(&me) {
            // A leader that applied its own removal (elected while the removal was pending)
            // would keep leading a group it is not in: hand over, or at least step down.
            let target = cs
                .voters
                .iter()
                .max_by_key(|v| self.raw.raft.prs().get(**v).map(|p| p.matched).unwrap_or(0))
                .copied();
            match target {
                Some(t) => {
                    warn!(
                        to = t,
                        "this leader was removed from the group; handing leadership over"
                    );
                    self.raw.transfer_leader(t);
                }
                None => {
                    let term = self.raw.raft.term;
                    self.raw.raft.become_follower(term + 1, raft::INVALID_ID);
                }
            }
        }
        if cc.get_change_type() == ConfChangeType::AddNode {
            // raft-rs only installs a snapshot whose configuration names the recipient: every
            // replica snapshots right at the addition, so whichever leads can catch the new
            // replica up (its empty log cannot be caught up by entries: they start after the
            // bootstrap snapshot).
            self.storage
                .compact_with_snapshot(entry.index, sm.snapshot())?;
            self.snapshot_index = entry.index;
        }
        if let Some(r) = reply {
            let _ = r.send(Ok(Membership {
                index: entry.index,
                members,
            }));
        }
        Ok(())
    }

    fn resolve_reads(&mut self) {
        if self.reads_confirmed.is_empty() {
            return;
        }
        let applied = self.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .reads_confirmed
            .drain(..)
            .partition(|(index, _)| *index <= applied);
        self.reads_confirmed = waiting;
        for (_, reply) in ready {
            let _ = reply.send(Ok(()));
        }
    }

    fn maybe_compact(&mut self) -> Result<()> {
        if self.applied < self.snapshot_index + self.tuning.snapshot_every {
            return Ok(());
        }
        let data = self.state.read().expect("lock").snapshot();
        self.storage.compact_with_snapshot(self.applied, data)?;
        self.snapshot_index = self.applied;
        debug!(
            index = self.applied,
            log_entries = self.storage.log_len(),
            "snapshot taken, log compacted"
        );
        Ok(())
    }

    fn publish_status(&self) {
        let r = &self.raw.raft;
        let voters = r.prs().conf().voters();
        let role = if voters.contains(r.id) {
            match r.state {
                StateRole::Leader => "leader",
                StateRole::Follower => "follower",
                StateRole::Candidate => "candidate",
                StateRole::PreCandidate => "pre-candidate",
            }
        } else if voters.ids().is_empty() {
            ROLE_JOINING
        } else {
            ROLE_REMOVED
        };
        let st = RaftStatus {
            id: r.id,
            role,
            leader_id: r.leader_id,
            term: r.term,
            commit_index: r.raft_log.committed,
            applied_index: self.applied,
            snapshot_index: self.snapshot_index,
            log_entries: r.raft_log.last_index().saturating_sub(self.snapshot_index),
        };
        self.status.send_if_modified(|old| {
            if *old != st {
                *old = st;
                true
            } else {
                false
            }
        });
    }
}

/// Helpers for transports: encode/decode with raft's protobuf codec.
pub fn encode_message(m: &Message) -> Result<Vec<u8>> {
    m.write_to_bytes()
        .map_err(|e| CoordinatorError::corrupt("raft message", e))
}

pub fn decode_message(b: &[u8]) -> Result<Message> {
    Message::parse_from_bytes(b).map_err(|e| CoordinatorError::corrupt("raft message", e))
}

/// True for messages whose delivery outcome must be reported with `SnapshotSent`.
pub fn is_snapshot(m: &Message) -> bool {
    m.get_msg_type() == MessageType::MsgSnapshot
}
