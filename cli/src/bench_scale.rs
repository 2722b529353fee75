//! `snapfleet bench scale`: the cost of a job as the tablet count grows. For each size, on a
//! fresh local 3-node cluster with its fleet (one coordinator, one agent per node): create
//! tables of 250 tablets each and load a few small rows (most tablets nearly empty, as in a
//! large cluster's long tail), back up through the coordinator, restore into a brand-new
//! 3-node cluster, clone in place. Each phase is timed; the peak memory of the coordinator,
//! the agents and the master and the repository's object count are read afterwards; between
//! consecutive sizes the bench computes the growth exponent of every phase (1.0 = linear in
//! the tablet count, 2.0 = quadratic). Prints a Markdown report; `--json` the numbers.

use crate::bench_fleet::{dir_usage, peak_rss};
use crate::util::{human_bytes, human_duration};
use anyhow::{bail, Context, Result};
use clap::Args;
use snapfleet_adapter::Adapter;
use snapfleet_localfleet::scenario::{Quiet, Scenario};
use snapfleet_tabletdb::workload;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct ScaleBenchArgs {
    /// Tablet counts to measure, comma-separated (each rounded up to whole tables).
    #[arg(long, value_delimiter = ',', default_value = "1000,3000")]
    tablets: Vec<u32>,
    /// Tablets per table.
    #[arg(long, default_value_t = 250)]
    per_table: u32,
    /// Rows loaded per size (over all tables).
    #[arg(long, default_value_t = 5_000)]
    rows: u64,
    #[arg(long, default_value_t = 256)]
    row_size: usize,
    /// Working directory (default: a temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Reads one phase's seconds out of a result.
type Phase = fn(&SizeResult) -> f64;

#[derive(serde::Serialize, Clone, Default)]
struct SizeResult {
    tablets: u64,
    tables: u32,
    create_and_load_secs: f64,
    backup_secs: f64,
    restore_secs: f64,
    clone_secs: f64,
    repository_objects: u64,
    repository_bytes: u64,
    coordinator_peak_rss: u64,
    agent_peak_rss_max: u64,
    master_peak_rss: u64,
    node_peak_rss_max: u64,
}

/// How a phase grew from size `a` to size `b`: t ∝ n^k, so k = ln(tb/ta) / ln(nb/na).
fn exponent(na: u64, ta: f64, nb: u64, tb: f64) -> f64 {
    if na == 0 || nb <= na || ta <= 0.0 || tb <= 0.0 {
        return f64::NAN;
    }
    (tb / ta).ln() / (nb as f64 / na as f64).ln()
}

async fn one_size(scenario: &Scenario, tablets: u32, a: &ScaleBenchArgs) -> Result<SizeResult> {
    let per_table = a.per_table.max(1);
    let tables = tablets.div_ceil(per_table).max(1);
    let tag = format!("{tablets}");
    let repo = scenario.repository(&format!("repo-{tag}")).await?;
    let source = scenario.site(&format!("source-{tag}"), 3).await?;
    let db = "scale";
    eprintln!(
        "{tablets} tablets: creating {tables} tables of {per_table} tablets, loading {} rows…",
        a.rows
    );
    let t = Instant::now();
    source
        .load(
            workload::LoadOptions {
                db: db.into(),
                tables,
                tablets: per_table,
                rows: Some(a.rows),
                row_size: a.row_size,
                ..Default::default()
            },
            Arc::new(workload::Progress::default()),
        )
        .await?;
    let create_and_load_secs = t.elapsed().as_secs_f64();

    eprintln!("{tablets} tablets: backup…");
    let spec = source.backup_spec(db, &repo);
    let backup = source.backup(&spec, &Quiet).await?;
    let got = backup.num("tablets");
    if got < tablets as u64 {
        bail!("the backup holds {got} tablets, fewer than the {tablets} created");
    }

    eprintln!("{tablets} tablets: restore into a new 3-node cluster…");
    let target = scenario.site(&format!("target-{tag}"), 3).await?;
    let restore = target
        .restore(&target.restore_spec(&repo, &spec.backup_id), &Quiet)
        .await?;
    if let Some(c) = source
        .compare(db, backup.hybrid_time(), &target)
        .await?
        .into_iter()
        .find(|c| !c.ok)
    {
        bail!("restored table {} differs from the source", c.table);
    }

    eprintln!("{tablets} tablets: clone…");
    let adapter = snapfleet_adapter_tabletdb::TabletdbAdapter::new();
    let cluster = adapter.connect(&source.cluster.master_addr).await?;
    let t = Instant::now();
    let cloned = cluster
        .clone_database(db, "scale_clone", None, 5)
        .await
        .context("cloning the database")?;
    let clone_secs = t.elapsed().as_secs_f64();
    if cloned.tablets < tablets {
        bail!(
            "the clone has {} tablets, fewer than {tablets}",
            cloned.tablets
        );
    }

    let (objects, bytes) = dir_usage(&scenario.dir.join(format!("repo-{tag}")));
    let rss = |c: &Option<snapfleet_localfleet::cluster::ChildProcess>| {
        c.as_ref().map(|c| peak_rss(c.id())).unwrap_or(0)
    };
    let max_of = |v: &[Option<snapfleet_localfleet::cluster::ChildProcess>]| {
        v.iter().map(rss).max().unwrap_or(0)
    };
    Ok(SizeResult {
        tablets: got,
        tables,
        create_and_load_secs,
        backup_secs: backup.seconds,
        restore_secs: restore.seconds,
        clone_secs,
        repository_objects: objects,
        repository_bytes: bytes,
        coordinator_peak_rss: max_of(&source.fleet.coordinators)
            .max(max_of(&target.fleet.coordinators)),
        agent_peak_rss_max: max_of(&source.fleet.agents).max(max_of(&target.fleet.agents)),
        master_peak_rss: rss(&source.cluster.master).max(rss(&target.cluster.master)),
        node_peak_rss_max: max_of(&source.cluster.nodes).max(max_of(&target.cluster.nodes)),
    })
}

pub async fn run(a: ScaleBenchArgs, json: bool) -> Result<()> {
    let tmp;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("snapfleet-bench-scale-")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let bin = std::env::current_exe()?;
    let scenario = Scenario::new(&bin, &dir)?;
    let mut sizes = a.tablets.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let mut results = Vec::new();
    for n in sizes {
        let r = one_size(&scenario, n, &a).await?;
        eprintln!(
            "{n} tablets: backup {}, restore {}, clone {}",
            human_duration(Duration::from_secs_f64(r.backup_secs)),
            human_duration(Duration::from_secs_f64(r.restore_secs)),
            human_duration(Duration::from_secs_f64(r.clone_secs)),
        );
        results.push(r);
    }
    let phases: [(&str, Phase); 4] = [
        ("create + load", |r| r.create_and_load_secs),
        ("backup", |r| r.backup_secs),
        ("restore", |r| r.restore_secs),
        ("clone", |r| r.clone_secs),
    ];
    let growth: Vec<serde_json::Value> = results
        .windows(2)
        .map(|w| {
            let (x, y) = (&w[0], &w[1]);
            let mut o = serde_json::json!({"from": x.tablets, "to": y.tablets});
            for (name, f) in &phases {
                o[*name] = serde_json::json!(exponent(x.tablets, f(x), y.tablets, f(y)));
            }
            o
        })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "sizes": results, "growth_exponents": growth,
            }))?
        );
        return Ok(());
    }
    println!(
        "3-node source and target clusters, one coordinator and one agent per node; tables of {} tablets, {} rows of {} B per size.\n",
        a.per_table, a.rows, a.row_size
    );
    println!("| tablets | create + load | backup | restore (new 3-node cluster) | clone | repository objects | coordinator peak RSS | agent peak RSS (max) | master peak RSS | node peak RSS (max) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {:.1} s | {:.1} s | {:.1} s | {:.1} s | {} ({}) | {} | {} | {} | {} |",
            r.tablets,
            r.create_and_load_secs,
            r.backup_secs,
            r.restore_secs,
            r.clone_secs,
            r.repository_objects,
            human_bytes(r.repository_bytes),
            human_bytes(r.coordinator_peak_rss),
            human_bytes(r.agent_peak_rss_max),
            human_bytes(r.master_peak_rss),
            human_bytes(r.node_peak_rss_max),
        );
    }
    if !growth.is_empty() {
        println!();
        println!("Growth exponent per phase (time ∝ tablets^k; 1.0 is linear):\n");
        println!("| from → to | create + load | backup | restore | clone |");
        println!("|---|---|---|---|---|");
        for g in &growth {
            println!(
                "| {} → {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                g["from"],
                g["to"],
                g["create + load"].as_f64().unwrap_or(f64::NAN),
                g["backup"].as_f64().unwrap_or(f64::NAN),
                g["restore"].as_f64().unwrap_or(f64::NAN),
                g["clone"].as_f64().unwrap_or(f64::NAN),
            );
        }
    }
    Ok(())
}
