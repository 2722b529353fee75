//! `snapfleet restore`: a backup (or a time, from the archive) into a cluster of any size,
//! from the repository alone; a coordinator job like a backup.

use crate::coord::*;
use crate::repo::RepoArgs;
use crate::util::parse_rate;
use anyhow::Result;
use clap::Args;
use snapfleet_jobs::spec::RestoreSpec;

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    c: CoordArg,
    #[command(flatten)]
    r: RepoArgs,
    /// The backup to restore (with --to: the base backup to use, default the newest at or
    /// before TIME).
    #[arg(long, required_unless_present = "to")]
    backup: Option<String>,
    /// Restore to this time from a base backup plus the archived change log (off-cluster
    /// PITR, see `snapfleet pitr archive`): RFC 3339, a hybrid time, or "5m ago". Needs --db.
    #[arg(long, requires = "db")]
    to: Option<String>,
    /// tabletdb master of the target cluster (any node count).
    #[arg(long, env = "SNAPFLEET_DB_MASTER", default_value = "127.0.0.1:7100")]
    master: String,
    /// With --backup: restore under this database name (default: the backup's). With
    /// --to: the database to restore (its name in the backups).
    #[arg(long)]
    db: Option<String>,
    /// With --to: restore under this name instead.
    #[arg(long = "as", requires = "to")]
    as_name: Option<String>,
    /// Only these tables.
    #[arg(long, value_delimiter = ',')]
    tables: Vec<String>,
    #[arg(long, default_value = "0")]
    rate_limit: String,
    #[arg(long)]
    wait: bool,
}

pub async fn run_restore(a: RestoreArgs, json: bool) -> Result<()> {
    let (to_ht, source_database, database) = match &a.to {
        Some(t) => {
            // "5m ago" counts from this machine's clock.
            let to = crate::util::parse_time(t, snapfleet_tabletdb::HybridTime::wall_now())?;
            let db = a.db.clone().unwrap_or_default();
            (to.0, db.clone(), a.as_name.clone().unwrap_or(db))
        }
        None => (0, String::new(), a.db.clone().unwrap_or_default()),
    };
    let spec = RestoreSpec {
        repo: a.r.url()?.to_string(),
        backup_id: a.backup.clone().unwrap_or_default(),
        master: a.master.clone(),
        database,
        tables: a.tables.clone(),
        rate_limit: parse_rate(&a.rate_limit)?,
        to_ht,
        source_database,
    };
    let leader = a.c.leader()?;
    let job = submit(&leader, "restore", serde_json::to_value(spec)?).await?;
    match (&a.backup, &a.to) {
        (_, Some(t)) => eprintln!(
            "restore of {:?} to {t} ({}): job {} submitted",
            a.db.as_deref().unwrap_or_default(),
            snapfleet_tabletdb::HybridTime(to_ht).to_rfc3339(),
            job.id
        ),
        (Some(b), None) => eprintln!("restore of backup {b}: job {} submitted", job.id),
        (None, None) => unreachable!("clap requires --backup or --to"),
    }
    finish_command(&leader, job, a.wait, json).await
}
