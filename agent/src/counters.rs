//! A task's live counters: what the agent reports with each lease renewal (bytes and items
//! done and in total, and an archive task's checkpoint). Written by the task, read by its
//! reporter; plain atomics, no behaviour.

use std::sync::atomic::AtomicU64;

/// Live counters of one task, reported to the coordinator every second.
#[derive(Default)]
pub struct Counters {
    pub(crate) bytes_done: AtomicU64,
    pub(crate) bytes_total: AtomicU64,
    pub(crate) items_done: AtomicU64,
    pub(crate) items_total: AtomicU64,
    /// Archive tasks: the node's archived-through hybrid time.
    pub(crate) checkpoint: AtomicU64,
}
