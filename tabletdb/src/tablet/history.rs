//! History retention: the node-wide policy (how far back reads may go, the floor PITR
//! schedules raise) and the RocksDB compaction filter that drops versions older than it,
//! except the newest one at or below the cut-off and anything a restore hid.

use super::*;

/// History retention shared by all tablets of a node: versions older than
/// `now - retention` may be dropped, except the newest one at or below that cut-off.
#[derive(Clone)]
pub struct HistoryPolicy {
    pub hlc: Arc<Hlc>,
    /// Retention in microseconds; 0 keeps every version for ever.
    pub retention_micros: Arc<AtomicU64>,
    /// The node's own setting (`--history-retention`); the master may only raise it.
    configured_micros: u64,
    /// History is complete only since this time: raising the retention cannot bring back
    /// versions already compacted away, so reads, snapshots and restores before it are
    /// refused even when the (new) cut-off is older.
    complete_since: Arc<AtomicU64>,
}

impl HistoryPolicy {
    pub fn new(hlc: Arc<Hlc>, retention: Duration) -> Self {
        Self {
            hlc,
            retention_micros: Arc::new(AtomicU64::new(retention.as_micros() as u64)),
            configured_micros: retention.as_micros() as u64,
            complete_since: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The oldest time reads, snapshots and restores may ask for: the cut-off, or later if
    /// the retention grew recently.
    pub fn window_start(&self) -> HybridTime {
        self.cutoff()
            .max(HybridTime(self.complete_since.load(Ordering::Relaxed)))
    }

    /// (floor, complete since) to persist, so a restart keeps both before any compaction.
    pub fn saved(&self) -> (u64, u64) {
        let r = self.retention_micros.load(Ordering::Relaxed);
        let floor = if r > self.configured_micros { r } else { 0 };
        (floor, self.complete_since.load(Ordering::Relaxed))
    }

    /// Restores what [`HistoryPolicy::saved`] returned.
    pub fn restore(&self, floor_micros: u64, complete_since: u64) {
        self.complete_since.store(complete_since, Ordering::Relaxed);
        if self.configured_micros != 0 && floor_micros > self.configured_micros {
            self.retention_micros.store(floor_micros, Ordering::Relaxed);
        }
    }

    /// Applies the cluster's history floor (PITR schedules): retention becomes
    /// max(configured, floor); "keep everything" (0) stays.
    /// Returns whether anything changed (then persist [`HistoryPolicy::saved`]).
    pub fn set_floor(&self, floor: Duration) -> bool {
        let r = if self.configured_micros == 0 {
            0
        } else {
            self.configured_micros.max(floor.as_micros() as u64)
        };
        let old = self.retention_micros.load(Ordering::Relaxed);
        if r == old {
            return false;
        }
        if r > old && old != 0 {
            // Versions older than today's cut-off may be gone already.
            let cut = self.cutoff().0;
            self.complete_since.fetch_max(cut, Ordering::Relaxed);
        }
        self.retention_micros.store(r, Ordering::Relaxed);
        true
    }

    /// The current history cut-off; `MIN` when everything is kept.
    pub fn cutoff(&self) -> HybridTime {
        let r = self.retention_micros.load(Ordering::Relaxed);
        if r == 0 {
            return HybridTime::MIN;
        }
        self.hlc.peek().minus(Duration::from_micros(r))
    }
}

pub(super) struct HistoryFilterFactory {
    pub(super) policy: HistoryPolicy,
    pub(super) hidden: Hidden,
}

pub(super) struct HistoryFilter {
    cutoff: HybridTime,
    hidden: Arc<Vec<(u64, u64)>>,
    last_key: Vec<u8>,
    kept_one_at_or_below: bool,
}

impl CompactionFilterFactory for HistoryFilterFactory {
    type Filter = HistoryFilter;

    fn create(&mut self, _context: CompactionFilterContext) -> HistoryFilter {
        HistoryFilter {
            cutoff: self.policy.cutoff(),
            hidden: self.hidden.read().expect("hidden lock").clone(),
            last_key: Vec::new(),
            kept_one_at_or_below: false,
        }
    }

    fn name(&self) -> &CStr {
        c"snapfleet-history-retention"
    }
}

impl CompactionFilter for HistoryFilter {
    fn filter(&mut self, _level: u32, key: &[u8], _value: &[u8]) -> Decision {
        let Some((k, ht)) = encoding::split_mvcc_key(key) else {
            return Decision::Keep;
        };
        if is_hidden(&self.hidden, ht) {
            return Decision::Remove;
        }
        if k != self.last_key.as_slice() {
            self.last_key.clear();
            self.last_key.extend_from_slice(k);
            self.kept_one_at_or_below = false;
        }
        if self.cutoff == HybridTime::MIN || ht > self.cutoff {
            return Decision::Keep;
        }
        // Versions arrive newest first: keep the newest at or below the cut-off so reads
        // at any time inside the window stay exact; older ones are unreachable.
        if !self.kept_one_at_or_below {
            self.kept_one_at_or_below = true;
            Decision::Keep
        } else {
            Decision::Remove
        }
    }

    fn name(&self) -> &CStr {
        c"snapfleet-history-retention"
    }
}
