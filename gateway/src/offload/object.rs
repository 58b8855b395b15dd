//! The segment object format: one sealed segment as one object.
//!
//! ```text
//! [ batches: the segment's v2 record batches as stored, concatenated ]
//! [ footer:  version u16 | segment id u64 | base offset i64 | end offset i64
//!            | batch bytes u64 | batch CRC-32C u32 | max timestamp i64
//!            | index entry count u32
//!            | entries: (base offset i64, position u64, running max timestamp i64)*
//!            | CRC-32C u32 of the footer bytes before it ]
//! [ trailer: footer length u32 | magic "STRATASG" | trailer version u32 ]
//! ```
//!
//! Every integer is big-endian. The trailer has a fixed size, so a reader
//! fetches the object's last bytes, reads the trailer, then the footer, then
//! only the byte ranges of the batches it needs. The footer's sparse index
//! has an entry for the first batch and then for the first batch starting at
//! least `index_interval_bytes` after the previously indexed one.

use crate::log::batch::{HEADER_BYTES, MAGIC_V2};
use bytes::{BufMut, Bytes, BytesMut};

/// The footer layout this code writes and reads.
pub const FOOTER_VERSION: u16 = 1;
/// The trailer layout this code writes and reads.
pub const TRAILER_VERSION: u32 = 1;
/// Last bytes but four of every segment object.
pub const MAGIC: [u8; 8] = *b"STRATASG";
/// Size of the trailer at the very end of the object.
pub const TRAILER_BYTES: usize = 4 + MAGIC.len() + 4;
/// Default distance in bytes between two entries of the sparse index.
pub const DEFAULT_INDEX_INTERVAL_BYTES: u64 = 4096;
/// Bytes at the start of a batch that say where it is and what it holds
/// (up to and including the last offset delta).
pub(super) const BATCH_PREFIX_BYTES: usize = 27;

/// Footer bytes besides the index entries: the fixed fields and the CRC.
const FOOTER_FIXED_BYTES: usize = 2 + 8 + 8 + 8 + 8 + 4 + 8 + 4 + 4;
const INDEX_ENTRY_BYTES: usize = 8 + 8 + 8;
/// Kafka's "no timestamp", the largest timestamp of a segment without batches.
const NO_TIMESTAMP: i64 = -1;

// Fields of a v2 record batch header (see `crate::log::batch`).
const LOG_OVERHEAD: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const MAX_TIMESTAMP_AT: usize = 35;

/// Why segment bytes could not be written to, or read from, an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// A record batch's framing or header is not a v2 batch's.
    #[error("record batch at byte {position} is malformed: {reason}")]
    MalformedBatch {
        /// Where the batch starts in the object.
        position: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A record batch's bytes do not match its CRC-32C.
    #[error("record batch at byte {position} has CRC-32C {actual:#010x}, its header says {stored:#010x}")]
    BatchCrc {
        /// Where the batch starts in the object.
        position: u64,
        /// The CRC in the batch header.
        stored: u32,
        /// The CRC of the batch's bytes.
        actual: u32,
    },
    /// A batch does not start right after the previous one's last offset
    /// (a Strata log has no gaps).
    #[error("record batch at byte {position} starts at offset {base_offset}, expected {expected}")]
    UnexpectedOffset {
        /// Where the batch starts in the object.
        position: u64,
        /// The batch's base offset.
        base_offset: i64,
        /// The offset after the previous batch (the segment's base offset
        /// for the first batch).
        expected: i64,
    },
    /// The batches do not reach, or go past, the segment's end offset.
    #[error("the segment's batches end at offset {actual}, its end offset is {expected}")]
    EndMismatch {
        /// The segment's end offset.
        expected: i64,
        /// The offset after the last batch pushed.
        actual: i64,
    },
    /// The bytes given do not hold the whole trailer and footer.
    #[error("the footer and trailer need the object's last {needed} bytes, {have} were given")]
    Truncated {
        /// Bytes from the end of the object that hold the footer and trailer.
        needed: u64,
        /// Bytes that were given.
        have: u64,
    },
    /// The trailer does not end with the segment object magic.
    #[error("not a segment object: trailer magic is {found:02x?}")]
    BadMagic {
        /// The bytes found where the magic belongs.
        found: [u8; 8],
    },
    /// The trailer's version is one this code does not know.
    #[error("segment object trailer version {0} is not supported")]
    UnsupportedTrailerVersion(u32),
    /// The footer's version is one this code does not know.
    #[error("segment object footer version {0} is not supported")]
    UnsupportedFooterVersion(u16),
    /// The footer's bytes do not match its CRC-32C.
    #[error("segment object footer has CRC-32C {actual:#010x}, it says {stored:#010x}")]
    FooterCrc {
        /// The CRC stored after the footer.
        stored: u32,
        /// The CRC of the footer's bytes.
        actual: u32,
    },
    /// The footer decodes but contradicts itself.
    #[error("segment object footer is malformed: {0}")]
    MalformedFooter(String),
}

/// Which segment an object holds, as metadata knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentMeta {
    /// The segment's id in metadata.
    pub segment_id: u64,
    /// Offset of the segment's first record.
    pub base_offset: i64,
    /// Offset after the segment's last record (its sealed end offset).
    pub end_offset: i64,
}

/// One entry of the footer's sparse index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Base offset of the indexed batch.
    pub base_offset: i64,
    /// Where the indexed batch starts in the object.
    pub position: u64,
    /// Largest timestamp of all batches up to and including this one.
    pub max_timestamp: i64,
}

/// The decoded footer of a segment object: what the object holds and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// The segment's id in metadata.
    pub segment_id: u64,
    /// Offset of the segment's first record.
    pub base_offset: i64,
    /// Offset after the segment's last record.
    pub end_offset: i64,
    /// Bytes of the batch region, which starts at byte 0 of the object.
    pub batch_bytes: u64,
    /// CRC-32C of the whole batch region.
    pub batch_crc32c: u32,
    /// Largest timestamp of any batch, or -1 without batches.
    pub max_timestamp: i64,
    index: Vec<IndexEntry>,
}

impl Footer {
    /// The sparse index, in object order.
    pub fn index(&self) -> &[IndexEntry] {
        &self.index
    }

    /// Bytes of the footer and trailer together, as encoded.
    pub fn encoded_len(&self) -> u64 {
        (FOOTER_FIXED_BYTES + self.index.len() * INDEX_ENTRY_BYTES + TRAILER_BYTES) as u64
    }

    /// Size of the whole object this footer ends.
    pub fn object_size(&self) -> u64 {
        self.batch_bytes + self.encoded_len()
    }

    /// Where to start reading for `offset`: the start of the last indexed
    /// batch whose base offset is at or before it (0 before the first).
    pub fn position_for_offset(&self, offset: i64) -> u64 {
        let after = self.index.partition_point(|e| e.base_offset <= offset);
        after.checked_sub(1).map_or(0, |i| self.index[i].position)
    }

    /// Where to start scanning for the first batch whose largest timestamp is
    /// at least `timestamp`: the indexed entry before the first one whose
    /// running max reaches it. `None` when no batch reaches `timestamp`.
    pub fn position_for_timestamp(&self, timestamp: i64) -> Option<u64> {
        if self.index.is_empty() || self.max_timestamp < timestamp {
            return None;
        }
        // Running maxima never decrease, so the entries are partitioned.
        let reaching = self.index.partition_point(|e| e.max_timestamp < timestamp);
        let entry = reaching.saturating_sub(1);
        Some(self.index[entry].position)
    }

    /// The footer followed by the trailer, as they end the object.
    pub fn encode(&self) -> Bytes {
        let footer_len = FOOTER_FIXED_BYTES + self.index.len() * INDEX_ENTRY_BYTES;
        let mut out = BytesMut::with_capacity(footer_len + TRAILER_BYTES);
        out.put_u16(FOOTER_VERSION);
        out.put_u64(self.segment_id);
        out.put_i64(self.base_offset);
        out.put_i64(self.end_offset);
        out.put_u64(self.batch_bytes);
        out.put_u32(self.batch_crc32c);
        out.put_i64(self.max_timestamp);
        out.put_u32(self.index.len() as u32);
        for entry in &self.index {
            out.put_i64(entry.base_offset);
            out.put_u64(entry.position);
            out.put_i64(entry.max_timestamp);
        }
        out.put_u32(crc32c::crc32c(&out));
        debug_assert_eq!(out.len(), footer_len);
        out.put_u32(footer_len as u32);
        out.put_slice(&MAGIC);
        out.put_u32(TRAILER_VERSION);
        out.freeze()
    }

    /// Decodes the footer from `tail`, the object's last bytes (any suffix
    /// holding the footer and the trailer). [`ObjectError::Truncated`] says
    /// how many bytes from the end are needed when `tail` is too short.
    pub fn decode(tail: &[u8]) -> Result<Self, ObjectError> {
        let have = tail.len() as u64;
        let trailer_at = tail
            .len()
            .checked_sub(TRAILER_BYTES)
            .ok_or(ObjectError::Truncated {
                needed: TRAILER_BYTES as u64,
                have,
            })?;
        let mut trailer = Cursor(&tail[trailer_at..]);
        let footer_len = trailer.u32()?;
        let magic = trailer.array::<8>()?;
        if magic != MAGIC {
            return Err(ObjectError::BadMagic { found: magic });
        }
        let trailer_version = trailer.u32()?;
        if trailer_version != TRAILER_VERSION {
            return Err(ObjectError::UnsupportedTrailerVersion(trailer_version));
        }
        let footer_len = footer_len as usize;
        if footer_len < FOOTER_FIXED_BYTES {
            return Err(ObjectError::MalformedFooter(format!(
                "footer length {footer_len} is shorter than its {FOOTER_FIXED_BYTES} fixed bytes"
            )));
        }
        let footer_at = trailer_at
            .checked_sub(footer_len)
            .ok_or(ObjectError::Truncated {
                needed: (footer_len + TRAILER_BYTES) as u64,
                have,
            })?;
        let (body, crc) = tail[footer_at..trailer_at].split_at(footer_len - 4);
        let stored = Cursor(crc).u32()?;
        let actual = crc32c::crc32c(body);
        if stored != actual {
            return Err(ObjectError::FooterCrc { stored, actual });
        }
        let mut body = Cursor(body);
        let version = body.u16()?;
        if version != FOOTER_VERSION {
            return Err(ObjectError::UnsupportedFooterVersion(version));
        }
        let segment_id = body.u64()?;
        let base_offset = body.i64()?;
        let end_offset = body.i64()?;
        let batch_bytes = body.u64()?;
        let batch_crc32c = body.u32()?;
        let max_timestamp = body.i64()?;
        let entries = body.u32()? as usize;
        if body.0.len() != entries.saturating_mul(INDEX_ENTRY_BYTES) {
            return Err(ObjectError::MalformedFooter(format!(
                "{entries} index entries do not fit the footer's {footer_len} bytes"
            )));
        }
        let mut index = Vec::with_capacity(entries);
        for _ in 0..entries {
            index.push(IndexEntry {
                base_offset: body.i64()?,
                position: body.u64()?,
                max_timestamp: body.i64()?,
            });
        }
        let footer = Self {
            segment_id,
            base_offset,
            end_offset,
            batch_bytes,
            batch_crc32c,
            max_timestamp,
            index,
        };
        footer.check()?;
        Ok(footer)
    }

    /// Checks what lookups and reads rely on, so that a damaged footer is an
    /// error instead of a wrong read.
    fn check(&self) -> Result<(), ObjectError> {
        let malformed = |what: String| Err(ObjectError::MalformedFooter(what));
        if self.end_offset < self.base_offset {
            return malformed(format!(
                "end offset {} is before base offset {}",
                self.end_offset, self.base_offset
            ));
        }
        match self.index.first() {
            None if self.batch_bytes != 0 => {
                return malformed(format!(
                    "{} bytes of batches but no index entry",
                    self.batch_bytes
                ))
            }
            Some(first) if first.position != 0 || first.base_offset != self.base_offset => {
                return malformed(format!(
                    "the first index entry is at byte {} offset {}, not at the first batch",
                    first.position, first.base_offset
                ));
            }
            _ => {}
        }
        for pair in self.index.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if b.position <= a.position
                || b.base_offset <= a.base_offset
                || b.max_timestamp < a.max_timestamp
            {
                return malformed(format!("index entries {a:?} and {b:?} are out of order"));
            }
        }
        if let Some(last) = self.index.last() {
            if last.position >= self.batch_bytes
                || last.base_offset >= self.end_offset
                || last.max_timestamp > self.max_timestamp
            {
                return malformed(format!("index entry {last:?} lies outside the segment"));
            }
        }
        Ok(())
    }
}

/// Where a batch is and which offsets it holds, read from its first
/// [`BATCH_PREFIX_BYTES`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BatchHeader {
    /// Offset of the batch's first record.
    pub base_offset: i64,
    /// Offset of the batch's last record.
    pub last_offset: i64,
    /// Size of the whole batch in bytes.
    pub len: usize,
}

impl BatchHeader {
    /// Reads the header of the batch starting `prefix`; errors say why the
    /// bytes cannot start a v2 batch.
    pub(super) fn parse(prefix: &[u8]) -> Result<Self, String> {
        let mut cursor = Cursor(prefix);
        let base_offset = cursor.i64().map_err(|_| too_short(prefix.len()))?;
        let batch_length = cursor.i32().map_err(|_| too_short(prefix.len()))?;
        if prefix.len() < BATCH_PREFIX_BYTES {
            return Err(too_short(prefix.len()));
        }
        let len = usize::try_from(batch_length)
            .ok()
            .map(|n| n + LOG_OVERHEAD)
            .filter(|n| *n >= HEADER_BYTES)
            .ok_or_else(|| format!("batch length {batch_length} is invalid"))?;
        let magic = prefix[MAGIC_AT] as i8;
        if magic != MAGIC_V2 {
            return Err(format!("message format v{magic} is not v{MAGIC_V2}"));
        }
        let delta = Cursor(&prefix[LAST_OFFSET_DELTA_AT..])
            .i32()
            .map_err(|_| too_short(prefix.len()))?;
        let last_offset = Some(i64::from(delta))
            .filter(|d| *d >= 0)
            .and_then(|d| base_offset.checked_add(d))
            .ok_or_else(|| format!("last offset delta {delta} is invalid"))?;
        Ok(Self {
            base_offset,
            last_offset,
            len,
        })
    }
}

fn too_short(len: usize) -> String {
    format!("{len} bytes are too short for a batch header")
}

/// Checks a whole batch's CRC-32C (it covers the bytes from its attributes on).
pub(super) fn check_batch_crc(batch: &[u8], position: u64) -> Result<(), ObjectError> {
    if batch.len() < HEADER_BYTES {
        return Err(ObjectError::MalformedBatch {
            position,
            reason: too_short(batch.len()),
        });
    }
    let stored = u32::from_be_bytes([
        batch[CRC_AT],
        batch[CRC_AT + 1],
        batch[CRC_AT + 2],
        batch[CRC_AT + 3],
    ]);
    let actual = crc32c::crc32c(&batch[ATTRIBUTES_AT..]);
    if stored != actual {
        return Err(ObjectError::BatchCrc {
            position,
            stored,
            actual,
        });
    }
    Ok(())
}

/// Builds a segment object a batch at a time, so that a segment is never
/// held in memory whole: each [`push`](Self::push) checks batches and hands
/// back the bytes to upload next; [`finish`](Self::finish) hands back the
/// footer and the bytes that end the object.
#[derive(Debug)]
pub struct SegmentObjectBuilder {
    meta: SegmentMeta,
    index_interval_bytes: u64,
    progress: Progress,
    index: Vec<IndexEntry>,
}

/// What the builder has seen so far; copied so that a refused push leaves
/// the builder as it was.
#[derive(Debug, Clone, Copy)]
struct Progress {
    next_offset: i64,
    position: u64,
    crc: u32,
    /// Largest timestamp so far; `i64::MIN` until the first batch.
    max_timestamp: i64,
}

impl SegmentObjectBuilder {
    /// A builder for the object of segment `meta`, with an index entry about
    /// every `index_interval_bytes` of batches.
    pub fn new(meta: SegmentMeta, index_interval_bytes: u64) -> Self {
        Self {
            meta,
            index_interval_bytes,
            progress: Progress {
                next_offset: meta.base_offset,
                position: 0,
                crc: 0,
                max_timestamp: i64::MIN,
            },
            index: Vec::new(),
        }
    }

    /// Bytes of batches pushed so far.
    pub fn batch_bytes(&self) -> u64 {
        self.progress.position
    }

    /// Adds `batches` (one or more whole v2 batches, concatenated) after the
    /// ones before, checking framing, CRC-32C and that offsets continue
    /// exactly where the previous batch ended, within the segment. Returns the
    /// same bytes, to be uploaded next. A refused push changes nothing.
    pub fn push(&mut self, batches: Bytes) -> Result<Bytes, ObjectError> {
        let indexed = self.index.len();
        let result = self.push_all(&batches);
        match result {
            Ok(progress) => {
                self.progress = progress;
                Ok(batches)
            }
            Err(error) => {
                self.index.truncate(indexed);
                Err(error)
            }
        }
    }

    fn push_all(&mut self, batches: &[u8]) -> Result<Progress, ObjectError> {
        let mut progress = self.progress;
        let mut rest = batches;
        while !rest.is_empty() {
            let position = progress.position;
            let malformed = |reason| ObjectError::MalformedBatch { position, reason };
            let header = BatchHeader::parse(rest).map_err(malformed)?;
            if header.len > rest.len() {
                return Err(malformed(format!(
                    "batch of {} bytes is cut off after {} bytes",
                    header.len,
                    rest.len()
                )));
            }
            let (batch, after) = rest.split_at(header.len);
            check_batch_crc(batch, position)?;
            if header.base_offset != progress.next_offset {
                return Err(ObjectError::UnexpectedOffset {
                    position,
                    base_offset: header.base_offset,
                    expected: progress.next_offset,
                });
            }
            if header.last_offset >= self.meta.end_offset {
                return Err(ObjectError::EndMismatch {
                    expected: self.meta.end_offset,
                    actual: header.last_offset + 1,
                });
            }
            let max_timestamp = Cursor(&batch[MAX_TIMESTAMP_AT..])
                .i64()
                .map_err(|_| malformed(too_short(batch.len())))?;
            progress.max_timestamp = progress.max_timestamp.max(max_timestamp);
            let index_due = self.index.last().is_none_or(|last| {
                position >= last.position.saturating_add(self.index_interval_bytes)
            });
            if index_due {
                self.index.push(IndexEntry {
                    base_offset: header.base_offset,
                    position,
                    max_timestamp: progress.max_timestamp,
                });
            }
            progress.crc = crc32c::crc32c_append(progress.crc, batch);
            progress.position += batch.len() as u64;
            progress.next_offset = header.last_offset + 1;
            rest = after;
        }
        Ok(progress)
    }

    /// Ends the object: checks that the batches reached the segment's end
    /// offset and returns the footer and its encoding (footer and trailer),
    /// the object's last bytes.
    pub fn finish(self) -> Result<(Footer, Bytes), ObjectError> {
        if self.progress.next_offset != self.meta.end_offset {
            return Err(ObjectError::EndMismatch {
                expected: self.meta.end_offset,
                actual: self.progress.next_offset,
            });
        }
        let footer = Footer {
            segment_id: self.meta.segment_id,
            base_offset: self.meta.base_offset,
            end_offset: self.meta.end_offset,
            batch_bytes: self.progress.position,
            batch_crc32c: self.progress.crc,
            max_timestamp: if self.index.is_empty() {
                NO_TIMESTAMP
            } else {
                self.progress.max_timestamp
            },
            index: self.index,
        };
        let encoded = footer.encode();
        Ok((footer, encoded))
    }
}

/// Reads big-endian integers off a slice, failing instead of panicking when
/// the slice is too short.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ObjectError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(|| ObjectError::MalformedFooter("unexpected end of footer".into()))?;
        self.0 = rest;
        Ok(*head)
    }

    fn u16(&mut self) -> Result<u16, ObjectError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, ObjectError> {
        self.array().map(u32::from_be_bytes)
    }

    fn i32(&mut self) -> Result<i32, ObjectError> {
        self.array().map(i32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, ObjectError> {
        self.array().map(u64::from_be_bytes)
    }

    fn i64(&mut self) -> Result<i64, ObjectError> {
        self.array().map(i64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::test_support::{batch, build_object};
    use proptest::prelude::*;

    fn meta(base_offset: i64, end_offset: i64) -> SegmentMeta {
        SegmentMeta {
            segment_id: 9,
            base_offset,
            end_offset,
        }
    }

    #[test]
    fn an_object_is_its_batches_then_footer_and_trailer() {
        let batches = [batch(100, 3, 10, 50), batch(103, 1, 5, 20)];
        let (object, footer) = build_object(meta(100, 104), &batches, 4096);
        let batch_bytes = batches.iter().map(Bytes::len).sum::<usize>();
        assert_eq!(&object[..batches[0].len()], &batches[0][..]);
        assert_eq!(footer.batch_bytes, batch_bytes as u64);
        assert_eq!(footer.object_size(), object.len() as u64);
        assert_eq!(footer.max_timestamp, 12);
        assert_eq!(footer.batch_crc32c, crc32c::crc32c(&object[..batch_bytes]));
        assert_eq!(&object[object.len() - 12..object.len() - 4], b"STRATASG");
        assert_eq!(Footer::decode(&object).unwrap(), footer);
        assert_eq!(Footer::decode(&object[batch_bytes..]).unwrap(), footer);
    }

    #[test]
    fn the_index_has_an_entry_every_interval() {
        // Batches of 61 + 39 = 100 bytes; an entry at least every 250 bytes.
        let batches: Vec<Bytes> = (0..10).map(|i| batch(i, 1, i, 39)).collect();
        let (_, footer) = build_object(meta(0, 10), &batches, 250);
        let positions: Vec<u64> = footer.index().iter().map(|e| e.position).collect();
        assert_eq!(positions, vec![0, 300, 600, 900]);
        assert_eq!(footer.position_for_offset(-5), 0);
        assert_eq!(footer.position_for_offset(2), 0);
        assert_eq!(footer.position_for_offset(3), 300);
        assert_eq!(footer.position_for_offset(8), 600);
        assert_eq!(footer.position_for_offset(1_000), 900);
    }

    #[test]
    fn timestamp_lookups_start_before_the_first_batch_reaching_it() {
        // Max timestamps per batch (one batch per index entry): 10, 5, 30, 20, 40.
        let stamps = [10, 5, 30, 20, 40];
        let batches: Vec<Bytes> = stamps
            .iter()
            .enumerate()
            .map(|(i, ts)| batch(i as i64, 1, *ts, 0))
            .collect();
        let (_, footer) = build_object(meta(0, 5), &batches, 1);
        let maxima: Vec<i64> = footer.index().iter().map(|e| e.max_timestamp).collect();
        assert_eq!(maxima, vec![10, 10, 30, 30, 40]);
        let at = |i: usize| footer.index()[i].position;
        assert_eq!(footer.position_for_timestamp(0), Some(at(0)));
        assert_eq!(footer.position_for_timestamp(10), Some(at(0)));
        assert_eq!(footer.position_for_timestamp(11), Some(at(1)));
        assert_eq!(footer.position_for_timestamp(40), Some(at(3)));
        assert_eq!(footer.position_for_timestamp(41), None);
    }

    #[test]
    fn unindexed_batches_after_the_last_entry_still_answer_timestamps() {
        let batches = [batch(0, 1, 1, 0), batch(1, 1, 99, 0)];
        let (_, footer) = build_object(meta(0, 2), &batches, 1 << 20);
        assert_eq!(footer.index().len(), 1);
        assert_eq!(footer.position_for_timestamp(50), Some(0));
        assert_eq!(footer.position_for_timestamp(100), None);
    }

    #[test]
    fn an_empty_segment_is_a_footer_only() {
        let (object, footer) = build_object(meta(7, 7), &[], 4096);
        assert_eq!(footer.batch_bytes, 0);
        assert_eq!(footer.max_timestamp, -1);
        assert_eq!(object.len() as u64, footer.encoded_len());
        assert_eq!(footer.position_for_timestamp(0), None);
        assert_eq!(Footer::decode(&object).unwrap(), footer);
    }

    #[test]
    fn bad_batches_are_refused_and_leave_the_builder_unchanged() {
        let mut builder = SegmentObjectBuilder::new(meta(0, 10), 4096);
        builder.push(batch(0, 2, 1, 10)).unwrap();
        let size = builder.batch_bytes();

        let gap = builder.push(batch(3, 1, 1, 10)).unwrap_err();
        assert!(matches!(
            gap,
            ObjectError::UnexpectedOffset { expected: 2, .. }
        ));

        let mut corrupt = batch(2, 1, 1, 10).to_vec();
        *corrupt.last_mut().unwrap() ^= 1;
        let crc = builder.push(corrupt.into()).unwrap_err();
        assert!(matches!(crc, ObjectError::BatchCrc { .. }), "{crc}");

        let whole = batch(2, 1, 1, 10);
        let cut = builder.push(whole.slice(..whole.len() - 1)).unwrap_err();
        assert!(matches!(cut, ObjectError::MalformedBatch { .. }), "{cut}");

        // A good batch followed by a bad one in the same push: neither is kept.
        let mut two = batch(2, 1, 1, 10).to_vec();
        two.extend_from_slice(&batch(9, 1, 1, 10));
        assert!(builder.push(two.into()).is_err());

        let past_end = builder.push(batch(2, 9, 1, 10)).unwrap_err();
        assert!(matches!(past_end, ObjectError::EndMismatch { .. }));
        assert_eq!(builder.batch_bytes(), size);

        builder.push(batch(2, 8, 1, 10)).unwrap();
        let mut short = SegmentObjectBuilder::new(meta(0, 10), 4096);
        short.push(batch(0, 2, 1, 10)).unwrap();
        let end = short.finish().unwrap_err();
        assert_eq!(
            end,
            ObjectError::EndMismatch {
                expected: 10,
                actual: 2
            }
        );
        assert!(builder.finish().is_ok());
    }

    #[test]
    fn damaged_footers_are_refused_with_clear_errors() {
        let batches: Vec<Bytes> = (0..4).map(|i| batch(i, 1, i, 100)).collect();
        let (object, footer) = build_object(meta(0, 4), &batches, 100);
        let tail = object.slice(footer.batch_bytes as usize..);

        assert_eq!(
            Footer::decode(&tail[tail.len() - 10..]).unwrap_err(),
            ObjectError::Truncated {
                needed: TRAILER_BYTES as u64,
                have: 10
            }
        );
        assert_eq!(
            Footer::decode(&tail[tail.len() - 20..]).unwrap_err(),
            ObjectError::Truncated {
                needed: tail.len() as u64,
                have: 20
            }
        );

        let mut bad_magic = tail.to_vec();
        let at = bad_magic.len() - 5;
        bad_magic[at] = b'x';
        assert!(matches!(
            Footer::decode(&bad_magic).unwrap_err(),
            ObjectError::BadMagic { .. }
        ));

        let mut bad_trailer_version = tail.to_vec();
        let at = bad_trailer_version.len() - 1;
        bad_trailer_version[at] = 9;
        assert_eq!(
            Footer::decode(&bad_trailer_version).unwrap_err(),
            ObjectError::UnsupportedTrailerVersion(9)
        );

        let mut flipped = tail.to_vec();
        flipped[5] ^= 1;
        assert!(matches!(
            Footer::decode(&flipped).unwrap_err(),
            ObjectError::FooterCrc { .. }
        ));

        let mut short_len = tail.to_vec();
        let at = short_len.len() - TRAILER_BYTES;
        short_len[at..at + 4].copy_from_slice(&3u32.to_be_bytes());
        assert!(matches!(
            Footer::decode(&short_len).unwrap_err(),
            ObjectError::MalformedFooter(_)
        ));

        // A footer of a newer version, with a valid CRC.
        let mut newer = tail.to_vec();
        newer[0..2].copy_from_slice(&2u16.to_be_bytes());
        let footer_len = newer.len() - TRAILER_BYTES;
        let crc = crc32c::crc32c(&newer[..footer_len - 4]);
        newer[footer_len - 4..footer_len].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            Footer::decode(&newer).unwrap_err(),
            ObjectError::UnsupportedFooterVersion(2)
        );
    }

    #[test]
    fn arbitrary_tails_never_panic() {
        let batches: Vec<Bytes> = (0..3).map(|i| batch(i, 1, i, 10)).collect();
        let (object, _) = build_object(meta(0, 3), &batches, 1);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bytes = object.to_vec();
            let at = (state as usize) % bytes.len();
            bytes[at] = (state >> 32) as u8;
            let from = ((state >> 16) as usize) % bytes.len();
            let _ = Footer::decode(&bytes[from..]);
        }
    }

    proptest! {
        #[test]
        fn random_segments_round_trip_and_every_offset_finds_its_batch(
            specs in prop::collection::vec((1i32..20, -5i64..1_000, 0usize..300), 0..60),
            base_offset in 0i64..1_000_000,
            interval in 1u64..2_000,
        ) {
            let mut batches = Vec::new();
            let mut next = base_offset;
            for (records, timestamp, payload) in &specs {
                batches.push(batch(next, *records, *timestamp, *payload));
                next += i64::from(*records);
            }
            let (object, footer) = build_object(meta(base_offset, next), &batches, interval);
            let decoded = Footer::decode(&object).unwrap();
            prop_assert_eq!(&decoded, &footer);
            prop_assert_eq!(decoded.object_size(), object.len() as u64);

            // Every offset's lookup lands on a batch start at or before it.
            let mut starts = std::collections::BTreeMap::new();
            let mut position = 0u64;
            for b in &batches {
                let header = BatchHeader::parse(b).unwrap();
                starts.insert(position, header);
                position += b.len() as u64;
            }
            for offset in base_offset..next {
                let at = decoded.position_for_offset(offset);
                let header = starts.get(&at).expect("lookups land on a batch start");
                prop_assert!(header.base_offset <= offset);
            }
            // Timestamp lookups land on a batch start no later than the first
            // batch reaching the timestamp.
            for &(_, ts, _) in &specs {
                let first = batches.iter().zip(starts.keys()).find(|(b, _)| {
                    i64::from_be_bytes(b[35..43].try_into().unwrap()) >= ts
                });
                let at = decoded.position_for_timestamp(ts);
                match first {
                    Some((_, start)) => {
                        let at = at.expect("a batch reaches the timestamp");
                        prop_assert!(starts.contains_key(&at) && at <= *start);
                    }
                    None => prop_assert_eq!(at, None),
                }
            }
        }
    }
}
