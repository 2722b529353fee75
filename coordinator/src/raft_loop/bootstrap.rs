//! Starting a replica: open its sled storage, restore the state machine from the latest
//! snapshot and the committed log, bootstrap a new group or wait to join one; and reading
//! a stopped replica's state for inspection.

use super::*;

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
