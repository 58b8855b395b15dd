//! The log of one partition this gateway serves: the sequencer that gives
//! batches their offsets and writes them through the ledger writer in order,
//! the high watermark that readers wait on, recent batches kept in the
//! gateway's batch cache, and
//! reads of older batches from bookies. The sequencer also applies idempotent
//! producers' sequence rules (see [`super::producers`]).

use super::batch_cache::BatchCache;
use super::producers::{ProducerBatch, ProducerStates, Verdict, WrittenBatch};
use super::Partitions;
use crate::log::batch::RecordBatch;
use crate::offload::reader::TieredReader;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Weak;
use strata_bookie::ledger::{
    BookiePool, LedgerError, LedgerReader, LedgerSpec, LedgerWriter, PendingAdd,
};
use strata_metadata::cache::ClusterCache;
use strata_proto::error_code;
use strata_proto::metadata::segment_info::State;
use strata_proto::metadata::SealSegmentRequest;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the batch's first record.
    pub base_offset: i64,
    /// The broker's append time if the topic uses LogAppendTime, else -1.
    pub log_append_time_ms: i64,
}

/// Kafka's default `segment.bytes`: 1 GiB.
const DEFAULT_SEGMENT_BYTES: u64 = 1 << 30;
/// Batch starts each log remembers for reads from inside a recent batch.
const RECENT_BATCHES: usize = 1024;
/// Kafka's default `segment.ms`: 7 days.
const DEFAULT_SEGMENT_MS: u64 = 7 * 24 * 3600 * 1000;

/// A batch that has its place in the log, waiting for [`PartitionLog::confirm`].
pub struct Sequenced(Step);

enum Step {
    /// Handed to the segment writer.
    Written {
        /// Resolves when the entry is confirmed; the high watermark is raised
        /// by this task whether or not anyone awaits it.
        confirmed: JoinHandle<Result<i64, LedgerError>>,
        appended: Appended,
    },
    /// A retry of a batch already in the log.
    Duplicate(WrittenBatch),
}

/// The writing side: only one append at a time gives out offsets.
struct Sequencer {
    next_offset: i64,
    /// The open segment's writer; `None` only while a roll failed half way
    /// (the log is then broken and replaced).
    writer: Option<LedgerWriter>,
    /// The open segment: its id, bytes written, when it was opened, and its
    /// largest record timestamp (written to metadata when it is sealed).
    segment_id: u64,
    segment_bytes: u64,
    segment_opened_ms: u64,
    segment_max_timestamp: Option<i64>,
    /// Idempotent producers' sequence state, updated when a batch gets its
    /// offsets (not when it is confirmed) so that the next batch in flight is
    /// checked against it. If a write fails the log is broken and replaced,
    /// and the new log rebuilds the state from what the segment really holds.
    producers: ProducerStates,
}

/// One partition's log, for as long as this gateway serves it at one epoch.
pub struct PartitionLog {
    topic: String,
    partition: u32,
    leader_epoch: u32,
    sequencer: Mutex<Sequencer>,
    high_watermark: Arc<watch::Sender<i64>>,
    /// The first offset still in the log: moves forward with retention and
    /// DeleteRecords.
    log_start_offset: AtomicI64,
    /// Bytes in the open segment, for retention by size (the sequencer's
    /// count, readable without its lock).
    open_segment_bytes: AtomicU64,
    log_id: u64,
    batches: Arc<BatchCache>,
    /// Base offsets of the latest batches this log appended, oldest first, so
    /// that a read from inside a cached batch finds the batch's start. The
    /// tail (past the bookies' last-add-confirmed) is only readable here.
    recent_bases: std::sync::Mutex<VecDeque<i64>>,
    /// The open segment's id and its writer's last-add-confirmed, so that
    /// reads of the open segment reach every confirmed entry even while the
    /// bookies' own LAC trails (it travels only on later adds).
    open_lac: std::sync::Mutex<(u64, watch::Receiver<i64>)>,
    broken: Arc<AtomicBool>,
    cache: ClusterCache,
    pool: BookiePool,
    /// Reads of offloaded segments.
    tiered: TieredReader,
    /// The gateway's partitions, to roll segments (weak: they hold this log).
    partitions: Weak<Partitions>,
}

impl PartitionLog {
    /// A log whose next offset (and high watermark) is `next_offset`, writing
    /// to `writer`'s segment, knowing the idempotent producers in `producers`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        topic: String,
        partition: u32,
        leader_epoch: u32,
        next_offset: i64,
        log_start_offset: i64,
        (segment_id, writer): (u64, LedgerWriter),
        partitions: Weak<Partitions>,
        producers: ProducerStates,
        batches: Arc<BatchCache>,
        cache: ClusterCache,
        pool: BookiePool,
        tiered: TieredReader,
    ) -> Self {
        let open_lac = writer.subscribe_lac();
        Self {
            topic,
            partition,
            leader_epoch,
            sequencer: Mutex::new(Sequencer {
                next_offset,
                writer: Some(writer),
                segment_id,
                segment_bytes: 0,
                segment_opened_ms: strata_metadata::now_ms(),
                segment_max_timestamp: None,
                producers,
            }),
            high_watermark: Arc::new(watch::Sender::new(next_offset)),
            log_start_offset: AtomicI64::new(log_start_offset),
            open_segment_bytes: AtomicU64::new(0),
            log_id: batches.new_log_id(),
            batches,
            recent_bases: std::sync::Mutex::new(VecDeque::new()),
            open_lac: std::sync::Mutex::new((segment_id, open_lac)),
            broken: Arc::new(AtomicBool::new(false)),
            cache,
            pool,
            tiered,
            partitions,
        }
    }

    /// The leader epoch this gateway serves the partition at.
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch as i32
    }

    /// The offset after the last confirmed record: what consumers may read up to.
    pub fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }

    /// A receiver that sees every rise of the high watermark (for long polls).
    pub fn watch_high_watermark(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }

    /// The first offset still in the log.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset.load(Ordering::Acquire)
    }

    /// Moves the log start offset forward (never back), once metadata
    /// recorded it or the segments below it were deleted.
    pub fn advance_log_start(&self, offset: i64) {
        self.log_start_offset.fetch_max(offset, Ordering::AcqRel);
    }

    /// The partition's topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition's index.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Bytes written to the open segment.
    pub fn open_segment_bytes(&self) -> u64 {
        self.open_segment_bytes.load(Ordering::Relaxed)
    }

    /// Whether the segment writer failed: the log takes no more appends and is
    /// replaced by a new one (after the segment is recovered and sealed).
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Appends one batch: gives it the next offsets (and the append time if
    /// `log_append_time`), writes it to the segment's bookies, and returns once
    /// it is confirmed. Errors are Kafka error codes for the producer.
    pub async fn append(&self, batch: RecordBatch, log_append_time: bool) -> Result<Appended, i16> {
        let sequenced = self.sequence(batch, log_append_time).await?;
        self.confirm(sequenced).await
    }

    /// The first half of an append: checks the batch against its producer's
    /// sequence, gives it its offsets and hands it to the segment writer. Batches
    /// sequenced one after another land in the log in that order, whatever
    /// order their confirmations are awaited in.
    pub async fn sequence(
        &self,
        mut batch: RecordBatch,
        log_append_time: bool,
    ) -> Result<Sequenced, i16> {
        let mut sequencer = self.sequencer.lock().await;
        if self.is_broken() {
            return Err(super::NOT_SERVED);
        }
        let producer = ProducerBatch::of(&batch);
        if let Some(producer) = &producer {
            match sequencer.producers.check(producer) {
                Ok(Verdict::Append) => {}
                Ok(Verdict::Duplicate(original)) => {
                    return Ok(Sequenced(Step::Duplicate(original)))
                }
                Err(error) => {
                    tracing::debug!(topic = %self.topic, partition = self.partition, %error, "batch refused");
                    return Err(error.code());
                }
            }
        }
        if self.roll_due(&sequencer, batch.len()) {
            if let Err(error) = self.roll(&mut sequencer).await {
                tracing::warn!(topic = %self.topic, partition = self.partition, %error, "rolling the segment failed; the partition will be taken over again");
                break_log(&self.broken, &self.high_watermark);
                return Err(error_code::NOT_ENOUGH_REPLICAS as i16);
            }
        }
        let base_offset = sequencer.next_offset;
        let log_append_time_ms = if log_append_time {
            let now = strata_metadata::now_ms() as i64;
            batch.set_log_append_time(now);
            now
        } else {
            -1
        };
        batch.assign(base_offset, self.leader_epoch as i32);
        let bytes = batch.bytes();
        let next_offset = batch.last_offset() + 1;
        let Some(writer) = sequencer.writer.as_mut() else {
            return Err(super::NOT_SERVED);
        };
        let pending = match writer.add(bytes.clone(), base_offset).await {
            Ok(pending) => pending,
            Err(error) => return Err(self.writer_failed(&error)),
        };
        sequencer.next_offset = next_offset;
        sequencer.segment_bytes += bytes.len() as u64;
        self.open_segment_bytes
            .store(sequencer.segment_bytes, Ordering::Relaxed);
        sequencer.segment_max_timestamp = Some(
            sequencer
                .segment_max_timestamp
                .map_or(batch.max_timestamp(), |ts| ts.max(batch.max_timestamp())),
        );
        if let Some(producer) = &producer {
            let written = WrittenBatch {
                first_sequence: producer.first_sequence,
                last_sequence: producer.last_sequence,
                base_offset,
                last_offset: next_offset - 1,
                log_append_time_ms,
            };
            sequencer.producers.record(producer, written);
        }
        self.batches
            .insert(self.log_id, base_offset, next_offset, bytes);
        self.remember_base(base_offset);
        Ok(Sequenced(Step::Written {
            confirmed: self.raise_when_confirmed(pending, next_offset),
            appended: Appended {
                base_offset,
                log_append_time_ms,
            },
        }))
    }

    /// Whether the open segment is full (`segment.bytes`) or old enough
    /// (`segment.ms`) to be sealed before a batch of `len` bytes is added.
    fn roll_due(&self, sequencer: &Sequencer, len: usize) -> bool {
        if sequencer.segment_bytes == 0 {
            return false;
        }
        let (max_bytes, max_age_ms) = self.cache.read(|state| {
            let config = |key: &str, default: u64| {
                state
                    .topics
                    .get(&self.topic)
                    .and_then(|t| t.configs.get(key))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(default)
            };
            (
                config("segment.bytes", DEFAULT_SEGMENT_BYTES),
                config("segment.ms", DEFAULT_SEGMENT_MS),
            )
        });
        let age = strata_metadata::now_ms().saturating_sub(sequencer.segment_opened_ms);
        sequencer.segment_bytes + len as u64 > max_bytes || age >= max_age_ms
    }

    /// Seals the open segment (on its bookies, then in metadata with its end
    /// offset, size and largest timestamp) and opens the next one.
    async fn roll(&self, sequencer: &mut Sequencer) -> Result<(), String> {
        let partitions = self
            .partitions
            .upgrade()
            .ok_or_else(|| "the gateway is stopping".to_string())?;
        let writer = sequencer
            .writer
            .take()
            .ok_or_else(|| "no open segment".to_string())?;
        writer.seal().await.map_err(|e| e.to_string())?;
        let request = SealSegmentRequest {
            segment_id: sequencer.segment_id,
            owner: partitions.node_id,
            leader_epoch: self.leader_epoch,
            end_offset: sequencer.next_offset,
            bytes: sequencer.segment_bytes,
            max_timestamp: sequencer.segment_max_timestamp,
        };
        let reply = partitions
            .client
            .call(|mut c| async move { c.seal_segment(request).await })
            .await
            .map_err(|e| e.to_string())?;
        let outcome = reply.outcome.unwrap_or_default();
        if !outcome.is_ok() {
            return Err(outcome.error_message);
        }
        let (segment, writer) = super::takeover::open_segment(
            &partitions,
            &self.topic,
            self.partition,
            self.leader_epoch,
            sequencer.next_offset,
        )
        .await
        .map_err(|e| e.to_string())?;
        tracing::debug!(
            topic = %self.topic,
            partition = self.partition,
            sealed = sequencer.segment_id,
            opened = segment.segment_id,
            base_offset = sequencer.next_offset,
            "rolled the segment"
        );
        *self.open_lac.lock().unwrap_or_else(|e| e.into_inner()) =
            (segment.segment_id, writer.subscribe_lac());
        sequencer.writer = Some(writer);
        sequencer.segment_id = segment.segment_id;
        sequencer.segment_bytes = 0;
        self.open_segment_bytes.store(0, Ordering::Relaxed);
        sequencer.segment_opened_ms = strata_metadata::now_ms();
        sequencer.segment_max_timestamp = None;
        Ok(())
    }

    /// Where each segment of the partition starts, with its largest timestamp
    /// when metadata has it (sealed by its writer): the per-segment time index.
    pub fn time_index(&self) -> Vec<(i64, Option<i64>)> {
        self.cache.read(|state| {
            state
                .segments(&self.topic, self.partition)
                .iter()
                .map(|s| {
                    let max_timestamp = match &s.state {
                        Some(State::Sealed(sealed)) => sealed.max_timestamp,
                        Some(State::Offloaded(offloaded)) => offloaded.max_timestamp,
                        _ => None,
                    };
                    (s.base_offset, max_timestamp)
                })
                .collect()
        })
    }

    /// Raises the high watermark to `next_offset` once `pending` is confirmed,
    /// even if the request that appended it is gone (its connection closed):
    /// later readers and retried duplicates must not wait on it.
    fn raise_when_confirmed(
        &self,
        pending: PendingAdd,
        next_offset: i64,
    ) -> JoinHandle<Result<i64, LedgerError>> {
        let high_watermark = Arc::clone(&self.high_watermark);
        let broken = Arc::clone(&self.broken);
        tokio::spawn(async move {
            let confirmed = pending.await;
            match &confirmed {
                Ok(_) => {
                    high_watermark.send_if_modified(|hw| raise(hw, next_offset));
                }
                Err(error) => {
                    if break_log(&broken, &high_watermark) {
                        tracing::warn!(
                            %error,
                            next_offset,
                            "segment writer failed; the partition's segment will be recovered and rolled"
                        );
                    }
                }
            }
            confirmed
        })
    }

    /// The second half of an append: waits until the batch is confirmed (or,
    /// for a retried batch, until its original is) and raises the high watermark.
    pub async fn confirm(&self, sequenced: Sequenced) -> Result<Appended, i16> {
        match sequenced.0 {
            Step::Duplicate(original) => self.duplicate(original).await,
            Step::Written {
                confirmed,
                appended,
            } => match confirmed.await {
                Ok(Ok(_)) => Ok(appended),
                Ok(Err(error)) => Err(self.writer_failed(&error)),
                Err(_) => Err(super::NOT_SERVED),
            },
        }
    }

    /// Answers a retried batch once its original is confirmed, like Kafka
    /// (which holds a duplicate's answer until the high watermark passes the
    /// original). If the log breaks first, the original may be lost: the
    /// producer retries on the partition's next log, which knows whether it was.
    async fn duplicate(&self, original: WrittenBatch) -> Result<Appended, i16> {
        let mut high_watermark = self.high_watermark.subscribe();
        loop {
            if *high_watermark.borrow_and_update() > original.last_offset {
                return Ok(Appended {
                    base_offset: original.base_offset,
                    log_append_time_ms: original.log_append_time_ms,
                });
            }
            // `break_log` wakes this watch after marking the log broken.
            if self.is_broken() || high_watermark.changed().await.is_err() {
                return Err(super::NOT_SERVED);
            }
        }
    }

    fn writer_failed(&self, error: &LedgerError) -> i16 {
        if break_log(&self.broken, &self.high_watermark) {
            tracing::warn!(
                topic = %self.topic,
                partition = self.partition,
                %error,
                "segment writer failed; the partition's segment will be recovered and rolled"
            );
        }
        // The batch was handed to the bookies, and the recovery that follows
        // may keep it: a producer told "not written" could resend it as new
        // (librdkafka does, after bumping its epoch), which would duplicate it.
        if error.is_fenced() {
            super::NOT_SERVED
        } else {
            error_code::NOT_ENOUGH_REPLICAS_AFTER_APPEND as i16
        }
    }

    /// Whole batches from the one holding `offset`, below the high watermark,
    /// up to about `max_bytes` (always at least one batch when any is readable).
    /// Empty at the high watermark; OFFSET_OUT_OF_RANGE outside the log.
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<Vec<Bytes>, i16> {
        let high_watermark = self.high_watermark();
        if offset < self.log_start_offset() || offset > high_watermark {
            return Err(error_code::OFFSET_OUT_OF_RANGE as i16);
        }
        if offset == high_watermark {
            return Ok(Vec::new());
        }
        let start = self.recent_base_at(offset).unwrap_or(offset);
        let recent = self
            .batches
            .read(self.log_id, start, high_watermark, max_bytes);
        if let Some(batches) = recent {
            return Ok(batches);
        }
        self.read_from_bookies(offset, high_watermark, max_bytes)
            .await
    }

    /// The writer's LAC, when `segment_id` is the open segment.
    fn writer_lac(&self, segment_id: u64) -> Option<i64> {
        let open = self.open_lac.lock().unwrap_or_else(|e| e.into_inner());
        (open.0 == segment_id).then(|| *open.1.borrow())
    }

    fn remember_base(&self, base_offset: i64) {
        let mut bases = self.recent_bases.lock().unwrap_or_else(|e| e.into_inner());
        debug_assert!(bases.back().is_none_or(|&last| last < base_offset));
        if bases.len() == RECENT_BATCHES {
            bases.pop_front();
        }
        bases.push_back(base_offset);
    }

    /// The base offset of the recent batch holding `offset`, if it is one of
    /// the batches this log remembers.
    fn recent_base_at(&self, offset: i64) -> Option<i64> {
        let bases = self.recent_bases.lock().unwrap_or_else(|e| e.into_inner());
        let after = bases.partition_point(|&base| base <= offset);
        (after > 0).then(|| bases[after - 1])
    }

    /// Reads older data: from the segment's object when it is offloaded,
    /// else from its bookies.
    async fn read_from_bookies(
        &self,
        offset: i64,
        high_watermark: i64,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>, i16> {
        let storage_error = error_code::KAFKA_STORAGE_ERROR as i16;
        let found = self.cache.read(|state| {
            let segments = state.segments(&self.topic, self.partition);
            let segment = segments
                .iter()
                .rev()
                .find(|s| s.base_offset <= offset && end_offset(s).is_none_or(|end| offset < end))?
                .clone();
            if let Some(State::Offloaded(offloaded)) = &segment.state {
                return Some(Where::Object(
                    offloaded.object_key.clone(),
                    offloaded.object_size,
                ));
            }
            Some(Where::Bookies(
                segment.segment_id,
                LedgerSpec::from_segment(&segment, &state.bookies),
            ))
        });
        let (segment_id, spec) = match found {
            Some(Where::Object(key, size)) => {
                return self
                    .tiered
                    .read(&key, size, offset, max_bytes)
                    .await
                    .map_err(|error| {
                        tracing::warn!(topic = %self.topic, partition = self.partition, %key, %error, "reading from object storage failed");
                        storage_error
                    });
            }
            Some(Where::Bookies(segment_id, Ok(spec))) => (segment_id, spec),
            Some(Where::Bookies(_, Err(error))) => {
                tracing::warn!(%error, "cannot read a segment");
                return Err(storage_error);
            }
            None => return Err(error_code::OFFSET_OUT_OF_RANGE as i16),
        };
        let mut reader = LedgerReader::new(spec, &self.pool).map_err(|_| storage_error)?;
        if let Some(known_lac) = self.writer_lac(segment_id) {
            reader = reader.with_known_lac(known_lac);
        }
        let max = u32::try_from(max_bytes).unwrap_or(u32::MAX).max(1);
        let read = reader
            .read_from_offset(offset, -1, max)
            .await
            .map_err(|error| {
                tracing::warn!(topic = %self.topic, partition = self.partition, %error, "reading from bookies failed");
                storage_error
            })?;
        Ok(read
            .entries
            .into_iter()
            .filter(|entry| entry.base_offset < high_watermark)
            .map(|entry| entry.payload)
            .collect())
    }
}

/// Where a segment's data is read from.
enum Where {
    /// Its object (key, size) in object storage.
    Object(String, u64),
    /// Its bookies.
    Bookies(u64, Result<LedgerSpec, strata_bookie::ledger::LedgerError>),
}

/// The end offset of a sealed or offloaded segment; `None` while it is open.
fn end_offset(segment: &strata_proto::metadata::SegmentInfo) -> Option<i64> {
    match &segment.state {
        Some(State::Sealed(sealed)) => Some(sealed.end_offset),
        Some(State::Offloaded(offloaded)) => Some(offloaded.end_offset),
        _ => None,
    }
}

/// Marks a log broken (it takes no more appends and is taken over again) and
/// wakes everyone waiting on its high watermark, such as retried duplicates;
/// returns whether this call broke it.
fn break_log(broken: &AtomicBool, high_watermark: &watch::Sender<i64>) -> bool {
    let first = !broken.swap(true, Ordering::AcqRel);
    high_watermark.send_modify(|_| {});
    first
}

fn raise(high_watermark: &mut i64, to: i64) -> bool {
    if to > *high_watermark {
        *high_watermark = to;
        true
    } else {
        false
    }
}
