//! `snapfleet clone`: a new database that is a consistent copy of another as of one hybrid
//! time, made of hard links (time independent of data size; the two are independent after).

use crate::db::{connect, MasterArg};
use crate::util::{human_bytes, human_duration, parse_time};
use anyhow::{Context, Result};
use clap::Args;
use snapfleet_tabletdb::{pb, HybridTime};
use std::time::{Duration, Instant};

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
    let client = connect(&a.m).await?;
    let at = match &a.at {
        Some(t) => parse_time(t, client.now().await?)?.0,
        None => 0,
    };
    let start = Instant::now();
    let mut attempt = 0;
    let r = loop {
        let res = client
            .master()
            .clone_database(pb::CloneDatabaseRequest {
                source: a.db.clone(),
                target: a.target.clone(),
                hybrid_time: at,
            })
            .await;
        match res {
            Ok(r) => break r.into_inner(),
            Err(s) if s.code() == tonic::Code::Aborted && attempt < a.ddl_retries => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
            }
            Err(s) => {
                return Err(anyhow::anyhow!("{}", s.message()))
                    .with_context(|| format!("cloning database {:?} as {:?}", a.db, a.target))
            }
        }
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
