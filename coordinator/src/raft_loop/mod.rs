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

// One concept a file: the handle (handle.rs), start-up (bootstrap.rs), membership
// (membership.rs); this file holds the loop itself (tick, step, ready, apply, advance).
mod bootstrap;
mod handle;
mod membership;

pub use bootstrap::{open, read_state};
use membership::change_members;

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
