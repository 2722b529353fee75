//! Durability for `file://` repositories: object_store's `LocalFileSystem` writes each
//! object to a temporary file and renames it into place, but never fsyncs, so after a power
//! loss a ROOT could name chunks or pages whose bytes never reached the disk (or a renamed
//! file could be empty). This layer, used for every `file://` store, fsyncs each object's
//! file and then its directory (the rename) before reporting the write done; a ROOT is
//! written only after its chunks and pages, so once its put returns the whole backup is on
//! disk.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};

/// A local-directory store (rooted at `root`) whose writes are durable when they return.
#[derive(Debug)]
pub struct DurableLocal {
    inner: Arc<dyn ObjectStore>,
    root: PathBuf,
    synced: Arc<AtomicU64>,
}

impl DurableLocal {
    /// `inner` must be a `LocalFileSystem` with prefix `root`.
    pub fn new(inner: Arc<dyn ObjectStore>, root: PathBuf) -> Self {
        DurableLocal {
            inner,
            root,
            synced: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Objects fsynced so far.
    pub fn synced(&self) -> u64 {
        self.synced.load(Ordering::Relaxed)
    }
}

/// fsyncs the file of `location` under `root`, then its directory.
async fn sync(root: &std::path::Path, location: &Path, counter: &AtomicU64) -> Result<()> {
    let file = root.join(location.as_ref());
    let res = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::File::open(&file)?.sync_all()?;
        if let Some(dir) = file.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })
    .await;
    match res {
        Ok(Ok(())) => {
            counter.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Ok(Err(e)) => Err(object_store::Error::Generic {
            store: "durable",
            source: Box::new(e),
        }),
        Err(e) => Err(object_store::Error::Generic {
            store: "durable",
            source: Box::new(e),
        }),
    }
}

impl std::fmt::Display for DurableLocal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Durable({})", self.inner)
    }
}

/// A multipart upload whose completion is durable.
#[derive(Debug)]
struct DurableUpload {
    inner: Box<dyn MultipartUpload>,
    root: PathBuf,
    location: Path,
    synced: Arc<AtomicU64>,
}

#[async_trait]
impl MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let r = self.inner.complete().await?;
        sync(&self.root, &self.location, &self.synced).await?;
        Ok(r)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for DurableLocal {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let r = self.inner.put_opts(location, payload, opts).await?;
        sync(&self.root, location, &self.synced).await?;
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(DurableUpload {
            inner,
            root: self.root.clone(),
            location: location.clone(),
            synced: self.synced.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        sync(&self.root, to, &self.synced).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        sync(&self.root, to, &self.synced).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn every_write_is_synced_before_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let fs = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let s = DurableLocal::new(Arc::new(fs), dir.path().to_path_buf());
        s.put(
            &Path::from("chunks/ab/abc"),
            PutPayload::from(vec![7u8; 100]),
        )
        .await
        .unwrap();
        assert_eq!(s.synced(), 1);
        let mut up = s
            .put_multipart_opts(&Path::from("big"), Default::default())
            .await
            .unwrap();
        up.put_part(PutPayload::from(vec![1u8; 10])).await.unwrap();
        up.complete().await.unwrap();
        assert_eq!(s.synced(), 2);
        assert_eq!(
            s.get(&Path::from("chunks/ab/abc"))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .len(),
            100
        );
    }
}
