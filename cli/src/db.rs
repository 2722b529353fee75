//! `snapfleet db …`: run and use tabletdb, the reference database.

use crate::util::{bar, human_bytes, human_duration, parse_duration, parse_time};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use snapfleet_localfleet::cluster::{LocalCluster, LocalOptions};
use snapfleet_tabletdb::master::{run_master, MasterConfig};
use snapfleet_tabletdb::node::{run_node, NodeConfig};
use snapfleet_tabletdb::{pb, sql, verify, workload, Client, HybridTime};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where to find the master.
#[derive(Args, Clone)]
pub struct MasterArg {
    /// Master address.
    #[arg(long, env = "SNAPFLEET_DB_MASTER", default_value = "127.0.0.1:7100")]
    pub master: String,
}

#[derive(Subcommand)]
pub enum DbCmd {
    /// Run a local cluster (master + N nodes) in the foreground until Ctrl-C.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Data directory (one sub-directory per process).
        #[arg(long)]
        data: PathBuf,
        /// Master listen address.
        #[arg(long, default_value = "127.0.0.1:7100")]
        master_listen: String,
        #[arg(long, default_value = "15m")]
        history_retention: String,
        #[arg(long, default_value_t = 6)]
        default_tablets: u32,
    },
    /// Run a master (catalog and snapshots).
    Master {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7100")]
        listen: std::net::SocketAddr,
        /// Tablets per table when CREATE TABLE does not say.
        #[arg(long, default_value_t = 6)]
        default_tablets: u32,
        /// Serve plaintext without roles (no --certs) on an address other than loopback.
        #[arg(long)]
        insecure: bool,
    },
    /// Run a tablet server.
    Node {
        /// This node's id (a positive number, unique in the cluster).
        #[arg(long)]
        id: u32,
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Address others reach this node at (default: the bound address).
        #[arg(long)]
        advertise: Option<String>,
        #[arg(long, env = "SNAPFLEET_DB_MASTER", default_value = "127.0.0.1:7100")]
        master: String,
        /// Keep versions this long for reads in the past (0s = keep all).
        #[arg(long, default_value = "15m")]
        history_retention: String,
        /// Serve plaintext without roles (no --certs) on an address other than loopback.
        #[arg(long)]
        insecure: bool,
    },
    /// Run SQL (a small subset): CREATE/DROP, INSERT, SELECT, DELETE, SHOW TABLES.
    Sql {
        #[command(flatten)]
        m: MasterArg,
        #[arg(long, default_value = "demo")]
        db: String,
        /// Read as of this time (hybrid time, RFC 3339, or "5m ago").
        #[arg(long)]
        at: Option<String>,
        /// The statements; read from stdin when absent.
        sql: Option<String>,
    },
    /// Generate load: bulk rows, or the counter consistency workload.
    Load(LoadArgs),
    /// Check that a database holds exactly the counter keys written at or before T.
    CheckConsistency {
        #[command(flatten)]
        m: MasterArg,
        #[arg(long, default_value = "demo")]
        db: String,
        /// The cut (hybrid time, RFC 3339, or "5m ago").
        #[arg(long)]
        at: String,
        /// Read the database at this time instead of at the cut (e.g. "now" on a restore).
        #[arg(long)]
        read_at: Option<String>,
        /// The counter writer's log (`<key> <ht>` lines) for an exact expected set.
        #[arg(long)]
        log: Option<PathBuf>,
    },
    /// Row counts and order-independent checksums of tables.
    Checksum {
        #[command(flatten)]
        m: MasterArg,
        #[arg(long, default_value = "demo")]
        db: String,
        #[arg(long)]
        at: Option<String>,
    },
    /// Distributed snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Nodes, tables and tablets of the cluster.
    Status {
        #[command(flatten)]
        m: MasterArg,
    },
}

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Take a consistent snapshot of a database at one hybrid time on every node.
    Create {
        #[command(flatten)]
        m: MasterArg,
        #[arg(long, default_value = "demo")]
        db: String,
        /// Snapshot time (default: now).
        #[arg(long)]
        at: Option<String>,
        /// Retries when a concurrent DDL aborts the snapshot.
        #[arg(long, default_value_t = 3)]
        ddl_retries: u32,
    },
    List {
        #[command(flatten)]
        m: MasterArg,
        #[arg(long, default_value = "")]
        db: String,
    },
    Delete {
        #[command(flatten)]
        m: MasterArg,
        id: String,
    },
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Many rows in parallel batches.
    Bulk,
    /// One writer appends keys 1, 2, 3, … and logs each key's hybrid time.
    Counter,
}

#[derive(Args)]
pub struct LoadArgs {
    #[command(flatten)]
    m: MasterArg,
    #[arg(long, default_value = "demo")]
    db: String,
    #[arg(long, value_enum, default_value = "bulk")]
    workload: Workload,
    /// Bulk: number of tables (load_0, load_1, …).
    #[arg(long, default_value_t = 2)]
    tables: u32,
    /// Bulk: total rows; counter: keys. Default 10000 unless --duration is given.
    #[arg(long)]
    rows: Option<u64>,
    /// Run for this long instead (e.g. 30s).
    #[arg(long)]
    duration: Option<String>,
    /// Rows (or keys) per second; default as fast as possible.
    #[arg(long)]
    rate: Option<f64>,
    /// Bulk: payload bytes per row.
    #[arg(long, default_value_t = 256)]
    row_size: usize,
    #[arg(long, default_value_t = 200)]
    batch: usize,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Tablets per new table (0 = master default).
    #[arg(long, default_value_t = 0)]
    tablets: u32,
    /// Bulk: start row ids after this (add to an earlier load instead of overwriting it).
    #[arg(long, default_value_t = 0)]
    id_offset: u64,
    /// Counter: where to log `<key> <ht>` lines.
    #[arg(long, default_value = "counter.log")]
    log: PathBuf,
}

/// Ctrl-C or SIGTERM (systemd, kill): both stop the process cleanly.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn connect(m: &MasterArg) -> Result<Client> {
    crate::certs::load_tls(false)?;
    Client::connect(&m.master).await.with_context(|| {
        format!(
            "connecting to the tabletdb master at {} (start one with `snapfleet db up --data DIR`, or pass --master)",
            m.master
        )
    })
}

pub async fn run(cmd: DbCmd, json: bool) -> Result<()> {
    match cmd {
        DbCmd::Up {
            nodes,
            data,
            master_listen,
            history_retention,
            default_tablets,
        } => {
            parse_duration(&history_retention)?;
            let bin = std::env::current_exe()?;
            let cluster = LocalCluster::start(
                &bin,
                &data,
                LocalOptions {
                    nodes,
                    history_retention,
                    default_tablets,
                    master_listen,
                    certs: crate::certs::certs().map(|c| c.to_path_buf()),
                },
            )?;
            let client = cluster.client().await?;
            let cat = client.catalog();
            if json {
                print_json(&serde_json::json!({
                    "master": cluster.master_addr,
                    "nodes": cat.nodes.iter().map(|n| serde_json::json!({"id": n.node_id, "address": n.address})).collect::<Vec<_>>(),
                    "data": data,
                }))?;
            } else {
                println!("tabletdb cluster up: master {}", cluster.master_addr);
                for n in &cat.nodes {
                    println!("  node {} at {}", n.node_id, n.address);
                }
                println!(
                    "data in {}, logs in {}/*.log",
                    data.display(),
                    data.display()
                );
                println!("export SNAPFLEET_DB_MASTER={}", cluster.master_addr);
                println!("Ctrl-C stops the cluster.");
            }
            shutdown_signal().await;
            drop(cluster);
            Ok(())
        }
        DbCmd::Master {
            data,
            listen,
            default_tablets,
            insecure,
        } => Ok(run_master(
            MasterConfig {
                data_dir: data,
                listen,
                default_tablets,
                tls: crate::certs::load_tls(true)?,
                insecure,
            },
            shutdown_signal(),
        )
        .await?),
        DbCmd::Node {
            id,
            data,
            listen,
            advertise,
            master,
            history_retention,
            insecure,
        } => {
            if id == 0 {
                bail!("--id must be a positive number");
            }
            Ok(run_node(
                NodeConfig {
                    node_id: id,
                    data_dir: data,
                    listen,
                    advertise,
                    master,
                    history_retention: parse_duration(&history_retention)?,
                    tls: crate::certs::load_tls(true)?,
                    insecure,
                },
                shutdown_signal(),
            )
            .await?)
        }
        DbCmd::Sql {
            m,
            db,
            at,
            sql: text,
        } => {
            let client = connect(&m).await?;
            let text = match text {
                Some(t) => t,
                None => std::io::read_to_string(std::io::stdin())?,
            };
            let at = match at {
                Some(a) => Some(parse_time(&a, client.now().await?)?),
                None => None,
            };
            let out = sql::execute(&client, &db, &text, at).await?;
            if json {
                return print_json(&out);
            }
            for o in out {
                match o {
                    sql::SqlOutput::Done(tag) => println!("{tag}"),
                    sql::SqlOutput::Rows { columns, rows, .. } => {
                        println!("{}", sql::render_table(&columns, &rows))
                    }
                }
            }
            Ok(())
        }
        DbCmd::Load(a) => load(a, json).await,
        DbCmd::CheckConsistency {
            m,
            db,
            at,
            read_at,
            log,
        } => {
            let client = connect(&m).await?;
            let now = client.now().await?;
            let at = parse_time(&at, now)?;
            let read_at = match read_at {
                Some(r) => Some(parse_time(&r, now)?),
                None => None,
            };
            let r = verify::check_consistency(&client, &db, at, read_at, log.as_deref()).await?;
            if json {
                print_json(&r)?;
            } else {
                eprintln!(
                    "{}: {} keys seen, {} expected at {} ({}); missing {}, extra {}, duplicate {}, version mismatches {}",
                    if r.ok { "CONSISTENT" } else { "INCONSISTENT" },
                    r.keys_seen,
                    r.keys_expected,
                    at,
                    at.to_rfc3339(),
                    r.missing,
                    r.extra,
                    r.duplicate,
                    r.version_mismatch
                );
                for p in &r.first_problems {
                    eprintln!("  {p}");
                }
            }
            if !r.ok {
                bail!("database {db:?} is not consistent at {at}");
            }
            Ok(())
        }
        DbCmd::Checksum { m, db, at } => {
            let client = connect(&m).await?;
            let at = match at {
                Some(a) => Some(parse_time(&a, client.now().await?)?),
                None => Some(client.now().await?),
            };
            let mut out = Vec::new();
            for t in client.tables(&db).await? {
                out.push(verify::table_checksum(&client, &db, &t.name, at).await?);
            }
            if json {
                return print_json(&out);
            }
            for c in out {
                println!(
                    "{:<24} {:>10} rows {:>12}  {}",
                    c.table,
                    c.rows,
                    human_bytes(c.bytes),
                    c.digest
                );
            }
            Ok(())
        }
        DbCmd::Snapshot(c) => snapshot(c, json).await,
        DbCmd::Status { m } => {
            let client = connect(&m).await?;
            let cat = client.catalog();
            if json {
                return print_json(&*cat);
            }
            println!(
                "catalog version {} at hybrid time {}",
                cat.version, cat.hybrid_time
            );
            for n in &cat.nodes {
                let tablets: usize = cat
                    .tables
                    .iter()
                    .flat_map(|t| &t.tablets)
                    .filter(|tb| tb.replicas.first() == Some(&n.node_id))
                    .count();
                println!(
                    "node {:>3}  {:<22} {:<5} {} tablets",
                    n.node_id,
                    n.address,
                    if n.live { "live" } else { "DOWN" },
                    tablets
                );
            }
            for d in &cat.databases {
                println!("database {}", d.name);
                for t in cat.tables.iter().filter(|t| t.database_id == d.database_id) {
                    println!(
                        "  table {:<20} {} tablets{}",
                        t.name,
                        t.tablets.len(),
                        if t.state == pb::TableState::Restoring as i32 {
                            " (restoring)"
                        } else {
                            ""
                        }
                    );
                }
            }
            Ok(())
        }
    }
}

async fn load(a: LoadArgs, json: bool) -> Result<()> {
    let client = Arc::new(connect(&a.m).await?);
    let duration = a.duration.as_deref().map(parse_duration).transpose()?;
    let rows = match (a.rows, duration) {
        (Some(r), _) => Some(r),
        (None, Some(_)) => None,
        (None, None) => Some(10_000),
    };
    match a.workload {
        Workload::Bulk => {
            let progress = Arc::new(workload::Progress::default());
            let pb = bar(rows, "rows");
            pb.set_message("loading");
            let ticker = {
                let (pb, progress) = (pb.clone(), progress.clone());
                tokio::spawn(async move {
                    loop {
                        pb.set_position(progress.rows.load(Ordering::Relaxed));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
            };
            let r = workload::run_load(
                client,
                workload::LoadOptions {
                    db: a.db.clone(),
                    tables: a.tables,
                    table_prefix: "load".into(),
                    tablets: a.tablets,
                    rows,
                    duration,
                    rate: a.rate,
                    row_size: a.row_size,
                    batch: a.batch.max(1),
                    concurrency: a.concurrency.max(1),
                    id_offset: a.id_offset,
                },
                progress,
            )
            .await;
            ticker.abort();
            pb.finish_and_clear();
            let r = r?;
            if json {
                return print_json(&r);
            }
            eprintln!(
                "loaded {} rows ({}) in {}: {:.0} rows/s, {:.1} MB/s",
                r.rows,
                human_bytes(r.bytes),
                human_duration(Duration::from_secs_f64(r.seconds)),
                r.rows_per_sec,
                r.mb_per_sec
            );
            Ok(())
        }
        Workload::Counter => {
            let progress = AtomicU64::new(0);
            let pb = bar(rows, "keys");
            pb.set_message("counter");
            let start = Instant::now();
            let fut = workload::run_counter(
                &client,
                workload::CounterOptions {
                    db: a.db.clone(),
                    tablets: a.tablets,
                    keys: rows,
                    duration,
                    rate: a.rate,
                    log: a.log.clone(),
                },
                shutdown_signal(),
                &progress,
            );
            tokio::pin!(fut);
            let r = loop {
                tokio::select! {
                    r = &mut fut => break r,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => pb.set_position(progress.load(Ordering::Relaxed)),
                }
            };
            pb.finish_and_clear();
            let r = r?;
            if json {
                return print_json(&r);
            }
            eprintln!(
                "wrote counter keys 1..={} in {} (hybrid times {}..{}); log: {}",
                r.keys,
                human_duration(start.elapsed()),
                r.first_ht,
                r.last_ht,
                r.log.display()
            );
            eprintln!(
                "check with: snapfleet db check-consistency --db {} --at <T> --log {}",
                a.db,
                r.log.display()
            );
            Ok(())
        }
    }
}

/// Creates a snapshot, retrying when a concurrent DDL aborts it.
pub async fn create_snapshot(
    client: &Client,
    db: &str,
    at: Option<HybridTime>,
    retries: u32,
) -> Result<pb::SnapshotInfo> {
    Ok(client.create_snapshot(db, at, retries).await?)
}

async fn snapshot(c: SnapshotCmd, json: bool) -> Result<()> {
    match c {
        SnapshotCmd::Create {
            m,
            db,
            at,
            ddl_retries,
        } => {
            let client = connect(&m).await?;
            let at = match at {
                Some(a) => Some(parse_time(&a, client.now().await?)?),
                None => None,
            };
            let start = Instant::now();
            let s = create_snapshot(&client, &db, at, ddl_retries).await?;
            if json {
                return print_json(&s);
            }
            println!(
                "snapshot {} of {} at {} ({}): {} tables, {} files, {} in {}",
                s.snapshot_id,
                s.database_name,
                s.hybrid_time,
                HybridTime(s.hybrid_time).to_rfc3339(),
                s.tables.len(),
                s.total_files,
                human_bytes(s.total_bytes),
                human_duration(start.elapsed())
            );
            Ok(())
        }
        SnapshotCmd::List { m, db } => {
            let client = connect(&m).await?;
            let l = client
                .master()
                .list_snapshots(pb::ListSnapshotsRequest { database: db })
                .await?
                .into_inner();
            if json {
                return print_json(&l.snapshots);
            }
            for s in l.snapshots {
                println!(
                    "{}  {:<12} {}  {:>3} tables {:>6} files {:>10}",
                    s.snapshot_id,
                    s.database_name,
                    HybridTime(s.hybrid_time).to_rfc3339(),
                    s.tables.len(),
                    s.total_files,
                    human_bytes(s.total_bytes)
                );
            }
            Ok(())
        }
        SnapshotCmd::Delete { m, id } => {
            let client = connect(&m).await?;
            client
                .master()
                .delete_snapshot(pb::DeleteSnapshotRequest {
                    snapshot_id: id.clone(),
                })
                .await
                .with_context(|| format!("deleting snapshot {id}"))?;
            if json {
                return print_json(&serde_json::json!({"deleted": id}));
            }
            println!("deleted snapshot {id}");
            Ok(())
        }
    }
}
