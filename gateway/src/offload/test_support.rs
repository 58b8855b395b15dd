//! Helpers for the offload unit tests: hand-made record batches, whole
//! objects built in memory, and an object store that counts its requests.

use super::object::{Footer, SegmentMeta, SegmentObjectBuilder};
use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// An in-memory store that counts GETs (ranged or not) and multipart uploads.
#[derive(Debug, Default)]
pub struct CountingStore {
    pub inner: InMemory,
    pub gets: AtomicUsize,
    pub multipart_uploads: AtomicUsize,
    pub puts: AtomicUsize,
}

impl CountingStore {
    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
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
        self.inner.get_opts(location, options)
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
