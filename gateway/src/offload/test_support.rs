//! Helpers for the offload unit tests: hand-made record batches, whole
//! objects built in memory, and an object store that counts its requests
//! and can hold its GETs back.

use super::object::{Footer, SegmentMeta, SegmentObjectBuilder};
use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tokio::sync::watch;

/// A valid v2 record batch of `records` records from `base_offset`, the
/// first stamped `first_timestamp` and each next one a millisecond later,
/// with `payload` bytes standing for the records (never decoded here).
pub fn batch(base_offset: i64, records: i32, first_timestamp: i64, payload: usize) -> Bytes {
    let mut out = BytesMut::with_capacity(61 + payload);
    out.put_i64(base_offset);
    out.put_i32((49 + payload) as i32);
    out.put_i32(0); // partition leader epoch
    out.put_i8(2); // magic
    out.put_u32(0); // CRC, set below
    out.put_i16(0); // attributes
    out.put_i32(records - 1);
    out.put_i64(first_timestamp);
    out.put_i64(first_timestamp + i64::from(records) - 1);
    out.put_i64(-1); // producer id
    out.put_i16(-1); // producer epoch
    out.put_i32(-1); // base sequence
    out.put_i32(records);
    out.extend((0..payload).map(|i| (base_offset as usize + i) as u8));
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out.freeze()
}

/// The whole object of segment `meta` holding `batches`, and its footer.
pub fn build_object(meta: SegmentMeta, batches: &[Bytes], index_interval: u64) -> (Bytes, Footer) {
    let mut builder = SegmentObjectBuilder::new(meta, index_interval);
    let mut object = BytesMut::new();
    for batch in batches {
        object.extend_from_slice(&builder.push(batch.clone()).unwrap());
    }
    let (footer, tail) = builder.finish().unwrap();
    object.extend_from_slice(&tail);
    (object.freeze(), footer)
}

/// An in-memory store that counts puts, multipart uploads and GETs (in all,
/// and by the first byte they ask for) and, while held, keeps GETs waiting
/// until released (to make reads race each other without timing).
#[derive(Debug)]
pub struct CountingStore {
    pub inner: InMemory,
    pub gets: AtomicUsize,
    pub multipart_uploads: AtomicUsize,
    pub puts: AtomicUsize,
    /// First byte asked for (`u64::MAX`: the whole object or a suffix) →
    /// GETs of it issued, held ones included.
    gets_by_start: Mutex<HashMap<u64, usize>>,
    /// Whether GETs may go on; while `false`, issued ones wait.
    open: watch::Sender<bool>,
}

impl Default for CountingStore {
    fn default() -> Self {
        Self {
            inner: InMemory::new(),
            gets: AtomicUsize::new(0),
            multipart_uploads: AtomicUsize::new(0),
            puts: AtomicUsize::new(0),
            gets_by_start: Mutex::new(HashMap::new()),
            open: watch::channel(true).0,
        }
    }
}

impl CountingStore {
    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    /// GETs issued so far from byte `start`.
    pub fn gets_from(&self, start: u64) -> usize {
        let gets = self.gets_by_start.lock().unwrap();
        gets.get(&start).copied().unwrap_or(0)
    }

    /// (first byte, GETs issued from it) of the GETs from before byte `end`
    /// (those of blocks, not of the footer), by first byte.
    pub fn gets_before(&self, end: u64) -> Vec<(u64, usize)> {
        let gets = self.gets_by_start.lock().unwrap();
        let mut before: Vec<(u64, usize)> = gets
            .iter()
            .filter(|(&start, _)| start < end)
            .map(|(&start, &n)| (start, n))
            .collect();
        before.sort();
        before
    }

    /// From now on, GETs wait until [`CountingStore::release`].
    pub fn hold(&self) {
        self.open.send_replace(false);
    }

    /// Lets held and later GETs go on.
    pub fn release(&self) {
        self.open.send_replace(true);
    }
}

impl std::fmt::Display for CountingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CountingStore({})", self.inner)
    }
}

// `ObjectStore` is declared with `#[async_trait]`; its async methods are
// written out here as the boxed futures that macro would make.
impl ObjectStore for CountingStore {
    fn put_opts<'a, 'b, 'f>(
        &'a self,
        location: &'b Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> BoxFuture<'f, Result<PutResult>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put_opts(location, payload, opts)
    }

    fn put_multipart_opts<'a, 'b, 'f>(
        &'a self,
        location: &'b Path,
        opts: PutMultipartOptions,
    ) -> BoxFuture<'f, Result<Box<dyn MultipartUpload>>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.multipart_uploads.fetch_add(1, Ordering::SeqCst);
        self.inner.put_multipart_opts(location, opts)
    }

    fn get_opts<'a, 'b, 'f>(
        &'a self,
        location: &'b Path,
        options: GetOptions,
    ) -> BoxFuture<'f, Result<GetResult>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let start = match &options.range {
            Some(GetRange::Bounded(range)) => range.start,
            Some(GetRange::Offset(start)) => *start,
            Some(GetRange::Suffix(_)) | None => u64::MAX,
        };
        *self.gets_by_start.lock().unwrap().entry(start).or_default() += 1;
        let mut open = self.open.subscribe();
        Box::pin(async move {
            // The sender lives as long as `self`, so this cannot fail.
            let _ = open.wait_for(|open| *open).await;
            self.inner.get_opts(location, options).await
        })
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

    fn list_with_delimiter<'a, 'b, 'f>(
        &'a self,
        prefix: Option<&'b Path>,
    ) -> BoxFuture<'f, Result<ListResult>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.inner.list_with_delimiter(prefix)
    }

    fn copy_opts<'a, 'b, 'c, 'f>(
        &'a self,
        from: &'b Path,
        to: &'c Path,
        options: CopyOptions,
    ) -> BoxFuture<'f, Result<()>>
    where
        'a: 'f,
        'b: 'f,
        'c: 'f,
        Self: 'f,
    {
        self.inner.copy_opts(from, to, options)
    }
}
