//! `snapfleet pitr restore`: brings a database back, in place, to any time inside the
//! history-retention window (metadata only: versions after the time are hidden for ever;
//! tables created after it are dropped). `--dry-run` shows what would change.

use crate::db::{connect, MasterArg};
use crate::util::{human_duration, parse_time};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use snapfleet_tabletdb::{pb, HybridTime};
use std::time::Instant;

#[derive(Subcommand)]
pub enum PitrCmd {
    /// Restore a database in place to TIME (inside the history window).
    Restore(RestoreArgs),
}

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    m: MasterArg,
    #[arg(long)]
    db: String,
    /// RFC 3339, a hybrid time, or "5m ago".
    #[arg(long)]
    to: String,
    /// Show what would change (tables, row counts now and at TIME) and change nothing.
    #[arg(long)]
    dry_run: bool,
}

pub async fn run(cmd: PitrCmd, json: bool) -> Result<()> {
    let PitrCmd::Restore(a) = cmd;
    let client = connect(&a.m).await?;
    let now = client.now().await?;
    let to = parse_time(&a.to, now)?;
    let start = Instant::now();
    let r = client
        .master()
        .restore_to_time(pb::RestoreToTimeRequest {
            database: a.db.clone(),
            hybrid_time: to.0,
            dry_run: a.dry_run,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))
        .with_context(|| {
            format!(
                "restoring database {:?} to {} ({})",
                a.db,
                to,
                to.to_rfc3339()
            )
        })?
        .into_inner();
    let mut counts = Vec::new();
    if a.dry_run {
        for t in &r.restored {
            let mut n_now = 0u64;
            let mut n_then = 0u64;
            client
                .scan_table(&a.db, t, Some(now), |_, rows| {
                    n_now += rows.len() as u64;
                    Ok(())
                })
                .await?;
            client
                .scan_table(&a.db, t, Some(to), |_, rows| {
                    n_then += rows.len() as u64;
                    Ok(())
                })
                .await?;
            counts.push((t.clone(), n_now, n_then));
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "database": a.db, "to": to.0, "to_rfc3339": to.to_rfc3339(), "dry_run": a.dry_run,
                "restored": r.restored, "removed": r.removed,
                "row_counts": counts.iter().map(|(t, n, m)| serde_json::json!({"table": t, "now": n, "at_time": m})).collect::<Vec<_>>(),
            }))?
        );
        return Ok(());
    }
    let verb = if a.dry_run {
        "would restore"
    } else {
        "restored"
    };
    eprintln!(
        "{verb} database {:?} to {} ({})",
        a.db,
        to,
        HybridTime(to.0).to_rfc3339()
    );
    for (t, n, m) in &counts {
        eprintln!("  table {t}: {n} rows now → {m} rows at that time");
    }
    if !a.dry_run {
        for t in &r.restored {
            eprintln!("  table {t}: back to that time");
        }
    }
    for t in &r.removed {
        eprintln!(
            "  table {t}: created after that time, {}",
            if a.dry_run {
                "would be dropped"
            } else {
                "dropped"
            }
        );
    }
    if !a.dry_run {
        eprintln!("done in {}", human_duration(start.elapsed()));
    }
    Ok(())
}
