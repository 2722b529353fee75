//! Schedules through the coordinator (which fires them on its leader), shared by backup
//! schedules (`snapfleet backup schedule`, in backup.rs) and PITR snapshot schedules
//! (`snapfleet pitr schedule`): put, list, and their JSON form.

use crate::coord::*;
use anyhow::Result;
use snapfleet_coordinator::pb::coordinator_client::CoordinatorClient;
use snapfleet_coordinator::pb::{self as cpb};

/// Creates or replaces a schedule in the coordinator (backup, pitr…).
pub async fn put_schedule(c: &CoordArg, req: cpb::ScheduleInfo) -> Result<cpb::ScheduleInfo> {
    let kind = req.kind.clone();
    Ok(c.leader()?
        .call(move |ch| {
            let req = req.clone();
            async move { CoordinatorClient::new(ch).put_schedule(req).await }
        })
        .await
        .map_err(|s| anyhow::anyhow!("creating the {kind} schedule: {}", s.message()))?
        .into_inner())
}

/// Every schedule the coordinator holds.
pub async fn list_schedules(c: &CoordArg) -> Result<Vec<cpb::ScheduleInfo>> {
    Ok(c.leader()?
        .call(|ch| async move {
            CoordinatorClient::new(ch)
                .list_schedules(cpb::Empty {})
                .await
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .schedules)
}

pub fn schedule_json(s: &cpb::ScheduleInfo) -> serde_json::Value {
    serde_json::json!({
        "id": s.id,
        "kind": s.kind,
        "interval_ms": s.interval_ms,
        "retention": s.retention,
        "next_due_ms": s.next_due_ms,
        "spec": serde_json::from_str::<serde_json::Value>(&s.spec_json).ok(),
    })
}
