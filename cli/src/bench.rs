//! `snapfleet bench db`: measures tabletdb on a local 3-node cluster — `db load` write
//! throughput, and distributed-snapshot time at 1× and 10× the data (which should stay flat:
//! a snapshot is hard links). Prints a Markdown report; `--json` prints the numbers.

use crate::db::create_snapshot;
use crate::util::human_bytes;
use anyhow::Result;
use clap::{Args, Subcommand};
use snapfleet_localfleet::cluster::{LocalCluster, LocalOptions};
use snapfleet_tabletdb::workload;
use std::sync::Arc;
use std::time::Instant;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Write throughput and snapshot time at 1× and 10× data on a local 3-node cluster.
    Db(DbBenchArgs),
    /// Backup and restore through the coordinator and agents vs `cp -r` and restic on the
    /// same tablet files; incremental after a 5% change; agent peak memory.
    Fleet(crate::bench_fleet::FleetBenchArgs),
    /// Coordinator failover time (kill -9 the leader, 20 trials), committed entries/s, and
    /// memory and snapshot size with 100 k tasks, on real replica processes.
    Coordinator(crate::bench_coordinator::CoordinatorBenchArgs),
    /// Off-cluster PITR: RPO (now − archive checkpoint) under steady load, sampled every
    /// second; restore to a time (base + log replay) vs a full restore of the same data.
    Pitr(crate::bench_pitr::PitrBenchArgs),
    /// Backup, restore and clone at growing tablet counts (1,000, 3,000, …): per-phase time,
    /// peak memory of every process, repository objects, and the growth exponent.
    Scale(crate::bench_scale::ScaleBenchArgs),
}

#[derive(Args)]
pub struct DbBenchArgs {
    /// Rows for the 1× data set (10× loads nine times more on top).
    #[arg(long, default_value_t = 50_000)]
    rows: u64,
    #[arg(long, default_value_t = 512)]
    row_size: usize,
    /// Snapshots per size (the median is reported).
    #[arg(long, default_value_t = 5)]
    trials: usize,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

#[derive(serde::Serialize)]
struct LoadResult {
    rows: u64,
    bytes: u64,
    seconds: f64,
    rows_per_sec: f64,
    mb_per_sec: f64,
}

#[derive(serde::Serialize)]
struct SnapResult {
    scale: &'static str,
    clone_median_ms: f64,
    data_bytes: u64,
    files: u64,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub async fn run(cmd: BenchCmd, json: bool) -> Result<()> {
    let a = match cmd {
        BenchCmd::Db(a) => a,
        BenchCmd::Fleet(f) => return crate::bench_fleet::run(f, json).await,
        BenchCmd::Pitr(p) => return crate::bench_pitr::run(p, json).await,
        BenchCmd::Scale(s) => return crate::bench_scale::run(s, json).await,
        BenchCmd::Coordinator(c) => return crate::bench_coordinator::run(c, json).await,
    };
    let dir = tempfile::Builder::new()
        .prefix("snapfleet-bench-")
        .tempdir()?;
    let bin = std::env::current_exe()?;
    let cluster = LocalCluster::start(
        &bin,
        dir.path(),
        LocalOptions {
            nodes: 3,
            ..Default::default()
        },
    )?;
    let client = Arc::new(cluster.client().await?);
    let mut loads = Vec::new();
    let mut snaps = Vec::new();
    for (scale, rows, id_offset) in [("1x", a.rows, 0), ("10x", a.rows * 9, a.rows)] {
        eprintln!("loading {rows} rows ({scale})…");
        let r = workload::run_load(
            client.clone(),
            workload::LoadOptions {
                db: "bench".into(),
                tables: 2,
                rows: Some(rows),
                row_size: a.row_size,
                concurrency: a.concurrency,
                batch: 200,
                id_offset,
                ..Default::default()
            },
            Arc::new(workload::Progress::default()),
        )
        .await?;
        loads.push(LoadResult {
            rows: r.rows,
            bytes: r.bytes,
            seconds: r.seconds,
            rows_per_sec: r.rows_per_sec,
            mb_per_sec: r.mb_per_sec,
        });
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..a.trials.max(1) {
            let t = Instant::now();
            let s = create_snapshot(&client, "bench", None, 3).await?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            client
                .master()
                .delete_snapshot(snapfleet_tabletdb::pb::DeleteSnapshotRequest {
                    snapshot_id: s.snapshot_id.clone(),
                })
                .await?;
            last = Some(s);
        }
        let s = last.expect("at least one trial");
        let mut clones = Vec::new();
        for i in 0..a.trials.max(1) {
            let name = format!("clone_{scale}_{i}");
            let t = Instant::now();
            client
                .master()
                .clone_database(snapfleet_tabletdb::pb::CloneDatabaseRequest {
                    source: "bench".into(),
                    target: name.clone(),
                    hybrid_time: 0,
                })
                .await?;
            clones.push(t.elapsed().as_secs_f64() * 1000.0);
            client
                .master()
                .drop_database(snapfleet_tabletdb::pb::DropDatabaseRequest { name })
                .await?;
        }
        snaps.push(SnapResult {
            scale,
            clone_median_ms: median(clones),
            data_bytes: s.total_bytes,
            files: s.total_files,
            median_ms: median(times.clone()),
            min_ms: times.iter().cloned().fold(f64::MAX, f64::min),
            max_ms: times.iter().cloned().fold(0.0, f64::max),
        });
    }
    let ratio = snaps[1].median_ms / snaps[0].median_ms.max(1e-9);
    let clone_ratio = snaps[1].clone_median_ms / snaps[0].clone_median_ms.max(1e-9);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"loads": loads, "snapshots": snaps, "snapshot_10x_over_1x": ratio, "clone_10x_over_1x": clone_ratio})
            )?
        );
        return Ok(());
    }
    println!("## tabletdb on a local 3-node cluster\n");
    println!("| load | rows | data | seconds | rows/s | MB/s |\n|---|---|---|---|---|---|");
    for (l, name) in loads.iter().zip(["1x", "+9x"]) {
        println!(
            "| {name} | {} | {} | {:.1} | {:.0} | {:.1} |",
            l.rows,
            human_bytes(l.bytes),
            l.seconds,
            l.rows_per_sec,
            l.mb_per_sec
        );
    }
    println!("\n| snapshot | tablet data | files | median ms | min ms | max ms | clone median ms |\n|---|---|---|---|---|---|---|");
    for s in &snaps {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            s.scale,
            human_bytes(s.data_bytes),
            s.files,
            s.median_ms,
            s.min_ms,
            s.max_ms,
            s.clone_median_ms
        );
    }
    println!(
        "\nsnapshot time 10x / 1x: **{ratio:.2}**; clone time 10x / 1x: **{clone_ratio:.2}** (data grew {:.1}x)",
        snaps[1].data_bytes as f64 / snaps[0].data_bytes.max(1) as f64
    );
    Ok(())
}
