//! The leader's PITR schedule driver: each firing raises the cluster's history floor to
//! cover the window, takes a labelled distributed snapshot, and deletes this schedule's
//! snapshots that fell out of the window (keeping the newest one older than the window
//! start, which still covers it).

use crate::error::{JobError, Result};
use crate::spec::PitrSpec;
use crate::step::Step;
use serde_json::json;
use snapfleet_adapter::{Adapter, AdapterError, SnapshotRequest};
use snapfleet_api::SnapshotId;
use snapfleet_coordinator::model::Job;
use snapfleet_coordinator::JobCtl;
use std::time::Duration;
use tracing::info;

/// The snapshots of a schedule to delete: every one older than the window start except the
/// newest of those (ids, given `(id, created_unix_ms)` pairs).
pub fn expired(mut snaps: Vec<(String, i64)>, window_start_ms: i64) -> Vec<String> {
    snaps.sort_by_key(|s| s.1);
    let old: Vec<_> = snaps
        .into_iter()
        .filter(|s| s.1 < window_start_ms)
        .collect();
    let keep = old.len().saturating_sub(1);
    old.into_iter().take(keep).map(|s| s.0).collect()
}

pub(crate) async fn pitr_step(ctl: &JobCtl, adapter: &dyn Adapter, job: &Job) -> Result<Step> {
    let spec: PitrSpec = serde_json::from_value(job.spec.clone())
        .map_err(|e| JobError::invalid("pitr job spec", e))?;
    if job.aborting.is_some() {
        ctl.finish(None, json!({}))
            .await
            .map_err(|e| JobError::Coordinator(e.to_string()))?;
        return Ok(Step::Done);
    }
    let db = adapter.connect(&spec.master).await?;
    let label = spec.label();
    let floor = db
        .set_history_floor(&label, Duration::from_secs(spec.history_secs()))
        .await?
        .as_secs();
    let snap = match db
        .create_snapshot(SnapshotRequest {
            database: &spec.database,
            at: None,
            label: Some(&label),
            ddl_retries: 10,
        })
        .await
    {
        Ok(s) => s,
        Err(e @ AdapterError::NotFound { .. }) => {
            return Err(JobError::invalid("pitr schedule", e))
        }
        Err(e) => return Err(e.into()),
    };
    let mine: Vec<(String, i64)> = db
        .list_snapshots(&spec.database)
        .await?
        .into_iter()
        .filter(|s| s.label == label)
        .map(|s| (s.id.to_string(), s.created_unix_ms))
        .collect();
    let window_start = snap.created_unix_ms - spec.window_ms as i64;
    let gone = expired(mine, window_start);
    for id in &gone {
        db.delete_snapshot(&SnapshotId::new(id.clone())?).await?;
    }
    info!(snapshot = %snap.id, ht = snap.hybrid_time.0, expired = gone.len(), floor, "pitr snapshot taken");
    ctl.finish(
        None,
        json!({
            "snapshot_id": snap.id.to_string(),
            "hybrid_time": snap.hybrid_time.0,
            "expired": gone,
            "history_floor_secs": floor,
        }),
    )
    .await
    .map_err(|e| JobError::Coordinator(e.to_string()))?;
    Ok(Step::Done)
}

#[cfg(test)]
mod tests {
    use super::expired;

    #[test]
    fn keeps_the_window_and_the_one_snapshot_covering_its_start() {
        let s = |v: &[(&str, i64)]| v.iter().map(|(a, b)| (a.to_string(), *b)).collect();
        assert_eq!(
            expired(s(&[("c", 30), ("a", 10), ("b", 20), ("d", 40)]), 35),
            vec!["a", "b"]
        );
        assert!(expired(s(&[("a", 10)]), 35).is_empty());
        assert!(expired(s(&[("a", 40)]), 35).is_empty());
    }
}
