//! The handle every other part of a replica uses to talk to its Raft loop: propose a
//! command, change membership, read the state machine, wait for a status change. It only
//! sends inputs and waits for answers; it never touches the RawNode.

use super::*;

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

    pub(super) async fn call<T>(
        &self,
        input: Input,
        rx: oneshot::Receiver<Result<T>>,
    ) -> Result<T> {
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
