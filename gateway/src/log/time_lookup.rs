//! Offsets by timestamp for ListOffsets: the first record whose timestamp is at
//! or after a target, and the record with the largest timestamp.
//!
//! The per-segment time index (each sealed segment's largest timestamp, kept
//! in metadata) skips the segments that end before the target; batches are
//! then scanned using their max timestamps, and only the batch that holds the
//! answer is decoded to find the exact record. Segments sealed by recovery have
//! no index entry and are scanned.

use super::batch::RecordBatch;
use crate::partition::PartitionLog;
use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use strata_proto::error_code;

/// Bytes read per step of a scan.
const SCAN_STEP_BYTES: usize = 1 << 20;

/// A record's offset and timestamp.
pub type Found = (i64, i64);

/// The first record with a timestamp at or after `target`, if any.
pub async fn first_at_or_after(log: &PartitionLog, target: i64) -> Result<Option<Found>, i16> {
    // The per-segment time index: segments whose largest timestamp is known
    // and earlier than the target hold no answer, so the scan starts after them.
    let index = log.time_index();
    let start = index
        .iter()
        .find(|(_, max)| max.is_none_or(|max| max >= target))
        .map(|(base, _)| *base);
    let Some(start) = start.or_else(|| (index.is_empty()).then_some(0)) else {
        // Every segment ends before the target: no such record.
        return Ok(None);
    };
    let mut found = None;
    scan(log, start, |bytes, batch, from| {
        if batch.max_timestamp() < target {
            return true;
        }
        found = Some(first_record(bytes, batch, from, |ts| ts >= target));
        false
    })
    .await?;
    Ok(found)
}

/// The record with the largest timestamp (the first of them on a tie), if any.
pub async fn max_timestamp(log: &PartitionLog) -> Result<Option<Found>, i16> {
    let mut best: Option<(i64, Bytes, i64)> = None;
    scan(log, 0, |bytes, batch, from| {
        if best
            .as_ref()
            .is_none_or(|(ts, _, _)| batch.max_timestamp() > *ts)
        {
            best = Some((batch.max_timestamp(), bytes.clone(), from));
        }
        true
    })
    .await?;
    Ok(
        best.map(|(ts, bytes, from)| match RecordBatch::parse(&bytes) {
            Ok(batch) => first_record(&bytes, &batch, from, |t| t >= ts),
            Err(_) => (from, ts),
        }),
    )
}

/// Visits every readable batch from offset `from` in offset order with the
/// first offset of it that is in the log, until `visit` returns false.
async fn scan(
    log: &PartitionLog,
    from: i64,
    mut visit: impl FnMut(&Bytes, &RecordBatch, i64) -> bool,
) -> Result<(), i16> {
    let mut offset = log.log_start_offset().max(from);
    while offset < log.high_watermark() {
        let batches = log.read(offset, SCAN_STEP_BYTES).await?;
        if batches.is_empty() {
            break;
        }
        let before = offset;
        for bytes in batches {
            let batch =
                RecordBatch::parse(&bytes).map_err(|_| error_code::KAFKA_STORAGE_ERROR as i16)?;
            if batch.last_offset() < offset {
                continue;
            }
            let from = batch.base_offset().max(offset);
            if !visit(&bytes, &batch, from) {
                return Ok(());
            }
            offset = batch.last_offset() + 1;
        }
        if offset == before {
            // The read gave nothing past `offset`: the log is not as its
            // segments say, so stop rather than read the same place forever.
            return Err(error_code::KAFKA_STORAGE_ERROR as i16);
        }
    }
    Ok(())
}

/// The first record at or after offset `from` in a batch whose timestamp
/// satisfies `wanted`; the batch's own start when its records cannot be
/// decoded.
fn first_record(
    bytes: &Bytes,
    batch: &RecordBatch,
    from: i64,
    wanted: impl Fn(i64) -> bool,
) -> Found {
    if batch.is_log_append_time() {
        // Every record of the batch carries the append time.
        return (from, batch.max_timestamp());
    }
    let mut buf = bytes.clone();
    match RecordBatchDecoder::decode(&mut buf) {
        Ok(set) => set
            .records
            .iter()
            .find(|r| r.offset >= from && wanted(r.timestamp))
            .map(|r| (r.offset, r.timestamp))
            .unwrap_or((from, batch.max_timestamp())),
        Err(_) => (from, batch.max_timestamp()),
    }
}
