//! `snapfleet demo`: the whole job on a local fleet with no set-up. Starts a 3-node
//! tabletdb cluster, loads sample tables while the counter workload keeps writing, takes a
//! distributed snapshot, restores it into a brand-new 2-node cluster, verifies row counts,
//! per-table checksums and check-consistency at the snapshot time, and prints a report.
//! Exits non-zero if any check fails.
//!
//! Until the repository and agents land (issues 5–7), the snapshot files travel by local
//! copy; the restore path on the target (hidden tables, staged import, activate) is the real
//! one.

use crate::db::create_snapshot;
use crate::util::{human_bytes, human_duration};
use anyhow::{bail, Context, Result};
use clap::Args;
use snapfleet_tabletdb::local::{LocalCluster, LocalOptions};
use snapfleet_tabletdb::restore::{restore_snapshot, tablet_node, tablet_snapshot_dir};
use snapfleet_tabletdb::{sql, verify, workload, HybridTime};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct DemoArgs {
    /// Working directory (default: a temporary one, removed afterwards unless --keep).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the working directory (data, logs) afterwards.
    #[arg(long)]
    keep: bool,
    /// Bulk rows to load (over two tables).
    #[arg(long, default_value_t = 40_000)]
    rows: u64,
    /// Payload bytes per bulk row.
    #[arg(long, default_value_t = 512)]
    row_size: usize,
}

#[derive(serde::Serialize)]
struct Report {
    ok: bool,
    snapshot_id: String,
    snapshot_ht: u64,
    snapshot_time: String,
    load_rows: u64,
    load_bytes: u64,
    load_rows_per_sec: f64,
    load_mb_per_sec: f64,
    counter_keys_written: u64,
    snapshot_files: u64,
    snapshot_bytes: u64,
    snapshot_seconds: f64,
    restore_tablets: usize,
    restore_seconds: f64,
    restore_mb_per_sec: f64,
    tables: Vec<TableCheck>,
    consistency: verify::ConsistencyReport,
    dir: String,
}

#[derive(serde::Serialize)]
struct TableCheck {
    table: String,
    source_rows: u64,
    restored_rows: u64,
    source_digest: String,
    restored_digest: String,
    ok: bool,
}

const SAMPLE_SQL: &str = "
CREATE TABLE IF NOT EXISTS types_sample (
  id int8 PRIMARY KEY, small int2, num numeric, ok bool, note text, raw bytea,
  at timestamptz, day date, ident uuid, doc jsonb
) WITH (tablets = 3);
INSERT INTO types_sample VALUES
  (1, -32768, '12345678901234567890.5', true, 'héllo, ''quoted'' world', '\\x00ff', '2024-02-29 12:00:00+00', '2024-02-29', '123e4567-e89b-12d3-a456-426614174000', '{\"a\": [1, 2]}'),
  (2, 32767, '-0.000001', false, '', '\\x', '1970-01-01 00:00:00+00', '1970-01-01', '00000000-0000-0000-0000-000000000000', 'null'),
  (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
";

pub async fn run(a: DemoArgs, json: bool) -> Result<()> {
    let tmp;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("snapfleet-demo-")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let bin = std::env::current_exe()?;
    let say = |s: String| {
        if !json {
            eprintln!("{s}");
        }
    };
    say(format!("snapfleet demo — working in {}", dir.display()));

    // 1. Source cluster.
    let t0 = Instant::now();
    let source = LocalCluster::start(
        &bin,
        &dir.join("source"),
        LocalOptions {
            nodes: 3,
            ..Default::default()
        },
    )
    .context("starting the 3-node source cluster")?;
    let client = Arc::new(source.client().await?);
    say(format!(
        "[1/6] source cluster up: master {} + 3 nodes ({})",
        source.master_addr,
        human_duration(t0.elapsed())
    ));

    // 2. Load sample tables while the counter workload writes.
    let db = "demo";
    client.create_database(db, true).await?;
    sql::execute(&client, db, SAMPLE_SQL, None)
        .await
        .context("creating the sample table")?;
    let counter_log = dir.join("counter.log");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let counter_progress = Arc::new(AtomicU64::new(0));
    let counter = {
        let (client, log, progress) = (
            client.clone(),
            counter_log.clone(),
            counter_progress.clone(),
        );
        tokio::spawn(async move {
            workload::run_counter(
                &client,
                workload::CounterOptions {
                    db: "demo".into(),
                    tablets: 0,
                    keys: None,
                    duration: None,
                    rate: Some(500.0),
                    log,
                },
                async {
                    let _ = stop_rx.await;
                },
                &progress,
            )
            .await
        })
    };
    let pb = crate::util::bar(Some(a.rows), "rows");
    pb.set_message("loading");
    let progress = Arc::new(workload::Progress::default());
    let ticker = {
        let (pb, progress) = (pb.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                pb.set_position(progress.rows.load(std::sync::atomic::Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let load = workload::run_load(
        client.clone(),
        workload::LoadOptions {
            db: db.into(),
            tables: 2,
            rows: Some(a.rows),
            row_size: a.row_size,
            ..Default::default()
        },
        progress,
    )
    .await;
    ticker.abort();
    pb.finish_and_clear();
    let load = load.context("loading sample data")?;
    say(format!(
        "[2/6] loaded {} rows ({}) at {:.0} rows/s, {:.1} MB/s, counter workload running",
        load.rows,
        human_bytes(load.bytes),
        load.rows_per_sec,
        load.mb_per_sec
    ));

    // 3. Snapshot while the counter keeps writing.
    let t = Instant::now();
    let snap = create_snapshot(&client, db, None, 3).await?;
    let snapshot_secs = t.elapsed().as_secs_f64();
    let cut = HybridTime(snap.hybrid_time);
    say(format!(
        "[3/6] snapshot {} at {} ({}): {} files, {} in {}",
        snap.snapshot_id,
        cut,
        cut.to_rfc3339(),
        snap.total_files,
        human_bytes(snap.total_bytes),
        human_duration(t.elapsed())
    ));
    // Keep writing a little past the cut, so the restore must hide newer versions.
    let seen_at_cut = counter_progress.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while counter_progress.load(std::sync::atomic::Ordering::Relaxed) < seen_at_cut + 100
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(());
    let counter = counter.await.context("counter task")??;

    // 4. Restore into a new 2-node cluster.
    let t = Instant::now();
    let target = LocalCluster::start(
        &bin,
        &dir.join("target"),
        LocalOptions {
            nodes: 2,
            ..Default::default()
        },
    )
    .context("starting the 2-node target cluster")?;
    let tclient = target.client().await?;
    let restore_start = Instant::now();
    let report = restore_snapshot(&tclient, &snap, db, &[], |tablet| {
        let node = tablet_node(&snap, tablet).unwrap_or(1);
        tablet_snapshot_dir(&source.node_dir(node), &snap, tablet).unwrap_or_default()
    })
    .await
    .context("restoring the snapshot into the target cluster")?;
    let restore_secs = restore_start.elapsed().as_secs_f64();
    say(format!(
        "[4/6] restored {} tables / {} tablets ({}) into the 2-node cluster in {} ({} incl. start-up)",
        report.tables,
        report.tablets,
        human_bytes(report.bytes),
        human_duration(restore_start.elapsed()),
        human_duration(t.elapsed())
    ));

    // 5. Verify: checksums of every table (source at T vs target now), counter consistency.
    let mut tables = Vec::new();
    for t in &snap.tables {
        let s = verify::table_checksum(&client, db, &t.name, Some(cut)).await?;
        let r = verify::table_checksum(&tclient, db, &t.name, None).await?;
        tables.push(TableCheck {
            table: t.name.clone(),
            source_rows: s.rows,
            restored_rows: r.rows,
            ok: s == r,
            source_digest: s.digest,
            restored_digest: r.digest,
        });
    }
    let consistency = verify::check_consistency(
        &tclient,
        db,
        cut,
        Some(tclient.now().await?),
        Some(&counter_log),
    )
    .await?;
    let ok = tables.iter().all(|t| t.ok) && consistency.ok && consistency.keys_expected > 0;
    say("[5/6] verification:".into());
    for t in &tables {
        say(format!(
            "      {:<16} source {:>7} rows, restored {:>7} rows, checksum {}",
            t.table,
            t.source_rows,
            t.restored_rows,
            if t.ok { "match" } else { "MISMATCH" }
        ));
    }
    say(format!(
        "      check-consistency at {}: {} ({} keys expected, {} present, {} missing, {} extra; {} keys were written in all)",
        cut,
        if consistency.ok { "PASS" } else { "FAIL" },
        consistency.keys_expected,
        consistency.keys_seen,
        consistency.missing,
        consistency.extra,
        counter.keys
    ));
    let out = Report {
        ok,
        snapshot_id: snap.snapshot_id.clone(),
        snapshot_ht: snap.hybrid_time,
        snapshot_time: cut.to_rfc3339(),
        load_rows: load.rows,
        load_bytes: load.bytes,
        load_rows_per_sec: load.rows_per_sec,
        load_mb_per_sec: load.mb_per_sec,
        counter_keys_written: counter.keys,
        snapshot_files: snap.total_files,
        snapshot_bytes: snap.total_bytes,
        snapshot_seconds: snapshot_secs,
        restore_tablets: report.tablets,
        restore_seconds: restore_secs,
        restore_mb_per_sec: report.bytes as f64 / restore_secs.max(1e-9) / 1e6,
        tables,
        consistency,
        dir: dir.display().to_string(),
    };
    say(format!(
        "[6/6] {} — total {}",
        if ok {
            "ALL CHECKS PASSED"
        } else {
            "CHECKS FAILED"
        },
        human_duration(t0.elapsed())
    ));
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        eprintln!(
            "\nBy hand:\n  snapfleet db up --nodes 3 --data /tmp/src          # then, in another shell:\n  \
             snapfleet db load --db demo --rows 40000\n  \
             snapfleet db load --db demo --workload counter --duration 60s --rate 500 --log counter.log &\n  \
             snapfleet db snapshot create --db demo\n  \
             snapfleet db sql --db demo 'SELECT count(*) FROM load_0'\n  \
             snapfleet db check-consistency --db demo --at <snapshot hybrid time> --log counter.log"
        );
    }
    drop(source);
    drop(target);
    if a.keep {
        if let Some(d) = &a.dir {
            say(format!("kept {}", d.display()));
        } else {
            let kept = tmp_keep(&dir)?;
            say(format!("kept {}", kept.display()));
        }
    }
    if !ok {
        bail!("the demo's verification failed: see the report above");
    }
    Ok(())
}

fn tmp_keep(dir: &std::path::Path) -> Result<PathBuf> {
    let dest = std::env::temp_dir().join(format!("snapfleet-demo-kept-{}", std::process::id()));
    std::fs::rename(dir, &dest)?;
    Ok(dest)
}
