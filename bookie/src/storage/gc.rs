//! Garbage collection: deletes the segments metadata no longer needs on
//! bookies, and compacts entry logs that are mostly dead.
//!
//! A segment goes when metadata marks it deleted, or offloaded for longer than
//! the grace period (counted from when this bookie first saw it offloaded; the
//! clock restarts with the bookie, which only delays deletion). Deleting it
//! counts its bytes as dead in their entry logs. An entry log (other than the
//! one being written) with no live bytes is deleted; one whose live fraction
//! is below the configured ratio has its live entries copied to the current
//! log through the apply thread, and is deleted once the copies are durable.

use super::apply::{ApplyCommand, Relocation};
use super::entry_log::ENTRY_LOG_HEADER_LEN;
use super::error::StorageError;
use super::shared::lock;
use super::stats::bump;
use super::Storage;
use crate::config::BookieConfig;
use std::collections::HashMap;
use std::sync::mpsc::{self, SyncSender};
use std::time::{Duration, Instant};

/// What metadata says about a segment, as far as this bookie's copy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentFate {
    /// Keep it: open, sealed, or unknown to metadata (never delete what
    /// metadata has not decided about).
    Keep,
    /// Metadata deleted it.
    Deleted,
    /// It is in object storage; bookies drop it after the grace period.
    Offloaded,
    /// Auto-recovery replaced this bookie in the segment's ensemble while it
    /// was away: its copy is stale and is dropped after the same grace
    /// period (readers with an older ensemble may still ask for it).
    Replaced,
}

/// What one garbage-collection pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Segments deleted.
    pub deleted_segments: Vec<u64>,
    /// Entry logs deleted because nothing in them was live.
    pub removed_logs: Vec<u64>,
    /// Entry logs compacted: live entries copied out, then deleted.
    pub compacted_logs: Vec<u64>,
    /// Bytes copied by compaction.
    pub moved_bytes: u64,
}

/// Runs garbage-collection passes; remembers when segments were first seen
/// offloaded (or replaced).
pub struct GarbageCollector {
    offloaded_grace: Duration,
    live_ratio: f64,
    /// Bytes of entries sent to the apply thread at once.
    relocate_chunk_bytes: u64,
    /// When each segment was first seen offloaded or replaced.
    offloaded_since: HashMap<u64, Instant>,
}

impl GarbageCollector {
    /// A collector with the config's grace period and compaction ratio.
    pub fn new(config: &BookieConfig) -> Self {
        Self {
            offloaded_grace: Duration::from_millis(config.gc_offloaded_grace_ms),
            live_ratio: config.compaction_live_ratio,
            relocate_chunk_bytes: config.journal_max_batch_bytes,
            offloaded_since: HashMap::new(),
        }
    }

    /// One pass: deletes the segments `fate` condemns, then compacts entry
    /// logs. Blocks on disk I/O.
    pub fn run_once(
        &mut self,
        storage: &Storage,
        fate: impl Fn(u64) -> SegmentFate,
        now: Instant,
    ) -> Result<GcReport, StorageError> {
        let mut report = GcReport::default();
        let held: Vec<u64> = storage.segments().iter().map(|s| s.segment_id).collect();
        self.offloaded_since
            .retain(|segment_id, _| held.binary_search(segment_id).is_ok());
        for segment_id in held {
            let condemned = match fate(segment_id) {
                SegmentFate::Keep => {
                    self.offloaded_since.remove(&segment_id);
                    false
                }
                SegmentFate::Deleted => true,
                SegmentFate::Offloaded | SegmentFate::Replaced => {
                    let since = *self.offloaded_since.entry(segment_id).or_insert(now);
                    now.saturating_duration_since(since) >= self.offloaded_grace
                }
            };
            if condemned {
                futures::executor::block_on(storage.delete_segment(segment_id))?;
                self.offloaded_since.remove(&segment_id);
                report.deleted_segments.push(segment_id);
            }
        }
        self.compact_logs(storage, &mut report)?;
        if report != GcReport::default() {
            tracing::info!(?report, "bookie garbage collection");
        }
        Ok(report)
    }

    fn compact_logs(&self, storage: &Storage, report: &mut GcReport) -> Result<(), StorageError> {
        let shared = &storage.shared;
        // List before reading the current log: a log rolled in between is
        // then at or past `current` and left alone.
        let logs = shared.logs.list()?;
        let current = lock(&shared.progress).log_id;
        let usage = shared.index.log_usage()?;
        for log_id in logs.into_iter().filter(|&id| id < current) {
            let size = shared
                .logs
                .file_len(log_id)?
                .saturating_sub(ENTRY_LOG_HEADER_LEN);
            let live = usage.get(&log_id).copied().unwrap_or(0).max(0) as u64;
            if live == 0 {
                remove_log(storage, log_id)?;
                bump(&shared.counters.logs_removed, 1);
                report.removed_logs.push(log_id);
            } else if (live as f64) < self.live_ratio * size as f64 {
                if let Some(moved) = self.compact_log(storage, log_id)? {
                    bump(&shared.counters.logs_compacted, 1);
                    report.compacted_logs.push(log_id);
                    report.moved_bytes += moved;
                }
            }
        }
        Ok(())
    }

    /// Copies the live entries of `log_id` to the current log and deletes
    /// it; returns the bytes moved, or `None` if the log had to be kept.
    fn compact_log(&self, storage: &Storage, log_id: u64) -> Result<Option<u64>, StorageError> {
        let shared = &storage.shared;
        let apply = lock(&shared.apply_tx).clone().ok_or(StorageError::Closed)?;
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0;
        let mut moved = 0;
        let whole = shared.logs.scan(log_id, |entry, from| {
            let live = shared
                .index
                .entry(entry.segment_id, entry.entry_id)?
                .is_some_and(|at| at.log_id == log_id && at.offset == from.offset);
            if live {
                chunk_bytes += u64::from(from.len);
                chunk.push(Relocation { entry, from });
                if chunk_bytes >= self.relocate_chunk_bytes {
                    moved += relocate(&apply, std::mem::take(&mut chunk))?;
                    chunk_bytes = 0;
                }
            }
            Ok(())
        })?;
        if !chunk.is_empty() {
            moved += relocate(&apply, chunk)?;
        }
        // The copies must be durable before the original goes.
        storage.sync_applied()?;
        let left = shared.index.log_usage()?.get(&log_id).copied().unwrap_or(0);
        if left > 0 {
            tracing::warn!(
                log_id,
                live_bytes = left,
                damaged = !whole,
                "entry log still holds live entries after compaction; kept"
            );
            return Ok(None);
        }
        remove_log(storage, log_id)?;
        Ok(Some(moved))
    }
}

/// Has the apply thread copy `entries`; returns the bytes moved.
fn relocate(
    apply: &SyncSender<ApplyCommand>,
    entries: Vec<Relocation>,
) -> Result<u64, StorageError> {
    let (done, outcome) = mpsc::sync_channel(1);
    apply
        .send(ApplyCommand::Relocate { entries, done })
        .map_err(|_| StorageError::Closed)?;
    outcome.recv().map_err(|_| StorageError::Closed)?
}

/// Deletes an entry log nothing live points into, and its usage record.
fn remove_log(storage: &Storage, log_id: u64) -> Result<(), StorageError> {
    storage.shared.logs.remove(log_id)?;
    storage.shared.index.forget_log(log_id)?;
    tracing::debug!(log_id, "entry log deleted");
    Ok(())
}
