//! Restore: streams every file of a committed backup back to a target directory, fetching
//! chunks with bounded concurrency and verifying each one (decrypt + re-hash) before a byte
//! of it is written.
//!
//! It must never write outside the target directory: names that are absolute, contain `..`
//! (or `.`/empty components), or whose way passes through a symlink inside the target are
//! refused with `Error::UnsafePath`. Files are written to a temporary name beside their final
//! one and renamed into place only when complete and verified, so a failed restore leaves no
//! half-written file under the real name — which lets a restore interrupted by a crash resume
//! (`RestoreOptions::keep_verified`): a file already in place is kept only if its content
//! hashes to the entry's chunk ids, never on its name or size alone.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use futures::StreamExt;

use crate::error::{Error, Result};
use crate::ids::{BackupId, ChunkId};
use crate::manifest::{ChunkRef, Entry, EntryKind, ManifestReader};
use crate::repo::Repository;

/// Restore tuning.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// Chunks downloaded at once per file.
    pub concurrency: usize,
    /// Keep a file already at its place in the target when its size matches and its content
    /// hashes to the entry's chunk ids (what an interrupted restore into the same target
    /// left): read and hashed locally instead of downloaded. Files whose chunk references
    /// cannot be checked that way (small files packed with others) are downloaded again.
    pub keep_verified: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            concurrency: 8,
            keep_verified: false,
        }
    }
}

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RestoreStats {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// Files (and their bytes) found verified in place and kept (`keep_verified`).
    pub files_kept: u64,
    pub bytes_kept: u64,
    pub duration_ms: u64,
}

impl RestoreStats {
    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.duration_ms)
    }
}

/// Checks a manifest path: relative, `/`-separated, no `..`, `.`, empty or NUL components.
pub fn check_rel_path(path: &str) -> Result<Vec<&str>> {
    let unsafe_path = || Error::UnsafePath {
        path: path.to_string(),
    };
    if path.is_empty() || path.starts_with('/') || path.contains('\0') || path.contains('\\') {
        return Err(unsafe_path());
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(unsafe_path());
    }
    Ok(parts)
}

/// Resolves `rel` under `target`, creating missing parent directories, refusing any
/// component that already exists as a symlink. Returns the final path (not created).
fn prepare_path(target: &Path, rel: &str) -> Result<PathBuf> {
    let parts = check_rel_path(rel)?;
    let unsafe_path = || Error::UnsafePath {
        path: rel.to_string(),
    };
    let mut current = target.to_path_buf();
    let (last, parents) = parts.split_last().expect("non-empty");
    for part in parents {
        current.push(part);
        match std::fs::symlink_metadata(&current) {
            Ok(m) if m.file_type().is_symlink() => return Err(unsafe_path()),
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::io(
                    &current,
                    std::io::Error::other("exists and is not a directory"),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&current).map_err(|e| Error::io(&current, e))?;
            }
            Err(e) => return Err(Error::io(&current, e)),
        }
    }
    current.push(last);
    if let Ok(m) = std::fs::symlink_metadata(&current) {
        if m.file_type().is_symlink() {
            return Err(unsafe_path());
        }
    }
    Ok(current)
}

/// Keeps the last few packs so consecutive small files do not refetch them.
#[derive(Default)]
pub(crate) struct PackCache {
    entries: Mutex<Vec<(ChunkId, Arc<Vec<u8>>)>>,
}

impl PackCache {
    const CAPACITY: usize = 4;

    fn get(&self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        self.entries
            .lock()
            .expect("cache")
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, d)| d.clone())
    }

    fn put(&self, id: ChunkId, data: Arc<Vec<u8>>) {
        let mut e = self.entries.lock().expect("cache");
        if e.len() >= Self::CAPACITY {
            e.remove(0);
        }
        e.push((id, data));
    }
}

pub(crate) async fn fetch(
    repo: &Repository,
    cache: &PackCache,
    r: &ChunkRef,
) -> Result<(Arc<Vec<u8>>, usize, usize)> {
    let data = match cache.get(&r.id) {
        Some(d) => d,
        None => {
            let d = Arc::new(repo.read_chunk(&r.id).await?);
            if r.offset != 0 || r.len != d.len() as u64 {
                cache.put(r.id, d.clone());
            }
            d
        }
    };
    let (start, end) = (r.offset as usize, r.offset.saturating_add(r.len) as usize);
    if end > data.len() {
        return Err(Error::corrupt(
            r.id.object_key(),
            format!(
                "manifest wants bytes {start}..{end} of a {}-byte chunk",
                data.len()
            ),
        ));
    }
    Ok((data, start, end))
}

/// Restores every entry of `backup` under `target` (created if missing).
pub async fn restore_backup(
    repo: &Arc<Repository>,
    backup: &BackupId,
    target: &Path,
) -> Result<RestoreStats> {
    restore_backup_with(repo, backup, target, RestoreOptions::default()).await
}

pub async fn restore_backup_with(
    repo: &Arc<Repository>,
    backup: &BackupId,
    target: &Path,
    opts: RestoreOptions,
) -> Result<RestoreStats> {
    let root = repo.read_root(backup).await?;
    restore_root(repo, &root, target, opts).await
}

/// Restores the entries of the pages listed in `root` under `target`. A caller may pass a
/// copy of a backup's ROOT with only some of its pages (one writer's part, e.g. one tablet)
/// to restore just those files.
pub async fn restore_root(
    repo: &Arc<Repository>,
    root: &crate::manifest::Root,
    target: &Path,
    opts: RestoreOptions,
) -> Result<RestoreStats> {
    let started = Instant::now();
    let backup = &root.backup_id;
    std::fs::create_dir_all(target).map_err(|e| Error::io(target, e))?;
    let target = target.canonicalize().map_err(|e| Error::io(target, e))?;
    let mut reader = ManifestReader::new(repo.clone(), root);
    let cache = PackCache::default();
    let mut stats = RestoreStats::default();
    while let Some(entry) = reader.next_entry().await? {
        match entry.kind {
            EntryKind::Dir => {
                let path = prepare_path(&target, &entry.path)?;
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    _ => std::fs::create_dir(&path).map_err(|e| Error::io(&path, e))?,
                }
                set_mode(&path, entry.mode)?;
                stats.dirs += 1;
            }
            EntryKind::File => {
                if opts.keep_verified && keep_if_verified(repo, &target, &entry).await? {
                    stats.files_kept += 1;
                    stats.bytes_kept += entry.size;
                } else {
                    restore_file(repo, &cache, &target, &entry, opts.concurrency).await?;
                }
                stats.files += 1;
                stats.bytes += entry.size;
            }
        }
    }
    stats.duration_ms = started.elapsed().as_millis() as u64;
    tracing::info!(backup = %backup, files = stats.files, bytes = stats.bytes, "restored backup");
    Ok(stats)
}

/// Whether the file of `entry` is already in place, whole and verified: then its mode and
/// time are set again and true returned. Any doubt (missing, other size, a packed chunk
/// reference, a hash that differs, a read error) is false: restore it.
async fn keep_if_verified(repo: &Arc<Repository>, target: &Path, entry: &Entry) -> Result<bool> {
    let dest = prepare_path(target, &entry.path)?;
    if entry.chunks.is_empty() || entry.chunks.iter().any(|c| c.offset != 0) {
        return Ok(false);
    }
    let keys = repo.keys().clone();
    let chunks = entry.chunks.clone();
    let size = entry.size;
    let (mode, mtime) = (
        entry.mode,
        UNIX_EPOCH + Duration::new(entry.mtime.max(0) as u64, entry.mtime_nsec.min(999_999_999)),
    );
    tokio::task::spawn_blocking(move || {
        let verified = (|| -> std::io::Result<bool> {
            let m = std::fs::symlink_metadata(&dest)?;
            if !m.is_file() || m.len() != size {
                return Ok(false);
            }
            let mut f = std::fs::File::open(&dest)?;
            let mut buf = Vec::new();
            for c in &chunks {
                buf.clear();
                buf.resize(c.len as usize, 0);
                f.read_exact(&mut buf)?;
                if keys.chunk_id(&buf) != c.id {
                    return Ok(false);
                }
            }
            Ok(true)
        })()
        .unwrap_or(false);
        if verified {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&dest)
                .map_err(|e| Error::io(&dest, e))?;
            f.set_modified(mtime).map_err(|e| Error::io(&dest, e))?;
            set_mode(&dest, mode)?;
        }
        Ok(verified)
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))?
}

async fn restore_file(
    repo: &Arc<Repository>,
    cache: &PackCache,
    target: &Path,
    entry: &Entry,
    concurrency: usize,
) -> Result<()> {
    let dest = prepare_path(target, &entry.path)?;
    let file_name = dest
        .file_name()
        .expect("has a name")
        .to_string_lossy()
        .into_owned();
    let tmp = dest.with_file_name(format!(".{file_name}.snapfleet-partial"));
    let result = async {
        let _ = std::fs::remove_file(&tmp);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        let mut written = 0u64;
        // Owned refs: a closure over `&ChunkRef` makes this future not `Send` for callers
        // that spawn it (higher-ranked lifetime inference).
        let mut chunks = futures::stream::iter(entry.chunks.clone())
            .map(|r: ChunkRef| async move { fetch(repo, cache, &r).await })
            .buffered(concurrency.max(1));
        while let Some(piece) = chunks.next().await {
            let (data, start, end) = piece?;
            out.write_all(&data[start..end])
                .map_err(|e| Error::io(&tmp, e))?;
            written += (end - start) as u64;
        }
        if written != entry.size {
            return Err(Error::corrupt(
                format!("manifest of {}", entry.path),
                format!("chunks hold {written} bytes, entry says {}", entry.size),
            ));
        }
        out.flush().map_err(|e| Error::io(&tmp, e))?;
        let mtime = UNIX_EPOCH
            + Duration::new(entry.mtime.max(0) as u64, entry.mtime_nsec.min(999_999_999));
        out.set_modified(mtime).map_err(|e| Error::io(&tmp, e))?;
        drop(out);
        set_mode(&tmp, entry.mode)?;
        std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Keep the owner able to read and write what it restored; never restore setuid/setgid bits.
    let mode = (mode & 0o777) | 0o600;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_names_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/.",
            "a\\b",
            "a\0b",
            "a/",
        ] {
            assert!(
                matches!(check_rel_path(bad), Err(Error::UnsafePath { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(check_rel_path("a/b.c/d").unwrap(), vec!["a", "b.c", "d"]);
        assert!(check_rel_path("..a/b..").is_ok());
    }

    #[test]
    fn symlinks_in_the_target_are_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), target.path().join("link")).unwrap();
        assert!(matches!(
            prepare_path(target.path(), "link/evil"),
            Err(Error::UnsafePath { .. })
        ));
        assert!(matches!(
            prepare_path(target.path(), "link"),
            Err(Error::UnsafePath { .. })
        ));
        let ok = prepare_path(target.path(), "a/b/c").unwrap();
        assert_eq!(ok, target.path().join("a/b/c"));
        assert!(target.path().join("a/b").is_dir());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
