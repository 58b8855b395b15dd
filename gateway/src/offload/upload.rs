//! Uploading one sealed segment as one object: the batches stream through
//! [`SegmentObjectBuilder`] into a single PUT (objects smaller than a part)
//! or a multipart upload with a bounded number of parts in flight, so memory
//! stays around `part_bytes × (concurrency + 1)` whatever the segment's size.
//!
//! Uploads are idempotent: the same segment always makes the same bytes under
//! the same key, so a retry after a crash or an error overwrites the object
//! with identical content.

use super::object::{Footer, ObjectError, SegmentMeta, SegmentObjectBuilder};
use super::rate::RateLimiter;
use super::store::ObjectStoreConfig;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use std::sync::Arc;

/// How segment objects are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadOptions {
    /// Size of each multipart part; smaller objects take a single PUT.
    pub part_bytes: usize,
    /// Parts of one upload in flight at once (at least 1).
    pub concurrency: usize,
    /// Distance in bytes between entries of the object's index.
    pub index_interval_bytes: u64,
}

impl UploadOptions {
    /// The upload settings of an object store configuration.
    pub fn from_config(config: &ObjectStoreConfig) -> Self {
        Self {
            part_bytes: config.multipart_part_bytes,
            concurrency: config.upload_concurrency,
            index_interval_bytes: config.index_interval_bytes,
        }
    }
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self::from_config(&ObjectStoreConfig::default())
    }
}

/// A segment object that is stored in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedObject {
    /// The object's key.
    pub key: String,
    /// The object's size in bytes (what readers pass as `object_size`).
    pub size: u64,
    /// The object's footer, as readers will decode it.
    pub footer: Footer,
}

/// Why a segment was not uploaded; nothing is stored under the key (or what
/// was there before is unchanged) after any of these.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The segment's batches could not be read.
    #[error("reading the segment's batches failed: {0}")]
    Source(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The batches do not make a valid segment object.
    #[error("the segment's batches cannot be offloaded: {0}")]
    Object(#[from] ObjectError),
    /// The key is not a valid object path.
    #[error("invalid object key {key:?}: {source}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why it is invalid.
        source: object_store::path::Error,
    },
    /// The object store failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

/// Uploads segment objects to one store, sharing one bandwidth limit.
#[derive(Debug, Clone)]
pub struct Uploader {
    store: Arc<dyn ObjectStore>,
    options: UploadOptions,
    limiter: Arc<RateLimiter>,
}

impl Uploader {
    /// An uploader writing to `store`, whose uploads all draw on `limiter`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        options: UploadOptions,
        limiter: Arc<RateLimiter>,
    ) -> Self {
        Self {
            store,
            options: UploadOptions {
                part_bytes: options.part_bytes.max(1),
                concurrency: options.concurrency.max(1),
                index_interval_bytes: options.index_interval_bytes.max(1),
            },
            limiter,
        }
    }

    /// Uploads the object of segment `meta` under `key`, from `batches` (the
    /// segment's batches in order, each item one or more whole batches).
    /// The batches are checked as they pass (framing, CRC-32C, contiguous
    /// offsets ending at `meta.end_offset`); on any error a multipart upload
    /// is aborted. If the returned future is dropped mid-way, the parts
    /// already sent stay in the store as an incomplete multipart upload until
    /// the store's own cleanup (an S3 lifecycle rule) removes them.
    pub async fn upload_segment<S, E>(
        &self,
        key: &str,
        meta: SegmentMeta,
        batches: S,
    ) -> Result<UploadedObject, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = Path::parse(key).map_err(|source| UploadError::InvalidKey {
            key: key.to_string(),
            source,
        })?;
        let mut parts = Parts::new(self, path);
        match self.stream(&mut parts, meta, batches).await {
            Ok((footer, size)) => {
                debug_assert_eq!(size, footer.object_size());
                Ok(UploadedObject {
                    key: key.to_string(),
                    size,
                    footer,
                })
            }
            Err(error) => {
                parts.abort().await;
                Err(error)
            }
        }
    }

    async fn stream<S, E>(
        &self,
        parts: &mut Parts<'_>,
        meta: SegmentMeta,
        batches: S,
    ) -> Result<(Footer, u64), UploadError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut builder = SegmentObjectBuilder::new(meta, self.options.index_interval_bytes);
        let mut batches = std::pin::pin!(batches);
        while let Some(item) = batches.next().await {
            let bytes = item.map_err(|e| UploadError::Source(e.into()))?;
            parts.write(builder.push(bytes)?).await?;
        }
        let (footer, tail) = builder.finish()?;
        parts.write(tail).await?;
        let size = parts.finish().await?;
        Ok((footer, size))
    }
}

/// The bytes of one object on their way out: buffered up to a part, then
/// sent as a single PUT or as the parts of a multipart upload.
struct Parts<'a> {
    uploader: &'a Uploader,
    path: Path,
    /// Bytes not sent yet, less than one part (between writes).
    buffered: Vec<Bytes>,
    buffered_len: usize,
    /// Bytes written so far, sent or not.
    written: u64,
    /// The multipart upload, once the object outgrew one part.
    multipart: Option<WriteMultipart>,
}

impl<'a> Parts<'a> {
    fn new(uploader: &'a Uploader, path: Path) -> Self {
        Self {
            uploader,
            path,
            buffered: Vec::new(),
            buffered_len: 0,
            written: 0,
            multipart: None,
        }
    }

    /// Adds bytes after the ones before, sending every whole part.
    async fn write(&mut self, mut bytes: Bytes) -> Result<(), UploadError> {
        let part_bytes = self.uploader.options.part_bytes;
        self.written += bytes.len() as u64;
        while self.buffered_len + bytes.len() >= part_bytes {
            let head = bytes.split_to(part_bytes - self.buffered_len);
            self.buffered.push(head);
            let part = std::mem::take(&mut self.buffered);
            self.buffered_len = 0;
            self.send_part(part).await?;
        }
        if !bytes.is_empty() {
            self.buffered_len += bytes.len();
            self.buffered.push(bytes);
        }
        Ok(())
    }

    /// Sends one whole part, waiting for room among the parts in flight and
    /// for the bandwidth limit.
    async fn send_part(&mut self, part: Vec<Bytes>) -> Result<(), UploadError> {
        let options = self.uploader.options;
        let multipart = match &mut self.multipart {
            Some(multipart) => multipart,
            None => {
                let upload = self.uploader.store.put_multipart(&self.path).await?;
                self.multipart.insert(WriteMultipart::new_with_chunk_size(
                    upload,
                    options.part_bytes,
                ))
            }
        };
        multipart.wait_for_capacity(options.concurrency).await?;
        self.uploader
            .limiter
            .acquire(options.part_bytes as u64)
            .await;
        // Exactly one part's bytes: `WriteMultipart` starts the part as the
        // last of them arrives, with nothing left over for the next one.
        for bytes in part {
            multipart.put(bytes);
        }
        Ok(())
    }

    /// Sends what is left and completes the object; returns its size.
    async fn finish(&mut self) -> Result<u64, UploadError> {
        let rest = std::mem::take(&mut self.buffered);
        let rest_len = std::mem::take(&mut self.buffered_len);
        self.uploader.limiter.acquire(rest_len as u64).await;
        match self.multipart.take() {
            None => {
                let payload = PutPayload::from_iter(rest);
                self.uploader.store.put(&self.path, payload).await?;
            }
            Some(mut multipart) => {
                for bytes in rest {
                    multipart.put(bytes);
                }
                // `finish` aborts the upload itself when it fails.
                multipart.finish().await?;
            }
        }
        Ok(self.written)
    }

    /// Aborts the multipart upload, if one was started, so that its parts
    /// do not linger in the store.
    async fn abort(&mut self) {
        if let Some(multipart) = self.multipart.take() {
            if let Err(error) = multipart.abort().await {
                tracing::warn!(path = %self.path, %error, "aborting a multipart upload failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::object::{Footer, DEFAULT_INDEX_INTERVAL_BYTES};
    use crate::offload::store::{build, segment_object_key, ObjectStoreConfig};
    use crate::offload::test_support::{batch, build_object, CountingStore};
    use std::sync::atomic::Ordering;

    fn meta(end_offset: i64) -> SegmentMeta {
        SegmentMeta {
            segment_id: 3,
            base_offset: 0,
            end_offset,
        }
    }

    /// `count` batches of 161 bytes, one record each.
    fn batches(count: i64) -> Vec<Bytes> {
        (0..count).map(|i| batch(i, 1, 1_000 + i, 100)).collect()
    }

    fn source(batches: &[Bytes]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + '_ {
        futures::stream::iter(batches.iter().cloned().map(Ok))
    }

    fn uploader(store: Arc<dyn ObjectStore>, part_bytes: usize) -> Uploader {
        let options = UploadOptions {
            part_bytes,
            concurrency: 2,
            index_interval_bytes: DEFAULT_INDEX_INTERVAL_BYTES,
        };
        Uploader::new(store, options, Arc::new(RateLimiter::unlimited()))
    }

    async fn stored(store: &dyn ObjectStore, key: &str) -> Bytes {
        let path = Path::parse(key).unwrap();
        store.get(&path).await.unwrap().bytes().await.unwrap()
    }

    #[tokio::test]
    async fn a_small_segment_is_one_put() {
        let store = Arc::new(CountingStore::default());
        let batches = batches(5);
        let key = segment_object_key("t", 0, 0, 3);
        let uploaded = uploader(store.clone(), 1 << 20)
            .upload_segment(&key, meta(5), source(&batches))
            .await
            .unwrap();
        let (expected, footer) = build_object(meta(5), &batches, DEFAULT_INDEX_INTERVAL_BYTES);
        assert_eq!(stored(store.as_ref(), &key).await, expected);
        assert_eq!(uploaded.size, expected.len() as u64);
        assert_eq!(uploaded.footer, footer);
        assert_eq!(store.puts.load(Ordering::SeqCst), 1);
        assert_eq!(store.multipart_uploads.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_large_segment_is_a_multipart_upload_of_the_same_bytes() {
        let store = Arc::new(CountingStore::default());
        let batches = batches(100);
        let key = segment_object_key("t", 0, 0, 3);
        // 100 × 161 bytes in parts of 1000 bytes: parts that split batches.
        let uploaded = uploader(store.clone(), 1000)
            .upload_segment(&key, meta(100), source(&batches))
            .await
            .unwrap();
        let (expected, _) = build_object(meta(100), &batches, DEFAULT_INDEX_INTERVAL_BYTES);
        assert_eq!(stored(store.as_ref(), &key).await, expected);
        assert_eq!(uploaded.size, expected.len() as u64);
        assert_eq!(store.multipart_uploads.load(Ordering::SeqCst), 1);
        assert_eq!(store.puts.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn uploading_again_stores_identical_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let config = ObjectStoreConfig {
            local_path: dir.path().to_path_buf(),
            ..Default::default()
        };
        let store = build(&config).unwrap();
        let batches = batches(50);
        let key = segment_object_key("t", 1, 0, 3);
        for part_bytes in [700, 1 << 20, 700] {
            let uploaded = uploader(store.clone(), part_bytes)
                .upload_segment(&key, meta(50), source(&batches))
                .await
                .unwrap();
            let object = stored(store.as_ref(), &key).await;
            assert_eq!(object.len() as u64, uploaded.size);
            let (expected, _) = build_object(meta(50), &batches, DEFAULT_INDEX_INTERVAL_BYTES);
            assert_eq!(object, expected);
            assert_eq!(Footer::decode(&object).unwrap(), uploaded.footer);
        }
    }

    #[tokio::test]
    async fn a_failed_upload_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let config = ObjectStoreConfig {
            local_path: dir.path().to_path_buf(),
            ..Default::default()
        };
        let store = build(&config).unwrap();
        let key = segment_object_key("t", 2, 0, 3);
        let mut items: Vec<Result<Bytes, std::io::Error>> =
            batches(20).into_iter().map(Ok).collect();
        items.push(Err(std::io::Error::other("bookie went away")));
        let error = uploader(store.clone(), 500)
            .upload_segment(&key, meta(30), futures::stream::iter(items))
            .await
            .unwrap_err();
        assert!(matches!(error, UploadError::Source(_)), "{error}");

        // Batches that stop short of the end offset are refused too.
        let error = uploader(store.clone(), 500)
            .upload_segment(&key, meta(30), source(&batches(20)))
            .await
            .unwrap_err();
        assert!(matches!(error, UploadError::Object(_)), "{error}");

        let files: Vec<_> = walk(dir.path());
        assert!(files.is_empty(), "left behind: {files:?}");
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }

    #[tokio::test]
    async fn uploads_share_the_bandwidth_limit() {
        let store: Arc<dyn ObjectStore> = Arc::new(CountingStore::default());
        let batches = batches(20);
        // 3,220 bytes of batches at 4,000 bytes/s with a burst of 4,000:
        // the first upload passes at once, the second waits for tokens.
        let limiter = Arc::new(RateLimiter::new(4_000));
        let uploader = Uploader::new(store, UploadOptions::default(), limiter);
        let start = tokio::time::Instant::now();
        for segment_id in 0..2 {
            let key = segment_object_key("t", 0, 0, segment_id);
            uploader
                .upload_segment(&key, meta(20), source(&batches))
                .await
                .unwrap();
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= std::time::Duration::from_millis(500),
            "{elapsed:?}"
        );
    }
}
