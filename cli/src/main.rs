//! `snapfleet`: the one binary. Thin: parse flags, call the libraries. Human text and
//! progress go to stderr; `--json` puts one JSON document on stdout. Exit status: 0 success,
//! 1 the operation failed (the message says why and what to do), 2 usage error.

mod agent;
mod backup;
mod bench;
mod bench_coordinator;
mod bench_fleet;
mod bench_pitr;
mod bench_scale;
mod certs;
mod clone;
mod coord;
mod coordinator;
mod db;
mod demo;
mod export;
mod import;
mod job;
mod pitr;
mod repo;
mod restore;
mod schedule;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "snapfleet",
    version,
    about = "Backup, restore, point-in-time recovery, cloning and export for tablet-sharded databases",
    long_about = "snapfleet backs up every node of a tablet-sharded database in parallel to object \
                  storage and restores consistent cuts into clusters of any size.\n\n\
                  Start with `snapfleet demo`: it runs a whole local fleet with no set-up."
)]
struct Cli {
    /// Machine-readable output: one JSON document on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Certificate directory for mutual TLS (`snapfleet certs init|issue`): this process's
    /// identity towards coordinators and tabletdb, and for servers (coordinator, db master,
    /// db node) the identity they serve with. Absent: plaintext, no roles (loopback only).
    /// For `certs issue`: the `certs init` directory holding the CA.
    #[arg(long, global = true, env = "SNAPFLEET_CERTS")]
    certs: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a coordinator replica (Raft-replicated control plane).
    Coordinator(coordinator::CoordinatorArgs),
    /// Run the agent of one database node: uploads and downloads tablets for jobs.
    Agent(agent::AgentArgs),
    /// Back up databases into a repository; schedules; list, describe and delete backups.
    #[command(subcommand)]
    Backup(backup::BackupCmd),
    /// Restore a backup into a cluster of any size (from the repository alone).
    Restore(restore::RestoreArgs),
    /// Coordinator jobs: list, watch, cancel.
    #[command(subcommand)]
    Job(job::JobCmd),
    /// The coordinator cluster.
    #[command(subcommand)]
    Cluster(coordinator::ClusterCmd),
    /// Certificates for mutual TLS: a CA, then one identity (and role) per process or person.
    #[command(subcommand)]
    Certs(certs::CertsCmd),
    /// The reference database, tabletdb: run clusters, load data, query, snapshot, verify.
    #[command(subcommand)]
    Db(db::DbCmd),
    /// Run the whole job on a local fleet: 3-node cluster + coordinator + agents, load, back
    /// up into a local repository, restore into a new 2-node cluster from it, verify, report.
    Demo(demo::DemoArgs),
    /// Point-in-time recovery.
    #[command(subcommand)]
    Pitr(pitr::PitrCmd),
    /// Instant clone: a new database from hard links of a snapshot at one time.
    Clone(clone::CloneArgs),
    /// Export a database as a SQL (PostgreSQL) or CQL script, consistent at one time.
    Export(export::ExportArgs),
    /// Import a SQL script (a snapfleet export or plain pg_dump output) into a database.
    Import(import::ImportArgs),
    /// The backup repository on its own: init, keys, put/get a directory, verify, forget, gc, copy.
    Repo(repo::RepoCommand),
    /// Benchmarks (see bench/README.md).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() {
    let cli = Cli::parse();
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    certs::set_certs(cli.certs.clone());
    let res = rt.block_on(async {
        match cli.cmd {
            Cmd::Coordinator(a) => coordinator::run_replica(a).await,
            Cmd::Agent(a) => agent::run_agent_cmd(a).await,
            Cmd::Backup(c) => backup::run_backup(c, cli.json).await,
            Cmd::Restore(a) => restore::run_restore(a, cli.json).await,
            Cmd::Job(c) => job::run_job(c, cli.json).await,
            Cmd::Cluster(c) => coordinator::run_cluster(c, cli.json).await,
            Cmd::Certs(c) => certs::run(c, cli.certs, cli.json),
            Cmd::Db(c) => db::run(c, cli.json).await,
            Cmd::Demo(a) => demo::run(a, cli.json).await,
            Cmd::Pitr(c) => pitr::run(c, cli.json).await,
            Cmd::Clone(a) => clone::run(a, cli.json).await,
            Cmd::Export(a) => export::run(a, cli.json).await,
            Cmd::Import(a) => import::run(a, cli.json).await,
            Cmd::Repo(r) => repo::run(r, cli.json).await,
            Cmd::Bench(b) => bench::run(b, cli.json).await,
        }
    });
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
