//! Counters of the storage engine, readable by tests and metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the storage engine's counters since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Adds made durable and applied (re-adds of entries already held not counted).
    pub adds: u64,
    /// Group commits: one journal write each.
    pub journal_writes: u64,
    /// `fdatasync`s of the journal.
    pub journal_fsyncs: u64,
    /// Bytes written to the journal.
    pub journal_bytes: u64,
    /// Journal records replayed when the storage was opened.
    pub replayed_records: u64,
    /// Checkpoints taken.
    pub checkpoints: u64,
    /// Segments deleted.
    pub segments_deleted: u64,
    /// Entry logs compacted (live entries copied out, file deleted).
    pub logs_compacted: u64,
    /// Entry logs deleted without copying anything (nothing live in them).
    pub logs_removed: u64,
}

/// The live counters behind [`StorageStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub adds: AtomicU64,
    pub journal_writes: AtomicU64,
    pub journal_fsyncs: AtomicU64,
    pub journal_bytes: AtomicU64,
    pub replayed_records: AtomicU64,
    pub checkpoints: AtomicU64,
    pub segments_deleted: AtomicU64,
    pub logs_compacted: AtomicU64,
    pub logs_removed: AtomicU64,
}

/// Adds `n` to a counter.
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    /// The current values.
    pub fn snapshot(&self) -> StorageStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StorageStats {
            adds: get(&self.adds),
            journal_writes: get(&self.journal_writes),
            journal_fsyncs: get(&self.journal_fsyncs),
            journal_bytes: get(&self.journal_bytes),
            replayed_records: get(&self.replayed_records),
            checkpoints: get(&self.checkpoints),
            segments_deleted: get(&self.segments_deleted),
            logs_compacted: get(&self.logs_compacted),
            logs_removed: get(&self.logs_removed),
        }
    }
}
