//! The agent's side of change-log archiving for off-cluster point-in-time recovery (the
//! leader's side, which records the archive and starts one task per node, is in the `jobs`
//! crate). Each node's task is a loop: every interval the agent asks its node for each
//! tablet's change-log records since what it archived last, up to the tablet's *safe time*
//! (every write at or before it has been logged), uploads them as a piece, then writes the
//! node's progress object, and reports the node's checkpoint (the oldest tablet's archived
//! time) with its lease renewals. On restart it resumes from its progress object, so the
//! chain has no hole. Also here: replaying archived records into a staged tablet (a restore
//! to a time).

use crate::counters::Counters;
use crate::error::{AgentError, Result};
use snapfleet_adapter::{
    Adapter, AdapterError, Database, DatabaseId, HiddenRange, HybridTime, LocalTablet, LogCursor,
    NodeStore, TabletId,
};
use snapfleet_api::tasks::{ArchiveTask, ReplaySpec};
use snapfleet_repository::pitr::{NodeProgress, Piece, TabletProgress};
use snapfleet_repository::Repository;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// A piece is cut when this many bytes of records are pending (and at the end of a cycle).
const PIECE_BYTES: usize = 8 << 20;

struct TabletState {
    prog: TabletProgress,
    cursor: LogCursor,
}

/// The agent's side: archive this node's tablets of the database until the task is stopped
/// (the future is dropped) or fails.
pub async fn run_archive(
    repo: Arc<Repository>,
    adapter: &dyn Adapter,
    node: &dyn NodeStore,
    t: &ArchiveTask,
    counters: &Counters,
) -> Result<()> {
    let database_id = DatabaseId::new(t.database_id.clone())?;
    let mut progress = repo
        .read_node_progress(&t.database_id, &t.node)
        .await?
        .unwrap_or_else(|| NodeProgress {
            node: t.node.clone(),
            ..Default::default()
        });
    // A node's last scan time: tablets not seen then and seen now were created after it.
    let mut last_scan: Option<u64> = progress
        .tablets
        .values()
        .map(|p| p.covered)
        .max()
        .filter(|_| !progress.tablets.is_empty());
    let mut tablets: BTreeMap<String, TabletState> = progress
        .tablets
        .iter()
        .map(|(id, p)| {
            (
                id.clone(),
                TabletState {
                    prog: p.clone(),
                    cursor: LogCursor::default(),
                },
            )
        })
        .collect();
    // A restarted archiver starts from what it had archived (not 0, which would freeze the
    // coordinator's view of its lag until its first pass ends).
    if let Some(cp) = progress.checkpoint() {
        counters.checkpoint.store(cp, Ordering::Relaxed);
    }
    let mut master: Option<Arc<dyn Database>> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(t.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let scan = node.scan_tablets(&database_id).await?;
        let scan_ht = scan.at.0;
        // The catalog, read after the node: a table dropped while its tablets stay on the
        // node (kept for in-cluster PITR) is gone for the archive too.
        let catalog = catalog_tables(adapter, &mut master, t).await;
        let live: Vec<&LocalTablet> = scan
            .tablets
            .iter()
            .filter(|s| {
                catalog
                    .as_ref()
                    .is_none_or(|c| c.contains_key(s.table.as_str()))
            })
            .collect();
        for s in &live {
            if !tablets.contains_key(s.tablet.as_str()) {
                let table_name = catalog
                    .as_ref()
                    .and_then(|c| c.get(s.table.as_str()).cloned())
                    .unwrap_or_default();
                let created_after = last_scan.unwrap_or(0);
                let start = t.start_ht.max(created_after);
                tablets.insert(
                    s.tablet.to_string(),
                    TabletState {
                        prog: TabletProgress {
                            table_id: s.table.to_string(),
                            table_name,
                            since: start,
                            piece_to: start,
                            covered: start,
                            created_after,
                            gone_after: 0,
                            gone_seen: 0,
                            hidden: hidden_of(s),
                        },
                        cursor: LogCursor::default(),
                    },
                );
            }
        }
        for (id, st) in tablets.iter_mut() {
            let Some(ls) = live.iter().find(|s| s.tablet.as_str() == id) else {
                if st.prog.gone_after == 0 {
                    // Dropped (or moved away) between its last archived time and now. Its
                    // entry stays (small) so restores inside the window know.
                    st.prog.gone_after = st.prog.covered.max(1);
                    st.prog.gone_seen = scan_ht;
                    info!(tablet = %id, "tablet gone from the node; its archive ends here");
                }
                continue;
            };
            if st.prog.gone_after != 0 {
                // Back in the catalog (revived by an in-place restore): the chain goes on (a
                // dropped table takes no writes).
                info!(tablet = %id, "tablet back in the catalog; archiving it again");
                st.prog.gone_after = 0;
                st.prog.gone_seen = 0;
            }
            st.prog.hidden = hidden_of(ls);
            archive_tablet(&repo, node, t, id, st, counters).await?;
        }
        progress.tablets = tablets
            .iter()
            .map(|(id, st)| (id.clone(), st.prog.clone()))
            .collect();
        progress.written = Some(chrono::Utc::now());
        repo.put_node_progress(&t.database_id, &progress).await?;
        last_scan = Some(scan_ht);
        let checkpoint = progress.checkpoint().unwrap_or(scan_ht);
        counters.checkpoint.store(checkpoint, Ordering::Relaxed);
    }
}

fn hidden_of(s: &LocalTablet) -> Vec<(u64, u64)> {
    s.hidden.iter().map(|h| (h.after.0, h.until.0)).collect()
}

/// The tables of the database in the catalog now (id → name); `None` if the database's
/// control plane cannot say (then the node's tablet list is taken as it is). A database
/// that is gone, or is another one under the same name, has no tables.
async fn catalog_tables(
    adapter: &dyn Adapter,
    db: &mut Option<Arc<dyn Database>>,
    t: &ArchiveTask,
) -> Option<BTreeMap<String, String>> {
    if db.is_none() {
        *db = adapter.connect(&t.master).await.ok();
    }
    match db.as_ref()?.describe(&t.database).await {
        Ok(d) if d.id.as_str() == t.database_id => Some(
            d.tables
                .into_iter()
                .map(|t| (t.id.to_string(), t.name))
                .collect(),
        ),
        Ok(_) | Err(AdapterError::NotFound { .. }) => Some(BTreeMap::new()),
        Err(e) => {
            warn!(error = %e, "cannot read the catalog; archiving the node's tablets as listed");
            *db = None;
            None
        }
    }
}

/// Ships one tablet's new records: reads up to its safe time, cutting pieces of at most
/// about [`PIECE_BYTES`], and advances its progress (in memory; the caller persists it).
async fn archive_tablet(
    repo: &Repository,
    node: &dyn NodeStore,
    t: &ArchiveTask,
    id: &str,
    st: &mut TabletState,
    counters: &Counters,
) -> Result<()> {
    let tablet = TabletId::new(id.to_string())?;
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_to = st.prog.covered;
    loop {
        let r = node
            .read_change_log(&tablet, HybridTime(buf_to), st.cursor, 2 << 20)
            .await;
        let r = match r {
            Ok(r) => r,
            // Deleted since the node listed it: the next scan decides whether it is gone.
            Err(e @ AdapterError::NotFound { .. }) => {
                // Unflushed records are dropped: read them again from `covered` next time.
                warn!(tablet = %id, why = %e, "tablet vanished while being archived");
                st.cursor = LogCursor::default();
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(truncated_through) = r.gap.map(|g| g.0) {
            // Retention deleted records we had not shipped (the agent was down too long):
            // the chain restarts after them, and restores before that point need an older
            // base backup plus the old chain, or are refused. Loud: this is data at risk.
            warn!(
                tablet = %id,
                archived = buf_to,
                deleted_through = truncated_through,
                "change-log records were deleted before they were archived; the archive of \
                 this tablet restarts after them (take a base backup now)"
            );
            flush_piece(repo, t, id, st, &mut buf, buf_to, counters).await?;
            st.prog.since = truncated_through;
            st.prog.piece_to = truncated_through;
            st.prog.covered = truncated_through;
            buf_to = truncated_through;
            st.cursor = LogCursor::default();
            continue;
        }
        st.cursor = r.cursor;
        if r.count > 0 {
            buf.extend_from_slice(&r.records);
            counters
                .items_done
                .fetch_add(r.count as u64, Ordering::Relaxed);
        }
        buf_to = buf_to.max(r.covered.0);
        if buf.len() >= PIECE_BYTES || !r.more {
            flush_piece(repo, t, id, st, &mut buf, buf_to, counters).await?;
        }
        if !r.more {
            st.prog.covered = st.prog.covered.max(buf_to);
            return Ok(());
        }
    }
}

/// Uploads the pending records as the piece `(piece_to, to]`, or, with none pending, only
/// moves `covered` (an idle tablet needs no object).
async fn flush_piece(
    repo: &Repository,
    t: &ArchiveTask,
    id: &str,
    st: &mut TabletState,
    buf: &mut Vec<u8>,
    to: u64,
    counters: &Counters,
) -> Result<()> {
    if buf.is_empty() {
        st.prog.covered = st.prog.covered.max(to);
        return Ok(());
    }
    let piece = Piece {
        from: st.prog.piece_to,
        to,
    };
    let n = repo
        .put_log_piece(
            &t.database_id,
            id,
            piece,
            std::mem::take(buf),
            t.compression,
        )
        .await?;
    counters.bytes_done.fetch_add(n, Ordering::Relaxed);
    st.prog.piece_to = to;
    st.prog.covered = to;
    Ok(())
}

/// Replays the archive's records of `source_tablet` in `(from_ht, to_ht]` into its staged
/// copy (through the node store), then moves its restore point to `to_ht`.
pub async fn replay_staged(
    repo: &Repository,
    node: &dyn NodeStore,
    staged: &std::path::Path,
    source_tablet: &str,
    r: &ReplaySpec,
) -> Result<u64> {
    let pieces = repo
        .list_log_pieces(&r.database_id, source_tablet, r.from_ht, r.to_ht)
        .await?;
    let covered = snapfleet_repository::pitr::extend_chain(r.from_ht, &pieces);
    let need = pieces
        .iter()
        .map(|p| p.to)
        .max()
        .unwrap_or(r.from_ht)
        .min(r.to_ht)
        .max(r.tablet.chain_to);
    if covered < need {
        return Err(AgentError::invalid(
            format!("archive of tablet {source_tablet}"),
            format!(
                "archived changes after {} are missing (a piece deleted since the restore was \
                 planned, e.g. by `repo forget`); nothing was activated: run the restore again \
                 to re-plan it",
                HybridTime(covered).to_rfc3339()
            ),
        ));
    }
    let mut rep = node.open_replay(staged).await?;
    if rep.snapshot_ht().0 != r.from_ht {
        return Err(AgentError::invalid(
            format!("staged tablet {}", staged.display()),
            format!(
                "its snapshot time {} is not the base backup's {}",
                rep.snapshot_ht().0,
                r.from_ht
            ),
        ));
    }
    let (from, to) = (HybridTime(r.from_ht), HybridTime(r.to_ht));
    for p in pieces {
        let raw = repo
            .read_log_piece(&r.database_id, source_tablet, p)
            .await?;
        rep.apply(raw, from, to).await?;
    }
    let hidden: Vec<HiddenRange> = r
        .tablet
        .hidden
        .iter()
        .map(|(after, until)| HiddenRange {
            after: HybridTime(*after),
            until: HybridTime(*until),
        })
        .collect();
    Ok(rep.finish(to, &hidden).await?)
}
