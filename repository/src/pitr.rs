//! Off-cluster point-in-time recovery: archived change-log pieces and the archivers'
//! progress, kept beside the backups so a brand-new cluster can restore to any time the
//! archive covers from the repository alone. Layout under `pitr/<database id>/`:
//!
//! - `ARCHIVE`: what is archived (database, retention window), sealed JSON;
//! - `log/<tablet>/<from:020>-<to:020>`: one piece, the tablet's change-log records with
//!   `from < ht <= to`, sealed (zstd + AES-256-GCM, the object key authenticated);
//! - `progress/<node>`: per tablet archived on that node, how far the archive is complete.
//!
//! Pieces of one tablet form a chain: each starts where the previous one ended (`from` is
//! the previous piece's `to`), so a missing piece is a visible hole. The archiver writes a
//! node's progress only after the pieces it claims exist; [`tablet_coverage`] turns a chain
//! and a progress entry into "every record up to X is here".

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::crypto::ObjectKind;
use crate::error::{Error, Result};
use crate::repo::Repository;

/// What `snapfleet pitr archive enable` archives, stored as `pitr/<db id>/ARCHIVE`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ArchiveInfo {
    pub database_id: String,
    pub database_name: String,
    /// The PITR window: `repo forget` keeps what restoring to any time inside it needs.
    pub retention_secs: u64,
    /// Hybrid time the archive started at (records before it are not archived).
    pub start_ht: u64,
    /// `repo forget` deleted the pieces ending at or before this time.
    #[serde(default)]
    pub pruned_before: u64,
    pub created: DateTime<Utc>,
}

/// One archived piece of a tablet's change log: records with `from < ht <= to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Piece {
    pub from: u64,
    pub to: u64,
}

/// How far one tablet's archive is complete, as its archiver last wrote it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TabletProgress {
    pub table_id: String,
    pub table_name: String,
    /// The chain of pieces starts here (a gap restarts it later).
    pub since: u64,
    /// The last piece written ends here.
    pub piece_to: u64,
    /// Every record at or before `covered` is in a piece ending at or before `piece_to`.
    pub covered: u64,
    /// The tablet was not on the node at this time (0: there when archiving began): it was
    /// created after it.
    #[serde(default)]
    pub created_after: u64,
    /// The tablet disappeared (table dropped) after this time (0: still there)...
    #[serde(default)]
    pub gone_after: u64,
    /// ...and was seen gone at this one: it was dropped in between.
    #[serde(default)]
    pub gone_seen: u64,
    /// Version ranges `(after, until]` hidden in the source tablet by in-place restores:
    /// a restore to a time at or after `until` hides them too.
    #[serde(default)]
    pub hidden: Vec<(u64, u64)>,
}

/// `pitr/<db id>/progress/<node>`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeProgress {
    pub node: String,
    pub written: Option<DateTime<Utc>>,
    pub tablets: BTreeMap<String, TabletProgress>,
}

impl NodeProgress {
    /// The node's checkpoint: the oldest `covered` of its live tablets (`None` if none).
    pub fn checkpoint(&self) -> Option<u64> {
        self.tablets
            .values()
            .filter(|t| t.gone_after == 0)
            .map(|t| t.covered)
            .min()
    }
}

fn base(db: &str) -> String {
    format!("pitr/{db}")
}

fn check_name(what: &str, s: &str) -> Result<()> {
    if s.is_empty()
        || s.len() > 128
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        || s.starts_with('.')
    {
        return Err(Error::InvalidArgument(format!(
            "{what} {s:?} cannot name an archive object (letters, digits, '-', '_', '.')"
        )));
    }
    Ok(())
}

/// The object key of a piece.
pub fn piece_key(db: &str, tablet: &str, p: Piece) -> String {
    format!("{}/log/{tablet}/{:020}-{:020}", base(db), p.from, p.to)
}

fn parse_piece(name: &str) -> Option<Piece> {
    let (a, b) = name.split_once('-')?;
    let p = Piece {
        from: a.parse().ok()?,
        to: b.parse().ok()?,
    };
    (p.from < p.to).then_some(p)
}

/// Extends `covered` along a chain of pieces sorted by `from`; stops at the first hole.
pub fn extend_chain(mut covered: u64, pieces: &[Piece]) -> u64 {
    for p in pieces {
        if p.from > covered {
            break;
        }
        covered = covered.max(p.to);
    }
    covered
}

/// Up to when every record of a tablet after `start` is archived, given its pieces that end
/// after `start` (sorted by `from`) and its progress entry; `None` if the archive cannot
/// serve records after `start` at all (its chain began later).
pub fn tablet_coverage(start: u64, pieces: &[Piece], p: &TabletProgress) -> Option<u64> {
    let chain = extend_chain(start, pieces);
    if p.since > start {
        // The chain restarted after a gap: before it, the pieces alone say what is complete
        // (each covers its whole range); nothing if none reaches back to `start`.
        return (chain > start).then_some(chain.min(p.since));
    }
    if chain >= p.piece_to {
        // Nothing after the last piece until `covered`.
        Some(p.covered.max(chain))
    } else {
        // A hole (a piece missing, e.g. deleted by hand): complete up to the hole only.
        Some(chain)
    }
}

impl Repository {
    fn seal_meta<T: Serialize>(&self, key: &str, v: &T) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(v).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        self.keys()
            .seal(ObjectKind::ArchiveMeta, key.as_bytes(), &json, 3)
    }

    async fn open_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let bytes = match self.get_bytes(key, crate::repo::limits::META).await {
            Err(Error::MissingObject { .. }) => return Ok(None),
            r => r?,
        };
        let json = self
            .keys()
            .open(key, ObjectKind::ArchiveMeta, key.as_bytes(), &bytes)?;
        serde_json::from_slice(&json)
            .map(Some)
            .map_err(|e| Error::corrupt(key, format!("layout: {e}")))
    }

    pub async fn put_archive_info(&self, info: &ArchiveInfo) -> Result<()> {
        check_name("database id", &info.database_id)?;
        let key = format!("{}/ARCHIVE", base(&info.database_id));
        let sealed = self.seal_meta(&key, info)?;
        self.put_bytes(&key, sealed).await
    }

    pub async fn read_archive_info(&self, db: &str) -> Result<Option<ArchiveInfo>> {
        check_name("database id", db)?;
        self.open_meta(&format!("{}/ARCHIVE", base(db))).await
    }

    /// Every archive in the repository.
    pub async fn list_archives(&self) -> Result<Vec<ArchiveInfo>> {
        let listing = self
            .store()
            .list_with_delimiter(Some(&object_store::path::Path::from("pitr")))
            .await
            .map_err(|e| Error::store("list", "pitr/", e))?;
        let mut out = Vec::new();
        for p in listing.common_prefixes {
            if let Some(db) = p.filename() {
                if let Some(info) = self.read_archive_info(db).await? {
                    out.push(info);
                }
            }
        }
        Ok(out)
    }

    /// Uploads one piece (`records`: raw change-log records, all with `from < ht <= to`).
    pub async fn put_log_piece(
        &self,
        db: &str,
        tablet: &str,
        piece: Piece,
        records: Vec<u8>,
        zstd_level: i32,
    ) -> Result<u64> {
        check_name("database id", db)?;
        check_name("tablet id", tablet)?;
        let key = piece_key(db, tablet, piece);
        let keys = self.keys().clone();
        let k = key.clone();
        let sealed = tokio::task::spawn_blocking(move || {
            keys.seal(ObjectKind::ArchiveLog, k.as_bytes(), &records, zstd_level)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        let n = sealed.len() as u64;
        self.put_bytes(&key, sealed).await?;
        Ok(n)
    }

    /// Downloads and authenticates one piece: its raw records.
    pub async fn read_log_piece(&self, db: &str, tablet: &str, piece: Piece) -> Result<Vec<u8>> {
        let key = piece_key(db, tablet, piece);
        let object = self.get_bytes(&key, crate::repo::limits::LOG_PIECE).await?;
        let keys = self.keys().clone();
        tokio::task::spawn_blocking(move || {
            keys.open(&key, ObjectKind::ArchiveLog, key.as_bytes(), &object)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }

    /// The pieces of a tablet that hold records in `(after, until]`, sorted by `from`. Only
    /// those are kept in memory, whatever the archive's length.
    pub async fn list_log_pieces(
        &self,
        db: &str,
        tablet: &str,
        after: u64,
        until: u64,
    ) -> Result<Vec<Piece>> {
        check_name("database id", db)?;
        check_name("tablet id", tablet)?;
        let mut out: Vec<Piece> = self
            .pieces_under(&format!("{}/log/{tablet}", base(db)), |p| {
                p.to > after && p.from < until
            })
            .await?
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        out.sort();
        Ok(out)
    }

    /// The pieces under `prefix` that `keep` selects, with their object keys.
    async fn pieces_under(
        &self,
        prefix: &str,
        keep: impl Fn(&Piece) -> bool,
    ) -> Result<Vec<(String, Piece)>> {
        let keep = &keep;
        self.store()
            .list(Some(&object_store::path::Path::from(prefix)))
            .map_err(|e| Error::store("list", prefix, e))
            .try_filter_map(|m| async move {
                Ok(m.location
                    .filename()
                    .and_then(parse_piece)
                    .filter(keep)
                    .map(|p| (m.location.to_string(), p)))
            })
            .try_collect()
            .await
    }

    /// Deletes the pieces of every tablet of `db` that end at or before `before` (no
    /// restore inside the window needs them). Returns how many.
    pub async fn delete_log_pieces_before(&self, db: &str, before: u64) -> Result<u64> {
        check_name("database id", db)?;
        let old = self
            .pieces_under(&format!("{}/log", base(db)), |p| p.to <= before)
            .await?;
        for (k, _) in &old {
            self.delete_object(k).await?;
        }
        Ok(old.len() as u64)
    }

    pub async fn put_node_progress(&self, db: &str, p: &NodeProgress) -> Result<()> {
        check_name("database id", db)?;
        check_name("node", &p.node)?;
        let key = format!("{}/progress/{}", base(db), p.node);
        let sealed = self.seal_meta(&key, p)?;
        self.put_bytes(&key, sealed).await
    }

    pub async fn read_node_progress(&self, db: &str, node: &str) -> Result<Option<NodeProgress>> {
        check_name("database id", db)?;
        check_name("node", node)?;
        self.open_meta(&format!("{}/progress/{node}", base(db)))
            .await
    }

    /// Every node's progress for `db`.
    pub async fn list_node_progress(&self, db: &str) -> Result<Vec<NodeProgress>> {
        check_name("database id", db)?;
        let prefix = format!("{}/progress", base(db));
        let nodes: Vec<String> = self
            .store()
            .list(Some(&object_store::path::Path::from(prefix.as_str())))
            .map_err(|e| Error::store("list", &prefix, e))
            .try_filter_map(|m| async move { Ok(m.location.filename().map(str::to_string)) })
            .try_collect()
            .await?;
        let mut out = Vec::new();
        for n in nodes {
            if let Some(p) = self.read_node_progress(db, &n).await? {
                out.push(p);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(from: u64, to: u64) -> Piece {
        Piece { from, to }
    }

    #[test]
    fn chains_stop_at_holes_and_tolerate_overlaps() {
        assert_eq!(extend_chain(10, &[p(10, 20), p(20, 30)]), 30);
        assert_eq!(extend_chain(15, &[p(10, 20), p(20, 30)]), 30);
        // A rewritten piece after a restart overlaps the orphan.
        assert_eq!(extend_chain(10, &[p(10, 20), p(10, 25), p(25, 40)]), 40);
        assert_eq!(extend_chain(10, &[p(10, 20), p(21, 30)]), 20, "hole");
        assert_eq!(extend_chain(10, &[]), 10);
    }

    #[test]
    fn coverage_needs_the_chain_to_reach_the_progress() {
        let prog = TabletProgress {
            since: 5,
            piece_to: 30,
            covered: 50,
            ..Default::default()
        };
        assert_eq!(tablet_coverage(10, &[p(5, 20), p(20, 30)], &prog), Some(50));
        // Idle since before the start: nothing needed.
        assert_eq!(tablet_coverage(35, &[], &prog), Some(50));
        // A missing piece: only up to the hole.
        assert_eq!(tablet_coverage(10, &[p(5, 20)], &prog), Some(20));
        // The chain began after the start: the archive cannot serve it.
        assert_eq!(tablet_coverage(4, &[p(5, 20), p(20, 30)], &prog), None);
        // A gap restarted the chain at 40: before it, the old pieces still serve.
        let gapped = TabletProgress {
            since: 40,
            piece_to: 60,
            covered: 70,
            ..Default::default()
        };
        let old = [p(5, 20), p(20, 30), p(40, 60)];
        assert_eq!(tablet_coverage(10, &old, &gapped), Some(30));
        assert_eq!(tablet_coverage(45, &old, &gapped), Some(70));
    }

    #[test]
    fn piece_names_round_trip() {
        let k = piece_key("db1", "t1", p(7, 9));
        assert_eq!(parse_piece(k.rsplit('/').next().unwrap()), Some(p(7, 9)));
        assert_eq!(parse_piece("9-7"), None);
        assert_eq!(parse_piece("x-7"), None);
        assert!(check_name("tablet id", "../x").is_err());
    }

    #[tokio::test]
    async fn pieces_progress_and_pruning_in_a_repository() {
        use crate::repo::InitOptions;
        use crate::{ChunkerParams, KdfParams};
        use object_store::ObjectStoreExt;
        let store: std::sync::Arc<dyn object_store::ObjectStore> =
            std::sync::Arc::new(object_store::memory::InMemory::new());
        let repo = Repository::init(
            store.clone(),
            b"pw",
            InitOptions {
                kdf: KdfParams::minimum(),
                chunker: ChunkerParams::default(),
            },
        )
        .await
        .unwrap();
        repo.put_log_piece("db", "t1", p(1, 5), b"abc".to_vec(), 3)
            .await
            .unwrap();
        repo.put_log_piece("db", "t1", p(5, 9), b"def".to_vec(), 0)
            .await
            .unwrap();
        assert_eq!(
            repo.read_log_piece("db", "t1", p(5, 9)).await.unwrap(),
            b"def"
        );
        assert_eq!(
            repo.list_log_pieces("db", "t1", 4, 100).await.unwrap(),
            vec![p(1, 5), p(5, 9)]
        );
        assert_eq!(
            repo.list_log_pieces("db", "t1", 5, 100).await.unwrap(),
            vec![p(5, 9)]
        );
        // A piece renamed by hand does not authenticate.
        let obj = store
            .get(&piece_key("db", "t1", p(1, 5)).as_str().into())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        store
            .put(
                &piece_key("db", "t1", p(1, 6)).as_str().into(),
                object_store::PutPayload::from(obj),
            )
            .await
            .unwrap();
        assert!(matches!(
            repo.read_log_piece("db", "t1", p(1, 6)).await,
            Err(Error::CorruptObject { .. })
        ));
        let mut np = NodeProgress {
            node: "1".into(),
            ..Default::default()
        };
        np.tablets.insert(
            "t1".into(),
            TabletProgress {
                covered: 12,
                ..Default::default()
            },
        );
        repo.put_node_progress("db", &np).await.unwrap();
        assert_eq!(repo.list_node_progress("db").await.unwrap(), vec![np]);
        assert_eq!(repo.delete_log_pieces_before("db", 6).await.unwrap(), 2);
        assert_eq!(
            repo.list_log_pieces("db", "t1", 0, 100).await.unwrap(),
            vec![p(5, 9)]
        );
    }
}
