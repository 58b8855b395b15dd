//! What the storage's threads share: the index, the entry logs, the segments
//! in memory, counters, and the progress that checkpoints record.

use super::apply::ApplyCommand;
use super::disk::DiskGuard;
use super::entry_log::EntryLogs;
use super::error::StorageError;
use super::index::Index;
use super::journal::JournalPosition;
use super::segment::{SegmentMeta, SegmentState};
use super::stats::Counters;
use std::collections::HashMap;
use std::fs::File;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

/// Locks a mutex, carrying on with its data if a holder panicked.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every segment known in memory, each behind its own lock so that requests
/// for different segments never wait on each other.
#[derive(Default)]
pub(crate) struct Segments {
    map: RwLock<HashMap<u64, Arc<Mutex<SegmentState>>>>,
}

impl Segments {
    /// Loads the segments the index holds.
    pub fn load(stored: Vec<(u64, SegmentMeta)>) -> Self {
        let map = stored
            .into_iter()
            .map(|(segment_id, applied)| {
                let state = SegmentState {
                    applied,
                    persisted: true,
                    ..Default::default()
                };
                (segment_id, Arc::new(Mutex::new(state)))
            })
            .collect();
        Self {
            map: RwLock::new(map),
        }
    }

    /// The segment, if it is known.
    pub fn get(&self, segment_id: u64) -> Option<Arc<Mutex<SegmentState>>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&segment_id)
            .cloned()
    }

    /// The segment, created empty if it is not known yet.
    pub fn get_or_create(&self, segment_id: u64) -> Arc<Mutex<SegmentState>> {
        if let Some(state) = self.get(segment_id) {
            return state;
        }
        Arc::clone(
            self.map
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(segment_id)
                .or_default(),
        )
    }

    /// The applied state of a segment that readers may see: stored, and not
    /// being deleted.
    pub fn readable(&self, segment_id: u64) -> Option<SegmentMeta> {
        let state = self.get(segment_id)?;
        let state = lock(&state);
        (state.persisted && !state.deleting).then_some(state.applied)
    }

    /// The applied state of a segment, for the apply thread to build on.
    pub fn applied(&self, segment_id: u64) -> Option<SegmentMeta> {
        self.get(segment_id).map(|state| lock(&state).applied)
    }

    /// Publishes a segment's newly applied state.
    pub fn publish(&self, segment_id: u64, meta: SegmentMeta) {
        let state = self.get_or_create(segment_id);
        let mut state = lock(&state);
        debug_assert!(
            meta.last_add_confirmed >= state.applied.last_add_confirmed,
            "the LAC of segment {segment_id} never moves backwards"
        );
        debug_assert!(
            meta.fenced_epoch >= state.applied.fenced_epoch,
            "fence epochs of segment {segment_id} only grow"
        );
        state.applied = meta;
        state.persisted = true;
    }

    /// Forgets a deleted segment.
    pub fn remove(&self, segment_id: u64) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&segment_id);
    }

    /// Every stored, live segment's applied state, in id order.
    pub fn stored(&self) -> Vec<(u64, SegmentMeta)> {
        let states: Vec<_> = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(&id, state)| (id, Arc::clone(state)))
            .collect();
        let mut stored: Vec<_> = states
            .into_iter()
            .filter_map(|(id, state)| {
                let state = lock(&state);
                (state.persisted && !state.deleting).then_some((id, state.applied))
            })
            .collect();
        stored.sort_unstable_by_key(|(id, _)| *id);
        stored
    }
}

/// How far the apply thread has got: every journal record before `journal`
/// is in the entry logs and the index; `log_file` is the entry log being
/// appended to (earlier ones were synced when they were rolled).
pub(crate) struct Progress {
    pub journal: JournalPosition,
    pub log_id: u64,
    pub log_file: Arc<File>,
}

/// State shared by the storage's threads and callers.
pub(crate) struct Shared {
    pub index: Index,
    pub logs: Arc<EntryLogs>,
    pub segments: Segments,
    pub counters: Counters,
    pub disk: DiskGuard,
    /// Set once by the first journal or entry-log write failure.
    pub failure: OnceLock<String>,
    pub progress: Mutex<Progress>,
    /// The apply thread's command queue, for compaction; taken on close.
    pub apply_tx: Mutex<Option<SyncSender<ApplyCommand>>>,
}

impl Shared {
    /// Refuses writes once the storage has failed.
    pub fn check_failed(&self) -> Result<(), StorageError> {
        match self.failure.get() {
            Some(failure) => Err(StorageError::Failed(failure.clone())),
            None => Ok(()),
        }
    }

    /// Records a write failure: from now on every write is refused.
    pub fn fail(&self, error: &StorageError) {
        if self.failure.set(error.to_string()).is_ok() {
            tracing::error!(%error, "bookie storage failed; writes are refused until restart");
        }
    }

    /// Records the apply thread's progress.
    pub fn set_progress(&self, journal: Option<JournalPosition>, log_id: u64, log_file: Arc<File>) {
        let mut progress = lock(&self.progress);
        if let Some(journal) = journal {
            debug_assert!(
                journal >= progress.journal,
                "applied journal position only grows"
            );
            progress.journal = journal;
        }
        progress.log_id = log_id;
        progress.log_file = log_file;
    }
}
