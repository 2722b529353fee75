//! `snapfleet demo`: the whole job on a local fleet with no set-up. Starts a 3-node
//! tabletdb cluster with its fleet (a coordinator and one agent per node) and a
//! local-directory repository, loads sample tables while the counter workload keeps
//! writing, backs up through the coordinator (snapshot, parallel upload by the agents, ROOT
//! last), then starts a brand-new 2-node cluster with a fresh fleet that never saw the
//! backup and restores from the repository alone; verifies row counts, per-table checksums
//! and check-consistency at the backup's hybrid time, and prints a report. Exits non-zero
//! if any check fails.

use crate::coord::Bars;
use crate::util::{human_bytes, human_duration};
use anyhow::{bail, Context, Result};
use clap::Args;
use snapfleet_localfleet::scenario::{Scenario, TableCheck};
use snapfleet_tabletdb::{sql, verify, workload};
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
    repository: String,
    backup_id: String,
    backup_ht: u64,
    backup_time: String,
    load_rows: u64,
    load_bytes: u64,
    load_rows_per_sec: f64,
    load_mb_per_sec: f64,
    counter_keys_written: u64,
    backup_files: u64,
    backup_bytes: u64,
    backup_bytes_uploaded: u64,
    backup_seconds: f64,
    backup_mb_per_sec: f64,
    restore_tablets: u64,
    restore_bytes: u64,
    restore_seconds: f64,
    restore_mb_per_sec: f64,
    tables: Vec<TableCheck>,
    consistency: verify::ConsistencyReport,
    dir: String,
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
    let watcher = Bars { quiet: json };

    // 1. Source cluster, its fleet, and a local-directory repository with a random
    // passphrase in a private file.
    let t0 = Instant::now();
    let scenario = Scenario::new(&bin, &dir)?;
    let repo_url = scenario.repository("repo").await?;
    let source = scenario.site("source", 3).await?;
    let client = source.client.clone();
    say(format!(
        "[1/6] source cluster up: master {} + 3 nodes, coordinator {} + 3 agents, repository {} ({})",
        source.cluster.master_addr,
        source.fleet.coordinator_addr,
        repo_url,
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
    let load = source
        .load(
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

    // 3. Back up while the counter keeps writing.
    let spec = source.backup_spec(db, &repo_url);
    let backup_id = spec.backup_id.clone();
    let backup = source.backup(&spec, &watcher).await?;
    let backup_secs = backup.seconds;
    let cut = backup.hybrid_time();
    say(format!(
        "[3/6] backup {} at {} ({}): {} files, {} read, {} uploaded, {} tablets in {} ({:.1} MB/s)",
        backup_id,
        cut,
        cut.to_rfc3339(),
        backup.num("files"),
        human_bytes(backup.num("bytes")),
        human_bytes(backup.num("bytes_uploaded")),
        backup.num("tablets"),
        human_duration(Duration::from_secs_f64(backup_secs)),
        backup.num("bytes") as f64 / backup_secs.max(1e-9) / 1e6
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

    // 4. Restore into a new 2-node cluster with a fresh fleet, from the repository alone.
    let t = Instant::now();
    let target = scenario
        .site("target", 2)
        .await
        .context("starting the 2-node target cluster and its fleet")?;
    let tclient = target.client.clone();
    let restore = target
        .restore(&target.restore_spec(&repo_url, &backup_id), &watcher)
        .await?;
    let restore_secs = restore.seconds;
    say(format!(
        "[4/6] restored {} tablets ({}) into the new 2-node cluster in {} ({} incl. start-up)",
        restore.num("tablets"),
        human_bytes(restore.num("bytes")),
        human_duration(Duration::from_secs_f64(restore_secs)),
        human_duration(t.elapsed())
    ));

    // 5. Verify: checksums of every table (source at T vs target now), counter consistency.
    let tables = source.compare(db, cut, &target).await?;
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
        repository: repo_url.clone(),
        backup_id: backup_id.clone(),
        backup_ht: cut.0,
        backup_time: cut.to_rfc3339(),
        load_rows: load.rows,
        load_bytes: load.bytes,
        load_rows_per_sec: load.rows_per_sec,
        load_mb_per_sec: load.mb_per_sec,
        counter_keys_written: counter.keys,
        backup_files: backup.num("files"),
        backup_bytes: backup.num("bytes"),
        backup_bytes_uploaded: backup.num("bytes_uploaded"),
        backup_seconds: backup_secs,
        backup_mb_per_sec: backup.num("bytes") as f64 / backup_secs.max(1e-9) / 1e6,
        restore_tablets: restore.num("tablets"),
        restore_bytes: restore.num("bytes"),
        restore_seconds: restore_secs,
        restore_mb_per_sec: restore.num("bytes") as f64 / restore_secs.max(1e-9) / 1e6,
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
            "\nBy hand (long-running commands each in their own shell):\n  \
             snapfleet db up --nodes 3 --data /tmp/src                 # master 127.0.0.1:7100; node addresses: snapfleet db status\n  \
             snapfleet repo init --repo file:///tmp/repo --password-file pass.txt\n  \
             snapfleet coordinator --id 1 --data /tmp/coord --password-file pass.txt      # 127.0.0.1:7000\n  \
             snapfleet agent --db-node NODE_ADDR --data /tmp/agent-N --password-file pass.txt   # one per node\n  \
             snapfleet db load --db demo --rows 40000\n  \
             snapfleet backup create --db demo --repo file:///tmp/repo --password-file pass.txt --wait\n  \
             snapfleet backup list --repo file:///tmp/repo --password-file pass.txt\n  \
             # new cluster + its own coordinator and agents, then:\n  \
             snapfleet restore --backup ID --master NEW_MASTER --coordinator NEW_COORD --repo file:///tmp/repo --password-file pass.txt --wait\n  \
             snapfleet db check-consistency --master NEW_MASTER --db demo --at BACKUP_HYBRID_TIME --log counter.log"
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
