//! `Repository`: an opened repository — the store, the unlocked keys, and the verified object
//! I/O every other module goes through (chunks, pages, ROOTs, `snapfleet-repo.json`).
//!
//! It must never return bytes that did not authenticate and hash to their id, never write a
//! chunk under a name that is not the keyed hash of its content, and never rewrite data when
//! keys change (key slots wrap the master key; data is encrypted under keys derived from it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::chunk::{open_chunk, seal_chunk};
use crate::chunker::ChunkerParams;
use crate::crypto::{Keys, MasterKey, MIN_OBJECT_LEN};
use crate::error::{Error, Result};
use crate::format::{KdfParams, KeyInfo, KeySlot, RepoConfig, CONFIG_KEY};
use crate::ids::{ChunkId, KeyId};
use crate::layers::RetryConfig;

/// Settings for a new repository.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    pub kdf: KdfParams,
    pub chunker: ChunkerParams,
}

/// An opened (unlocked) repository. Share it as `Arc<Repository>`.
pub struct Repository {
    store: Arc<dyn ObjectStore>,
    config: RepoConfig,
    key_id: KeyId,
    master: MasterKey,
    keys: Keys,
    /// Chunk ids known to exist, with their stored size: the writers' dedup cache. Trusted
    /// only while this process holds a writer lease (`writer_leases` > 0): see `lease.rs`.
    known: Mutex<HashMap<ChunkId, u64>>,
    /// Writer leases this process holds on this repository now.
    writer_leases: std::sync::atomic::AtomicUsize,
    /// Re-reads an object whose body failed mid-transfer (the retry layer covers requests).
    body_retry: RetryConfig,
    body_retries: AtomicU64,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("store", &self.store.to_string())
            .field("repo_id", &self.config.repo_id)
            .finish()
    }
}

/// What `key_id` answers for an unencrypted repository (it has no key slots).
fn unencrypted_key_id() -> KeyId {
    KeyId("none".into())
}

/// The largest object of each kind a reader accepts. Objects come from the bucket, so their
/// size is checked before it becomes an allocation; each limit is far above what snapfleet
/// writes and far below what would exhaust a host.
pub(crate) mod limits {
    const MIB: u64 = 1 << 20;
    /// `snapfleet-repo.json`: a few key slots.
    pub const CONFIG: u64 = MIB;
    /// A chunk or a pack of small files: the decompression cap (256 MiB) plus the header.
    pub const CHUNK: u64 = 256 * MIB + MIB;
    /// ROOT, manifest pages, archive metadata: JSON, sealed.
    pub const META: u64 = 64 * MIB;
    /// A writer lease (plain JSON).
    pub const LEASE: u64 = MIB;
    /// One archived change-log piece (cut at 8 MiB of records, plus a tablet's last batch).
    pub const LOG_PIECE: u64 = 256 * MIB + MIB;
    /// Chunk ids a process's dedup cache holds at most (~40 MiB): beyond it, existence is
    /// asked of the store (a HEAD per chunk) instead of growing without bound.
    pub const KNOWN_CHUNKS: usize = 1 << 20;
}

fn oversized(key: &str, size: u64, max: u64) -> Error {
    Error::corrupt(
        key,
        format!(
            "it is {size} bytes, more than the {max} an object of its kind may have (replaced \
             or damaged in the bucket; nothing was read)"
        ),
    )
}

fn path(key: &str) -> Path {
    Path::from(key)
}

impl Repository {
    /// Creates a repository in an empty location, with one key slot for `passphrase`.
    pub async fn init(
        store: Arc<dyn ObjectStore>,
        passphrase: &[u8],
        opts: InitOptions,
    ) -> Result<Self> {
        Self::refuse_existing(&store).await?;
        let master = MasterKey::generate();
        let pass = passphrase.to_vec();
        let m = master.clone();
        let config =
            tokio::task::spawn_blocking(move || RepoConfig::new(&m, &pass, opts.kdf, opts.chunker))
                .await
                .map_err(|e| Error::Task(e.to_string()))??;
        store
            .put(&path(CONFIG_KEY), PutPayload::from(config.to_json()))
            .await
            .map_err(|e| Error::store("put", CONFIG_KEY, e))?;
        let key_id = config.keys[0].id.clone();
        tracing::info!(repo_id = %config.repo_id, store = %store, "initialised repository");
        Ok(Self::from_parts(store, config, key_id, master))
    }

    /// Creates an unencrypted repository (`repo init --encryption none`): objects are stored
    /// in the clear with a checksum, no passphrase opens or guards it. For stores that
    /// encrypt at rest themselves, and for measuring the pipeline without the cipher.
    pub async fn init_unencrypted(
        store: Arc<dyn ObjectStore>,
        chunker: ChunkerParams,
    ) -> Result<Self> {
        Self::refuse_existing(&store).await?;
        let master = MasterKey::generate();
        let config = RepoConfig::new_unencrypted(&master, chunker)?;
        store
            .put(&path(CONFIG_KEY), PutPayload::from(config.to_json()))
            .await
            .map_err(|e| Error::store("put", CONFIG_KEY, e))?;
        tracing::info!(repo_id = %config.repo_id, store = %store, "initialised unencrypted repository");
        Ok(Self::from_parts(
            store,
            config,
            unencrypted_key_id(),
            master,
        ))
    }

    /// Opens an existing encrypted repository; `Error::WrongPassphrase` when no key slot
    /// opens. An unencrypted repository is refused (`Error::UnexpectedlyUnencrypted`): whoever
    /// holds a passphrase expects encryption, and a description swapped for an unencrypted
    /// one by someone with write access to the bucket must not make them write in the clear.
    pub async fn open(store: Arc<dyn ObjectStore>, passphrase: &[u8]) -> Result<Self> {
        let config = Self::load_config(&store).await?;
        if config.unencrypted_key.is_some() {
            return Err(Error::UnexpectedlyUnencrypted {
                location: store.to_string(),
            });
        }
        let pass = passphrase.to_vec();
        let c = config.clone();
        let (key_id, master) = tokio::task::spawn_blocking(move || c.unlock(&pass))
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
        Ok(Self::from_parts(store, config, key_id, master))
    }

    /// Opens an unencrypted repository (no passphrase); an encrypted one is
    /// `Error::PassphraseRequired`.
    pub async fn open_without_passphrase(store: Arc<dyn ObjectStore>) -> Result<Self> {
        let config = Self::load_config(&store).await?;
        match config.unencrypted_master()? {
            Some(master) => Ok(Self::from_parts(
                store,
                config,
                unencrypted_key_id(),
                master,
            )),
            None => Err(Error::PassphraseRequired {
                location: store.to_string(),
            }),
        }
    }

    /// Whether objects are encrypted (false for `--encryption none`).
    pub fn is_encrypted(&self) -> bool {
        self.keys.encrypts()
    }

    async fn refuse_existing(store: &Arc<dyn ObjectStore>) -> Result<()> {
        match store.head(&path(CONFIG_KEY)).await {
            Ok(_) => Err(Error::AlreadyInitialized {
                location: store.to_string(),
            }),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::store("head", CONFIG_KEY, e)),
        }
    }

    fn from_parts(
        store: Arc<dyn ObjectStore>,
        config: RepoConfig,
        key_id: KeyId,
        master: MasterKey,
    ) -> Self {
        let keys = if config.unencrypted_key.is_some() {
            Keys::derive_unencrypted(&master)
        } else {
            Keys::derive(&master)
        };
        Repository {
            store,
            keys,
            config,
            key_id,
            master,
            known: Mutex::new(HashMap::new()),
            writer_leases: std::sync::atomic::AtomicUsize::new(0),
            body_retry: RetryConfig::default(),
            body_retries: AtomicU64::new(0),
        }
    }

    async fn load_config(store: &Arc<dyn ObjectStore>) -> Result<RepoConfig> {
        let bytes = match store.get(&path(CONFIG_KEY)).await {
            Ok(r) if r.meta.size > limits::CONFIG => {
                return Err(oversized(CONFIG_KEY, r.meta.size, limits::CONFIG))
            }
            Ok(r) => r
                .bytes()
                .await
                .map_err(|e| Error::store("get", CONFIG_KEY, e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::NotARepository {
                    location: store.to_string(),
                })
            }
            Err(e) => return Err(Error::store("get", CONFIG_KEY, e)),
        };
        RepoConfig::parse(&bytes)
    }

    /// The parsed `snapfleet-repo.json` (as of open or the last key change).
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The key slot this handle was opened with.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Adds a key slot for `new_passphrase`; data is not touched.
    pub async fn add_key(&mut self, new_passphrase: &[u8], kdf: KdfParams) -> Result<KeyId> {
        self.refuse_unencrypted()?;
        let mut config = Self::load_config(&self.store).await?;
        let (repo_id, master, pass) = (
            config.repo_id.clone(),
            self.master.clone(),
            new_passphrase.to_vec(),
        );
        let slot =
            tokio::task::spawn_blocking(move || KeySlot::create(&repo_id, &master, &pass, kdf))
                .await
                .map_err(|e| Error::Task(e.to_string()))??;
        let id = slot.id.clone();
        config.keys.push(slot);
        self.save_config(config).await?;
        Ok(id)
    }

    fn refuse_unencrypted(&self) -> Result<()> {
        if self.is_encrypted() {
            Ok(())
        } else {
            Err(Error::NotEncrypted {
                location: self.store.to_string(),
            })
        }
    }

    /// The key slots (no key material).
    pub fn list_keys(&self) -> Vec<KeyInfo> {
        self.config.keys.iter().map(KeySlot::info).collect()
    }

    /// Removes a key slot; refuses to remove the last one.
    pub async fn remove_key(&mut self, id: &KeyId) -> Result<()> {
        self.refuse_unencrypted()?;
        let mut config = Self::load_config(&self.store).await?;
        let before = config.keys.len();
        if !config.keys.iter().any(|k| &k.id == id) {
            return Err(Error::KeyNotFound { id: id.to_string() });
        }
        if before == 1 {
            return Err(Error::LastKey { id: id.to_string() });
        }
        config.keys.retain(|k| &k.id != id);
        self.save_config(config).await
    }

    async fn save_config(&mut self, config: RepoConfig) -> Result<()> {
        self.store
            .put(&path(CONFIG_KEY), PutPayload::from(config.to_json()))
            .await
            .map_err(|e| Error::store("put", CONFIG_KEY, e))?;
        self.config = config;
        Ok(())
    }

    /// Reads a whole object of at most `max` bytes, retrying a body that fails mid-transfer.
    /// The size the store reports is checked before any of the body is read, and the body
    /// again after: an oversized object in the bucket is a clear error, never an allocation
    /// of whatever size it claims.
    ///
    /// One budget per operation: the request itself is retried by the store's retry layer
    /// only (the S3 client's own retries are off, see `store.rs`), so a failed request is
    /// final here; only a body that breaks after a successful request is read again.
    pub(crate) async fn get_bytes(&self, key: &str, max: u64) -> Result<Bytes> {
        enum Final {
            Oversized(u64),
            Request(object_store::Error),
        }
        let p = path(key);
        let got = self
            .body_retry
            .run("get body", &self.body_retries, || async {
                let r = match self.store.get(&p).await {
                    Ok(r) => r,
                    Err(e) => return Ok(Err(Final::Request(e))),
                };
                if r.meta.size > max {
                    return Ok(Err(Final::Oversized(r.meta.size)));
                }
                let bytes = r.bytes().await?;
                Ok(if bytes.len() as u64 > max {
                    Err(Final::Oversized(bytes.len() as u64))
                } else {
                    Ok(bytes)
                })
            })
            .await
            .map_err(|e| Error::store("get", key, e))?;
        got.map_err(|f| match f {
            Final::Oversized(size) => oversized(key, size, max),
            Final::Request(e) => Error::store("get", key, e),
        })
    }

    pub(crate) async fn put_bytes(&self, key: &str, data: Vec<u8>) -> Result<()> {
        self.put_payload(key, PutPayload::from(data)).await
    }

    pub(crate) async fn put_payload(&self, key: &str, payload: PutPayload) -> Result<()> {
        self.store
            .put(&path(key), payload)
            .await
            .map_err(|e| Error::store("put", key, e))?;
        Ok(())
    }

    /// Size of an object, or `None` if it does not exist.
    pub(crate) async fn head_size(&self, key: &str) -> Result<Option<u64>> {
        match self.store.head(&path(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::store("head", key, e)),
        }
    }

    /// Metadata of an object (size, store-clock modification time), or `None` if absent.
    pub(crate) async fn head_meta(&self, key: &str) -> Result<Option<object_store::ObjectMeta>> {
        match self.store.head(&path(key)).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::store("head", key, e)),
        }
    }

    /// Deletes an object; one that is already gone counts as deleted.
    pub(crate) async fn delete_object(&self, key: &str) -> Result<()> {
        match self.store.delete(&path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::store("delete", key, e)),
        }
        if let Ok(id) = key
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .parse::<ChunkId>()
        {
            self.known.lock().expect("cache lock").remove(&id);
        }
        Ok(())
    }

    /// Whether a chunk is known to exist (cache first, then a HEAD); its stored size if so.
    /// An object too small to be a sealed chunk counts as absent, so it gets rewritten.
    pub(crate) async fn chunk_exists(&self, id: &ChunkId) -> Result<Option<u64>> {
        if self.writer_leases.load(Ordering::Acquire) > 0 {
            if let Some(size) = self.known.lock().expect("cache lock").get(id) {
                return Ok(Some(*size));
            }
        }
        match self.head_size(&id.object_key()).await? {
            Some(size) if size >= MIN_OBJECT_LEN as u64 => {
                self.remember_chunk(*id, size);
                Ok(Some(size))
            }
            _ => Ok(None),
        }
    }

    /// Remembers that chunk `id` exists (while a writer lease is held; bounded).
    pub(crate) fn remember_chunk(&self, id: ChunkId, stored: u64) {
        if self.writer_leases.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut known = self.known.lock().expect("cache lock");
        if known.len() < limits::KNOWN_CHUNKS {
            known.insert(id, stored);
        }
    }

    /// Forgets every chunk this process believed to exist (a writer lease lapsed).
    pub(crate) fn forget_known_chunks(&self) {
        self.known.lock().expect("cache lock").clear();
    }

    /// A writer lease of this process is now established (after waiting out any gc). The
    /// first one of a period starts a new dedup cache: a gc may have run since the last one.
    pub(crate) fn writer_lease_acquired(&self) {
        let mut known = self.known.lock().expect("cache lock");
        if self.writer_leases.fetch_add(1, Ordering::AcqRel) == 0 {
            known.clear();
        }
    }

    pub(crate) fn writer_lease_released(&self) {
        let _known = self.known.lock().expect("cache lock");
        self.writer_leases.fetch_sub(1, Ordering::AcqRel);
    }

    /// Chunks in the dedup cache now (for tests and metrics).
    pub fn known_chunks(&self) -> usize {
        self.known.lock().expect("cache lock").len()
    }

    /// Seals and uploads a chunk (no existence check); returns its stored size.
    pub(crate) async fn upload_chunk(
        &self,
        id: ChunkId,
        data: BytesMut,
        zstd_level: i32,
    ) -> Result<u64> {
        let keys = self.keys.clone();
        let sealed = tokio::task::spawn_blocking(move || seal_chunk(&keys, &id, data, zstd_level))
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
        let n = sealed.len() as u64;
        self.put_payload(&id.object_key(), sealed.into_payload())
            .await?;
        self.remember_chunk(id, n);
        Ok(n)
    }

    /// Downloads a chunk and checks it (decrypt, decompress, re-hash).
    pub async fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let object = self.get_bytes(&id.object_key(), limits::CHUNK).await?;
        let keys = self.keys.clone();
        let id = *id;
        tokio::task::spawn_blocking(move || open_chunk(&keys, &id, &object))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn opts() -> InitOptions {
        InitOptions {
            kdf: KdfParams::minimum(),
            chunker: ChunkerParams::default(),
        }
    }

    #[tokio::test]
    async fn init_open_and_key_management() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut repo = Repository::init(store.clone(), b"one", opts())
            .await
            .unwrap();
        assert!(matches!(
            Repository::init(store.clone(), b"x", opts()).await,
            Err(Error::AlreadyInitialized { .. })
        ));
        let first = repo.key_id().clone();
        let data = b"some chunk".to_vec();
        let id = repo.keys().chunk_id(&data);
        repo.upload_chunk(id, BytesMut::from(&data[..]), 3)
            .await
            .unwrap();

        let second = repo.add_key(b"two", KdfParams::minimum()).await.unwrap();
        assert_eq!(repo.list_keys().len(), 2);
        let other = Repository::open(store.clone(), b"two").await.unwrap();
        assert_eq!(other.key_id(), &second);
        assert_eq!(
            other.read_chunk(&id).await.unwrap(),
            data,
            "new key reads old data"
        );

        repo.remove_key(&first).await.unwrap();
        assert!(matches!(
            Repository::open(store.clone(), b"one").await,
            Err(Error::WrongPassphrase)
        ));
        let mut r2 = Repository::open(store.clone(), b"two").await.unwrap();
        assert!(matches!(
            r2.remove_key(&second).await,
            Err(Error::LastKey { .. })
        ));
        assert!(matches!(
            r2.remove_key(&KeyId("k-nope".into())).await,
            Err(Error::KeyNotFound { .. })
        ));
    }

    #[tokio::test]
    async fn open_of_an_empty_location_says_so() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        assert!(matches!(
            Repository::open(store, b"x").await,
            Err(Error::NotARepository { .. })
        ));
    }
}
