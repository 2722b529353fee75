//! `snapfleet bench pitr`: off-cluster PITR on a local 3-node cluster with its coordinator
//! and agents. Archives the change log while a steady write load runs, samples the recovery
//! point objective (now − the archive's global checkpoint) every second, then times a
//! restore to the last archived time (base backup + log replay) into a new cluster against
//! a full restore of a backup of the same final data, and checks both against the source.

use crate::bench_fleet::dir_usage;
use crate::coord::submit;
use crate::util::{human_bytes, human_duration};
use anyhow::{bail, Context, Result};
use clap::Args;
use snapfleet_coordinator::client::Leader;
use snapfleet_jobs::archive::ArchiveSpec;
use snapfleet_localfleet::scenario::{Quiet, Scenario};
use snapfleet_tabletdb::{workload, HybridTime};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct PitrBenchArgs {
    /// Rows loaded before the base backup.
    #[arg(long, default_value_t = 200_000)]
    rows: u64,
    #[arg(long, default_value_t = 512)]
    row_size: usize,
    /// How long the steady load runs while the RPO is sampled (the reference: 5m).
    #[arg(long, default_value = "5m")]
    duration: String,
    /// Rows per second of the steady load.
    #[arg(long, default_value_t = 2_000.0)]
    rate: f64,
    /// The archive's shipping interval.
    #[arg(long, default_value = "1s")]
    interval: String,
    /// Working directory (default: a temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
}

async fn checkpoint(leader: &Leader) -> Result<u64> {
    let archives = crate::pitr::archives_of(leader).await?;
    Ok(archives.first().map(|a| a.checkpoint_ht).unwrap_or(0))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

pub async fn run(a: PitrBenchArgs, json: bool) -> Result<()> {
    let duration = crate::util::parse_duration(&a.duration)?;
    let interval = crate::util::parse_duration(&a.interval)?;
    let tmp;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("snapfleet-bench-")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let bin = std::env::current_exe()?;
    let scenario = Scenario::new(&bin, &dir)?;
    let url = scenario.repository("repo").await?;
    let repo_dir = dir.join("repo");
    let source = scenario.site("source", 3).await?;
    let client = source.client.clone();
    let db = "bench";
    eprintln!("loading {} rows of {} B…", a.rows, a.row_size);
    let opts = |rows: Option<u64>, dur: Option<Duration>, rate: Option<f64>, offset: u64| {
        workload::LoadOptions {
            db: db.into(),
            tables: 2,
            tablets: 6,
            rows,
            duration: dur,
            rate,
            row_size: a.row_size,
            id_offset: offset,
            ..Default::default()
        }
    };
    source
        .load(
            opts(Some(a.rows), None, None, 0),
            Arc::new(workload::Progress::default()),
        )
        .await?;
    let leader = &source.leader;

    // Archive, then the base backup.
    let spec = ArchiveSpec {
        master: source.cluster.master_addr.clone(),
        database: db.into(),
        repo: url.clone(),
        retention_secs: 7 * 86_400,
        interval_ms: interval.as_millis() as u64,
        compression: 3,
    };
    let aj = submit(leader, "archive", serde_json::to_value(&spec)?).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while checkpoint(leader).await? == 0 {
        if Instant::now() > deadline {
            bail!("archive job {} never reported a checkpoint", aj.id);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let base = source.backup(&source.backup_spec(db, &url), &Quiet).await?;
    let (base_secs, base) = (base.seconds, base.result);
    eprintln!(
        "base backup: {} in {}",
        human_bytes(base["bytes"].as_u64().unwrap_or(0)),
        human_duration(Duration::from_secs_f64(base_secs))
    );

    // Steady load; sample the RPO every second.
    eprintln!(
        "steady load at {} rows/s for {}, sampling now − checkpoint every second…",
        a.rate,
        human_duration(duration)
    );
    let progress = Arc::new(workload::Progress::default());
    let load = tokio::spawn(workload::run_load(
        client.clone(),
        opts(None, Some(duration), Some(a.rate), a.rows),
        progress.clone(),
    ));
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let started = Instant::now();
    while started.elapsed() < duration {
        tick.tick().await;
        let cp = checkpoint(leader).await?;
        if cp > 0 {
            let rpo = (HybridTime::wall_now().physical_micros() as f64
                - HybridTime(cp).physical_micros() as f64)
                / 1e6;
            samples.push(rpo.max(0.0));
        }
    }
    let loaded = load.await.context("load task")??;
    let t = client.now().await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while checkpoint(leader).await? < t.0 {
        if Instant::now() > deadline {
            bail!("the archive never caught up with the end of the load");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sorted = samples.clone();
    sorted.sort_by(|x, y| x.partial_cmp(y).expect("no NaN"));
    let (median, p90, max) = (
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.9),
        sorted.last().copied().unwrap_or(f64::NAN),
    );
    let (pieces, archived) = dir_usage(&repo_dir.join("pitr"));

    // A full backup of the final data, for the comparison restore.
    let full = source.backup(&source.backup_spec(db, &url), &Quiet).await?;

    // Restore to t (base + replay) and the full backup, each into a new 3-node cluster.
    let mut results = Vec::new();
    for name in [
        "restore to t: base backup + archived log",
        "full restore of a backup of the same data",
    ] {
        let tag = if results.is_empty() { "pitr" } else { "full" };
        let target = scenario.site(&format!("target-{tag}"), 3).await?;
        let mut spec = target.restore_spec(&url, "");
        spec.database = db.into();
        if tag == "pitr" {
            spec.to_ht = t.0;
            spec.source_database = db.into();
        } else {
            spec.backup_id = full.result["backup_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
        }
        let r = target.restore(&spec, &Quiet).await?;
        if let Some(c) = source
            .compare(db, t, &target)
            .await?
            .into_iter()
            .find(|c| !c.ok)
        {
            bail!("{name}: table {} differs from the source at {t}", c.table);
        }
        eprintln!(
            "{name}: {}",
            human_duration(Duration::from_secs_f64(r.seconds))
        );
        results.push((name, r.seconds, r.result));
    }

    let report = serde_json::json!({
        "rows_base": a.rows,
        "rows_during": loaded.rows,
        "bytes_during": loaded.bytes,
        "duration_secs": duration.as_secs_f64(),
        "rate_rows_per_sec": a.rate,
        "interval_secs": interval.as_secs_f64(),
        "rpo_samples": samples.len(),
        "rpo_median_secs": median,
        "rpo_p90_secs": p90,
        "rpo_max_secs": max,
        "rpo_samples_secs": samples,
        "archive_objects": pieces,
        "archive_bytes": archived,
        "restore_to_t_secs": results[0].1,
        "replayed_records": results[0].2["replayed"],
        "full_restore_secs": results[1].1,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "Base: {} rows of {} B; steady load {} rows/s ({} rows, {}) for {}; archive interval {}.",
        a.rows,
        a.row_size,
        a.rate,
        loaded.rows,
        human_bytes(loaded.bytes),
        human_duration(duration),
        human_duration(interval)
    );
    println!();
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| RPO median (now − global checkpoint, {} samples) | {median:.2} s | ≤ 10 s |",
        samples.len()
    );
    println!("| RPO p90 | {p90:.2} s | |");
    println!("| RPO max | {max:.2} s | ≤ 10 s |");
    println!(
        "| archive objects / bytes | {pieces} / {} | |",
        human_bytes(archived)
    );
    println!(
        "| restore to t (base + {} records replayed) | {:.2} s | |",
        results[0].2["replayed"], results[0].1
    );
    println!(
        "| full restore of the same data | {:.2} s | |",
        results[1].1
    );
    println!(
        "| restore to t / full restore | {:.2}× | |",
        results[0].1 / results[1].1.max(1e-9)
    );
    Ok(())
}
