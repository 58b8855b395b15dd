//! The raft log in RocksDB: entries in the `raft_log` column family keyed by
//! big-endian index, and the vote, committed id and purge mark in `raft_meta`.
//! Every write is synced before openraft is told it is durable.

// Openraft's traits fix the error type; its size is theirs to choose.
#![allow(clippy::result_large_err)]

use super::wire::{decode, encode};
use super::{storage_error, LogEntry, LogId, StorageError, TypeConfig};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorVerb, LogState, RaftLogId, RaftLogReader, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

/// Column family of the raft log entries.
pub const CF_LOG: &str = "raft_log";
/// Column family of the vote, the committed log id and the purge mark.
pub const CF_RAFT_META: &str = "raft_meta";

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// The raft log of one metadata node; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
}

impl LogStore {
    /// A log store over a database opened with [`CF_LOG`] and [`CF_RAFT_META`].
    pub fn new(db: Arc<DB>) -> Self {
        Self { db }
    }

    fn log_cf(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(CF_LOG)
            .expect("the raft log column family is created on open")
    }

    fn meta_cf(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(CF_RAFT_META)
            .expect("the raft meta column family is created on open")
    }

    fn synced() -> WriteOptions {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        options
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        verb: ErrorVerb,
    ) -> Result<Option<T>, StorageError> {
        let Some(bytes) = self
            .db
            .get_cf(self.meta_cf(), key)
            .map_err(|e| storage_error(verb, &e))?
        else {
            return Ok(None);
        };
        decode(&bytes)
            .map(Some)
            .map_err(|e| storage_error(verb, &e))
    }

    fn put_meta<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
        verb: ErrorVerb,
    ) -> Result<(), StorageError> {
        let bytes = encode(value).map_err(|e| storage_error(verb, &e))?;
        self.db
            .put_cf_opt(self.meta_cf(), key, bytes, &Self::synced())
            .map_err(|e| storage_error(verb, &e))
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        let mut iter = self.db.iterator_cf(self.log_cf(), IteratorMode::End);
        let Some(item) = iter.next() else {
            return Ok(None);
        };
        let (_, value) = item.map_err(|e| storage_error(ErrorVerb::Read, &e))?;
        let entry: LogEntry = decode(&value).map_err(|e| storage_error(ErrorVerb::Read, &e))?;
        Ok(Some(*entry.get_log_id()))
    }

    /// Whether this node has ever voted or logged anything: a node that has
    /// not is new and may be initialised.
    pub fn is_pristine(&self) -> Result<bool, StorageError> {
        let vote: Option<Vote<u64>> = self.get_meta(KEY_VOTE, ErrorVerb::Read)?;
        Ok(vote.is_none() && self.last_entry_id()?.is_none())
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<LogEntry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let start_key = index_key(start);
        let iter = self.db.iterator_cf(
            self.log_cf(),
            IteratorMode::From(&start_key, Direction::Forward),
        );
        let mut entries = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(|e| storage_error(ErrorVerb::Read, &e))?;
            let index = u64::from_be_bytes(
                key.as_ref()
                    .try_into()
                    .map_err(|_| storage_error(ErrorVerb::Read, &BadKey))?,
            );
            if !range.contains(&index) {
                break;
            }
            entries.push(decode(&value).map_err(|e| storage_error(ErrorVerb::Read, &e))?);
        }
        Ok(entries)
    }
}

/// A log key that is not an 8-byte index: the database is damaged.
#[derive(Debug, thiserror::Error)]
#[error("raft log key is not an 8-byte index")]
struct BadKey;

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_LAST_PURGED, ErrorVerb::Read)?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.put_meta(KEY_VOTE, vote, ErrorVerb::Write)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.get_meta(KEY_VOTE, ErrorVerb::Read)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_meta(KEY_COMMITTED, &committed, ErrorVerb::Write)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .get_meta::<Option<LogId>>(KEY_COMMITTED, ErrorVerb::Read)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = LogEntry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = WriteBatch::default();
        for entry in entries {
            let bytes = encode(&entry).map_err(|e| storage_error(ErrorVerb::Write, &e))?;
            batch.put_cf(self.log_cf(), index_key(entry.get_log_id().index), bytes);
        }
        let result = self.db.write_opt(batch, &Self::synced());
        let io_result = result
            .as_ref()
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(io_result);
        result.map_err(|e| storage_error(ErrorVerb::Write, &e))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Removes every entry from `log_id.index` on.
        let from = index_key(log_id.index);
        let to = index_key(u64::MAX);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.log_cf(), from, to);
        batch.delete_cf(self.log_cf(), to);
        self.db
            .write_opt(batch, &Self::synced())
            .map_err(|e| storage_error(ErrorVerb::Delete, &e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Records the purge mark first, then removes entries up to and including it.
        self.put_meta(KEY_LAST_PURGED, &log_id, ErrorVerb::Write)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.log_cf(), index_key(0), index_key(log_id.index + 1));
        self.db
            .write_opt(batch, &Self::synced())
            .map_err(|e| storage_error(ErrorVerb::Delete, &e))
    }
}
