//! The apply thread: the single writer of the entry logs and the index.
//!
//! It takes batches the journal has made durable, appends their entries to
//! the current entry log (one write per batch), records them in the index
//! (one RocksDB batch), publishes the new segment states, and only then
//! completes the waiting requests, so an acknowledged entry is readable.
//! Compaction's relocations go through it too, so that no two writers race.

use super::entry_log::{EntryLogWriter, Location, StoredEntry, ENTRY_HEADER_LEN};
use super::error::StorageError;
use super::index::IndexBatch;
use super::journal::JournalPosition;
use super::record::JournalRecord;
use super::segment::SegmentMeta;
use super::shared::Shared;
use super::stats::bump;
use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

/// What applying a record did, for its requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// The entry is stored.
    Added,
    /// The segment is fenced; its state at that point.
    Fenced {
        last_add_confirmed: i64,
        last_entry_id: i64,
    },
    /// The segment is sealed.
    Sealed,
    /// The segment is gone.
    Deleted,
}

/// Where a request waits for its record to be applied.
pub(crate) type Waiter = oneshot::Sender<Result<Applied, StorageError>>;

/// A record on its way through the journal, with whoever waits for it.
pub(crate) struct Pending {
    pub record: JournalRecord,
    pub waiter: Waiter,
    /// Room in the pending-bytes budget, held until the record is applied
    /// and given back when this is dropped.
    pub _room: Option<OwnedSemaphorePermit>,
}

impl Pending {
    /// Answers the requester (who may have gone away).
    pub fn complete(self, outcome: Result<Applied, StorageError>) {
        let _ = self.waiter.send(outcome);
    }
}

/// An entry that compaction moves out of an entry log.
pub(crate) struct Relocation {
    pub entry: StoredEntry,
    pub from: Location,
}

/// Work for the apply thread.
pub(crate) enum ApplyCommand {
    /// Records the journal made durable, ending at `end`.
    Journal {
        items: Vec<Pending>,
        end: JournalPosition,
    },
    /// Entries to copy to the current entry log if the index still points
    /// at their old place; answers with the bytes moved.
    Relocate {
        entries: Vec<Relocation>,
        done: SyncSender<Result<u64, StorageError>>,
    },
}

/// Applies records to the entry logs and the index.
pub(crate) struct Applier {
    shared: Arc<Shared>,
    log: EntryLogWriter,
}

/// Changes of one batch not yet in the index.
struct Staged<'a> {
    batch: IndexBatch<'a>,
    /// Segments changed by the batch, with their new state.
    touched: BTreeMap<u64, SegmentMeta>,
    /// Entries written by the batch, in case one is written twice.
    written: HashMap<(u64, i64), Location>,
}

impl Applier {
    /// Applies to the entries logs through `log`.
    pub fn new(shared: Arc<Shared>, log: EntryLogWriter) -> Self {
        Self { shared, log }
    }

    /// Records the current entry log as the apply thread's progress.
    pub fn publish_progress(&self, journal: Option<JournalPosition>) {
        self.shared
            .set_progress(journal, self.log.log_id(), self.log.file());
    }

    /// Applies records in order; returns what each did.
    pub fn apply<'r>(
        &mut self,
        records: impl IntoIterator<Item = &'r JournalRecord>,
    ) -> Result<Vec<Applied>, StorageError> {
        let shared = Arc::clone(&self.shared);
        let mut staged = Staged {
            batch: shared.index.batch(),
            touched: BTreeMap::new(),
            written: HashMap::new(),
        };
        let mut outcomes = Vec::new();
        for record in records {
            let outcome = match record {
                JournalRecord::Add(add) => {
                    let location = self.log.stage(
                        add.segment_id,
                        add.entry_id,
                        add.base_offset,
                        &add.payload,
                    )?;
                    let key = (add.segment_id, add.entry_id);
                    let replaced = match staged.written.insert(key, location) {
                        Some(earlier) => Some(earlier),
                        None => shared.index.entry(add.segment_id, add.entry_id)?,
                    };
                    let meta = touch(&shared, &mut staged.touched, add.segment_id);
                    if let Some(old) = replaced {
                        // An entry written again (replay, or a writer's retry):
                        // its old copy is dead.
                        staged.batch.add_log_bytes(old.log_id, -i64::from(old.len));
                        if old.base_offset != add.base_offset {
                            staged.batch.delete_offset(add.segment_id, old.base_offset);
                        }
                        meta.bytes = meta.bytes.saturating_sub(payload_len(old));
                    }
                    staged
                        .batch
                        .put_entry(add.segment_id, add.entry_id, location);
                    staged
                        .batch
                        .add_log_bytes(location.log_id, i64::from(location.len));
                    meta.bytes += add.payload.len() as u64;
                    meta.last_entry_id = meta.last_entry_id.max(add.entry_id);
                    meta.last_add_confirmed = meta.last_add_confirmed.max(add.last_add_confirmed);
                    Applied::Added
                }
                JournalRecord::Fence { segment_id, epoch } => {
                    let meta = touch(&shared, &mut staged.touched, *segment_id);
                    meta.fenced_epoch = meta.fenced_epoch.max(*epoch);
                    Applied::Fenced {
                        last_add_confirmed: meta.visible_lac(),
                        last_entry_id: meta.last_entry_id,
                    }
                }
                JournalRecord::Seal {
                    segment_id,
                    last_entry_id,
                } => {
                    let meta = touch(&shared, &mut staged.touched, *segment_id);
                    meta.sealed_last_entry = Some(*last_entry_id);
                    Applied::Sealed
                }
                JournalRecord::Delete { segment_id } => {
                    // Land everything before it, then delete on its own.
                    let before = std::mem::replace(
                        &mut staged,
                        Staged {
                            batch: shared.index.batch(),
                            touched: BTreeMap::new(),
                            written: HashMap::new(),
                        },
                    );
                    self.commit(before)?;
                    self.delete_segment(*segment_id)?;
                    Applied::Deleted
                }
            };
            outcomes.push(outcome);
        }
        self.commit(staged)?;
        Ok(outcomes)
    }

    /// Writes the staged entries, then the index batch, then publishes the
    /// segments' new states: readers never find an index entry whose bytes
    /// are not written, nor a LAC whose entries are not indexed.
    fn commit(&mut self, staged: Staged<'_>) -> Result<(), StorageError> {
        let Staged {
            mut batch, touched, ..
        } = staged;
        self.log.flush()?;
        for (segment_id, meta) in &touched {
            batch.put_segment(*segment_id, meta);
        }
        self.shared.index.write(batch)?;
        for (segment_id, meta) in touched {
            self.shared.segments.publish(segment_id, meta);
        }
        Ok(())
    }

    /// Removes a segment's entries from the index, counting their bytes as
    /// dead in their entry logs, and forgets the segment.
    fn delete_segment(&mut self, segment_id: u64) -> Result<(), StorageError> {
        let mut dead: HashMap<u64, i64> = HashMap::new();
        self.shared
            .index
            .scan_entries(segment_id, 0, |_, location| {
                *dead.entry(location.log_id).or_default() += i64::from(location.len);
                Ok(true)
            })?;
        let mut batch = self.shared.index.batch();
        for (log_id, bytes) in dead {
            batch.add_log_bytes(log_id, -bytes);
        }
        batch.delete_segment(segment_id);
        self.shared.index.write(batch)?;
        self.shared.segments.remove(segment_id);
        bump(&self.shared.counters.segments_deleted, 1);
        tracing::debug!(segment_id, "segment deleted");
        Ok(())
    }

    /// Copies entries to the current entry log where the index still points
    /// at their old place; returns the bytes moved.
    fn relocate(&mut self, entries: Vec<Relocation>) -> Result<u64, StorageError> {
        let shared = Arc::clone(&self.shared);
        let mut batch = shared.index.batch();
        let mut moved = 0;
        for Relocation { entry, from } in entries {
            let current = shared.index.entry(entry.segment_id, entry.entry_id)?;
            if current.map(|at| (at.log_id, at.offset)) != Some((from.log_id, from.offset)) {
                // Deleted or written again since compaction looked: not live here.
                continue;
            }
            let to = self.log.stage(
                entry.segment_id,
                entry.entry_id,
                entry.base_offset,
                &entry.payload,
            )?;
            batch.put_entry(entry.segment_id, entry.entry_id, to);
            batch.add_log_bytes(from.log_id, -i64::from(from.len));
            batch.add_log_bytes(to.log_id, i64::from(to.len));
            moved += u64::from(to.len);
        }
        self.log.flush()?;
        shared.index.write(batch)?;
        self.publish_progress(None);
        Ok(moved)
    }

    /// Runs until every sender of `commands` is gone.
    pub fn run(mut self, commands: Receiver<ApplyCommand>) {
        for command in commands {
            match command {
                ApplyCommand::Journal { items, end } => {
                    let result = self
                        .shared
                        .check_failed()
                        .and_then(|()| self.apply(items.iter().map(|item| &item.record)));
                    match result {
                        Ok(outcomes) => {
                            self.publish_progress(Some(end));
                            let adds = outcomes.iter().filter(|o| **o == Applied::Added).count();
                            bump(&self.shared.counters.adds, adds as u64);
                            for (item, outcome) in items.into_iter().zip(outcomes) {
                                item.complete(Ok(outcome));
                            }
                        }
                        Err(error) => {
                            self.shared.fail(&error);
                            for item in items {
                                item.complete(Err(error.for_waiter()));
                            }
                        }
                    }
                }
                ApplyCommand::Relocate { entries, done } => {
                    let result = self
                        .shared
                        .check_failed()
                        .and_then(|()| self.relocate(entries));
                    if let Err(error) = &result {
                        self.shared.fail(error);
                    }
                    let _ = done.send(result);
                }
            }
        }
    }
}

/// The segment's state being built by this batch.
fn touch<'t>(
    shared: &Shared,
    touched: &'t mut BTreeMap<u64, SegmentMeta>,
    segment_id: u64,
) -> &'t mut SegmentMeta {
    touched
        .entry(segment_id)
        .or_insert_with(|| shared.segments.applied(segment_id).unwrap_or_default())
}

/// Payload bytes of a stored entry.
fn payload_len(location: Location) -> u64 {
    u64::from(location.len).saturating_sub(ENTRY_HEADER_LEN as u64)
}
