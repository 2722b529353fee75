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

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::{OnceCell, Semaphore};

use crate::error::{Error, Result};
use crate::ids::{BackupId, ChunkId};
use crate::manifest::{ChunkRef, Entry, EntryKind, ManifestReader};
use crate::repo::Repository;

/// Restore tuning.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// Chunks of multi-chunk files downloaded (or waiting to be written) at once, across all
    /// the files being restored.
    pub concurrency: usize,
    /// Keep a file already at its place in the target when its size matches and its content
    /// hashes to the entry's chunk ids (what an interrupted restore into the same target
    /// left): read and hashed locally instead of downloaded. Files whose chunk references
    /// cannot be checked that way (small files packed with others) are downloaded again.
    pub keep_verified: bool,
    /// Make everything restored durable before returning success (one `syncfs` of the
    /// target's file system: every file's data and every directory entry), so that a step
    /// that depends on the restore (an activation) never sees files a crash can lose.
    pub sync: bool,
    /// Stops the restore: no new entry starts, downloads under way (and their retries) are
    /// dropped with their half-written temporary files, and it returns `Error::Cancelled`
    /// at once. Files already finished stay. The default never fires.
    pub cancel: tokio_util::sync::CancellationToken,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            concurrency: 8,
            keep_verified: false,
            sync: false,
            cancel: tokio_util::sync::CancellationToken::new(),
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
                // Another file of the same directory may create it at the same moment.
                make_dir(&current, rel)?;
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

/// Recently used packs (chunks that hold several small files), so that restoring the
/// files of one pack downloads it once. Single-flight: concurrent restores of files in the
/// same pack wait for one download instead of each starting their own.
#[derive(Default)]
pub(crate) struct PackCache {
    entries: Mutex<VecDeque<(ChunkId, PackCell)>>,
}

/// A pack's plaintext, downloaded once by whoever asks first.
type PackCell = Arc<OnceCell<Arc<Vec<u8>>>>;

/// Refs shorter than this may be slices of a pack (the writer's default small-file threshold).
const PACKED_MAX: u64 = 512 << 10;

impl PackCache {
    const CAPACITY: usize = 8;

    fn cell(&self, id: &ChunkId) -> PackCell {
        let mut e = self.entries.lock().expect("cache");
        if let Some((_, c)) = e.iter().find(|(i, _)| i == id) {
            return c.clone();
        }
        if e.len() >= Self::CAPACITY {
            e.pop_front();
        }
        let c = Arc::new(OnceCell::new());
        e.push_back((*id, c.clone()));
        c
    }
}

pub(crate) async fn fetch(
    repo: &Repository,
    cache: &PackCache,
    r: &ChunkRef,
) -> Result<(Arc<Vec<u8>>, usize, usize)> {
    // Slices of packs go through the cache (a pack's first file starts at offset 0, but no
    // packed file reaches the writer's default small-file threshold). A large file's chunks
    // under that size (its last one, or small ones) pass through it too, harmlessly; with a
    // larger writer threshold a pack's first file may download the pack once more.
    let data = if r.offset != 0 || r.len < PACKED_MAX {
        cache
            .cell(&r.id)
            .get_or_try_init(|| async { repo.read_chunk(&r.id).await.map(Arc::new) })
            .await?
            .clone()
    } else {
        Arc::new(repo.read_chunk(&r.id).await?)
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
    let ctx = Ctx {
        repo,
        cache: PackCache::default(),
        target: &target,
        downloads: Arc::new(Semaphore::new(opts.concurrency.max(1))),
        read_ahead: opts.concurrency.max(1),
        keep_verified: opts.keep_verified,
        stopped: AtomicBool::new(false),
    };
    let entries = futures::stream::try_unfold(
        ManifestReader::new(repo.clone(), root),
        |mut r| async move { Ok(r.next_entry().await?.map(|e| (e, r))) },
    );
    let mut entries = std::pin::pin!(entries);
    let mut inflight = FuturesUnordered::new();
    let mut exhausted = false;
    let mut first_err = None;
    let mut stats = RestoreStats::default();
    loop {
        let want_more = !exhausted && first_err.is_none() && inflight.len() < FILES_AT_ONCE;
        // Both at once: entries under way keep going while the next manifest page loads.
        tokio::select! {
            next = entries.try_next(), if want_more => match next {
                Ok(Some(entry)) => inflight.push(restore_entry(&ctx, entry)),
                Ok(None) => exhausted = true,
                Err(e) => {
                    ctx.stopped.store(true, Ordering::Relaxed);
                    first_err = Some(e);
                }
            },
            done = inflight.next(), if !inflight.is_empty() => match done.expect("non-empty") {
                // After an error no new entry starts and multi-chunk files stop at their next
                // chunk, but every one under way ends (its partial file removed) before this
                // returns.
                Err(e) => {
                    ctx.stopped.store(true, Ordering::Relaxed);
                    first_err.get_or_insert(e);
                }
                Ok(Restored::Dir) => stats.dirs += 1,
                Ok(Restored::File { size, kept }) => {
                    stats.files += 1;
                    stats.bytes += size;
                    if kept {
                        stats.files_kept += 1;
                        stats.bytes_kept += size;
                    }
                }
            },
            _ = opts.cancel.cancelled(), if want_more || !inflight.is_empty() => {
                // Drops every entry under way with its requests in flight.
                return Err(Error::Cancelled {
                    what: format!("restore of backup {backup}"),
                });
            }
            else => break,
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    if opts.sync {
        let t = target.clone();
        blocking(move || sync_file_system(&t)).await?;
    }
    stats.duration_ms = started.elapsed().as_millis() as u64;
    tracing::info!(backup = %backup, files = stats.files, bytes = stats.bytes, "restored backup");
    Ok(stats)
}

/// Entries restored at once. Small files are latency-bound (one pack slice, a create, a
/// rename each), so several run side by side. Memory: `Ctx::downloads` chunks of
/// multi-chunk files, plus one chunk per single-chunk file under way, plus the pack cache.
/// Measured: 4 at once restore the bench's mixed tree 1.6× faster than 1 on tmpfs; more
/// only spin on the target directory's lock on ext4.
const FILES_AT_ONCE: usize = 4;

struct Ctx<'a> {
    repo: &'a Arc<Repository>,
    cache: PackCache,
    target: &'a Path,
    /// Chunks of multi-chunk files downloaded or waiting to be written, across all files
    /// (each piece holds a permit until it is on disk). A file takes its permits in chunk
    /// order before starting each download, so its next chunk to write always holds one:
    /// no file can wait for a permit held by its own later chunks or another's.
    downloads: Arc<Semaphore>,
    read_ahead: usize,
    keep_verified: bool,
    /// Set on the first error: multi-chunk files stop at their next chunk.
    stopped: AtomicBool,
}

enum Restored {
    Dir,
    File { size: u64, kept: bool },
}

async fn restore_entry(ctx: &Ctx<'_>, entry: Entry) -> Result<Restored> {
    match entry.kind {
        EntryKind::Dir => {
            let target = ctx.target.to_path_buf();
            blocking(move || {
                let path = prepare_path(&target, &entry.path)?;
                make_dir(&path, &entry.path)?;
                set_mode(&path, entry.mode | 0o700)
            })
            .await?;
            Ok(Restored::Dir)
        }
        EntryKind::File => {
            let size = entry.size;
            let kept = ctx.keep_verified && keep_if_verified(ctx.repo, ctx.target, &entry).await?;
            if !kept {
                restore_file(ctx, entry).await?;
            }
            Ok(Restored::File { size, kept })
        }
    }
}

/// Runs blocking file-system work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

/// Creates directory `path` (manifest path `rel`) unless a directory is already there; a
/// symlink in its place is refused.
fn make_dir(path: &Path, rel: &str) -> Result<()> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_symlink() => Err(Error::UnsafePath {
                    path: rel.to_string(),
                }),
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(Error::io(
                    path,
                    std::io::Error::other("exists and is not a directory"),
                )),
                Err(e) => Err(Error::io(path, e)),
            }
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

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

/// Writes one file as `.<name>.snapfleet-partial` next to its place and renames it there
/// when it is whole: chunks downloaded `read_ahead` ahead, written in order.
async fn restore_file(ctx: &Ctx<'_>, entry: Entry) -> Result<()> {
    let target = ctx.target.to_path_buf();
    if entry.chunks.len() <= 1 {
        // One blocking hop per small file: create, write, finish.
        let piece = match entry.chunks.first() {
            Some(r) => Some(fetch(ctx.repo, &ctx.cache, r).await?),
            None => None,
        };
        return blocking(move || {
            let mut p = Partial::create(&target, &entry.path, entry.size)?;
            if let Some((data, start, end)) = piece {
                p.write(&data[start..end])?;
            }
            p.finish(&entry)
        })
        .await;
    }
    let rel = entry.path.clone();
    let size = entry.size;
    let mut p = blocking(move || Partial::create(&target, &rel, size)).await?;
    // Up to `read_ahead` chunks downloading ahead of the one being written, each holding a
    // permit of `ctx.downloads`. A file waits for a permit only when it has none in flight;
    // otherwise it takes one only if free. So every permit belongs to a file whose next chunk
    // to write is downloading, and no file can wait on permits that cannot be released.
    let mut chunks = entry.chunks.iter();
    let mut pending = chunks.next();
    let mut pieces = FuturesOrdered::new();
    loop {
        while let Some(r) = pending.filter(|_| pieces.len() < ctx.read_ahead) {
            let permit = if pieces.is_empty() {
                ctx.downloads
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore open")
            } else {
                match ctx.downloads.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => break,
                }
            };
            let r = r.clone();
            pieces.push_back(
                async move { fetch(ctx.repo, &ctx.cache, &r).await.map(|d| (d, permit)) },
            );
            pending = chunks.next();
        }
        let Some(piece) = pieces.next().await else {
            break;
        };
        if ctx.stopped.load(Ordering::Relaxed) {
            return Err(Error::Task(format!(
                "restore of {} stopped after another file failed",
                entry.path
            )));
        }
        let ((data, start, end), permit) = piece?;
        p = blocking(move || {
            p.write(&data[start..end])?;
            drop(permit);
            Ok(p)
        })
        .await?;
    }
    blocking(move || p.finish(&entry)).await
}

/// A file being restored under a temporary name; removed on drop unless finished.
struct Partial {
    dest: PathBuf,
    tmp: PathBuf,
    file: Option<std::fs::File>,
    written: u64,
    /// The size the manifest declares: nothing beyond it is written, so a forged manifest
    /// whose chunks hold more cannot fill the disk.
    expected: u64,
}

impl Partial {
    fn create(target: &Path, rel: &str, expected: u64) -> Result<Partial> {
        let dest = prepare_path(target, rel)?;
        let file_name = dest
            .file_name()
            .expect("has a name")
            .to_string_lossy()
            .into_owned();
        let tmp = dest.with_file_name(format!(".{file_name}.snapfleet-partial"));
        let _ = std::fs::remove_file(&tmp);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        Ok(Partial {
            dest,
            tmp,
            file: Some(file),
            written: 0,
            expected,
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        if self.written.saturating_add(data.len() as u64) > self.expected {
            return Err(Error::corrupt(
                format!("manifest entry {}", self.dest.display()),
                format!(
                    "its chunks hold more than the {} bytes it declares; nothing past them was \
                     written",
                    self.expected
                ),
            ));
        }
        let f = self.file.as_mut().expect("open until finished");
        f.write_all(data).map_err(|e| Error::io(&self.tmp, e))?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Checks the size, sets mtime and mode, and renames the file into place.
    fn finish(mut self, entry: &Entry) -> Result<()> {
        if self.written != entry.size {
            return Err(Error::corrupt(
                format!("manifest of {}", entry.path),
                format!(
                    "chunks hold {} bytes, entry says {}",
                    self.written, entry.size
                ),
            ));
        }
        let mut f = self.file.take().expect("open until finished");
        f.flush().map_err(|e| Error::io(&self.tmp, e))?;
        let mtime = UNIX_EPOCH
            + Duration::new(entry.mtime.max(0) as u64, entry.mtime_nsec.min(999_999_999));
        f.set_modified(mtime).map_err(|e| Error::io(&self.tmp, e))?;
        drop(f);
        set_mode(&self.tmp, entry.mode)?;
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
        self.tmp = PathBuf::new(); // nothing to clean up
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            drop(self.file.take());
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Flushes the file system holding `dir` (data and metadata of every file and directory on
/// it) with one `syncfs`: cheaper than an fsync per file for thousands of restored files.
fn sync_file_system(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let d = std::fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
    // SAFETY: `d` is an open descriptor for the duration of the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(Error::io(dir, std::io::Error::last_os_error()));
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Keep the owner able to read and write what it restored; never restore setuid/setgid
    // bits. Directories also get owner x from their caller (0o700): with a stored mode
    // without it, restoring their files failed for a non-root user whenever the directory's
    // mode was set first.
    let mode = (mode & 0o777) | 0o600;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_never_grows_past_its_declared_size() {
        // A forged manifest entry whose chunks hold more than it declares: the excess is
        // refused before it is written, and the partial file goes on drop.
        let dir = tempfile::tempdir().unwrap();
        let mut p = Partial::create(dir.path(), "f", 4).unwrap();
        p.write(b"1234").unwrap();
        let e = p.write(b"5").unwrap_err();
        assert!(e.to_string().contains("more than the 4 bytes"), "{e}");
        let tmp = p.tmp.clone();
        assert_eq!(std::fs::metadata(&tmp).unwrap().len(), 4);
        drop(p);
        assert!(!tmp.exists() && !dir.path().join("f").exists());
    }

    #[test]
    fn sync_flushes_the_target_file_system() {
        let dir = tempfile::tempdir().unwrap();
        sync_file_system(dir.path()).unwrap();
        assert!(sync_file_system(&dir.path().join("missing")).is_err());
    }

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
