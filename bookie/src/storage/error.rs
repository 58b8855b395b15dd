//! Errors of the storage engine, and the bookie status each one answers with.

use std::path::{Path, PathBuf};
use strata_proto::bookie::BookieStatus;

/// Why a storage operation failed or was refused.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The writer's epoch is older than the epoch the segment was fenced at.
    #[error(
        "segment {segment_id} is fenced at epoch {fenced_epoch}; \
         requests of epoch {epoch} are refused"
    )]
    Fenced {
        /// The segment.
        segment_id: u64,
        /// The epoch it is fenced at.
        fenced_epoch: u32,
        /// The refused request's epoch.
        epoch: u32,
    },
    /// The segment is sealed: no more adds (and no seal at another end).
    #[error("segment {segment_id} is sealed at entry {last_entry_id}")]
    Sealed {
        /// The segment.
        segment_id: u64,
        /// Its last entry.
        last_entry_id: i64,
    },
    /// This bookie holds nothing of the segment.
    #[error("segment {0} is not on this bookie")]
    NoSuchSegment(u64),
    /// The entry asked for is not on this bookie.
    #[error("entry {entry_id} of segment {segment_id} is not on this bookie")]
    NoSuchEntry {
        /// The segment.
        segment_id: u64,
        /// The entry.
        entry_id: i64,
    },
    /// No entry of the segment holds the Kafka offset asked for.
    #[error("no entry of segment {segment_id} on this bookie holds offset {offset}")]
    NoSuchOffset {
        /// The segment.
        segment_id: u64,
        /// The offset.
        offset: i64,
    },
    /// The data disk is nearly full; adds are refused.
    #[error(
        "disk nearly full: {free_bytes} bytes free, below min_free_bytes \
         {min_free_bytes}; adds are refused until space is freed"
    )]
    DiskFull {
        /// Free bytes at the last measurement.
        free_bytes: u64,
        /// The configured floor.
        min_free_bytes: u64,
    },
    /// The request is malformed or out of range.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A file operation failed.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What was being done.
        context: &'static str,
        /// On which file or directory.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Stored bytes failed their checksum or did not decode.
    #[error("corrupt {0}")]
    Corrupt(String),
    /// RocksDB refused an operation.
    #[error("index: {0}")]
    Index(#[from] rocksdb::Error),
    /// The journal or entry log failed earlier; the bookie must be restarted.
    #[error("storage failed and refuses writes until restarted: {0}")]
    Failed(String),
    /// The storage was closed.
    #[error("storage is closed")]
    Closed,
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

impl StorageError {
    /// The status a bookie answers with for this error.
    pub fn status(&self) -> BookieStatus {
        match self {
            Self::Fenced { .. } => BookieStatus::BookieFenced,
            Self::Sealed { .. } => BookieStatus::BookieSealed,
            Self::NoSuchSegment(_) => BookieStatus::BookieNoSuchSegment,
            Self::NoSuchEntry { .. } | Self::NoSuchOffset { .. } => BookieStatus::BookieNoSuchEntry,
            Self::DiskFull { .. } => BookieStatus::BookieDiskFull,
            Self::InvalidRequest(_) | Self::Config(_) => BookieStatus::BookieInvalidRequest,
            Self::Io { .. }
            | Self::Corrupt(_)
            | Self::Index(_)
            | Self::Failed(_)
            | Self::Closed => BookieStatus::BookieIoError,
        }
    }

    /// A file error with what was being done and where.
    pub(crate) fn io(context: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            context,
            path: path.to_path_buf(),
            source,
        }
    }

    /// A copy of this error for another waiter of the same failed batch.
    pub(crate) fn for_waiter(&self) -> Self {
        Self::Failed(self.to_string())
    }
}

/// Shorthand for an [`StorageError::InvalidRequest`].
pub(crate) fn invalid(message: impl Into<String>) -> StorageError {
    StorageError::InvalidRequest(message.into())
}
