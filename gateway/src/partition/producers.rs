//! Idempotent producers' sequence state in one partition, and Kafka's rules
//! for it: the last [`BATCHES_PER_PRODUCER`] batches of each producer id are
//! remembered, so that a retried batch is answered with the offsets it was
//! first written at instead of being written twice, and a batch that skips or
//! repeats sequence numbers is refused. Pure logic: the sequencer
//! ([`super::PartitionLog::append`]) checks and records batches under its lock,
//! and a takeover replays the tail of the log into a fresh state.
//!
//! The rules follow Apache Kafka 3.x (`ProducerStateManager`, `ProducerAppendInfo`):
//! - a batch with the same epoch and the same first and last sequence as one
//!   of the remembered batches is a duplicate: it is not written again and is
//!   answered with the original offsets (Kafka maps its internal
//!   DUPLICATE_SEQUENCE_NUMBER to success);
//! - an epoch below the producer's current one is refused with
//!   INVALID_PRODUCER_EPOCH (what Kafka answers on Produce since KIP-588, and
//!   what librdkafka treats as "not persisted");
//! - a new, higher epoch must start at sequence 0, and within an epoch each
//!   batch must start right after the previous one (wrapping after
//!   `i32::MAX`), else OUT_OF_ORDER_SEQUENCE_NUMBER;
//! - a producer without state here (new, or forgotten: beyond the tail read at
//!   takeover, or evicted) is accepted at any sequence and tracked from then
//!   on, as Kafka does when a producer's state was lost.

use crate::log::batch::RecordBatch;
use kafka_protocol::ResponseError;
use std::collections::{HashMap, VecDeque};

/// Batches remembered per producer: Kafka's bound on in-flight requests per
/// connection for an idempotent producer, so every batch a producer may retry
/// is among them.
pub const BATCHES_PER_PRODUCER: usize = 5;

/// Producers remembered per partition. Past it the producers that wrote least
/// recently are forgotten (down to [`PRODUCERS_AFTER_EVICTION`]); a forgotten
/// producer's next batch is accepted at any sequence, so eviction only gives
/// up duplicate detection for producers idle while thousands of others wrote.
pub const MAX_PRODUCERS: usize = 4_096;

/// Producers kept when [`MAX_PRODUCERS`] is exceeded, so that eviction (a scan)
/// runs once per many new producers rather than for each.
pub const PRODUCERS_AFTER_EVICTION: usize = MAX_PRODUCERS * 9 / 10;

/// The producer fields of one idempotent batch, as the sequence rules see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    /// The producer id (never negative here).
    pub producer_id: i64,
    /// The producer epoch.
    pub producer_epoch: i16,
    /// Sequence number of the batch's first record.
    pub first_sequence: i32,
    /// Sequence number of its last record (wrapped after `i32::MAX`).
    pub last_sequence: i32,
}

impl ProducerBatch {
    /// The producer fields of `batch`, or `None` if it has no producer id
    /// (a producer without idempotence) or is a control batch.
    pub fn of(batch: &RecordBatch) -> Option<Self> {
        let producer_id = batch.producer_id();
        if producer_id < 0 || batch.is_control() {
            return None;
        }
        let first_sequence = batch.base_sequence();
        Some(Self {
            producer_id,
            producer_epoch: batch.producer_epoch(),
            first_sequence,
            last_sequence: increment_sequence(first_sequence, batch.records_count() - 1),
        })
    }
}

/// Where a remembered batch was written, to answer its duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenBatch {
    /// Sequence number of the batch's first record.
    pub first_sequence: i32,
    /// Sequence number of its last record.
    pub last_sequence: i32,
    /// Offset of its first record.
    pub base_offset: i64,
    /// Offset of its last record.
    pub last_offset: i64,
    /// The broker's append time if the topic uses LogAppendTime, else -1.
    pub log_append_time_ms: i64,
}

/// What to do with a batch that passed the sequence rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it: it is the producer's next batch (or the producer is unknown).
    Append,
    /// Do not write it: it was written before, here.
    Duplicate(WrittenBatch),
}

/// Why a batch breaks the sequence rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    /// The batch carries a producer id but no sequence number.
    #[error("producer {producer_id} sent a batch with invalid sequence {sequence}")]
    InvalidSequence {
        /// The producer id.
        producer_id: i64,
        /// The (negative) sequence number.
        sequence: i32,
    },
    /// The batch's epoch is older than the producer's current one.
    #[error("producer {producer_id} epoch {epoch} is older than its current epoch {current}")]
    StaleEpoch {
        /// The producer id.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The producer's current epoch.
        current: i16,
    },
    /// The batch does not start at the sequence number expected next.
    #[error("producer {producer_id} epoch {epoch}: expected sequence {expected}, got {got}")]
    OutOfOrder {
        /// The producer id.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The sequence number the batch should start at.
        expected: i32,
        /// The one it starts at.
        got: i32,
    },
}

impl SequenceError {
    /// The Kafka error code the producer gets.
    pub fn code(&self) -> i16 {
        match self {
            Self::InvalidSequence { .. } => ResponseError::InvalidRecord.code(),
            Self::StaleEpoch { .. } => ResponseError::InvalidProducerEpoch.code(),
            Self::OutOfOrder { .. } => ResponseError::OutOfOrderSequenceNumber.code(),
        }
    }
}

/// One producer's current epoch and its newest batches at that epoch.
#[derive(Debug, Clone)]
struct ProducerState {
    epoch: i16,
    /// Oldest first; at most [`BATCHES_PER_PRODUCER`], never empty.
    batches: VecDeque<WrittenBatch>,
}

impl ProducerState {
    fn last_offset(&self) -> i64 {
        self.batches.back().map_or(-1, |b| b.last_offset)
    }
}

/// The sequence state of every idempotent producer seen in one partition.
#[derive(Debug, Clone, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerState>,
}

impl ProducerStates {
    /// No producer known.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many producers are known.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is known.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Checks `batch` against its producer's state without changing it.
    pub fn check(&self, batch: &ProducerBatch) -> Result<Verdict, SequenceError> {
        if batch.first_sequence < 0 {
            return Err(SequenceError::InvalidSequence {
                producer_id: batch.producer_id,
                sequence: batch.first_sequence,
            });
        }
        let Some(state) = self.producers.get(&batch.producer_id) else {
            return Ok(Verdict::Append);
        };
        if batch.producer_epoch < state.epoch {
            return Err(SequenceError::StaleEpoch {
                producer_id: batch.producer_id,
                epoch: batch.producer_epoch,
                current: state.epoch,
            });
        }
        let out_of_order = |expected| SequenceError::OutOfOrder {
            producer_id: batch.producer_id,
            epoch: batch.producer_epoch,
            expected,
            got: batch.first_sequence,
        };
        if batch.producer_epoch > state.epoch {
            return if batch.first_sequence == 0 {
                Ok(Verdict::Append)
            } else {
                Err(out_of_order(0))
            };
        }
        if let Some(original) = state.batches.iter().find(|b| {
            b.first_sequence == batch.first_sequence && b.last_sequence == batch.last_sequence
        }) {
            return Ok(Verdict::Duplicate(*original));
        }
        let Some(last) = state.batches.back() else {
            return Ok(Verdict::Append);
        };
        if in_sequence(last.last_sequence, batch.first_sequence) {
            Ok(Verdict::Append)
        } else {
            Err(out_of_order(increment_sequence(last.last_sequence, 1)))
        }
    }

    /// Remembers `batch`, which [`Self::check`] let through, as written at
    /// `written`: the sequencer calls this when it gives the batch its offsets,
    /// so that the next batch in flight is checked against it.
    pub fn record(&mut self, batch: &ProducerBatch, written: WrittenBatch) {
        debug_assert!(
            self.producers
                .get(&batch.producer_id)
                .is_none_or(|s| s.epoch <= batch.producer_epoch),
            "a producer's epoch never goes back"
        );
        self.remember(batch, written);
    }

    /// Replays a batch read back from the log (oldest first) while rebuilding
    /// the state at takeover. Batches of an older epoch than the one already
    /// replayed for their producer are passed over.
    pub fn replay(&mut self, batch: &ProducerBatch, written: WrittenBatch) {
        let stale = self
            .producers
            .get(&batch.producer_id)
            .is_some_and(|s| batch.producer_epoch < s.epoch);
        if !stale {
            self.remember(batch, written);
        }
    }

    fn remember(&mut self, batch: &ProducerBatch, written: WrittenBatch) {
        let state = self
            .producers
            .entry(batch.producer_id)
            .or_insert_with(|| ProducerState {
                epoch: batch.producer_epoch,
                batches: VecDeque::with_capacity(BATCHES_PER_PRODUCER),
            });
        if batch.producer_epoch != state.epoch {
            // A new epoch starts the producer's sequence over.
            state.epoch = batch.producer_epoch;
            state.batches.clear();
        }
        debug_assert!(
            state
                .batches
                .back()
                .is_none_or(|b| b.last_offset < written.base_offset),
            "a producer's batches are remembered in offset order"
        );
        if state.batches.len() == BATCHES_PER_PRODUCER {
            state.batches.pop_front();
        }
        state.batches.push_back(written);
        if self.producers.len() > MAX_PRODUCERS {
            self.evict();
        }
    }

    /// Forgets the producers that wrote least recently, down to
    /// [`PRODUCERS_AFTER_EVICTION`].
    fn evict(&mut self) {
        let mut last_offsets: Vec<i64> = self
            .producers
            .values()
            .map(ProducerState::last_offset)
            .collect();
        let forget = last_offsets.len() - PRODUCERS_AFTER_EVICTION;
        let (_, &mut threshold, _) = last_offsets.select_nth_unstable(forget - 1);
        // Offsets are unique per batch, so exactly `forget` producers go.
        self.producers.retain(|_, s| s.last_offset() > threshold);
    }
}

/// `sequence + by`, wrapping from `i32::MAX` to 0 as Kafka's sequences do.
pub fn increment_sequence(sequence: i32, by: i32) -> i32 {
    if sequence > i32::MAX - by {
        by - (i32::MAX - sequence) - 1
    } else {
        sequence + by
    }
}

/// Whether `next` is the sequence number right after `last`.
fn in_sequence(last: i32, next: i32) -> bool {
    i64::from(next) == i64::from(last) + 1 || (next == 0 && last == i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT_OF_ORDER: i16 = ResponseError::OutOfOrderSequenceNumber.code();

    fn batch(producer_id: i64, epoch: i16, first: i32, count: i32) -> ProducerBatch {
        ProducerBatch {
            producer_id,
            producer_epoch: epoch,
            first_sequence: first,
            last_sequence: increment_sequence(first, count - 1),
        }
    }

    /// Checks `b` and, if it is to be appended, records it at `*next_offset`.
    fn append(
        states: &mut ProducerStates,
        next_offset: &mut i64,
        b: ProducerBatch,
    ) -> Result<i64, i16> {
        match states.check(&b).map_err(|e| e.code())? {
            Verdict::Duplicate(original) => Ok(original.base_offset),
            Verdict::Append => {
                let span = i64::from(b.last_sequence) - i64::from(b.first_sequence);
                let count = span.rem_euclid(i64::from(i32::MAX) + 1) + 1;
                let base_offset = *next_offset;
                *next_offset += count;
                states.record(
                    &b,
                    WrittenBatch {
                        first_sequence: b.first_sequence,
                        last_sequence: b.last_sequence,
                        base_offset,
                        last_offset: *next_offset - 1,
                        log_append_time_ms: -1,
                    },
                );
                Ok(base_offset)
            }
        }
    }

    #[test]
    fn a_retried_batch_is_answered_with_its_original_offset() {
        let mut states = ProducerStates::new();
        let mut next = 100;
        assert_eq!(append(&mut states, &mut next, batch(7, 0, 0, 10)), Ok(100));
        assert_eq!(append(&mut states, &mut next, batch(7, 0, 10, 5)), Ok(110));
        assert_eq!(append(&mut states, &mut next, batch(7, 0, 0, 10)), Ok(100));
        assert_eq!(append(&mut states, &mut next, batch(7, 0, 10, 5)), Ok(110));
        assert_eq!(next, 115, "duplicates are not written");
        assert_eq!(append(&mut states, &mut next, batch(7, 0, 15, 1)), Ok(115));
    }

    #[test]
    fn only_the_last_five_batches_are_duplicates() {
        let mut states = ProducerStates::new();
        let mut next = 0;
        for seq in 0..6 {
            append(&mut states, &mut next, batch(1, 0, seq, 1)).unwrap();
        }
        // Batch 0 was forgotten: a retry of it is out of order, not a duplicate.
        assert_eq!(
            append(&mut states, &mut next, batch(1, 0, 0, 1)),
            Err(OUT_OF_ORDER)
        );
        for seq in 1..6 {
            assert_eq!(
                append(&mut states, &mut next, batch(1, 0, seq, 1)),
                Ok(i64::from(seq))
            );
        }
    }

    #[test]
    fn a_gap_or_an_overlap_is_out_of_order() {
        let mut states = ProducerStates::new();
        let mut next = 0;
        append(&mut states, &mut next, batch(1, 0, 0, 10)).unwrap();
        let gap = states.check(&batch(1, 0, 11, 1)).unwrap_err();
        assert_eq!(
            gap,
            SequenceError::OutOfOrder {
                producer_id: 1,
                epoch: 0,
                expected: 10,
                got: 11
            }
        );
        assert_eq!(gap.code(), 45);
        // Same first sequence, different length: not the same batch.
        assert_eq!(
            append(&mut states, &mut next, batch(1, 0, 0, 5)),
            Err(OUT_OF_ORDER)
        );
        assert_eq!(
            append(&mut states, &mut next, batch(1, 0, 5, 5)),
            Err(OUT_OF_ORDER)
        );
        assert_eq!(next, 10, "nothing refused is written");
    }

    #[test]
    fn a_stale_epoch_is_refused_and_a_new_epoch_starts_at_zero() {
        let mut states = ProducerStates::new();
        let mut next = 0;
        append(&mut states, &mut next, batch(3, 1, 0, 4)).unwrap();
        let stale = states.check(&batch(3, 0, 4, 1)).unwrap_err();
        assert_eq!(stale.code(), ResponseError::InvalidProducerEpoch.code());
        assert_eq!(stale.code(), 47);
        // A new epoch must start over at 0 ...
        assert_eq!(
            append(&mut states, &mut next, batch(3, 2, 4, 1)),
            Err(OUT_OF_ORDER)
        );
        assert_eq!(append(&mut states, &mut next, batch(3, 2, 0, 2)), Ok(4));
        // ... and resets the state: the old epoch is now stale, even its duplicates.
        assert_eq!(
            append(&mut states, &mut next, batch(3, 1, 0, 4)),
            Err(ResponseError::InvalidProducerEpoch.code())
        );
        assert_eq!(append(&mut states, &mut next, batch(3, 2, 2, 1)), Ok(6));
    }

    #[test]
    fn an_unknown_producer_is_accepted_at_any_sequence() {
        let mut states = ProducerStates::new();
        let mut next = 0;
        assert_eq!(append(&mut states, &mut next, batch(9, 4, 1_000, 3)), Ok(0));
        assert_eq!(append(&mut states, &mut next, batch(9, 4, 1_000, 3)), Ok(0));
        assert_eq!(
            append(&mut states, &mut next, batch(9, 4, 1_004, 1)),
            Err(OUT_OF_ORDER)
        );
        assert_eq!(append(&mut states, &mut next, batch(9, 4, 1_003, 1)), Ok(3));
        // Producers are independent.
        assert_eq!(append(&mut states, &mut next, batch(10, 0, 0, 1)), Ok(4));
    }

    #[test]
    fn a_negative_sequence_is_an_invalid_record() {
        let states = ProducerStates::new();
        let error = states.check(&batch(1, 0, -1, 1)).unwrap_err();
        assert_eq!(error.code(), ResponseError::InvalidRecord.code());
    }

    #[test]
    fn sequences_wrap_after_i32_max() {
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 1, 3), 1);
        assert_eq!(increment_sequence(5, 0), 5);
        let mut states = ProducerStates::new();
        let mut next = 0;
        let wrapping = batch(2, 0, i32::MAX - 1, 3);
        assert_eq!(wrapping.last_sequence, 0);
        append(&mut states, &mut next, wrapping).unwrap();
        assert_eq!(
            append(&mut states, &mut next, batch(2, 0, 2, 1)),
            Err(OUT_OF_ORDER)
        );
        assert_eq!(append(&mut states, &mut next, batch(2, 0, 1, 1)), Ok(3));
        assert_eq!(append(&mut states, &mut next, wrapping), Ok(0));
    }

    #[test]
    fn replay_rebuilds_what_record_built() {
        let mut live = ProducerStates::new();
        let mut next = 0;
        let mut log = Vec::new();
        for (producer, epoch, seq) in [(1, 0, 0), (2, 0, 0), (1, 0, 1), (1, 1, 0), (2, 0, 1)] {
            let b = batch(producer, epoch, seq, 1);
            let base = append(&mut live, &mut next, b).unwrap();
            log.push((b, base));
        }
        let mut rebuilt = ProducerStates::new();
        for (b, base) in log {
            rebuilt.replay(
                &b,
                WrittenBatch {
                    first_sequence: b.first_sequence,
                    last_sequence: b.last_sequence,
                    base_offset: base,
                    last_offset: base,
                    log_append_time_ms: -1,
                },
            );
        }
        for probe in [
            batch(1, 1, 0, 1),
            batch(1, 1, 1, 1),
            batch(1, 0, 2, 1),
            batch(2, 0, 1, 1),
        ] {
            assert_eq!(rebuilt.check(&probe), live.check(&probe), "{probe:?}");
        }
        assert_eq!(
            rebuilt.check(&batch(1, 1, 0, 1)),
            Ok(Verdict::Duplicate(WrittenBatch {
                first_sequence: 0,
                last_sequence: 0,
                base_offset: 3,
                last_offset: 3,
                log_append_time_ms: -1,
            }))
        );
    }

    #[test]
    fn the_least_recent_producers_are_forgotten_past_the_bound() {
        let mut states = ProducerStates::new();
        let mut next = 0;
        for producer in 0..=MAX_PRODUCERS as i64 {
            append(&mut states, &mut next, batch(producer, 0, 0, 1)).unwrap();
        }
        assert_eq!(states.len(), PRODUCERS_AFTER_EVICTION);
        // The oldest writer is unknown again (any sequence goes); the newest is still checked.
        assert_eq!(states.check(&batch(0, 0, 7, 1)), Ok(Verdict::Append));
        let newest = MAX_PRODUCERS as i64;
        assert_eq!(
            states.check(&batch(newest, 0, 7, 1)).unwrap_err().code(),
            OUT_OF_ORDER
        );
    }
}
