//! Rebuilding idempotent producers' state when a partition is taken over: the
//! state lives only in the owner's memory, so the new owner reads the tail of
//! the log back from bookies and replays each idempotent batch into a fresh
//! [`ProducerStates`], so that a producer retrying batches the previous owner
//! wrote (but did not answer) gets their original offsets, not duplicates.
//!
//! **Bound**: the newest [`REBUILD_BYTES`] of the log, across segments, newest
//! first, read in windows of entries ending at each segment's last entry. Only
//! segments still on bookies are read: the rebuild stops at an offloaded
//! segment. A producer whose batches all lie beyond that tail is unknown to the
//! new owner and its next batch is accepted at any sequence (Kafka's rule for
//! a producer whose state was lost), so duplicates can only slip through for a
//! producer retrying a batch written more than 4 MiB of log ago in this
//! partition, far past the five batches a producer keeps in flight.
//!
//! The newest non-empty segment must be read (its bookies served the recovery
//! a moment ago); if it cannot be, the takeover fails and is retried. An older
//! segment that cannot be read ends the rebuild there, with a warning, so that
//! a lost old ensemble never keeps a partition from being served.

use super::producers::{ProducerBatch, ProducerStates, WrittenBatch};
use crate::log::batch::RecordBatch;
use std::collections::BTreeMap;
use strata_bookie::ledger::{BookiePool, LedgerError, LedgerReader, LedgerSpec};
use strata_proto::bookie::Entry;
use strata_proto::metadata::segment_info::State;
use strata_proto::metadata::{BookieInfo, SegmentInfo};

/// Bytes of the log's tail read back to rebuild producer state at takeover.
pub const REBUILD_BYTES: usize = 4 * 1024 * 1024;

/// Entries in the first window read back from a segment's end; later windows
/// are sized from the entries seen so far to fit what is left of the budget.
const FIRST_WINDOW_ENTRIES: i64 = 16;

/// The most entries in one window.
const MAX_WINDOW_ENTRIES: i64 = 256;

/// Bytes asked of the bookies per read, which bounds the memory a rebuild holds.
const READ_BYTES: u32 = 1024 * 1024;

/// Why producer state could not be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// Reading the segment from its bookies failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// An entry of the log is not a record batch.
    #[error("entry {entry_id} of segment {segment_id} is not a record batch: {reason}")]
    BadEntry {
        /// The segment.
        segment_id: u64,
        /// The entry.
        entry_id: i64,
        /// What the batch parser said.
        reason: String,
    },
    /// The bookies served nothing at an entry of a sealed segment.
    #[error("segment {segment_id}: no bookie serves entry {entry_id}")]
    Unreadable {
        /// The segment.
        segment_id: u64,
        /// The entry.
        entry_id: i64,
    },
}

/// One idempotent batch read back, ready to replay.
type Replayed = (ProducerBatch, WrittenBatch);

/// Producer state rebuilt from the tail of a partition whose segments are
/// `segments` (oldest first), the last of which ends at `end_offset`.
pub(super) async fn producer_states(
    pool: &BookiePool,
    bookies: &BTreeMap<i32, BookieInfo>,
    segments: &[SegmentInfo],
    end_offset: i64,
) -> Result<ProducerStates, RebuildError> {
    let mut budget = REBUILD_BYTES;
    // Windows newest first; within each window, batches oldest first.
    let mut windows: Vec<Vec<Replayed>> = Vec::new();
    let mut read_newest = false;
    for (index, segment) in segments.iter().enumerate().rev() {
        if budget == 0 {
            break;
        }
        let end = if index + 1 == segments.len() {
            match &segment.state {
                Some(State::Offloaded(_)) => break,
                _ => end_offset,
            }
        } else {
            match &segment.state {
                Some(State::Sealed(sealed)) => sealed.end_offset,
                _ => break,
            }
        };
        if end <= segment.base_offset {
            continue;
        }
        match read_tail(pool, bookies, segment, end, &mut budget, &mut windows).await {
            Ok(()) => read_newest = true,
            Err(error) if read_newest => {
                tracing::warn!(
                    segment = segment.segment_id,
                    %error,
                    "cannot read an older segment back; producer state is rebuilt from the newer ones only"
                );
                break;
            }
            Err(error) => return Err(error),
        }
    }
    let mut producers = ProducerStates::new();
    for (batch, written) in windows.iter().rev().flatten() {
        producers.replay(batch, *written);
    }
    Ok(producers)
}

/// Reads `segment` (which ends at `end`) backwards in windows of entries until
/// its first entry or until `budget` bytes are spent, pushing each window's
/// idempotent batches onto `windows`.
async fn read_tail(
    pool: &BookiePool,
    bookies: &BTreeMap<i32, BookieInfo>,
    segment: &SegmentInfo,
    end: i64,
    budget: &mut usize,
    windows: &mut Vec<Vec<Replayed>>,
) -> Result<(), RebuildError> {
    let segment_id = segment.segment_id;
    let reader = LedgerReader::new(LedgerSpec::from_segment(segment, bookies)?, pool)?;
    // The entry holding the segment's last offset is its last entry.
    let read = reader.read_from_offset(end - 1, -1, 1).await?;
    let Some(last_entry) = read.entries.first() else {
        return Err(RebuildError::Unreadable {
            segment_id,
            entry_id: -1,
        });
    };
    let mut last = last_entry.entry_id;
    let mut window = FIRST_WINDOW_ENTRIES;
    while last >= 0 && *budget > 0 {
        let first = (last - window + 1).max(0);
        let mut replayed = Vec::new();
        let mut bytes = 0;
        let mut next = first;
        while next <= last {
            let read = reader.read(next, last, READ_BYTES).await?;
            let Some(after) = read.next_entry_id() else {
                return Err(RebuildError::Unreadable {
                    segment_id,
                    entry_id: next,
                });
            };
            for entry in &read.entries {
                bytes += entry.payload.len();
                replayed.extend(replayable(segment_id, entry)?);
            }
            next = after;
        }
        windows.push(replayed);
        *budget = budget.saturating_sub(bytes);
        // Size the next window so that it about fits what is left.
        let average = (bytes / (last - first + 1) as usize).max(1);
        window = i64::try_from(*budget / average)
            .unwrap_or(MAX_WINDOW_ENTRIES)
            .clamp(1, MAX_WINDOW_ENTRIES);
        last = first - 1;
    }
    Ok(())
}

/// The producer fields and placement of the batch in `entry`, if it is idempotent.
fn replayable(segment_id: u64, entry: &Entry) -> Result<Option<Replayed>, RebuildError> {
    let batch = RecordBatch::parse(&entry.payload).map_err(|e| RebuildError::BadEntry {
        segment_id,
        entry_id: entry.entry_id,
        reason: e.to_string(),
    })?;
    Ok(ProducerBatch::of(&batch).map(|producer| {
        let written = WrittenBatch {
            first_sequence: producer.first_sequence,
            last_sequence: producer.last_sequence,
            base_offset: batch.base_offset(),
            last_offset: batch.last_offset(),
            log_append_time_ms: if batch.is_log_append_time() {
                batch.max_timestamp()
            } else {
                -1
            },
        };
        (producer, written)
    }))
}
