//! `snapfleet repo …`: the repository on its own — init, keys, put/get of a plain directory,
//! list, verify, forget, gc, copy. Thin: every decision lives in the `snapfleet-repository`
//! crate; this file parses flags, reads passphrases, draws progress and prints reports.
//!
//! Passphrases come from a file (`--password-file`, `SNAPFLEET_PASSWORD_FILE`) or the
//! environment (`SNAPFLEET_PASSWORD`), never from a flag value that would show in `ps`, and
//! are never printed.

use crate::util::{human_bytes, human_duration, parse_duration};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use snapfleet_repository as sr;
use snapfleet_repository::{BackupId, KdfParams, Repository};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Where the repository is and how to unlock it (shared by every `repo` command).
#[derive(Args, Clone, Debug)]
pub struct RepoArgs {
    /// Repository URL: file:///path, s3://bucket/prefix, memory://.
    #[arg(long, env = "SNAPFLEET_REPO", global = true)]
    pub repo: Option<String>,
    /// File holding the passphrase (one line); or set SNAPFLEET_PASSWORD.
    #[arg(long, env = "SNAPFLEET_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct RepoCommand {
    #[command(flatten)]
    pub args: RepoArgs,
    #[command(subcommand)]
    pub cmd: RepoCmd,
}

#[derive(Subcommand)]
pub enum RepoCmd {
    /// Create a repository: format file and a first key slot for the passphrase.
    Init {
        /// `aes-256-gcm` (default: every object encrypted, the passphrase guards the key) or
        /// `none` (objects stored in the clear with a checksum, no passphrase: for object
        /// stores that encrypt at rest themselves; nothing in such a repository is secret).
        #[arg(long, default_value = "aes-256-gcm", value_parser = ["aes-256-gcm", "none"])]
        encryption: String,
        /// Argon2id memory per key derivation, MiB (default 64; at least 19).
        #[arg(long, default_value_t = 64)]
        kdf_memory_mib: u32,
        /// Argon2id passes (default 3).
        #[arg(long, default_value_t = 3)]
        kdf_iterations: u32,
    },
    /// Key slots: several passphrases open the same repository.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Back up a directory; prints the new backup id.
    Put {
        dir: PathBuf,
        /// zstd level, 0 = off.
        #[arg(long, default_value_t = 3)]
        compression: i32,
        /// Labels stored in the backup (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Backup id (default: time plus a random suffix).
        #[arg(long)]
        id: Option<String>,
        /// Read every file: do not skip small files unchanged (path, size, mtime, mode) since
        /// the newest backup of the same directory.
        #[arg(long)]
        no_parent: bool,
    },
    /// Restore a backup (an id, or `latest`) into a directory.
    Get { backup: String, dir: PathBuf },
    /// Committed backups with time, size and files.
    List,
    /// Check every committed backup; exit status 1 when anything is damaged.
    Verify {
        /// Download, decrypt and re-hash every chunk (default: existence and size).
        #[arg(long)]
        deep: bool,
    },
    /// Remove backups a retention policy does not keep (their chunks go at the next gc).
    Forget {
        #[arg(long, default_value_t = 0)]
        keep_last: u32,
        #[arg(long, default_value_t = 0)]
        keep_daily: u32,
        #[arg(long, default_value_t = 0)]
        keep_weekly: u32,
        #[arg(long, default_value_t = 0)]
        keep_monthly: u32,
        /// Show what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete chunks no committed backup references (refuses while a backup is written).
    Gc {
        #[arg(long)]
        dry_run: bool,
        /// Never delete objects younger than this.
        #[arg(long, default_value = "1h")]
        grace: String,
    },
    /// Copy committed backups to another repository (only what it lacks; resumable).
    Copy {
        /// Target repository URL (must exist: `snapfleet repo init --repo URL`).
        #[arg(long)]
        to: String,
        /// Passphrase file of the target (or SNAPFLEET_TO_PASSWORD); default: the source's.
        #[arg(long, env = "SNAPFLEET_TO_PASSWORD_FILE")]
        to_password_file: Option<PathBuf>,
        /// The target is an unencrypted repository (`--encryption none`): copy into it in the
        /// clear. Without this flag such a target is refused.
        #[arg(long, conflicts_with = "to_password_file")]
        to_unencrypted: bool,
        /// Only these backups (repeatable; default all).
        #[arg(long = "backup")]
        backups: Vec<String>,
        /// zstd level in the target.
        #[arg(long, default_value_t = 3)]
        compression: i32,
    },
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Add a key slot for the passphrase in --new-password-file.
    Add {
        #[arg(long, env = "SNAPFLEET_NEW_PASSWORD_FILE")]
        new_password_file: PathBuf,
    },
    /// List key slots (no key material).
    List,
    /// Remove a key slot (never the last one).
    Remove { id: String },
}

/// Reads a passphrase file (first line; the rule agents and coordinators use too).
fn read_password_file(path: &Path) -> Result<Vec<u8>> {
    Ok(snapfleet_repository::pool::read_passphrase_file(path)?)
}

fn passphrase(file: Option<&Path>, env: &str, file_flag: &str) -> Result<Vec<u8>> {
    if let Some(f) = file {
        return read_password_file(f);
    }
    match std::env::var_os(env) {
        Some(p) if !p.is_empty() => Ok(p.into_encoded_bytes()),
        _ => bail!("no passphrase: give {file_flag} FILE or set {env}"),
    }
}

impl RepoArgs {
    /// The repository URL; a missing one is a usage error (exit status 2).
    pub fn url(&self) -> Result<&str> {
        match self.repo.as_deref().filter(|u| !u.is_empty()) {
            Some(u) => Ok(u),
            None => clap::Error::raw(
                clap::error::ErrorKind::MissingRequiredArgument,
                "no repository: give --repo URL or set SNAPFLEET_REPO \
                 (e.g. file:///srv/backups, s3://bucket/prefix)\n",
            )
            .exit(),
        }
    }

    /// The passphrase if one is given (a password file that cannot be read is an error).
    fn passphrase_if_given(&self) -> Result<Option<Vec<u8>>> {
        if self.password_file.is_none()
            && std::env::var_os("SNAPFLEET_PASSWORD").is_none_or(|p| p.is_empty())
        {
            return Ok(None);
        }
        self.passphrase().map(Some)
    }

    fn passphrase(&self) -> Result<Vec<u8>> {
        passphrase(
            self.password_file.as_deref(),
            "SNAPFLEET_PASSWORD",
            "--password-file",
        )
    }
}

fn open_store(url: &str) -> Result<Arc<dyn sr::object_store::ObjectStore>> {
    let store = sr::open_store(url)?;
    Ok(sr::with_layers(
        store,
        sr::StoreLayers {
            retry: Some(Default::default()),
            ..Default::default()
        },
    ))
}

/// Opens (unlocks) the repository the flags name.
/// Without a passphrase only an unencrypted repository opens (an encrypted one says how to
/// give the passphrase).
pub async fn open_repo(a: &RepoArgs) -> Result<Arc<Repository>> {
    let url = a.url()?;
    Ok(Arc::new(
        open_with(url, a.passphrase_if_given()?)
            .await
            .with_context(|| format!("opening repository {url}"))?,
    ))
}

async fn open_with(url: &str, pass: Option<Vec<u8>>) -> Result<Repository> {
    let store = open_store(url)?;
    Ok(match pass {
        Some(p) => Repository::open(store, &p).await?,
        None => Repository::open_without_passphrase(store).await?,
    })
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A byte-counting spinner on stderr, drawn only on a terminal; `tick` reads the counters.
fn byte_bar(msg: String) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} {bytes} ({bytes_per_sec}) {elapsed} {prefix}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// A spinner with elapsed time on stderr, drawn only on a terminal.
fn spinner(msg: String) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Copies a writer's counters into the bar until dropped (aborted).
struct BarFeeder(tokio::task::JoinHandle<()>);

impl BarFeeder {
    fn start(pb: &ProgressBar, p: Arc<sr::Progress>) -> Self {
        let pb = pb.clone();
        BarFeeder(tokio::spawn(async move {
            loop {
                pb.set_position(p.bytes_read.load(Ordering::Relaxed));
                pb.set_prefix(format!(
                    "{} files, {} uploaded",
                    p.files.load(Ordering::Relaxed),
                    human_bytes(p.bytes_uploaded.load(Ordering::Relaxed))
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }))
    }
}

impl Drop for BarFeeder {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub async fn run(c: RepoCommand, json: bool) -> Result<()> {
    let a = &c.args;
    match c.cmd {
        RepoCmd::Init {
            encryption,
            kdf_memory_mib,
            kdf_iterations,
        } => {
            let url = a.url()?;
            let repo = if encryption == "none" {
                if a.passphrase_if_given()?.is_some() {
                    bail!(
                        "--encryption none makes a repository that no passphrase opens, but a \
                         passphrase is set: unset --password-file / SNAPFLEET_PASSWORD_FILE / \
                         SNAPFLEET_PASSWORD for this repository"
                    );
                }
                Repository::init_unencrypted(open_store(url)?, Default::default()).await
            } else {
                let pass = a.passphrase()?;
                let opts = sr::InitOptions {
                    kdf: KdfParams {
                        m_cost_kib: kdf_memory_mib.saturating_mul(1024),
                        t_cost: kdf_iterations,
                        p_cost: 1,
                    },
                    ..Default::default()
                };
                Repository::init(open_store(url)?, &pass, opts).await
            }
            .with_context(|| format!("initialising repository {url}"))?;
            if json {
                print_json(&serde_json::json!({
                    "repo": url,
                    "repo_id": repo.config().repo_id,
                    "format_version": repo.config().format_version,
                    "key_id": repo.key_id(),
                }))?;
            } else {
                eprintln!(
                    "initialised repository {url} (id {}, format {}, key {})",
                    repo.config().repo_id,
                    repo.config().format_version,
                    repo.key_id()
                );
            }
        }
        RepoCmd::Key(k) => key(a, k, json).await?,
        RepoCmd::Put {
            dir,
            compression,
            tags,
            id,
            no_parent,
        } => put(a, &dir, compression, tags, id, no_parent, json).await?,
        RepoCmd::Get { backup, dir } => {
            let repo = open_repo(a).await?;
            let id = resolve_backup(&repo, &backup).await?;
            let pb = spinner(format!("restoring {id}"));
            let stats = sr::restore_backup(&repo, &id, &dir)
                .await
                .with_context(|| format!("restoring backup {id} into {}", dir.display()));
            pb.finish_and_clear();
            let stats = stats?;
            if json {
                print_json(&serde_json::json!({"backup_id": id, "stats": stats}))?;
            } else {
                eprintln!(
                    "restored {id} into {}: {} files, {} dirs, {} in {}",
                    dir.display(),
                    stats.files,
                    stats.dirs,
                    human_bytes(stats.bytes),
                    human_duration(stats.duration())
                );
            }
        }
        RepoCmd::List => {
            let repo = open_repo(a).await?;
            let mut rows = Vec::new();
            for id in repo.list_backups().await? {
                let root = repo.read_root(&id).await?;
                rows.push(serde_json::json!({
                    "backup_id": id,
                    "created": root.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "files": root.stats.files,
                    "dirs": root.stats.dirs,
                    "bytes": root.stats.bytes,
                    "meta": root.meta,
                }));
            }
            if json {
                print_json(&rows)?;
            } else {
                println!(
                    "{:<36} {:<20} {:>10} {:>10}  tags",
                    "backup", "created", "size", "files"
                );
                for r in &rows {
                    println!(
                        "{:<36} {:<20} {:>10} {:>10}  {}",
                        r["backup_id"].as_str().unwrap_or_default(),
                        r["created"].as_str().unwrap_or_default(),
                        human_bytes(r["bytes"].as_u64().unwrap_or(0)),
                        r["files"].as_u64().unwrap_or(0),
                        r["meta"]["tags"]
                            .as_array()
                            .map(|t| t
                                .iter()
                                .filter_map(|v| v.as_str())
                                .collect::<Vec<_>>()
                                .join(","))
                            .unwrap_or_default()
                    );
                }
                eprintln!("{} backups", rows.len());
            }
        }
        RepoCmd::Verify { deep } => {
            let repo = open_repo(a).await?;
            let pb = spinner(format!(
                "verifying ({})",
                if deep { "deep" } else { "quick" }
            ));
            let report = sr::verify(
                &repo,
                &sr::VerifyOptions {
                    deep,
                    ..Default::default()
                },
            )
            .await;
            pb.finish_and_clear();
            let report = report?;
            if json {
                print_json(&report)?;
            } else {
                eprintln!(
                    "{} verify: {} backups, {} pages, {} chunks{}",
                    if deep { "deep" } else { "quick" },
                    report.backups,
                    report.pages,
                    report.chunks,
                    if deep {
                        format!(", {} checked", human_bytes(report.bytes_checked))
                    } else {
                        String::new()
                    }
                );
                for d in &report.damaged {
                    let backups: Vec<String> = d.backups.iter().map(|b| b.to_string()).collect();
                    eprintln!(
                        "DAMAGED {}: {:?}; breaks {}",
                        d.key,
                        d.problem,
                        backups.join(", ")
                    );
                }
            }
            if !report.is_ok() {
                let keys: Vec<&str> = report.damaged.iter().map(|d| d.key.as_str()).collect();
                let broken: Vec<String> = report
                    .broken_backups
                    .iter()
                    .map(|b| b.to_string())
                    .collect();
                bail!(
                    "{} damaged object(s) ({}) break backup(s) {}; restore them from a copy \
                     (`snapfleet repo copy`) or forget those backups and take new ones",
                    keys.len(),
                    keys.join(", "),
                    broken.join(", ")
                );
            }
            if !json {
                eprintln!("ok: every committed backup is restorable");
            }
        }
        RepoCmd::Forget {
            keep_last,
            keep_daily,
            keep_weekly,
            keep_monthly,
            dry_run,
        } => {
            let policy = sr::KeepPolicy {
                last: keep_last,
                daily: keep_daily,
                weekly: keep_weekly,
                monthly: keep_monthly,
            };
            policy.validate()?;
            let repo = open_repo(a).await?;
            // Point-in-time restores inside an archive's window need its base backup.
            let needs = snapfleet_jobs::archive::pitr_needs(
                &*snapfleet_adapter_tabletdb::TabletdbAdapter::new(),
                &repo,
            )
            .await?;
            let report = sr::forget(&repo, &policy, dry_run, &needs.protect).await?;
            let pruned = if dry_run {
                0
            } else {
                snapfleet_jobs::archive::prune_logs(&repo, &needs).await?
            };
            if json {
                let mut v = serde_json::to_value(&report)?;
                v["log_pieces_pruned"] = pruned.into();
                print_json(&v)?;
            } else {
                if pruned > 0 {
                    eprintln!("pruned {pruned} archived change-log pieces older than the PITR windows' base backups");
                }
                for d in &report.kept {
                    eprintln!("keep   {} ({})", d.backup, d.reasons.join(", "));
                }
                let verb = if dry_run { "would remove" } else { "removed" };
                for d in &report.removed {
                    eprintln!("{verb} {}", d.backup);
                }
                eprintln!(
                    "{} kept, {} {verb}{}",
                    report.kept.len(),
                    report.removed.len(),
                    if dry_run || report.removed.is_empty() {
                        ""
                    } else {
                        "; run `snapfleet repo gc` to free their chunks"
                    }
                );
            }
        }
        RepoCmd::Gc { dry_run, grace } => {
            let grace = parse_duration(&grace)?;
            let repo = open_repo(a).await?;
            let pb = spinner("garbage collection".into());
            let report = sr::gc(
                &repo,
                &sr::GcOptions {
                    dry_run,
                    grace,
                    ..Default::default()
                },
            )
            .await;
            pb.finish_and_clear();
            let report = report?;
            if json {
                print_json(&report)?;
            } else {
                let verb = if dry_run { "would delete" } else { "deleted" };
                eprintln!(
                    "gc: {} backups, {} live chunks of {}; {verb} {} chunks ({}), {} pages, {} \
                     expired leases; kept {} unreferenced chunks younger than {}",
                    report.backups,
                    report.live_chunks,
                    report.chunks_seen,
                    report.chunks_deleted,
                    human_bytes(report.bytes_deleted),
                    report.pages_deleted,
                    report.leases_deleted,
                    report.chunks_kept_young,
                    humantime::format_duration(grace)
                );
            }
        }
        RepoCmd::Copy {
            to,
            to_password_file,
            to_unencrypted,
            backups,
            compression,
        } => {
            let src = open_repo(a).await?;
            let pass = match (&to_password_file, std::env::var_os("SNAPFLEET_TO_PASSWORD")) {
                _ if to_unencrypted => None,
                (None, None) => Some(a.passphrase_if_given()?.ok_or_else(|| {
                    anyhow!(
                        "no passphrase for the target {to}: give --to-password-file FILE or set \
                         SNAPFLEET_TO_PASSWORD (or --to-unencrypted for an unencrypted target)"
                    )
                })?),
                (f, _) => Some(passphrase(
                    f.as_deref(),
                    "SNAPFLEET_TO_PASSWORD",
                    "--to-password-file",
                )?),
            };
            let dst = Arc::new(
                open_with(&to, pass)
                    .await
                    .with_context(|| format!("opening target repository {to}"))?,
            );
            let ids = if backups.is_empty() {
                None
            } else {
                Some(
                    backups
                        .iter()
                        .map(|b| BackupId::new(b.as_str()))
                        .collect::<sr::Result<Vec<_>>>()?,
                )
            };
            let opts = sr::CopyOptions {
                backups: ids,
                writer: sr::WriterOptions {
                    compression_level: compression,
                    ..Default::default()
                },
            };
            let pb = byte_bar("copying".into());
            let mut feeder = None;
            let report = sr::copy_backups(&src, &dst, &opts, |id, progress| {
                pb.set_message(format!("copying {id}"));
                feeder = Some(BarFeeder::start(&pb, progress));
            })
            .await;
            drop(feeder);
            pb.finish_and_clear();
            let report = report.with_context(|| format!("copying to {to}"))?;
            if json {
                print_json(&report)?;
            } else {
                for c in &report.copied {
                    eprintln!(
                        "copied {}: {} read, {} uploaded, {} new chunks, {}",
                        c.backup,
                        human_bytes(c.stats.bytes_read),
                        human_bytes(c.stats.backup.bytes_uploaded),
                        c.stats.backup.chunks_new,
                        human_duration(c.stats.duration())
                    );
                }
                for s in &report.skipped {
                    eprintln!("skipped {s}: already in the target");
                }
            }
        }
    }
    Ok(())
}

async fn key(a: &RepoArgs, k: KeyCmd, json: bool) -> Result<()> {
    let repo = open_repo(a).await?;
    if !repo.is_encrypted() {
        return Err(sr::Error::NotEncrypted {
            location: a.url()?.to_string(),
        }
        .into());
    }
    let mut repo = Arc::try_unwrap(repo).map_err(|_| anyhow!("repository handle is shared"))?;
    match k {
        KeyCmd::Add { new_password_file } => {
            let pass = read_password_file(&new_password_file)?;
            let kdf = repo
                .config()
                .keys
                .iter()
                .find(|s| &s.id == repo.key_id())
                .map(|s| s.kdf_params)
                .unwrap_or_default();
            let id = repo.add_key(&pass, kdf).await?;
            if json {
                print_json(&serde_json::json!({"key_id": id}))?;
            } else {
                println!("{id}");
                eprintln!("added key {id}");
            }
        }
        KeyCmd::List => {
            let keys = repo.list_keys();
            if json {
                print_json(&keys)?;
            } else {
                for k in &keys {
                    let current = if &k.id == repo.key_id() {
                        " (this passphrase)"
                    } else {
                        ""
                    };
                    println!(
                        "{}  created {}{current}",
                        k.id,
                        k.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    );
                }
            }
        }
        KeyCmd::Remove { id } => {
            repo.remove_key(&sr::KeyId(id.clone())).await?;
            if json {
                print_json(&serde_json::json!({"removed": id}))?;
            } else {
                eprintln!("removed key {id}");
            }
        }
    }
    Ok(())
}

/// The newest committed backup whose `meta.source` is `source` (the parent of a new one).
async fn newest_backup_of(repo: &Repository, source: &str) -> Result<Option<sr::Root>> {
    let mut newest: Option<sr::Root> = None;
    for id in repo.list_backups().await? {
        let root = repo.read_root(&id).await?;
        if root.meta["source"] == source
            && newest.as_ref().is_none_or(|n| root.created >= n.created)
        {
            newest = Some(root);
        }
    }
    Ok(newest)
}

/// `latest`, or a backup id.
async fn resolve_backup(repo: &Repository, name: &str) -> Result<BackupId> {
    if name == "latest" {
        let mut newest: Option<(chrono::DateTime<chrono::Utc>, BackupId)> = None;
        for id in repo.list_backups().await? {
            let t = repo.read_root(&id).await?.created;
            if newest.as_ref().is_none_or(|(n, _)| t >= *n) {
                newest = Some((t, id));
            }
        }
        return newest
            .map(|(_, id)| id)
            .ok_or_else(|| anyhow!("the repository has no committed backup yet"));
    }
    Ok(BackupId::new(name)?)
}

async fn put(
    a: &RepoArgs,
    dir: &Path,
    compression: i32,
    tags: Vec<String>,
    id: Option<String>,
    no_parent: bool,
    json: bool,
) -> Result<()> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let repo = open_repo(a).await?;
    let id = match id {
        Some(i) => BackupId::new(i)?,
        None => BackupId::generate(),
    };
    let opts = sr::WriterOptions {
        compression_level: compression,
        ..Default::default()
    };
    let source = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let parent = if no_parent {
        None
    } else {
        newest_backup_of(&repo, &source.display().to_string()).await?
    };
    let w = sr::BackupWriter::with_options(repo.clone(), id.clone(), opts).await?;
    if let Some(p) = &parent {
        w.set_parent(p).await;
    }
    let pb = byte_bar(format!("backing up {}", dir.display()));
    let feeder = BarFeeder::start(&pb, w.progress());
    let res = async {
        w.put_dir(dir).await?;
        w.commit(serde_json::json!({
            "source": source.display().to_string(),
            "tags": tags,
            "host": std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim(),
        }))
        .await
    }
    .await;
    drop(feeder);
    pb.finish_and_clear();
    let (root, stats) = match res {
        Ok(r) => r,
        Err(e) => {
            let _ = w.release_lease().await;
            return Err(anyhow::Error::new(e).context(format!("backing up {}", dir.display())));
        }
    };
    if json {
        print_json(&serde_json::json!({
            "backup_id": root.backup_id,
            "parent": parent.as_ref().map(|p| p.backup_id.clone()),
            "bytes_read": stats.bytes_read,
            "bytes_uploaded": stats.backup.bytes_uploaded,
            "duration_ms": stats.duration_ms,
            "files": stats.backup.files,
            "dirs": stats.backup.dirs,
            "chunks_new": stats.backup.chunks_new,
            "chunks_reused": stats.backup.chunks_reused,
        }))?;
    } else {
        println!("{}", root.backup_id);
        let secs = stats.duration().as_secs_f64().max(1e-3);
        eprintln!(
            "backup {}: {} files, {} read, {} uploaded ({} new chunks, {} reused) in {} ({}/s)",
            root.backup_id,
            stats.backup.files,
            human_bytes(stats.bytes_read),
            human_bytes(stats.backup.bytes_uploaded),
            stats.backup.chunks_new,
            stats.backup.chunks_reused,
            human_duration(stats.duration()),
            human_bytes((stats.bytes_read as f64 / secs) as u64)
        );
    }
    Ok(())
}
