//! Reading batches back from segment objects with ranged GETs.
//!
//! A read first needs the object's footer (cached, decoded, per object key),
//! then the batches from the index position at or before the wanted offset.
//! Bytes are fetched in fixed-size blocks that are cached (bounded by bytes),
//! so that repeated reads and readers of neighbouring offsets are served from
//! memory; the block after the last one a read touched is fetched in the
//! background, so that a consumer reading on sequentially rarely waits on
//! the store. Objects are immutable once written (a re-upload writes the same
//! bytes), so cached footers and blocks never go stale.
//!
//! Each footer and block is fetched once however many reads want it at the
//! same time: a read that needs a block whose read-ahead (or another read's
//! fetch) is in flight waits for that fetch rather than issuing its own GET.
//! Failed fetches are not cached; the next read tries again. Blocks are
//! evicted least recently used first: readers go through an object in order,
//! so the block just fetched (or read ahead) is the one about to be used,
//! whereas a frequency-based admission policy would turn it away in favour of
//! blocks read many times but already behind every reader.

use super::object::{check_batch_crc, BatchHeader, Footer, ObjectError, BATCH_PREFIX_BYTES};
use bytes::{Bytes, BytesMut};
use moka::future::Cache;
use moka::policy::EvictionPolicy;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bytes counted for each cache entry besides its contents and key.
const ENTRY_OVERHEAD: usize = 64;

/// Sizes of a [`TieredReader`]'s caches and reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReaderConfig {
    /// Size of the blocks objects are fetched and cached in.
    pub block_bytes: u64,
    /// Bytes of blocks kept in memory, for all objects together.
    pub block_cache_bytes: u64,
    /// Bytes of decoded footers kept in memory, for all objects together
    /// (a footer's index grows with its segment, so entries are weighed).
    pub footer_cache_bytes: u64,
    /// Bytes fetched from an object's end to find its footer; a larger
    /// footer takes a second GET.
    pub footer_fetch_bytes: u64,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        Self {
            block_bytes: 1 << 20,
            block_cache_bytes: 256 << 20,
            footer_cache_bytes: 32 << 20,
            footer_fetch_bytes: 64 << 10,
        }
    }
}

/// Why batches could not be read from a segment object.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The object store failed (including an object that does not exist).
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// The key is not a valid object path.
    #[error("invalid object key {key:?}: {source}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why it is invalid.
        source: object_store::path::Error,
    },
    /// The object's footer or batches are damaged or not a segment object's.
    #[error("segment object {key}: {source}")]
    Object {
        /// The object's key.
        key: String,
        /// What is wrong.
        source: ObjectError,
    },
    /// The object's size is not the one its footer implies.
    #[error("segment object {key} is {actual} bytes, its footer makes it {expected}")]
    SizeMismatch {
        /// The object's key.
        key: String,
        /// The size the footer implies.
        expected: u64,
        /// The size the caller gave.
        actual: u64,
    },
    /// Fetching a footer or block failed. Every read that waited on that
    /// fetch gets the same error, hence the `Arc`.
    #[error(transparent)]
    Shared(Arc<ReadError>),
    /// A ranged GET returned fewer or more bytes than asked for.
    #[error("segment object {key}: GET of bytes {start}..{end} returned {returned} bytes")]
    ShortRead {
        /// The object's key.
        key: String,
        /// First byte asked for.
        start: u64,
        /// Byte after the last one asked for.
        end: u64,
        /// Bytes returned.
        returned: usize,
    },
}

impl ReadError {
    /// Whether the object does not exist (deleted by retention, or never
    /// uploaded).
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::Store(object_store::Error::NotFound { .. }) => true,
            Self::Shared(error) => error.is_not_found(),
            _ => false,
        }
    }
}

/// Reads segment objects through cached footers and blocks. Cheap to clone;
/// clones share the caches and the read-ahead tasks.
#[derive(Debug, Clone)]
pub struct TieredReader {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    config: ReaderConfig,
    footers: Cache<Arc<str>, Arc<Footer>>,
    /// (object key, block index) → the block's bytes.
    blocks: Cache<(Arc<str>, u64), Bytes>,
    /// Objects with a read-ahead in flight (at most one each).
    reading_ahead: Mutex<HashSet<Arc<str>>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredReader")
            .field("store", &self.store.to_string())
            .field("config", &self.config)
            .field("cached_blocks", &self.blocks.entry_count())
            .field("cached_footers", &self.footers.entry_count())
            .finish()
    }
}

/// One object being read: its key, path and footer.
struct Object {
    key: Arc<str>,
    path: Path,
    footer: Arc<Footer>,
}

impl TieredReader {
    /// A reader of objects in `store`, with caches sized by `config`.
    pub fn new(store: Arc<dyn ObjectStore>, config: ReaderConfig) -> Self {
        let config = ReaderConfig {
            block_bytes: config.block_bytes.max(1),
            ..config
        };
        let footers = Cache::builder()
            .max_capacity(config.footer_cache_bytes)
            .weigher(|key: &Arc<str>, footer: &Arc<Footer>| {
                weight(key.len() + footer.encoded_len() as usize)
            })
            .build();
        let blocks = Cache::builder()
            .max_capacity(config.block_cache_bytes)
            .weigher(|(key, _): &(Arc<str>, u64), block: &Bytes| weight(key.len() + block.len()))
            // See the module doc: recency, not frequency, predicts the next
            // block a sequential reader needs.
            .eviction_policy(EvictionPolicy::lru())
            .build();
        Self {
            inner: Arc::new(Inner {
                store,
                config,
                footers,
                blocks,
                reading_ahead: Mutex::new(HashSet::new()),
                tasks: TaskTracker::new(),
                cancel: CancellationToken::new(),
            }),
        }
    }

    /// The decoded footer of the object `key` of `object_size` bytes (as
    /// recorded when it was uploaded), from the cache or from the store.
    pub async fn footer(&self, key: &str, object_size: u64) -> Result<Arc<Footer>, ReadError> {
        Ok(self.object(key, object_size).await?.footer)
    }

    /// Whole batches from the one holding `offset` (batches that end before
    /// it are skipped), then the following ones up to about `max_bytes`:
    /// always at least one when any holds `offset` or a later one, never past
    /// the batch region. Empty at or past the segment's end offset.
    pub async fn read(
        &self,
        key: &str,
        object_size: u64,
        offset: i64,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>, ReadError> {
        let object = self.object(key, object_size).await?;
        if offset >= object.footer.end_offset {
            return Ok(Vec::new());
        }
        let position = object.footer.position_for_offset(offset);
        self.scan(&object, position, offset, max_bytes).await
    }

    /// Whole batches up to about `max_bytes` (at least one), from the
    /// footer's [`Footer::position_for_timestamp`]: the first batch whose
    /// largest timestamp reaches `timestamp` is among them or after them, and
    /// the caller scans for it. Empty when no batch reaches `timestamp`.
    pub async fn batches_from_timestamp(
        &self,
        key: &str,
        object_size: u64,
        timestamp: i64,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>, ReadError> {
        let object = self.object(key, object_size).await?;
        match object.footer.position_for_timestamp(timestamp) {
            Some(position) => self.scan(&object, position, i64::MIN, max_bytes).await,
            None => Ok(Vec::new()),
        }
    }

    /// Stops read-ahead: cancels the fetches in flight and waits for them.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    async fn object(&self, key: &str, object_size: u64) -> Result<Object, ReadError> {
        let path = Path::parse(key).map_err(|source| ReadError::InvalidKey {
            key: key.to_string(),
            source,
        })?;
        let key: Arc<str> = Arc::from(key);
        let fetch = async {
            let footer = self.fetch_footer(&key, &path, object_size).await?;
            Ok(Arc::new(footer))
        };
        let footer = self
            .inner
            .footers
            .try_get_with(key.clone(), fetch)
            .await
            .map_err(ReadError::Shared)?;
        if footer.object_size() != object_size {
            return Err(ReadError::SizeMismatch {
                key: key.to_string(),
                expected: footer.object_size(),
                actual: object_size,
            });
        }
        Ok(Object { key, path, footer })
    }

    async fn fetch_footer(
        &self,
        key: &Arc<str>,
        path: &Path,
        object_size: u64,
    ) -> Result<Footer, ReadError> {
        let fetch = self.inner.config.footer_fetch_bytes.min(object_size);
        let tail = self
            .inner
            .get(key, path, object_size - fetch..object_size)
            .await?;
        let decoded = match Footer::decode(&tail) {
            Err(ObjectError::Truncated { needed, .. })
                if needed > fetch && needed <= object_size =>
            {
                let tail = self
                    .inner
                    .get(key, path, object_size - needed..object_size)
                    .await?;
                Footer::decode(&tail)
            }
            decoded => decoded,
        };
        decoded.map_err(|source| ReadError::Object {
            key: key.to_string(),
            source,
        })
    }

    /// Batches from byte `position` (a batch start), skipping those whose
    /// last offset is before `offset`, up to about `max_bytes`.
    async fn scan(
        &self,
        object: &Object,
        mut position: u64,
        offset: i64,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>, ReadError> {
        let region_end = object.footer.batch_bytes;
        let corrupt = |position, reason| ReadError::Object {
            key: object.key.to_string(),
            source: ObjectError::MalformedBatch { position, reason },
        };
        let mut batches = Vec::new();
        let mut total = 0usize;
        let mut last_touched = None;
        while position < region_end {
            let prefix_end = region_end.min(position + BATCH_PREFIX_BYTES as u64);
            let prefix = self.range(object, position..prefix_end).await?;
            last_touched = Some(prefix_end - 1);
            let header = BatchHeader::parse(&prefix).map_err(|reason| corrupt(position, reason))?;
            let end = position + header.len as u64;
            if end > region_end {
                return Err(corrupt(
                    position,
                    format!("batch of {} bytes runs past the batch region", header.len),
                ));
            }
            if header.last_offset < offset {
                position = end;
                continue;
            }
            if !batches.is_empty() && total + header.len > max_bytes {
                break;
            }
            let batch = self.range(object, position..end).await?;
            last_touched = Some(end - 1);
            check_batch_crc(&batch, position).map_err(|source| ReadError::Object {
                key: object.key.to_string(),
                source,
            })?;
            total += batch.len();
            batches.push(batch);
            position = end;
        }
        if let Some(byte) = last_touched {
            self.read_ahead(object, byte / self.inner.config.block_bytes + 1);
        }
        Ok(batches)
    }

    /// Bytes `range` of the batch region, through the block cache.
    async fn range(
        &self,
        object: &Object,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, ReadError> {
        let block_bytes = self.inner.config.block_bytes;
        let first = range.start / block_bytes;
        let last = (range.end - 1) / block_bytes;
        let in_block = |block: u64, at: u64| (at - block * block_bytes) as usize;
        if first == last {
            let block = self.inner.block(object, first).await?;
            return Ok(block.slice(in_block(first, range.start)..in_block(first, range.end)));
        }
        let blocks =
            futures::future::try_join_all((first..=last).map(|i| self.inner.block(object, i)))
                .await?;
        let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
        for (i, block) in (first..=last).zip(blocks) {
            let from = if i == first {
                in_block(i, range.start)
            } else {
                0
            };
            let to = if i == last {
                in_block(i, range.end)
            } else {
                block.len()
            };
            out.extend_from_slice(&block[from..to]);
        }
        Ok(out.freeze())
    }

    /// Fetches block `index` in the background unless it is cached, past the
    /// batch region, or another read-ahead of the object is in flight.
    fn read_ahead(&self, object: &Object, index: u64) {
        let inner = &self.inner;
        if inner.cancel.is_cancelled()
            || index.saturating_mul(inner.config.block_bytes) >= object.footer.batch_bytes
            || inner.blocks.contains_key(&(object.key.clone(), index))
        {
            return;
        }
        {
            let mut reading = inner
                .reading_ahead
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !reading.insert(object.key.clone()) {
                return;
            }
        }
        let inner = Arc::clone(inner);
        let object = Object {
            key: object.key.clone(),
            path: object.path.clone(),
            footer: object.footer.clone(),
        };
        self.inner.tasks.spawn(async move {
            tokio::select! {
                _ = inner.cancel.cancelled() => {}
                fetched = inner.block(&object, index) => {
                    if let Err(error) = fetched {
                        tracing::debug!(key = %object.key, index, %error, "read-ahead failed");
                    }
                }
            }
            let mut reading = inner
                .reading_ahead
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            reading.remove(&object.key);
        });
    }
}

impl Inner {
    /// Block `index` of the object's batch region (the last one may be
    /// shorter), from the cache, from a fetch of it already in flight (a
    /// read-ahead's or another read's), or from the store.
    async fn block(&self, object: &Object, index: u64) -> Result<Bytes, ReadError> {
        let start = index * self.config.block_bytes;
        let end = object
            .footer
            .batch_bytes
            .min(start + self.config.block_bytes);
        // Only the first caller's fetch runs; callers that come while it is
        // in flight wait for its result. Should that caller be dropped
        // (a cancelled read-ahead), one of them fetches instead.
        self.blocks
            .try_get_with(
                (object.key.clone(), index),
                self.get(&object.key, &object.path, start..end),
            )
            .await
            .map_err(ReadError::Shared)
    }

    /// One ranged GET, checked to return exactly the bytes asked for.
    async fn get(
        &self,
        key: &str,
        path: &Path,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, ReadError> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let bytes = self.store.get_range(path, range.clone()).await?;
        if bytes.len() as u64 != range.end - range.start {
            return Err(ReadError::ShortRead {
                key: key.to_string(),
                start: range.start,
                end: range.end,
                returned: bytes.len(),
            });
        }
        Ok(bytes)
    }
}

fn weight(bytes: usize) -> u32 {
    u32::try_from(bytes + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::object::SegmentMeta;
    use crate::offload::rate::RateLimiter;
    use crate::offload::store::{build, segment_object_key, ObjectStoreConfig};
    use crate::offload::test_support::{batch, build_object, CountingStore};
    use crate::offload::upload::{UploadOptions, Uploader};
    use std::time::Duration;

    const KEY: &str = "topics/t/0/00000000000000000100-1.seg";

    /// Batches of 1..=5 records from offset 100, with payloads of 0..300
    /// bytes, their timestamps rising with their offsets.
    fn segment(count: usize) -> (SegmentMeta, Vec<Bytes>) {
        let mut batches = Vec::new();
        let mut next = 100;
        for i in 0..count {
            let records = (i % 5 + 1) as i32;
            batches.push(batch(next, records, 10 * next, (i * 37) % 300));
            next += i64::from(records);
        }
        let meta = SegmentMeta {
            segment_id: 1,
            base_offset: 100,
            end_offset: next,
        };
        (meta, batches)
    }

    async fn stored(count: usize, index_interval: u64) -> (Arc<CountingStore>, u64, Vec<Bytes>) {
        let (meta, batches) = segment(count);
        let (object, _) = build_object(meta, &batches, index_interval);
        let store = Arc::new(CountingStore::default());
        store
            .put(&Path::from(KEY), object.clone().into())
            .await
            .unwrap();
        (store, object.len() as u64, batches)
    }

    fn config(block_bytes: u64) -> ReaderConfig {
        ReaderConfig {
            block_bytes,
            footer_fetch_bytes: 64,
            ..Default::default()
        }
    }

    fn last_offset(batch: &Bytes) -> i64 {
        BatchHeader::parse(batch).unwrap().last_offset
    }

    #[tokio::test]
    async fn every_offset_reads_the_batch_holding_it_byte_for_byte() {
        let (store, size, batches) = stored(60, 500).await;
        let reader = TieredReader::new(store, config(700));
        for (i, holding) in batches.iter().enumerate() {
            let header = BatchHeader::parse(holding).unwrap();
            for offset in header.base_offset..=header.last_offset {
                let one = reader.read(KEY, size, offset, 0).await.unwrap();
                assert_eq!(one, vec![holding.clone()], "offset {offset}");
                let rest = reader.read(KEY, size, offset, usize::MAX).await.unwrap();
                assert_eq!(rest, batches[i..].to_vec(), "offset {offset}");
            }
        }
        let some = reader.read(KEY, size, 100, 1000).await.unwrap();
        let bytes: usize = some.iter().map(Bytes::len).sum();
        assert!(bytes <= 1000 && some.len() > 1);
        assert_eq!(some[..], batches[..some.len()]);
    }

    #[tokio::test]
    async fn reading_at_or_past_the_end_is_empty() {
        let (store, size, batches) = stored(10, 4096).await;
        let end = last_offset(batches.last().unwrap()) + 1;
        let reader = TieredReader::new(store.clone(), config(1 << 20));
        assert!(reader
            .read(KEY, size, end, 1 << 20)
            .await
            .unwrap()
            .is_empty());
        assert!(reader
            .read(KEY, size, end + 100, 1)
            .await
            .unwrap()
            .is_empty());
        // Before the segment's base: from its first batch.
        let from_start = reader.read(KEY, size, 0, usize::MAX).await.unwrap();
        assert_eq!(from_start, batches);
    }

    #[tokio::test]
    async fn repeated_reads_are_served_from_memory() {
        let (store, size, batches) = stored(60, 500).await;
        let reader = TieredReader::new(store.clone(), config(1 << 20));
        let end = last_offset(batches.last().unwrap()) + 1;
        for offset in 100..end {
            reader.read(KEY, size, offset, 2000).await.unwrap();
        }
        // The footer (tail fetch + the rest of it) and one block.
        let gets = store.gets();
        assert!(gets <= 3, "{gets} GETs");
        for offset in 100..end {
            reader.read(KEY, size, offset, 2000).await.unwrap();
        }
        assert_eq!(store.gets(), gets);
    }

    #[tokio::test]
    async fn a_read_fetches_the_next_block_ahead() {
        let (store, size, batches) = stored(60, 500).await;
        let reader = TieredReader::new(store.clone(), config(1024));
        let first = reader.read(KEY, size, 100, 0).await.unwrap();
        assert_eq!(first, vec![batches[0].clone()]);
        let key: Arc<str> = Arc::from(KEY);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !reader.inner.blocks.contains_key(&(key.clone(), 1)) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "block 1 never fetched"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Reading on within the first two blocks needs no more GETs.
        let gets = store.gets();
        let mut offset = last_offset(&first[0]) + 1;
        let mut read = first[0].len();
        while read + 400 < 2048 {
            let next = reader.read(KEY, size, offset, 0).await.unwrap();
            offset = last_offset(&next[0]) + 1;
            read += next[0].len();
        }
        // At most one more: block 2, read ahead once block 1 was touched.
        assert!(store.gets() <= gets + 1);
        reader.shutdown().await;
        assert!(reader.inner.reading_ahead.lock().unwrap().is_empty());
    }

    /// `count` batches stored as one object in a [`CountingStore`]; also the
    /// object's size and each batch's position in it.
    async fn held(count: usize) -> (Arc<CountingStore>, u64, Vec<Bytes>, Vec<u64>) {
        let (meta, batches) = segment(count);
        // An index entry about every 1 KiB block, so that a read scans from
        // at most a block before the offset it wants.
        let (object, _) = build_object(meta, &batches, 1024);
        let store = Arc::new(CountingStore::default());
        store
            .put(&Path::from(KEY), object.clone().into())
            .await
            .unwrap();
        let positions = batches
            .iter()
            .scan(0u64, |at, batch| {
                let position = *at;
                *at += batch.len() as u64;
                Some(position)
            })
            .collect();
        (store, object.len() as u64, batches, positions)
    }

    /// Yields to the other tasks until `done` holds; panics after `rounds`.
    async fn yield_until(rounds: usize, mut done: impl FnMut() -> bool) {
        for _ in 0..rounds {
            if done() {
                return;
            }
            tokio::task::yield_now().await;
        }
        assert!(done(), "not done after {rounds} rounds");
    }

    #[tokio::test]
    async fn a_read_waits_for_the_read_ahead_of_its_block_instead_of_fetching_it_again() {
        const BLOCK: u64 = 1024;
        let (store, size, batches, positions) = held(40).await;
        let reader = TieredReader::new(store.clone(), config(BLOCK));
        // Block 0; the read-ahead of block 1 is spawned but (on this
        // single-threaded runtime) not started before the store is held.
        let first = reader.read(KEY, size, 100, 0).await.unwrap();
        assert_eq!(first, vec![batches[0].clone()]);
        store.hold();
        yield_until(100, || store.gets_from(BLOCK) == 1).await;

        // A read of the first batch starting in block 1 races the read-ahead.
        let i = positions.iter().position(|&p| p >= BLOCK).unwrap();
        let offset = BatchHeader::parse(&batches[i]).unwrap().base_offset;
        let mut racing = std::pin::pin!(reader.read(KEY, size, offset, 0));
        for _ in 0..100 {
            assert!(futures::poll!(racing.as_mut()).is_pending());
            tokio::task::yield_now().await;
        }
        assert_eq!(store.gets_from(BLOCK), 1, "block 1 fetched again");
        store.release();
        assert_eq!(racing.await.unwrap(), vec![batches[i].clone()]);
        assert_eq!(store.gets_from(BLOCK), 1);
        reader.shutdown().await;
    }

    #[tokio::test]
    async fn a_read_waiting_on_a_read_ahead_cut_short_by_shutdown_fetches_the_block_itself() {
        const BLOCK: u64 = 1024;
        let (store, size, batches, positions) = held(40).await;
        let reader = TieredReader::new(store.clone(), config(BLOCK));
        reader.read(KEY, size, 100, 0).await.unwrap();
        store.hold();
        yield_until(100, || store.gets_from(BLOCK) == 1).await;
        let i = positions.iter().position(|&p| p >= BLOCK).unwrap();
        let offset = BatchHeader::parse(&batches[i]).unwrap().base_offset;
        let mut waiting = std::pin::pin!(reader.read(KEY, size, offset, 0));
        for _ in 0..100 {
            assert!(futures::poll!(waiting.as_mut()).is_pending());
            tokio::task::yield_now().await;
        }
        assert_eq!(store.gets_from(BLOCK), 1);

        // Shutdown drops the read-ahead with its GET still held; the waiting
        // read then fetches the block itself.
        reader.shutdown().await;
        for _ in 0..100 {
            if store.gets_from(BLOCK) == 2 {
                break;
            }
            assert!(futures::poll!(waiting.as_mut()).is_pending());
            tokio::task::yield_now().await;
        }
        assert_eq!(store.gets_from(BLOCK), 2);
        store.release();
        assert_eq!(waiting.await.unwrap(), vec![batches[i].clone()]);
    }

    #[tokio::test]
    async fn a_sequential_read_through_a_small_cache_gets_each_block_once() {
        const BLOCK: u64 = 1024;
        let (store, size, batches, _) = held(400).await;
        let batch_bytes: u64 = batches.iter().map(|b| b.len() as u64).sum();
        let blocks = batch_bytes.div_ceil(BLOCK);
        assert!(blocks > 50, "{blocks} blocks");
        // Room for eight blocks (with their keys and overhead): the read
        // fills the cache ten times over, with blocks behind the reader that
        // were each read many times.
        let reader = TieredReader::new(
            store.clone(),
            ReaderConfig {
                block_cache_bytes: 8 * (BLOCK + 128),
                ..config(BLOCK)
            },
        );
        let footer = reader.footer(KEY, size).await.unwrap();
        let mut offset = 100;
        for expected in &batches {
            let read = reader.read(KEY, size, offset, 0).await.unwrap();
            assert_eq!(read, vec![expected.clone()]);
            offset = last_offset(expected) + 1;
            // Lets the read-ahead this read started run before the next read.
            tokio::task::yield_now().await;
        }
        let block_gets = store.gets_before(footer.batch_bytes);
        let once: Vec<_> = (0..blocks).map(|i| (i * BLOCK, 1)).collect();
        assert_eq!(block_gets, once, "(first byte, GETs) of each block");
        reader.shutdown().await;
    }

    #[tokio::test]
    async fn timestamp_reads_start_at_or_before_the_first_batch_reaching_it() {
        let (store, size, batches) = stored(60, 300).await;
        let reader = TieredReader::new(store, config(512));
        let max_ts = |b: &Bytes| i64::from_be_bytes(b[35..43].try_into().unwrap());
        for target in [0, 1_000, 1_500, 2_000, max_ts(batches.last().unwrap())] {
            let found = reader
                .batches_from_timestamp(KEY, size, target, usize::MAX)
                .await
                .unwrap();
            let first = batches.iter().position(|b| max_ts(b) >= target).unwrap();
            let start = batches.len() - found.len();
            assert!(start <= first, "target {target}");
            assert_eq!(found, batches[start..].to_vec());
        }
        let past = reader
            .batches_from_timestamp(KEY, size, i64::MAX, 1)
            .await
            .unwrap();
        assert!(past.is_empty());
    }

    #[tokio::test]
    async fn damaged_objects_are_errors() {
        let (meta, batches) = segment(10);
        let (object, _) = build_object(meta, &batches, 4096);
        let store = Arc::new(CountingStore::default());
        let reader = TieredReader::new(store.clone(), config(1 << 20));

        let missing = reader.read(KEY, 100, 100, 1).await.unwrap_err();
        assert!(missing.is_not_found(), "{missing}");

        let mut flipped = object.to_vec();
        flipped[30] ^= 1;
        store
            .put(&Path::from(KEY), Bytes::from(flipped).into())
            .await
            .unwrap();
        let size = object.len() as u64;
        // The failed fetch was not cached: this one finds the object.
        let crc = reader.read(KEY, size, 100, 1).await.unwrap_err();
        assert!(
            matches!(
                crc,
                ReadError::Object {
                    source: ObjectError::BatchCrc { .. },
                    ..
                }
            ),
            "{crc}"
        );
        let wrong_size = reader.read(KEY, size + 1, 100, 1).await.unwrap_err();
        assert!(
            matches!(wrong_size, ReadError::SizeMismatch { .. }),
            "{wrong_size}"
        );

        let other = "topics/t/0/x.seg";
        store
            .put(&Path::from(other), Bytes::from(vec![7u8; 100]).into())
            .await
            .unwrap();
        let not_segment = reader.read(other, 100, 0, 1).await.unwrap_err();
        // The footer's fetch failed: shared with any read that waited on it.
        assert!(
            matches!(
                &not_segment,
                ReadError::Shared(fetch) if matches!(
                    **fetch,
                    ReadError::Object {
                        source: ObjectError::BadMagic { .. },
                        ..
                    }
                )
            ),
            "{not_segment}"
        );
    }

    #[tokio::test]
    async fn an_uploaded_segment_reads_back_from_a_local_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = build(&ObjectStoreConfig {
            local_path: dir.path().to_path_buf(),
            ..Default::default()
        })
        .unwrap();
        let (meta, batches) = segment(200);
        let options = UploadOptions {
            part_bytes: 4096,
            ..Default::default()
        };
        let uploader = Uploader::new(store.clone(), options, Arc::new(RateLimiter::unlimited()));
        let key = segment_object_key("t", 0, meta.base_offset, meta.segment_id);
        let source =
            futures::stream::iter(batches.clone().into_iter().map(Ok::<_, std::io::Error>));
        let uploaded = uploader.upload_segment(&key, meta, source).await.unwrap();

        let reader = TieredReader::new(store, config(3000));
        let footer = reader.footer(&key, uploaded.size).await.unwrap();
        assert_eq!(*footer, uploaded.footer);
        let all = reader
            .read(&key, uploaded.size, meta.base_offset, usize::MAX)
            .await
            .unwrap();
        assert_eq!(all, batches);
        reader.shutdown().await;
    }
}
