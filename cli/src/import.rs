//! `snapfleet import`: loads a SQL script (our exports, plain `pg_dump` output) into a
//! database; tables appear only when fully loaded.

use crate::db::{connect, MasterArg};
use crate::util::{bar, human_duration};
use anyhow::{Context, Result};
use clap::Args;
use snapfleet_dump::import::{import, ImportOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct ImportArgs {
    #[command(flatten)]
    m: MasterArg,
    /// Target database (created if missing; its tables must not exist yet).
    #[arg(long)]
    db: String,
    /// Rows per write batch.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// The script (`.zst` is decompressed).
    file: PathBuf,
}

pub async fn run(a: ImportArgs, json: bool) -> Result<()> {
    let client = connect(&a.m).await?;
    let progress = Arc::new(AtomicU64::new(0));
    let pb = bar(None, "rows");
    pb.set_message("importing");
    let ticker = {
        let (pb, p) = (pb.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                pb.set_position(p.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let start = Instant::now();
    let r = import(
        &client,
        &ImportOptions {
            db: a.db.clone(),
            file: a.file.clone(),
            batch: a.batch,
        },
        &progress,
    )
    .await;
    ticker.abort();
    pb.finish_and_clear();
    let r = r.with_context(|| {
        format!(
            "importing {} into database {:?} (nothing was changed)",
            a.file.display(),
            a.db
        )
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    eprintln!(
        "imported {} rows into {} tables of {:?} in {} ({:.0} rows/s){}",
        r.rows,
        r.tables.len(),
        r.database,
        human_duration(start.elapsed()),
        r.rows as f64 / secs,
        if r.warnings.is_empty() {
            String::new()
        } else {
            format!("; {} statements skipped (see warnings)", r.warnings.len())
        }
    );
    for (t, n) in &r.tables {
        eprintln!("  {t}: {n} rows");
    }
    Ok(())
}
