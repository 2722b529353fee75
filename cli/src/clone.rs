//! `snapfleet clone`: a new database that is a consistent copy of another as of one hybrid
//! time, made of hard links (time independent of data size; the two are independent after).

use crate::db::MasterArg;
use crate::util::{human_bytes, human_duration, parse_time};
use anyhow::{Context, Result};
use clap::Args;
use snapfleet_adapter::Adapter;
use snapfleet_tabletdb::HybridTime;
use std::time::Instant;

/// What a clone made, as printed.
struct CloneReport {
    hybrid_time: u64,
    tables: u32,
    tablets: u32,
    files: u64,
    bytes: u64,
}

#[derive(Args)]
pub struct CloneArgs {
    #[command(flatten)]
    m: MasterArg,
    /// Source database.
    #[arg(long)]
    db: String,
    /// Name of the new database.
    #[arg(long = "as")]
    target: String,
    /// Clone as of this time (hybrid time, RFC 3339, or "5m ago"; inside the history
    /// retention window). Default: now.
    #[arg(long)]
    at: Option<String>,
    /// Retries when a concurrent DDL aborts the clone's snapshot.
    #[arg(long, default_value_t = 3)]
    ddl_retries: u32,
}

pub async fn run(a: CloneArgs, json: bool) -> Result<()> {
    // Through the database adapter, as the job drivers reach the database.
    crate::certs::load_tls(false)?;
    let adapter = snapfleet_adapter_tabletdb::TabletdbAdapter::new();
    let what = || format!("cloning database {:?} as {:?}", a.db, a.target);
    let db = adapter.connect(&a.m.master).await.with_context(|| {
        format!(
            "connecting to the tabletdb master at {} (pass --master)",
            a.m.master
        )
    })?;
    let at = match &a.at {
        Some(t) => Some(snapfleet_adapter::HybridTime(
            parse_time(t, HybridTime(db.now().await?.0))?.0,
        )),
        None => None,
    };
    let start = Instant::now();
    // The adapter retries a snapshot raced by DDL `ddl_retries` times, then says so.
    let r = db
        .clone_database(&a.db, &a.target, at, a.ddl_retries)
        .await
        .with_context(what)?;
    let r = CloneReport {
        hybrid_time: r.hybrid_time.0,
        tables: r.tables,
        tablets: r.tablets,
        files: r.files,
        bytes: r.bytes,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "source": a.db, "target": a.target, "hybrid_time": r.hybrid_time,
                "tables": r.tables, "tablets": r.tablets, "files": r.files, "bytes": r.bytes,
                "seconds": start.elapsed().as_secs_f64(),
            }))?
        );
    } else {
        eprintln!(
            "cloned {:?} as {:?} at {} ({}): {} tables, {} tablets, {} shared as hard links, in {}",
            a.db,
            a.target,
            r.hybrid_time,
            HybridTime(r.hybrid_time).to_rfc3339(),
            r.tables,
            r.tablets,
            human_bytes(r.bytes),
            human_duration(start.elapsed())
        );
    }
    Ok(())
}
