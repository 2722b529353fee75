//! `snapfleet demo`: the whole job on a local fleet with no set-up. Starts a 3-node
//! tabletdb cluster with its fleet (a coordinator and one agent per node) and a
//! local-directory repository, loads sample tables while the counter workload keeps
//! writing, backs up through the coordinator (snapshot, parallel upload by the agents, ROOT
//! last), then starts a brand-new 2-node cluster with a fresh fleet that never saw the
//! backup and restores from the repository alone; verifies row counts, per-table checksums
//! and check-consistency at the backup's hybrid time, and prints a report. Exits non-zero
//! if any check fails.

use crate::coord::{submit, watch};
use crate::util::{human_bytes, human_duration};
use anyhow::{bail, Context, Result};
use clap::Args;
use snapfleet_coordinator::client::Leader;
use snapfleet_jobs::spec::{BackupSpec, RestoreSpec};
use snapfleet_localfleet::LocalFleet;
use snapfleet_repository::{open_store, BackupId, InitOptions, Repository};
use snapfleet_tabletdb::local::{LocalCluster, LocalOptions};
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
    // A local-directory repository with a random passphrase in a private file.
    let pass_file = dir.join("repo.pass");
    let passphrase = format!("{:032x}", rand::random::<u128>());
    std::fs::write(&pass_file, &passphrase)?;
    let repo_dir = dir.join("repo");
    std::fs::create_dir_all(&repo_dir)?;
    let repo_url = format!("file://{}", repo_dir.canonicalize()?.display());
    Repository::init(
        open_store(&repo_url)?,
        passphrase.as_bytes(),
        InitOptions::default(),
    )
    .await
    .context("initialising the demo repository")?;
    let source_fleet = LocalFleet::start(&bin, &dir.join("source-fleet"), &pass_file, &source)
        .context("starting the source fleet (coordinator + agents)")?;
    say(format!(
        "[1/6] source cluster up: master {} + 3 nodes, coordinator {} + 3 agents, repository {} ({})",
        source.master_addr,
        source_fleet.coordinator_addr,
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

    // 3. Back up while the counter keeps writing.
    let t = Instant::now();
    let backup_id = BackupId::generate().to_string();
    let leader = Leader::new([source_fleet.coordinator_addr.as_str()]);
    let spec = BackupSpec {
        master: source.master_addr.clone(),
        database: db.into(),
        repo: repo_url.clone(),
        backup_id: backup_id.clone(),
        ddl_retries: 5,
        keep_snapshot: false,
        rate_limit: 0,
        compression: 3,
        schedule_id: None,
        due_ms: None,
        retention: 0,
    };
    let job = submit(&leader, "backup", serde_json::to_value(spec)?).await?;
    let job = watch(&leader, job.id, json).await?;
    if job.state != "succeeded" {
        bail!("backup job {} {}: {}", job.id, job.state, job.failure);
    }
    let backup_secs = t.elapsed().as_secs_f64();
    let br: serde_json::Value = serde_json::from_str(&job.result_json)?;
    let num = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    let cut = HybridTime(num(&br, "hybrid_time"));
    say(format!(
        "[3/6] backup {} at {} ({}): {} files, {} read, {} uploaded, {} tablets in {} ({:.1} MB/s)",
        backup_id,
        cut,
        cut.to_rfc3339(),
        num(&br, "files"),
        human_bytes(num(&br, "bytes")),
        human_bytes(num(&br, "bytes_uploaded")),
        num(&br, "tablets"),
        human_duration(t.elapsed()),
        num(&br, "bytes") as f64 / backup_secs.max(1e-9) / 1e6
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
    let target = LocalCluster::start(
        &bin,
        &dir.join("target"),
        LocalOptions {
            nodes: 2,
            ..Default::default()
        },
    )
    .context("starting the 2-node target cluster")?;
    let target_fleet = LocalFleet::start(&bin, &dir.join("target-fleet"), &pass_file, &target)
        .context("starting the target fleet")?;
    let tclient = target.client().await?;
    let restore_start = Instant::now();
    let tleader = Leader::new([target_fleet.coordinator_addr.as_str()]);
    let spec = RestoreSpec {
        repo: repo_url.clone(),
        backup_id: backup_id.clone(),
        master: target.master_addr.clone(),
        database: String::new(),
        tables: vec![],
        rate_limit: 0,
        to_ht: 0,
        source_database: String::new(),
    };
    let job = submit(&tleader, "restore", serde_json::to_value(spec)?).await?;
    let job = watch(&tleader, job.id, json).await?;
    if job.state != "succeeded" {
        bail!("restore job {} {}: {}", job.id, job.state, job.failure);
    }
    let rr: serde_json::Value = serde_json::from_str(&job.result_json)?;
    let restore_secs = restore_start.elapsed().as_secs_f64();
    say(format!(
        "[4/6] restored {} tablets ({}) into the new 2-node cluster in {} ({} incl. start-up)",
        num(&rr, "tablets"),
        human_bytes(num(&rr, "bytes")),
        human_duration(restore_start.elapsed()),
        human_duration(t.elapsed())
    ));
    let snap_tables: Vec<String> = client
        .tables(db)
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();

    // 5. Verify: checksums of every table (source at T vs target now), counter consistency.
    let mut tables = Vec::new();
    for name in &snap_tables {
        let s = verify::table_checksum(&client, db, name, Some(cut)).await?;
        let r = verify::table_checksum(&tclient, db, name, None).await?;
        tables.push(TableCheck {
            table: name.clone(),
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
        repository: repo_url.clone(),
        backup_id: backup_id.clone(),
        backup_ht: cut.0,
        backup_time: cut.to_rfc3339(),
        load_rows: load.rows,
        load_bytes: load.bytes,
        load_rows_per_sec: load.rows_per_sec,
        load_mb_per_sec: load.mb_per_sec,
        counter_keys_written: counter.keys,
        backup_files: num(&br, "files"),
        backup_bytes: num(&br, "bytes"),
        backup_bytes_uploaded: num(&br, "bytes_uploaded"),
        backup_seconds: backup_secs,
        backup_mb_per_sec: num(&br, "bytes") as f64 / backup_secs.max(1e-9) / 1e6,
        restore_tablets: num(&rr, "tablets"),
        restore_bytes: num(&rr, "bytes"),
        restore_seconds: restore_secs,
        restore_mb_per_sec: num(&rr, "bytes") as f64 / restore_secs.max(1e-9) / 1e6,
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
    drop(source_fleet);
    drop(target_fleet);
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
