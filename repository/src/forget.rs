//! Retention: which committed backups a `--keep-last/-daily/-weekly/-monthly` policy keeps
//! ([`select`], pure and unit-tested), and [`forget`], which removes the others' ROOT — the
//! commit point, so a forgotten backup disappears at once — and then their manifest pages.
//! Their chunks become garbage for `gc`.
//!
//! Semantics follow restic: backups are taken newest first; `last N` keeps the N newest;
//! `daily N` keeps the newest backup of each of the N most recent days that have one (UTC
//! calendar days), `weekly` by ISO week, `monthly` by calendar month. A backup is kept if any
//! rule keeps it. This module must never remove a backup that a rule keeps, and refuses a
//! policy that keeps nothing.

use std::sync::Arc;

use chrono::{DateTime, Datelike, Utc};
use futures::TryStreamExt;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::ids::BackupId;
use crate::manifest::root_key;
use crate::repo::Repository;

/// How many backups each rule keeps (0 = rule off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KeepPolicy {
    pub last: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

impl KeepPolicy {
    /// Refuses a policy under which every backup would be removed.
    pub fn validate(&self) -> Result<()> {
        if self.last == 0 && self.daily == 0 && self.weekly == 0 && self.monthly == 0 {
            return Err(Error::InvalidArgument(
                "the retention policy keeps nothing: give at least one of --keep-last, \
                 --keep-daily, --keep-weekly, --keep-monthly (refusing to forget every backup)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The verdict on one backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForgetDecision {
    pub backup: BackupId,
    pub created: DateTime<Utc>,
    pub keep: bool,
    /// The rules that keep it (`last`, `daily`, `weekly`, `monthly`).
    pub reasons: Vec<&'static str>,
}

/// Applies `policy` to backups with their creation times; returns decisions newest first.
pub fn select(backups: &[(BackupId, DateTime<Utc>)], policy: &KeepPolicy) -> Vec<ForgetDecision> {
    let mut sorted: Vec<&(BackupId, DateTime<Utc>)> = backups.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    type Bucket = fn(usize, &DateTime<Utc>) -> (i64, i64);
    let rules: [(&'static str, u32, Bucket); 4] = [
        ("last", policy.last, |i, _| (i as i64, 0)),
        ("daily", policy.daily, |_, t| {
            (t.year() as i64, t.ordinal() as i64)
        }),
        ("weekly", policy.weekly, |_, t| {
            let w = t.iso_week();
            (w.year() as i64, w.week() as i64)
        }),
        ("monthly", policy.monthly, |_, t| {
            (t.year() as i64, t.month() as i64)
        }),
    ];
    let mut left: Vec<u32> = rules.iter().map(|r| r.1).collect();
    let mut last_bucket: Vec<Option<(i64, i64)>> = vec![None; rules.len()];
    sorted
        .into_iter()
        .enumerate()
        .map(|(i, (id, created))| {
            let mut reasons = Vec::new();
            for (r, (name, _, bucket)) in rules.iter().enumerate() {
                if left[r] == 0 {
                    continue;
                }
                let b = bucket(i, created);
                if last_bucket[r] != Some(b) {
                    last_bucket[r] = Some(b);
                    left[r] -= 1;
                    reasons.push(*name);
                }
            }
            ForgetDecision {
                backup: id.clone(),
                created: *created,
                keep: !reasons.is_empty(),
                reasons,
            }
        })
        .collect()
}

/// What `forget` decided and did.
#[derive(Clone, Debug, Serialize)]
pub struct ForgetReport {
    pub dry_run: bool,
    pub policy: KeepPolicy,
    pub kept: Vec<ForgetDecision>,
    pub removed: Vec<ForgetDecision>,
}

/// Applies `policy` to every committed backup: removes the ROOT and then the manifest pages
/// of each backup not kept (nothing when `dry_run`). Chunks are left to `gc`.
///
/// Backups in `protect` are kept whatever the policy says, with the reason `pitr` (the
/// base backup that point-in-time restores inside an archive's window need).
pub async fn forget(
    repo: &Arc<Repository>,
    policy: &KeepPolicy,
    dry_run: bool,
    protect: &std::collections::BTreeSet<BackupId>,
) -> Result<ForgetReport> {
    policy.validate()?;
    let mut backups = Vec::new();
    for id in repo.list_backups().await? {
        let root = repo.read_root(&id).await?;
        backups.push((id, root.created));
    }
    let (kept, removed): (Vec<_>, Vec<_>) = select(&backups, policy)
        .into_iter()
        .map(|mut d| {
            if protect.contains(&d.backup) {
                d.reasons.push("pitr");
                d.keep = true;
            }
            d
        })
        .partition(|d| d.keep);
    if !dry_run {
        for d in &removed {
            remove_backup(repo, &d.backup).await?;
            tracing::info!(backup = %d.backup, "forgot backup");
        }
    }
    Ok(ForgetReport {
        dry_run,
        policy: *policy,
        kept,
        removed,
    })
}

/// Deletes a backup: ROOT first (it disappears atomically), then everything under its prefix.
pub async fn remove_backup(repo: &Repository, id: &BackupId) -> Result<()> {
    repo.delete_object(&root_key(id)).await?;
    delete_prefix(repo, &format!("backups/{id}")).await
}

pub(crate) async fn delete_prefix(repo: &Repository, prefix: &str) -> Result<()> {
    let keys: Vec<String> = repo
        .store()
        .list(Some(&object_store::path::Path::from(prefix)))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .map_err(|e| Error::store("list", prefix, e))?;
    for k in keys {
        repo.delete_object(&k).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
    }

    fn ids(ds: &[ForgetDecision], keep: bool) -> Vec<String> {
        ds.iter()
            .filter(|d| d.keep == keep)
            .map(|d| d.backup.to_string())
            .collect()
    }

    fn backups(times: &[(&str, DateTime<Utc>)]) -> Vec<(BackupId, DateTime<Utc>)> {
        times
            .iter()
            .map(|(n, t)| (BackupId::new(*n).unwrap(), *t))
            .collect()
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let b = backups(&[
            ("a", at(2026, 1, 1, 0)),
            ("c", at(2026, 1, 3, 0)),
            ("b", at(2026, 1, 2, 0)),
        ]);
        let d = select(
            &b,
            &KeepPolicy {
                last: 2,
                ..Default::default()
            },
        );
        assert_eq!(ids(&d, true), ["c", "b"]);
        assert_eq!(ids(&d, false), ["a"]);
        assert_eq!(d[0].reasons, ["last"]);
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day() {
        let b = backups(&[
            ("d1-early", at(2026, 3, 1, 1)),
            ("d1-late", at(2026, 3, 1, 23)),
            ("d2", at(2026, 3, 2, 12)),
            ("d4-a", at(2026, 3, 4, 8)),
            ("d4-b", at(2026, 3, 4, 9)),
        ]);
        let d = select(
            &b,
            &KeepPolicy {
                daily: 3,
                ..Default::default()
            },
        );
        assert_eq!(ids(&d, true), ["d4-b", "d2", "d1-late"]);
        assert_eq!(ids(&d, false), ["d4-a", "d1-early"]);
    }

    #[test]
    fn weekly_uses_iso_weeks_and_monthly_calendar_months() {
        // 2026-01-04 is a Sunday (ISO week 1), 2026-01-05 a Monday (week 2).
        let b = backups(&[
            ("sun", at(2026, 1, 4, 10)),
            ("mon", at(2026, 1, 5, 10)),
            ("tue", at(2026, 1, 6, 10)),
            ("feb", at(2026, 2, 10, 10)),
            ("dec", at(2025, 12, 31, 10)),
        ]);
        let w = select(
            &b,
            &KeepPolicy {
                weekly: 3,
                ..Default::default()
            },
        );
        assert_eq!(ids(&w, true), ["feb", "tue", "sun"]);
        let m = select(
            &b,
            &KeepPolicy {
                monthly: 2,
                ..Default::default()
            },
        );
        assert_eq!(ids(&m, true), ["feb", "tue"]);
    }

    #[test]
    fn rules_combine_and_reasons_are_listed() {
        let b = backups(&[
            ("m1", at(2026, 1, 15, 0)),
            ("m2", at(2026, 2, 15, 0)),
            ("m3a", at(2026, 3, 15, 0)),
            ("m3b", at(2026, 3, 16, 0)),
        ]);
        let d = select(
            &b,
            &KeepPolicy {
                last: 1,
                monthly: 3,
                ..Default::default()
            },
        );
        assert_eq!(ids(&d, true), ["m3b", "m2", "m1"]);
        assert_eq!(d[0].reasons, ["last", "monthly"]);
        assert_eq!(ids(&d, false), ["m3a"]);
        // More slots than backups keeps everything.
        let all = select(
            &b,
            &KeepPolicy {
                daily: 100,
                ..Default::default()
            },
        );
        assert!(all.iter().all(|d| d.keep));
    }

    #[test]
    fn an_empty_policy_is_refused() {
        assert!(matches!(
            KeepPolicy::default().validate(),
            Err(Error::InvalidArgument(_))
        ));
        assert!(KeepPolicy {
            weekly: 1,
            ..Default::default()
        }
        .validate()
        .is_ok());
    }
}
