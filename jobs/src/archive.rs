//! Continuous change-log archiving for off-cluster point-in-time recovery.
//!
//! `snapfleet pitr archive enable` submits an archive job; its leader-side driver records
//! the archive in the repository (`pitr/<db id>/ARCHIVE`) and makes one never-ending task
//! per database node. The agent beside each node runs its task as a loop: every interval it
//! asks the node for each tablet's change-log records since what it archived last, up to the
//! tablet's *safe time* (every write at or before it has been logged), uploads them as a
//! piece, then writes the node's progress object, and reports the node's checkpoint (the
//! oldest tablet's archived time) with its lease renewals. The coordinator's global
//! checkpoint is the minimum over the nodes: an agent that dies or falls behind holds it
//! back, and on restart it resumes from its progress object, so the chain has no hole.
//! Cancelling the job (`pitr archive disable`) stops archiving; what was archived stays.

use crate::error::{JobError, Result};
use crate::step::coord;
use serde::{Deserialize, Serialize};
use serde_json::json;
use snapfleet_adapter::{Adapter, HybridTime};
use snapfleet_api::tasks::{ArchiveTask, TabletReplay};
use snapfleet_coordinator::command::TaskSpec;
use snapfleet_coordinator::model::{Affinity, Job, Task};
use snapfleet_coordinator::JobCtl;
use snapfleet_repository::pitr::{ArchiveInfo, TabletProgress};
use snapfleet_repository::Repos;
use snapfleet_repository::Repository;
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::{info, warn};

/// `snapfleet pitr archive enable`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchiveSpec {
    /// tabletdb master of the archived cluster.
    pub master: String,
    pub database: String,
    pub repo: String,
    /// The PITR window that `repo forget` keeps restorable.
    pub retention_secs: u64,
    /// How often each agent ships new records (the RPO under steady load is about this
    /// plus one upload).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_compression")]
    pub compression: i32,
}

fn default_interval_ms() -> u64 {
    1_000
}
fn default_compression() -> i32 {
    3
}

/// The driver's notes once the archive is recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchiveNotes {
    pub database_id: String,
    pub start_ht: u64,
    /// Node names (archive jobs logged before the adapter boundary hold numbers: read too).
    #[serde(deserialize_with = "node_names")]
    pub nodes: Vec<String>,
}

fn node_names<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Name {
        Number(u64),
        Text(String),
    }
    Ok(Vec::<Name>::deserialize(d)?
        .into_iter()
        .map(|n| match n {
            Name::Number(n) => n.to_string(),
            Name::Text(s) => s,
        })
        .collect())
}

/// Failures an archive task may have before the job gives up (each retry backs off, at
/// most a minute): in practice forever, archiving must outlive outages.
const ARCHIVE_RETRIES: u32 = 1_000_000;

/// The leader's side: record the archive, start one task per node, then wait (forever,
/// until cancelled).
pub(crate) async fn archive_step(
    ctl: &JobCtl,
    adapter: &dyn Adapter,
    repos: &Repos,
    job: &Job,
    _tasks: &[Task],
) -> Result<crate::step::Step> {
    use crate::step::Step;
    let spec: ArchiveSpec = serde_json::from_value(job.spec.clone())
        .map_err(|e| JobError::invalid("archive job spec", e))?;
    if job.aborting.is_some() {
        // Disabled (cancelled) or a task failed for good: stop; the archive stays readable.
        ctl.finish(None, json!({})).await.map_err(coord)?;
        return Ok(Step::Done);
    }
    match job.phase.as_str() {
        "" => {
            let cluster = adapter.connect(&spec.master).await?;
            let db = cluster.describe(&spec.database).await?;
            let database_id = db.id.to_string();
            let nodes: Vec<String> = cluster
                .nodes()
                .await?
                .into_iter()
                .map(|n| n.name.to_string())
                .collect();
            if nodes.is_empty() {
                return Err(JobError::invalid(
                    "archive",
                    "the cluster has no tablet servers registered",
                ));
            }
            let repo = repos.get(&spec.repo).await?;
            let info = match repo.read_archive_info(&database_id).await? {
                // Enabled before (then disabled): keep the original start, the progress
                // objects say where each tablet stands.
                Some(mut info) => {
                    info.retention_secs = spec.retention_secs;
                    info
                }
                None => ArchiveInfo {
                    database_id: database_id.clone(),
                    database_name: spec.database.clone(),
                    retention_secs: spec.retention_secs,
                    start_ht: cluster.now().await?.0,
                    pruned_before: 0,
                    created: chrono::Utc::now(),
                },
            };
            repo.put_archive_info(&info).await?;
            let notes = ArchiveNotes {
                database_id: database_id.clone(),
                start_ht: info.start_ht,
                nodes: nodes.clone(),
            };
            let specs = nodes.iter().map(|n| node_task(&spec, &notes, n)).collect();
            info!(database = %spec.database, nodes = nodes.len(), start_ht = info.start_ht, "archive enabled");
            start_node_tasks(ctl, notes, specs).await
        }
        "archive" => {
            // Nodes that joined the cluster since: give them their archive task too (looked
            // at every NODE_CHECK at most: passes come with every progress report).
            if !due_node_check(job.id.0) {
                return Ok(Step::Wait);
            }
            let mut notes: ArchiveNotes = serde_json::from_value(job.data.clone())
                .map_err(|e| JobError::invalid("archive job notes", e))?;
            // A master that cannot answer now is asked again later: the archive goes on.
            let listed = match async { adapter.connect(&spec.master).await?.nodes().await }.await {
                Ok(n) => n,
                Err(e) => {
                    warn!(error = %e, "cannot list the cluster's nodes; looking again later");
                    return Ok(Step::Wait);
                }
            };
            let new: Vec<String> = listed
                .into_iter()
                .map(|n| n.name.to_string())
                .filter(|n| !notes.nodes.contains(n))
                .collect();
            if new.is_empty() {
                return Ok(Step::Wait);
            }
            info!(nodes = ?new, "archiving new nodes");
            let specs = new.iter().map(|n| node_task(&spec, &notes, n)).collect();
            notes.nodes.extend(new);
            start_node_tasks(ctl, notes, specs).await
        }
        other => Err(JobError::invalid("archive phase", other)),
    }
}

/// Records `notes` (the nodes archived so far) and starts `specs` in the job's `archive`
/// phase: for the first nodes and for nodes that joined later alike.
async fn start_node_tasks(
    ctl: &JobCtl,
    notes: ArchiveNotes,
    specs: Vec<TaskSpec>,
) -> Result<crate::step::Step> {
    ctl.advance(
        "archive",
        serde_json::to_value(notes).expect("json"),
        specs,
        ARCHIVE_RETRIES,
    )
    .await
    .map_err(coord)?;
    Ok(crate::step::Step::Again)
}

fn node_task(spec: &ArchiveSpec, notes: &ArchiveNotes, node: &str) -> TaskSpec {
    TaskSpec {
        payload: serde_json::to_value(ArchiveTask {
            repo: spec.repo.clone(),
            master: spec.master.clone(),
            database: spec.database.clone(),
            database_id: notes.database_id.clone(),
            node: node.to_string(),
            start_ht: notes.start_ht,
            interval_ms: spec.interval_ms.max(100),
            compression: spec.compression,
            retention_secs: spec.retention_secs,
        })
        .expect("json"),
        affinity: Affinity {
            agent: None,
            node: Some(node.to_string()),
        },
    }
}

const NODE_CHECK: Duration = Duration::from_secs(10);

/// Whether this archive job's node list is due for a look (per process, per job).
fn due_node_check(job: u64) -> bool {
    static LAST: std::sync::Mutex<BTreeMap<u64, std::time::Instant>> =
        std::sync::Mutex::new(BTreeMap::new());
    let mut last = LAST.lock().expect("node check lock");
    let now = std::time::Instant::now();
    match last.get(&job) {
        Some(t) if now.duration_since(*t) < NODE_CHECK => false,
        _ => {
            last.insert(job, now);
            true
        }
    }
}

/// What a restore to a time restores: the base backup, and the tables it leaves out.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub backup_id: String,
    pub skip_tables: Vec<String>,
    /// Per source tablet: what its replay must find.
    pub tablets: BTreeMap<String, TabletReplay>,
}

/// A hybrid time as RFC 3339 (microseconds, UTC), for messages.
fn at(ht: u64) -> String {
    HybridTime(ht).to_rfc3339()
}

/// Chooses the base backup for a restore to `spec.to_ht` (the newest of the database at or
/// before it) and checks that the archive covers every restored tablet from the backup's
/// time up to the target time; refuses with the PITR window when it does not.
pub(crate) async fn plan_restore_to(
    adapter: &dyn Adapter,
    repos: &Repos,
    spec: &crate::spec::RestoreSpec,
) -> Result<RestorePlan> {
    let to = spec.to_ht;
    let repo = repos.get(&spec.repo).await?;
    let source = if spec.source_database.is_empty() {
        spec.database.clone()
    } else {
        spec.source_database.clone()
    };
    // (ht, backup id, database id) of every base backup of the database.
    let mut bases: Vec<(u64, String, String)> = Vec::new();
    for id in repo.list_backups().await? {
        if !spec.backup_id.is_empty() && id.as_str() != spec.backup_id {
            continue;
        }
        let root = repo.read_root(&id).await?;
        let Ok(b) = crate::root::root_meta(adapter, id.as_str(), &root) else {
            continue;
        };
        if source.is_empty() || b.snapshot.database_name == source {
            bases.push((
                b.snapshot.hybrid_time.0,
                id.to_string(),
                b.snapshot.database_id.to_string(),
            ));
        }
    }
    bases.sort();
    let Some((base_ht, backup_id, db_id)) = bases.iter().rev().find(|b| b.0 <= to).cloned() else {
        return Err(JobError::invalid(
            format!("restore of database {source:?} to {}", at(to)),
            match bases.first() {
                Some(b) => format!(
                    "no base backup of it at or before that time; its oldest backup is {} at {}: \
                     choose a later time",
                    b.1,
                    at(b.0)
                ),
                None => "the repository has no backup of it (check --db and --repo)".into(),
            },
        ));
    };
    let what = format!("restore of database {source:?} to {}", at(to));
    let info = repo.read_archive_info(&db_id).await?.ok_or_else(|| {
        JobError::invalid(
            &what,
            format!(
                "the repository has no change-log archive of it (database id {db_id}): enable one \
                 with `snapfleet pitr archive enable --db {source} --repo …`, or restore backup \
                 {backup_id} as of its own time with --backup"
            ),
        )
    })?;
    let progress = repo.list_node_progress(&db_id).await?;
    let global = progress
        .iter()
        .map(|p| p.checkpoint().unwrap_or(0))
        .min()
        .unwrap_or(0);
    // The archive serves restores from bases at or after its start and its pruning point.
    let usable_from = info.start_ht.max(info.pruned_before);
    let earliest = bases
        .iter()
        .find(|b| b.0 >= usable_from)
        .map(|b| b.0)
        .unwrap_or(usable_from);
    let window = format!(
        "the PITR window of {source:?} in this repository is {} .. {} (oldest base backup after \
         the archive began .. the archive's global checkpoint)",
        at(earliest),
        at(global)
    );
    if info.pruned_before > base_ht {
        return Err(JobError::invalid(
            &what,
            format!(
                "the newest base backup before that time ({backup_id}, {}) is older than the \
                 archived changes `repo forget` kept (from {}, the start of the PITR window); \
                 {window}",
                at(base_ht),
                at(info.pruned_before)
            ),
        ));
    }
    if info.start_ht > base_ht {
        return Err(JobError::invalid(
            &what,
            format!(
                "the newest base backup before that time ({backup_id}, {}) predates the archive \
                 (it began at {}); {window}",
                at(base_ht),
                at(info.start_ht)
            ),
        ));
    }
    let base = crate::root::read_root_meta(adapter, repos, &spec.repo, &backup_id).await?;
    let mut by_tablet: BTreeMap<&str, (&str, &TabletProgress)> = BTreeMap::new();
    for p in &progress {
        for (t, tp) in &p.tablets {
            by_tablet.insert(t, (&p.node, tp));
        }
    }
    let mut skip_tables = Vec::new();
    let mut tablets = BTreeMap::new();
    let mut in_base = std::collections::BTreeSet::new();
    for table in &base.snapshot.tables {
        if !spec.tables.is_empty() && !spec.tables.contains(&table.name) {
            continue;
        }
        for tablet in &table.tablets {
            in_base.insert(tablet.id.as_str());
            let Some((node, tp)) = by_tablet.get(tablet.id.as_str()) else {
                return Err(JobError::invalid(
                    &what,
                    format!(
                        "tablet {} of table {:?} is in no archiver's progress (the archive has \
                         never seen it); {window}",
                        tablet.id, table.name
                    ),
                ));
            };
            if tp.gone_after != 0 && to > tp.gone_after {
                // Dropped in (gone_after, gone_seen].
                if to >= tp.gone_seen {
                    if !skip_tables.contains(&table.name) {
                        skip_tables.push(table.name.clone());
                    }
                    continue;
                }
                return Err(JobError::invalid(
                    &what,
                    format!(
                        "table {:?} was dropped between {} and {} (its archiver did not look in \
                         between): choose a time outside that span",
                        table.name,
                        at(tp.gone_after),
                        at(tp.gone_seen)
                    ),
                ));
            }
            let pieces = repo
                .list_log_pieces(&db_id, tablet.id.as_str(), base_ht, to)
                .await?;
            match snapfleet_repository::pitr::tablet_coverage(base_ht, &pieces, tp) {
                None => {
                    return Err(JobError::invalid(
                        &what,
                        format!(
                            "the archive of table {:?} (tablet {}, node {node}) restarts at {} \
                             after a gap (records deleted by retention before they were \
                             archived): restore to a time before the gap, or after it from a \
                             base backup taken later",
                            table.name,
                            tablet.id,
                            at(tp.since)
                        ),
                    ))
                }
                Some(c) if c < to => {
                    return Err(JobError::invalid(
                        &what,
                        format!(
                            "that time is after what the archive holds: table {:?} (tablet {}, \
                             node {node}) is archived up to {}; {window}",
                            table.name,
                            tablet.id,
                            at(c)
                        ),
                    ))
                }
                Some(_) => {}
            }
            let chain = snapfleet_repository::pitr::extend_chain(base_ht, &pieces);
            tablets.insert(
                tablet.id.to_string(),
                TabletReplay {
                    chain_to: chain.min(to),
                    hidden: tp
                        .hidden
                        .iter()
                        .copied()
                        .filter(|(_, until)| *until > base_ht && *until <= to)
                        .collect(),
                },
            );
        }
    }
    for (tablet, (_, tp)) in &by_tablet {
        let existed_at_to =
            tp.created_after < to && (tp.gone_after == 0 || to < tp.gone_seen.max(tp.gone_after));
        let wanted = spec.tables.is_empty() || spec.tables.contains(&tp.table_name);
        // Not in the base backup yet alive at the target time: created after the base.
        if !in_base.contains(tablet) && existed_at_to && wanted {
            return Err(JobError::invalid(
                &what,
                format!(
                    "table {:?} (tablet {tablet}) was created after base backup {backup_id} \
                     ({}) and may have existed at that time: the archive holds its rows but \
                     not its schema. Restore to a time before it was created ({}), take a new \
                     base backup, or leave it out with --tables",
                    tp.table_name,
                    at(base_ht),
                    at(tp.created_after)
                ),
            ));
        }
    }
    info!(backup = %backup_id, base_ht, to, skipped = ?skip_tables, "restore to a time planned");
    Ok(RestorePlan {
        backup_id,
        skip_tables,
        tablets,
    })
}

/// Replays the archive's records of `source_tablet` in `(from_ht, to_ht]` into its staged

#[derive(Debug, Default)]
pub struct PitrNeeds {
    /// For each archived database, the base backup that restores to the start of its window
    /// (the newest at or before it, else the oldest after it).
    pub protect: std::collections::BTreeSet<snapfleet_repository::BackupId>,
    /// `(database id, time)`: log pieces ending at or before it serve no restore any more.
    pub prune: Vec<(String, u64)>,
}

/// Computes [`PitrNeeds`] from the repository alone (archives, backups' ROOTs, the clock).
pub async fn pitr_needs(adapter: &dyn Adapter, repo: &Repository) -> Result<PitrNeeds> {
    let archives = repo.list_archives().await?;
    let mut needs = PitrNeeds::default();
    if archives.is_empty() {
        return Ok(needs);
    }
    let now = HybridTime::wall_now();
    // (database id, ht, backup) of every backup of this adapter's kind.
    let mut bases = Vec::new();
    for id in repo.list_backups().await? {
        let root = match repo.read_root(&id).await {
            Ok(r) => r,
            Err(snapfleet_repository::Error::BackupNotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        if let Ok(b) = crate::root::root_meta(adapter, id.as_str(), &root) {
            bases.push((
                b.snapshot.database_id.to_string(),
                b.snapshot.hybrid_time.0,
                id,
            ));
        }
    }
    bases.sort();
    for a in archives {
        let window_start = now.minus(Duration::from_secs(a.retention_secs)).0;
        let mine: Vec<_> = bases
            .iter()
            .filter(|b| b.0 == a.database_id && b.1 >= a.start_ht)
            .collect();
        let base = mine
            .iter()
            .rev()
            .find(|b| b.1 <= window_start)
            .or_else(|| mine.first());
        if let Some(b) = base {
            needs.protect.insert(b.2.clone());
            needs.prune.push((a.database_id.clone(), b.1));
        }
    }
    Ok(needs)
}

/// Deletes the log pieces no restore inside any window needs; returns how many.
pub async fn prune_logs(repo: &Repository, needs: &PitrNeeds) -> Result<u64> {
    let mut n = 0;
    for (db, before) in &needs.prune {
        // Recorded first: a restore planned from an older base is then refused clearly
        // instead of failing on missing pieces.
        if let Some(mut info) = repo.read_archive_info(db).await? {
            if info.pruned_before < *before {
                info.pruned_before = *before;
                repo.put_archive_info(&info).await?;
            }
        }
        n += repo.delete_log_pieces_before(db, *before).await?;
    }
    Ok(n)
}
