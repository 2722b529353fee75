//! `snapfleet bench fleet`: full backup and restore through the coordinator and agents on a
//! local 3-node cluster, side by side with `cp -r` and restic on the very same tablet
//! snapshot files, plus an incremental backup after rewriting 5% of the rows and the agents'
//! peak memory. Prints a Markdown report with ratios; `--json` prints the numbers.

use crate::util::{human_bytes, human_duration};
use anyhow::{bail, Context, Result};
use clap::Args;
use snapfleet_localfleet::scenario::{Quiet, Scenario};
use snapfleet_tabletdb::restore::tablet_snapshot_dir;
use snapfleet_tabletdb::workload;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct FleetBenchArgs {
    /// Rows to load (over 2 tables); ~1.1 KiB each on disk at the default row size.
    #[arg(long, default_value_t = 400_000)]
    rows: u64,
    #[arg(long, default_value_t = 1024)]
    row_size: usize,
    /// Working directory (default: a temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Skip restic even if installed.
    #[arg(long)]
    no_restic: bool,
}

#[derive(serde::Serialize, Default)]
struct Row {
    what: String,
    bytes: u64,
    seconds: f64,
    mb_per_sec: f64,
    stored_bytes: u64,
}

fn row(what: &str, bytes: u64, secs: f64, stored: u64) -> Row {
    Row {
        what: what.into(),
        bytes,
        seconds: secs,
        mb_per_sec: bytes as f64 / secs.max(1e-9) / 1e6,
        stored_bytes: stored,
    }
}

fn du(p: &Path) -> u64 {
    dir_usage(p).1
}

/// Files under `p` and their bytes (a missing directory counts as empty).
pub(crate) fn dir_usage(p: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => {
                    files += 1;
                    bytes += m.len();
                }
                Err(_) => {}
            }
        }
    }
    (files, bytes)
}

fn run_cmd(cmd: &mut Command, what: &str) -> Result<f64> {
    let t = Instant::now();
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Peak resident memory of a process (VmHWM), in bytes.
pub(crate) fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

pub async fn run(a: FleetBenchArgs, json: bool) -> Result<()> {
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
    let say = |s: String| eprintln!("{s}");
    let scenario = Scenario::new(&bin, &dir)?;
    let passphrase = scenario.passphrase.clone();
    let (plain_url, zstd_url) = (
        scenario.repository("repo-plain").await?,
        scenario.repository("repo-zstd").await?,
    );
    let source = scenario.site("source", 3).await?;
    let client = source.client.clone();
    let db = "bench";
    say(format!("loading {} rows of {} B…", a.rows, a.row_size));
    let load_opts = |rows: u64| workload::LoadOptions {
        db: db.into(),
        tables: 2,
        tablets: 6,
        rows: Some(rows),
        row_size: a.row_size,
        ..Default::default()
    };
    let load = source
        .load(load_opts(a.rows), Arc::new(workload::Progress::default()))
        .await?;
    // Compact every tablet now, so no tool below competes with background compaction.
    say("compacting the tablets…".into());
    for t in client.refresh().await?.tables.iter() {
        for tb in &t.tablets {
            let mut node = client.node(tb.replicas[0]).await?;
            node.compact_tablet(snapfleet_tabletdb::pb::CompactTabletRequest {
                tablet_id: tb.tablet_id.clone(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("compacting tablet {}: {}", tb.tablet_id, s.message()))?;
        }
    }
    let backup = |url: &str, compression: i32, keep: bool| {
        let mut spec = source.backup_spec(db, url);
        spec.compression = compression;
        spec.keep_snapshot = keep;
        spec
    };
    let mut rows = Vec::new();

    // 1. Backup without compression (AES-GCM on), keeping the snapshot so the
    // other tools read the very same files.
    let r_plain = source.backup(&backup(&plain_url, 0, true), &Quiet).await?;
    let (bytes, secs) = (r_plain.num("bytes"), r_plain.seconds);
    say(format!(
        "snapfleet backup (zstd off): {} in {}",
        human_bytes(bytes),
        human_duration(Duration::from_secs_f64(secs))
    ));
    rows.push(row(
        "snapfleet backup, zstd off, AES-GCM on",
        bytes,
        secs,
        du(&dir.join("repo-plain")),
    ));

    // The snapshot's tablet directories on the three nodes.
    let snap_id = r_plain.result["snapshot_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let snaps = client
        .master()
        .list_snapshots(snapfleet_tabletdb::pb::ListSnapshotsRequest {
            database: db.into(),
        })
        .await?
        .into_inner()
        .snapshots;
    let snap = snaps
        .iter()
        .find(|s| s.snapshot_id == snap_id)
        .context("the kept snapshot")?;
    let mut dirs = Vec::new();
    for t in &snap.tables {
        for tb in &t.tablets {
            let node = tb.replicas[0];
            dirs.push(tablet_snapshot_dir(
                &source.cluster.node_dir(node),
                snap,
                &tb.tablet_id,
            )?);
        }
    }
    let cp_dst = dir.join("cp-copy");
    std::fs::create_dir_all(&cp_dst)?;
    // Warm page cache for every tool alike: the files were just written by the backup read.
    let secs = run_cmd(
        // --parents: every tablet's snapshot directory has the same name (the snapshot id).
        Command::new("cp")
            .args(["-r", "--parents"])
            .args(&dirs)
            .arg(&cp_dst),
        "cp -r",
    )?;
    rows.push(row("cp -r of the snapshot files", bytes, secs, du(&cp_dst)));
    // Files only, not the repository: cp "restore" is copying them back.
    let cp_back = dir.join("cp-back");
    std::fs::create_dir_all(&cp_back)?;
    let secs = run_cmd(
        Command::new("cp").arg("-r").arg(&cp_dst).arg(&cp_back),
        "cp -r back",
    )?;
    rows.push(row("cp -r back (restore)", bytes, secs, 0));
    let _ = std::fs::remove_dir_all(&cp_back);

    let restic = !a.no_restic && Command::new("restic").arg("version").output().is_ok();
    if restic {
        let rdir = dir.join("restic");
        let env = |c: &mut Command| {
            c.env("RESTIC_REPOSITORY", &rdir)
                .env("RESTIC_PASSWORD", &passphrase)
                .env("RESTIC_CACHE_DIR", dir.join("restic-cache"));
        };
        let mut init = Command::new("restic");
        init.args(["init", "-q"]);
        env(&mut init);
        run_cmd(&mut init, "restic init")?;
        let mut b = Command::new("restic");
        b.args(["backup", "-q"]).args(&dirs);
        env(&mut b);
        let secs = run_cmd(&mut b, "restic backup")?;
        rows.push(row(
            "restic backup (zstd auto, AES on)",
            bytes,
            secs,
            du(&rdir),
        ));
        let mut r = Command::new("restic");
        r.args(["restore", "latest", "-q", "--target"])
            .arg(dir.join("restic-restore"));
        env(&mut r);
        let secs = run_cmd(&mut r, "restic restore")?;
        rows.push(row("restic restore", bytes, secs, 0));
        let _ = std::fs::remove_dir_all(dir.join("restic-restore"));
    }

    // 2. Backup with zstd into a second repository.
    let spec = backup(&zstd_url, 3, false);
    let r_zstd = source.backup(&spec, &Quiet).await?;
    rows.push(row(
        "snapfleet backup, zstd 3, AES-GCM on",
        bytes,
        r_zstd.seconds,
        du(&dir.join("repo-zstd")),
    ));
    // Release the kept snapshot.
    let _ = client
        .master()
        .delete_snapshot(snapfleet_tabletdb::pb::DeleteSnapshotRequest {
            snapshot_id: snap_id.clone(),
        })
        .await;

    // 3. Restore (zstd repository) into a new 3-node cluster with its own fleet.
    let target = scenario.site("target", 3).await?;
    let r = target
        .restore(&target.restore_spec(&zstd_url, &spec.backup_id), &Quiet)
        .await?;
    rows.push(row(
        "snapfleet restore (zstd 3) into 3 new nodes",
        bytes,
        r.seconds,
        0,
    ));
    if let Some(t) = source
        .compare(db, r_zstd.hybrid_time(), &target)
        .await?
        .into_iter()
        .find(|t| !t.ok)
    {
        bail!("restored table {} differs from the source", t.table);
    }

    // 4. Incremental: rewrite 5% of the rows, back up again into the zstd repository.
    source
        .load(
            load_opts(a.rows / 20),
            Arc::new(workload::Progress::default()),
        )
        .await?;
    let r_inc = source.backup(&backup(&zstd_url, 3, false), &Quiet).await?;
    let secs_inc = r_inc.seconds;
    let inc_bytes = r_inc.num("bytes");
    let inc_up = r_inc.num("bytes_uploaded");
    let full_up = r_zstd.num("bytes_uploaded");

    let agent_rss: Vec<u64> = source
        .fleet
        .agents
        .iter()
        .chain(target.fleet.agents.iter())
        .flatten()
        .map(|c| peak_rss(c.id()))
        .collect();
    let max_rss = agent_rss.iter().copied().max().unwrap_or(0);

    let get = |w: &str| {
        rows.iter()
            .find(|r| r.what.starts_with(w))
            .map(|r| r.mb_per_sec)
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "n/a".into(),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "load": {"rows": load.rows, "bytes": load.bytes},
                "tablet_bytes": bytes,
                "results": rows,
                "incremental": {"bytes": inc_bytes, "uploaded": inc_up, "full_uploaded": full_up, "seconds": secs_inc},
                "agent_peak_rss": agent_rss,
            }))?
        );
        return Ok(());
    }
    println!(
        "3-node cluster, {} rows ({} written), {} of tablet snapshot files in {} tablets.\n",
        load.rows,
        human_bytes(load.bytes),
        human_bytes(bytes),
        dirs.len()
    );
    println!("| what | data | time | MB/s | stored |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} s | {:.1} | {} |",
            r.what,
            human_bytes(r.bytes),
            r.seconds,
            r.mb_per_sec,
            if r.stored_bytes > 0 {
                human_bytes(r.stored_bytes)
            } else {
                "-".into()
            }
        );
    }
    println!();
    println!(
        "- backup, zstd off vs `cp -r`: {} (target ≥ 0.8×)",
        ratio(get("snapfleet backup, zstd off"), get("cp -r of"))
    );
    println!(
        "- backup, zstd on vs restic: {} (target ≥ 2×)",
        ratio(get("snapfleet backup, zstd 3"), get("restic backup"))
    );
    println!(
        "- restore vs restic restore: {}; vs `cp -r` back: {}",
        ratio(get("snapfleet restore"), get("restic restore")),
        ratio(get("snapfleet restore"), get("cp -r back"))
    );
    println!(
        "- incremental after rewriting 5% of rows: {} uploaded of {} ({:.1}% of the data, {:.1}% of the full backup's upload) in {:.2} s",
        human_bytes(inc_up),
        human_bytes(inc_bytes),
        100.0 * inc_up as f64 / inc_bytes.max(1) as f64,
        100.0 * inc_up as f64 / full_up.max(1) as f64,
        secs_inc
    );
    println!(
        "- agent peak RSS: max {} (all: {})",
        human_bytes(max_rss),
        agent_rss
            .iter()
            .map(|b| human_bytes(*b))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
