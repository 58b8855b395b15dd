//! Crash recovery: replays the journal past the last checkpoint into the
//! entry logs and the index.
//!
//! Replay stops at the first torn or damaged frame, which can only be the
//! tail of a write that never completed (so it was never acknowledged), and
//! truncates the file there. Journal files after a damaged one are renamed
//! aside rather than replayed out of order or deleted.

use super::apply::Applier;
use super::error::StorageError;
use super::journal::{
    journal_path, list_journal_files, scan_file, truncate_file, JournalPosition, ScanEnd,
};
use super::record::JournalRecord;
use std::path::Path;

/// Suffix given to journal files found after a damaged one.
const ORPHAN_SUFFIX: &str = "orphaned";

/// What a replay did.
pub(crate) struct Replay {
    /// Id for the next journal file: past every existing one.
    pub next_file_id: u64,
    /// Records replayed.
    pub records: u64,
}

/// Replays the journal files in `dir` from `checkpoint` (or from their start)
/// through `applier`, applying `chunk_bytes` of records at a time.
pub(crate) fn replay(
    dir: &Path,
    checkpoint: Option<JournalPosition>,
    applier: &mut Applier,
    chunk_bytes: usize,
) -> Result<Replay, StorageError> {
    let files = list_journal_files(dir)?;
    let next_file_id = files
        .last()
        .copied()
        .max(checkpoint.map(|c| c.file_id))
        .map_or(1, |id| id + 1);
    let mut records = 0;
    let mut chunk: Vec<JournalRecord> = Vec::new();
    let mut chunk_len = 0;
    for (at, &file_id) in files.iter().enumerate() {
        let start = match checkpoint {
            // Covered by the checkpoint; deleted by the next one.
            Some(checkpoint) if file_id < checkpoint.file_id => continue,
            Some(checkpoint) if file_id == checkpoint.file_id => checkpoint.offset,
            _ => 0,
        };
        let path = journal_path(dir, file_id);
        let end = scan_file(&path, file_id, start, |record, _| {
            chunk_len += record.encoded_len();
            chunk.push(record);
            records += 1;
            if chunk_len >= chunk_bytes {
                applier.apply(chunk.iter())?;
                chunk.clear();
                chunk_len = 0;
            }
            Ok(())
        })?;
        if let ScanEnd::Bad { at: bad_at, reason } = end {
            tracing::warn!(
                file = %path.display(),
                offset = bad_at,
                reason,
                "journal ends in a torn or damaged record; truncating it"
            );
            truncate_file(&path, bad_at)?;
            for &later in &files[at + 1..] {
                let from = journal_path(dir, later);
                let to = from.with_extension(format!("journal.{ORPHAN_SUFFIX}"));
                tracing::error!(
                    file = %from.display(),
                    "journal file follows a damaged one and is not replayed; renamed aside"
                );
                std::fs::rename(&from, &to)
                    .map_err(|e| StorageError::io("rename damaged journal", &from, e))?;
            }
            break;
        }
    }
    if !chunk.is_empty() {
        applier.apply(chunk.iter())?;
    }
    if records > 0 {
        tracing::info!(records, "journal replayed");
    }
    Ok(Replay {
        next_file_id,
        records,
    })
}
