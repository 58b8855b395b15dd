//! The bookie's RocksDB index.
//!
//! Column families:
//! - `segment_state`: segment id → [`SegmentMeta`] (fenced epoch, LAC, sealed end,
//!   last entry, bytes);
//! - `entries`: (segment id, entry id) → [`Location`] in an entry log;
//! - `offsets`: (segment id, base offset) → entry id, so the entry holding a
//!   Kafka offset is one seek away (the greatest base offset at or below it);
//! - `log_usage`: entry-log id → live bytes, kept by a summing merge operator in
//!   the same batches that move entries, so it is always consistent with them;
//! - `meta`: the checkpoint (the journal position everything before which is in
//!   the synced entry logs and index).
//!
//! Keys are big-endian so that RocksDB's order is numeric order. Writes are not
//! synced one by one: the journal is the durable record until a checkpoint
//! syncs the index ([`Index::sync`]).

use super::entry_log::Location;
use super::error::StorageError;
use super::journal::JournalPosition;
use super::segment::SegmentMeta;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, MergeOperands, Options, WriteBatch, WriteOptions, DB,
};
use std::collections::HashMap;
use std::path::Path;

const CF_SEGMENTS: &str = "segment_state";
const CF_ENTRIES: &str = "entries";
const CF_OFFSETS: &str = "offsets";
const CF_LOG_USAGE: &str = "log_usage";
const CF_META: &str = "meta";
const CHECKPOINT_KEY: &[u8] = b"checkpoint";
/// Length of the stored form of a [`Location`].
const LOCATION_LEN: usize = 8 + 8 + 4 + 8;

/// The RocksDB index of one bookie.
pub(crate) struct Index {
    db: DB,
}

impl Index {
    /// Opens (or creates) the index in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let mut usage_options = Options::default();
        usage_options.set_merge_operator_associative("sum_i64", sum_counters);
        let mut names: Vec<String> = [CF_SEGMENTS, CF_ENTRIES, CF_OFFSETS, CF_META]
            .map(String::from)
            .to_vec();
        // Column families of older versions must be opened too (and are left alone).
        if let Ok(existing) = DB::list_cf(&options, dir) {
            for name in existing {
                if name != "default" && name != CF_LOG_USAGE && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        let mut descriptors: Vec<_> = names
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()))
            .collect();
        descriptors.push(ColumnFamilyDescriptor::new(CF_LOG_USAGE, usage_options));
        let db = DB::open_cf_descriptors(&options, dir, descriptors)?;
        Ok(Self { db })
    }

    /// Every segment the index holds, in id order.
    pub fn segments(&self) -> Result<Vec<(u64, SegmentMeta)>, StorageError> {
        let mut segments = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_SEGMENTS), rocksdb::IteratorMode::Start)
        {
            let (key, value) = item?;
            segments.push((decode_u64(&key)?, SegmentMeta::decode(&value)?));
        }
        Ok(segments)
    }

    /// Where entry `entry_id` of `segment_id` is stored, if it is.
    pub fn entry(&self, segment_id: u64, entry_id: i64) -> Result<Option<Location>, StorageError> {
        self.db
            .get_pinned_cf(self.cf(CF_ENTRIES), entry_key(segment_id, entry_id))?
            .map(|value| decode_location(&value))
            .transpose()
    }

    /// Calls `visit` with the stored entries of `segment_id` from `first` on,
    /// in id order, while it returns `true`.
    pub fn scan_entries(
        &self,
        segment_id: u64,
        first: i64,
        mut visit: impl FnMut(i64, Location) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_ENTRIES));
        iter.seek(entry_key(segment_id, first.max(0)));
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            if key.len() != 16 || decode_u64(&key[..8])? != segment_id {
                break;
            }
            let entry_id = decode_u64(&key[8..])? as i64;
            if !visit(entry_id, decode_location(value)?)? {
                return Ok(());
            }
            iter.next();
        }
        iter.status()?;
        Ok(())
    }

    /// The entry of `segment_id` with the greatest base offset at or below
    /// `offset`: the one that holds `offset`, if the bookie has it.
    pub fn entry_for_offset(
        &self,
        segment_id: u64,
        offset: i64,
    ) -> Result<Option<i64>, StorageError> {
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_OFFSETS));
        iter.seek_for_prev(offset_key(segment_id, offset));
        match (iter.key(), iter.value()) {
            (Some(key), Some(value)) if key.len() == 16 && decode_u64(&key[..8])? == segment_id => {
                Ok(Some(decode_u64(value)? as i64))
            }
            _ => {
                iter.status()?;
                Ok(None)
            }
        }
    }

    /// Live bytes of every entry log that ever held an entry.
    pub fn log_usage(&self) -> Result<HashMap<u64, i64>, StorageError> {
        let mut usage = HashMap::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_LOG_USAGE), rocksdb::IteratorMode::Start)
        {
            let (key, value) = item?;
            usage.insert(decode_u64(&key)?, decode_i64(&value));
        }
        Ok(usage)
    }

    /// Forgets the usage of a deleted entry log.
    pub fn forget_log(&self, log_id: u64) -> Result<(), StorageError> {
        self.db
            .delete_cf(self.cf(CF_LOG_USAGE), log_id.to_be_bytes())?;
        Ok(())
    }

    /// The last checkpoint, if one was ever taken.
    pub fn checkpoint(&self) -> Result<Option<JournalPosition>, StorageError> {
        let Some(value) = self.db.get_cf(self.cf(CF_META), CHECKPOINT_KEY)? else {
            return Ok(None);
        };
        if value.len() != 16 {
            return Err(StorageError::Corrupt(format!(
                "checkpoint of {} bytes",
                value.len()
            )));
        }
        Ok(Some(JournalPosition {
            file_id: decode_u64(&value[..8])?,
            offset: decode_u64(&value[8..])?,
        }))
    }

    /// Records a checkpoint, durably (after [`Index::sync`] made what it covers durable).
    pub fn put_checkpoint(&self, position: JournalPosition) -> Result<(), StorageError> {
        let mut value = position.file_id.to_be_bytes().to_vec();
        value.extend_from_slice(&position.offset.to_be_bytes());
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .put_cf_opt(self.cf(CF_META), CHECKPOINT_KEY, value, &options)?;
        Ok(())
    }

    /// Makes every write so far durable.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// A batch of index changes, applied atomically by [`Index::write`].
    pub fn batch(&self) -> IndexBatch<'_> {
        IndexBatch {
            index: self,
            batch: WriteBatch::default(),
        }
    }

    /// Applies a batch atomically (not synced).
    pub fn write(&self, batch: IndexBatch<'_>) -> Result<(), StorageError> {
        self.db.write(batch.batch)?;
        Ok(())
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is created on open")
    }
}

/// Index changes that land together.
pub(crate) struct IndexBatch<'a> {
    index: &'a Index,
    batch: WriteBatch,
}

impl IndexBatch<'_> {
    /// Records the state of a segment.
    pub fn put_segment(&mut self, segment_id: u64, meta: &SegmentMeta) {
        self.batch.put_cf(
            self.index.cf(CF_SEGMENTS),
            segment_id.to_be_bytes(),
            meta.encode(),
        );
    }

    /// Records where an entry is, and its base offset for offset seeks.
    pub fn put_entry(&mut self, segment_id: u64, entry_id: i64, location: Location) {
        self.batch.put_cf(
            self.index.cf(CF_ENTRIES),
            entry_key(segment_id, entry_id),
            encode_location(location),
        );
        self.batch.put_cf(
            self.index.cf(CF_OFFSETS),
            offset_key(segment_id, location.base_offset),
            (entry_id as u64).to_be_bytes(),
        );
    }

    /// Drops an offset key that an overwritten entry left behind.
    pub fn delete_offset(&mut self, segment_id: u64, base_offset: i64) {
        self.batch.delete_cf(
            self.index.cf(CF_OFFSETS),
            offset_key(segment_id, base_offset),
        );
    }

    /// Adds `delta` to the live bytes of entry log `log_id`.
    pub fn add_log_bytes(&mut self, log_id: u64, delta: i64) {
        self.batch.merge_cf(
            self.index.cf(CF_LOG_USAGE),
            log_id.to_be_bytes(),
            delta.to_le_bytes(),
        );
    }

    /// Removes a segment: its state, entries and offsets.
    pub fn delete_segment(&mut self, segment_id: u64) {
        let from = segment_id.to_be_bytes();
        let to = segment_id.checked_add(1).map(u64::to_be_bytes);
        self.batch
            .delete_cf(self.index.cf(CF_SEGMENTS), segment_id.to_be_bytes());
        for cf in [CF_ENTRIES, CF_OFFSETS] {
            let cf = self.index.cf(cf);
            match to {
                Some(to) => self.batch.delete_range_cf(cf, from, to),
                // The very last segment id: no key past it, so end past any entry key.
                None => self
                    .batch
                    .delete_range_cf(cf, from.to_vec(), [0xff; 17].to_vec()),
            }
        }
    }
}

/// Key of an entry: segment id then entry id (never negative), big-endian.
fn entry_key(segment_id: u64, entry_id: i64) -> [u8; 16] {
    debug_assert!(
        entry_id >= 0,
        "entry ids are checked before they reach the index"
    );
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&segment_id.to_be_bytes());
    key[8..].copy_from_slice(&(entry_id.max(0) as u64).to_be_bytes());
    key
}

/// Key of a base offset: segment id then offset (never negative), big-endian.
fn offset_key(segment_id: u64, offset: i64) -> [u8; 16] {
    entry_key(segment_id, offset)
}

fn encode_location(location: Location) -> [u8; LOCATION_LEN] {
    let mut value = [0u8; LOCATION_LEN];
    value[..8].copy_from_slice(&location.log_id.to_le_bytes());
    value[8..16].copy_from_slice(&location.offset.to_le_bytes());
    value[16..20].copy_from_slice(&location.len.to_le_bytes());
    value[20..].copy_from_slice(&location.base_offset.to_le_bytes());
    value
}

fn decode_location(value: &[u8]) -> Result<Location, StorageError> {
    let Ok(value) = <[u8; LOCATION_LEN]>::try_from(value) else {
        return Err(StorageError::Corrupt(format!(
            "entry location of {} bytes",
            value.len()
        )));
    };
    let u64_at = |at: usize| u64::from_le_bytes(value[at..at + 8].try_into().expect("8 bytes"));
    Ok(Location {
        log_id: u64_at(0),
        offset: u64_at(8),
        len: u32::from_le_bytes(value[16..20].try_into().expect("4 bytes")),
        base_offset: u64_at(20) as i64,
    })
}

fn decode_u64(bytes: &[u8]) -> Result<u64, StorageError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| StorageError::Corrupt(format!("index key or value of {} bytes", bytes.len())))
}

/// A stored counter; a damaged one counts as 0 (merges cannot fail).
fn decode_i64(bytes: &[u8]) -> i64 {
    <[u8; 8]>::try_from(bytes).map_or(0, i64::from_le_bytes)
}

/// Merge operator of `log_usage`: the sum of the deltas.
fn sum_counters(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let total = operands
        .iter()
        .fold(existing.map_or(0, decode_i64), |sum, delta| {
            sum.wrapping_add(decode_i64(delta))
        });
    Some(total.to_le_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(log_id: u64, offset: u64, base_offset: i64) -> Location {
        Location {
            log_id,
            offset,
            len: 40,
            base_offset,
        }
    }

    #[test]
    fn entries_offsets_and_usage_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let index = Index::open(dir.path()).unwrap();
            let mut batch = index.batch();
            for (entry_id, base_offset) in [(0, 100), (1, 105), (2, 130)] {
                batch.put_entry(7, entry_id, location(1, entry_id as u64 * 40, base_offset));
                batch.add_log_bytes(1, 40);
            }
            batch.put_entry(8, 0, location(2, 0, 0));
            batch.add_log_bytes(2, 40);
            batch.add_log_bytes(1, -40);
            batch.put_segment(7, &SegmentMeta::default());
            index.write(batch).unwrap();
            index
                .put_checkpoint(JournalPosition {
                    file_id: 3,
                    offset: 99,
                })
                .unwrap();
        }
        let index = Index::open(dir.path()).unwrap();
        assert_eq!(index.entry(7, 1).unwrap(), Some(location(1, 40, 105)));
        assert_eq!(index.entry(7, 3).unwrap(), None);
        assert_eq!(index.entry_for_offset(7, 99).unwrap(), None);
        assert_eq!(index.entry_for_offset(7, 100).unwrap(), Some(0));
        assert_eq!(index.entry_for_offset(7, 129).unwrap(), Some(1));
        assert_eq!(index.entry_for_offset(7, 1000).unwrap(), Some(2));
        // Segment 8's offset 0 must not answer for segment 9.
        assert_eq!(index.entry_for_offset(9, 5).unwrap(), None);
        let usage = index.log_usage().unwrap();
        assert_eq!((usage[&1], usage[&2]), (80, 40));
        let mut seen = Vec::new();
        index
            .scan_entries(7, 1, |entry_id, _| {
                seen.push(entry_id);
                Ok(true)
            })
            .unwrap();
        assert_eq!(seen, vec![1, 2]);
        assert_eq!(
            index.checkpoint().unwrap(),
            Some(JournalPosition {
                file_id: 3,
                offset: 99
            })
        );
        assert_eq!(index.segments().unwrap().len(), 1);
    }

    #[test]
    fn deleting_a_segment_leaves_its_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let mut batch = index.batch();
        for segment_id in [1, 2, 3, u64::MAX] {
            batch.put_entry(segment_id, 0, location(1, 0, 0));
            batch.put_segment(segment_id, &SegmentMeta::default());
        }
        index.write(batch).unwrap();
        let mut batch = index.batch();
        batch.delete_segment(2);
        batch.delete_segment(u64::MAX);
        index.write(batch).unwrap();
        assert!(index.entry(1, 0).unwrap().is_some());
        assert!(index.entry(2, 0).unwrap().is_none());
        assert!(index.entry(3, 0).unwrap().is_some());
        assert!(index.entry(u64::MAX, 0).unwrap().is_none());
        assert_eq!(index.entry_for_offset(2, 0).unwrap(), None);
        let ids: Vec<u64> = index.segments().unwrap().iter().map(|s| s.0).collect();
        assert_eq!(ids, vec![1, 3]);
    }
}
