//! Membership: adding and removing replicas one change at a time (proposed as Raft conf
//! changes carrying the replica's address), transferring leadership, and applying a
//! committed conf change to the peer list.

use super::*;

/// The member addresses a committed conf change entry carries (`None` if it carries none).
pub(super) fn change_members(cc: &ConfChange) -> Option<BTreeMap<u64, String>> {
    serde_json::from_slice::<ChangeContext>(&cc.context)
        .ok()
        .map(|c| c.members)
}

impl<O: Outbox> RaftLoop<O> {
    /// Validates a membership change against the current configuration and proposes it.
    pub(super) fn change_membership(
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

    pub(super) fn propose_change(&mut self, change: &MemberChange) -> Result<u64> {
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
    pub(super) fn retry_deferred_changes(&mut self) {
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

    pub(super) fn transfer_leader(&mut self) -> Result<u64> {
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
    pub(super) fn set_peers(&mut self, members: BTreeMap<u64, String>) {
        if members.is_empty() {
            return;
        }
        self.outbox.set_peers(&members);
        *self.peers.write().expect("peers lock poisoned") = members;
    }

    /// A committed membership change: apply it to raft-rs, persist the configuration and
    /// the addresses, and point the transport at the new member set.
    pub(super) fn apply_change(&mut self, sm: &mut StateMachine, entry: &Entry) -> Result<()> {
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
}
