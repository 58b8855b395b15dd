//! The gateway-wide cache of recently appended batches, bounded by bytes, so
//! that tailing consumers are served from memory instead of from bookies.
//!
//! Entries are keyed by the log that wrote them (a fresh id per
//! [`super::PartitionLog`]) and the batch's base offset. A log never reads
//! another log's entries, so batches that were cached but lost when a segment
//! writer failed can never be served after the partition is taken over again.

use bytes::Bytes;
use moka::sync::Cache;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes counted for each entry besides its batch.
const ENTRY_OVERHEAD: usize = 48;

/// Recently appended batches of every partition this gateway serves.
pub struct BatchCache {
    /// (log id, base offset) → (next offset, batch bytes).
    batches: Cache<(u64, i64), (i64, Bytes)>,
    next_log_id: AtomicU64,
}

impl BatchCache {
    /// A cache holding at most about `max_bytes` of batches.
    pub fn new(max_bytes: u64) -> Self {
        let batches = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_, (_, bytes): &(i64, Bytes)| {
                u32::try_from(bytes.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .build();
        Self {
            batches,
            next_log_id: AtomicU64::new(1),
        }
    }

    /// An id for a new log, never given out before by this cache.
    pub fn new_log_id(&self) -> u64 {
        self.next_log_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Keeps a batch of log `log` covering offsets `base..next`.
    pub fn insert(&self, log: u64, base: i64, next: i64, bytes: Bytes) {
        self.batches.insert((log, base), (next, bytes));
    }

    /// Batches of log `log` starting exactly at `offset`, one after another,
    /// below `high_watermark`, up to about `max_bytes` (at least one); `None`
    /// when no cached batch starts at `offset`.
    pub fn read(
        &self,
        log: u64,
        offset: i64,
        high_watermark: i64,
        max_bytes: usize,
    ) -> Option<Vec<Bytes>> {
        let mut out = Vec::new();
        let mut total = 0;
        let mut at = offset;
        while at < high_watermark {
            let Some((next, bytes)) = self.batches.get(&(log, at)) else {
                break;
            };
            if !out.is_empty() && total + bytes.len() > max_bytes {
                break;
            }
            total += bytes.len();
            out.push(bytes);
            at = next;
        }
        (!out.is_empty()).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_read_in_a_run_from_a_batch_start() {
        let cache = BatchCache::new(1 << 20);
        let log = cache.new_log_id();
        cache.insert(log, 0, 3, Bytes::from(vec![0; 40]));
        cache.insert(log, 3, 5, Bytes::from(vec![1; 40]));
        cache.insert(log, 5, 9, Bytes::from(vec![2; 40]));
        assert_eq!(cache.read(log, 3, 9, 1000).unwrap().len(), 2);
        // Not past the high watermark; at least one batch within max_bytes.
        assert_eq!(cache.read(log, 0, 5, 1000).unwrap().len(), 2);
        assert_eq!(cache.read(log, 0, 9, 10).unwrap().len(), 1);
        // Inside a batch, or another log's batches: not here.
        assert!(cache.read(log, 4, 9, 1000).is_none());
        assert!(cache.read(cache.new_log_id(), 0, 9, 1000).is_none());
    }

    #[test]
    fn the_cache_stays_within_its_bytes() {
        let cache = BatchCache::new(10_000);
        let log = cache.new_log_id();
        for i in 0..100 {
            cache.insert(log, i * 10, i * 10 + 10, Bytes::from(vec![0; 1000]));
        }
        cache.batches.run_pending_tasks();
        assert!(cache.batches.weighted_size() <= 10_000);
        assert!(cache.batches.entry_count() < 100);
    }
}
