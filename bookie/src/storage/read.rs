//! Reads: a run of consecutive entries of a segment, from an entry id or
//! from the entry holding a Kafka offset, bounded by the LAC (or, for
//! recovery, by the last entry held) and by a byte budget.

use super::entry_log::{Location, StoredEntry, ENTRY_HEADER_LEN};
use super::error::{invalid, StorageError};
use super::shared::Shared;
use std::io::ErrorKind;
use strata_proto::bookie::read_entries_request::Start;
use strata_proto::bookie::{Entry, ReadEntriesRequest};

/// The answer to a read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadResult {
    /// Consecutive entries from the first one asked for; empty when it lies
    /// past what may be read.
    pub entries: Vec<Entry>,
    /// The segment's last-add-confirmed as this bookie knows it (the sealed
    /// last entry once sealed).
    pub last_add_confirmed: i64,
}

/// Serves a read; `max_read_bytes` caps (and replaces a 0) `max_bytes`.
pub(crate) fn read_entries(
    shared: &Shared,
    request: &ReadEntriesRequest,
    max_read_bytes: u64,
) -> Result<ReadResult, StorageError> {
    let segment_id = request.segment_id;
    let meta = shared
        .segments
        .readable(segment_id)
        .ok_or(StorageError::NoSuchSegment(segment_id))?;
    let last_add_confirmed = meta.visible_lac();
    let mut readable_end = meta.readable_end(request.recovery);
    if let Some(known_lac) = request.known_lac {
        // Entries the writer saw confirmed are readable even before the LAC
        // reaches this bookie; past what the bookie holds, the scan stops at
        // the gap. A sealed segment ends where it was sealed.
        if !meta.is_sealed() {
            readable_end = readable_end.max(known_lac);
        }
    }
    let end = match request.last_entry_id {
        -1 => readable_end,
        last if last >= 0 => last.min(readable_end),
        last => return Err(invalid(format!("last_entry_id {last} is below -1"))),
    };
    let first = match request.start {
        Some(Start::FirstEntryId(first)) if first >= 0 => first,
        Some(Start::KafkaOffset(offset)) if offset >= 0 => shared
            .index
            .entry_for_offset(segment_id, offset)?
            .ok_or(StorageError::NoSuchOffset { segment_id, offset })?,
        Some(Start::FirstEntryId(first)) => {
            return Err(invalid(format!("first_entry_id {first} is negative")))
        }
        Some(Start::KafkaOffset(offset)) => {
            return Err(invalid(format!("kafka_offset {offset} is negative")))
        }
        None => return Err(invalid("a read needs first_entry_id or kafka_offset")),
    };
    let budget = match u64::from(request.max_bytes) {
        0 => max_read_bytes,
        asked => asked.min(max_read_bytes),
    };
    let mut entries = Vec::new();
    if first > end {
        return Ok(ReadResult {
            entries,
            last_add_confirmed,
        });
    }
    let mut bytes = 0u64;
    let mut expected = first;
    shared
        .index
        .scan_entries(segment_id, first, |entry_id, location| {
            // Stop at the end, or at a gap: the entries returned are consecutive.
            if entry_id != expected || entry_id > end {
                return Ok(false);
            }
            let len = u64::from(location.len).saturating_sub(ENTRY_HEADER_LEN as u64);
            if !entries.is_empty() && bytes + len > budget {
                return Ok(false);
            }
            let stored = read_one(shared, segment_id, entry_id, location)?;
            bytes += stored.payload.len() as u64;
            entries.push(Entry {
                entry_id,
                base_offset: stored.base_offset,
                payload: stored.payload,
            });
            expected += 1;
            Ok(true)
        })?;
    if entries.is_empty() {
        return Err(StorageError::NoSuchEntry {
            segment_id,
            entry_id: first,
        });
    }
    Ok(ReadResult {
        entries,
        last_add_confirmed,
    })
}

/// Reads one entry; if compaction moved it (its old entry log is gone),
/// looks it up again.
fn read_one(
    shared: &Shared,
    segment_id: u64,
    entry_id: i64,
    location: Location,
) -> Result<StoredEntry, StorageError> {
    match shared.logs.read(location, segment_id, entry_id) {
        Err(StorageError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            let moved =
                shared
                    .index
                    .entry(segment_id, entry_id)?
                    .ok_or(StorageError::NoSuchEntry {
                        segment_id,
                        entry_id,
                    })?;
            shared.logs.read(moved, segment_id, entry_id)
        }
        result => result,
    }
}
