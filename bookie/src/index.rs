//! The bookie's RocksDB index: per-segment state (fenced epoch, LAC, sealed).
//!
//! Entry locations and offset seeks join it as the journal and entry logs land.

use prost::Message;
use rocksdb::{ColumnFamilyDescriptor, Options, DB};
use std::path::Path;
use strata_proto::bookie::SegmentSummary;

/// Column family of per-segment state, keyed by big-endian segment id.
const CF_SEGMENTS: &str = "segments";

/// Errors of the bookie index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// RocksDB refused an operation.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored value did not decode: the index is damaged.
    #[error("corrupt segment record: {0}")]
    Corrupt(#[from] prost::DecodeError),
}

/// The RocksDB index of one bookie.
pub struct BookieIndex {
    db: DB,
}

impl BookieIndex {
    /// Opens (or creates) the index in `dir`.
    pub fn open(dir: &Path) -> Result<Self, IndexError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let cfs = [ColumnFamilyDescriptor::new(CF_SEGMENTS, Options::default())];
        let db = DB::open_cf_descriptors(&options, dir, cfs)?;
        Ok(Self { db })
    }

    /// Every segment this bookie holds, in segment-id order.
    pub fn segments(&self) -> Result<Vec<SegmentSummary>, IndexError> {
        let cf = self.cf();
        self.db
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .map(|item| {
                let (_, value) = item?;
                Ok(SegmentSummary::decode(&*value)?)
            })
            .collect()
    }

    /// Records the state of one segment.
    pub fn put_segment(&self, summary: &SegmentSummary) -> Result<(), IndexError> {
        let cf = self.cf();
        self.db.put_cf(
            cf,
            summary.segment_id.to_be_bytes(),
            summary.encode_to_vec(),
        )?;
        Ok(())
    }

    fn cf(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(CF_SEGMENTS)
            .expect("the segments column family is created on open")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_survive_reopen_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let index = BookieIndex::open(dir.path()).unwrap();
            for id in [300u64, 2, 17] {
                let summary = SegmentSummary {
                    segment_id: id,
                    last_add_confirmed: -1,
                    last_entry_id: -1,
                    ..Default::default()
                };
                index.put_segment(&summary).unwrap();
            }
        }
        let index = BookieIndex::open(dir.path()).unwrap();
        let ids: Vec<u64> = index
            .segments()
            .unwrap()
            .iter()
            .map(|s| s.segment_id)
            .collect();
        assert_eq!(ids, vec![2, 17, 300]);
    }
}
