//! The bookie's storage engine: journal with group commit, rolling entry logs,
//! the RocksDB index, crash recovery, fencing, reads and garbage collection.
//!
//! A change (add, fence, seal, delete) is judged against the segment's state
//! ([`segment`]), queued for the journal thread ([`group_commit`]), written
//! and synced with the others that arrived meanwhile ([`journal`]), then
//! applied by the apply thread to the entry logs and the index ([`apply`]);
//! only then is it acknowledged. Checkpoints sync the entry logs and the index
//! and trim the journal; on open, the journal past the last checkpoint is
//! replayed ([`recovery`]). [`gc`] deletes segments and compacts entry logs.
//!
//! On disk, under the data directory: `journal/`, `entry-logs/`, `index/`.

mod apply;
mod disk;
mod entry_log;
mod error;
pub mod gc;
mod group_commit;
mod index;
mod journal;
pub mod maintenance;
mod read;
mod record;
mod recovery;
mod segment;
mod shared;
mod stats;
#[cfg(test)]
mod tests;

pub use disk::free_bytes;
pub use error::StorageError;
pub use journal::JournalPosition;
pub use read::ReadResult;
pub use stats::StorageStats;

use crate::config::BookieConfig;
use apply::{Applied, Applier, Pending};
use entry_log::EntryLogs;
use error::invalid;
use group_commit::{GroupCommit, JournalQueue};
use index::Index;
use journal::{frame_len, journal_path, list_journal_files, sync_dir, JournalWriter};
use record::{AddRecord, JournalRecord};
use segment::{AddAdmission, AddDecision};
use shared::{lock, Progress, Segments, Shared};
use stats::{bump, Counters};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;
use strata_proto::bookie::{AddRequest, ReadEntriesRequest, SegmentSummary};
use tokio::sync::{oneshot, Semaphore};

/// Journal batches that may wait for the apply thread.
const APPLY_QUEUE_BATCHES: usize = 4;

/// A segment's state when it was fenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceResult {
    /// The last-add-confirmed this bookie knew.
    pub last_add_confirmed: i64,
    /// The highest entry id this bookie holds; -1 if none.
    pub last_entry_id: i64,
}

/// One bookie's storage. Dropping it stops its threads without a final
/// checkpoint (as a crash would leave it); [`Storage::close`] takes one.
pub struct Storage {
    shared: Arc<Shared>,
    queue: Arc<JournalQueue>,
    /// Bytes of adds admitted but not yet applied.
    pending_bytes: Arc<Semaphore>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    checkpoint_lock: Mutex<()>,
    journal_dir: PathBuf,
    max_entry_bytes: u64,
    max_read_bytes: u64,
}

impl Storage {
    /// Opens the storage under `config.data_dir`, replays the journal past
    /// the last checkpoint, takes a checkpoint and starts the journal and
    /// apply threads. Blocks on disk I/O.
    pub fn open(config: &BookieConfig) -> Result<Self, StorageError> {
        config.validate()?;
        let data_dir = &config.data_dir;
        let journal_dir = data_dir.join("journal");
        std::fs::create_dir_all(&journal_dir)
            .map_err(|e| StorageError::io("create", &journal_dir, e))?;
        let index = Index::open(&data_dir.join("index"))?;
        let logs = Arc::new(EntryLogs::open(&data_dir.join("entry-logs"))?);
        // Never append to a log a crash may have left torn: start a new one.
        let log_id = logs.list()?.last().map_or(1, |id| id + 1);
        let log = logs.create_writer(log_id, config.entry_log_file_bytes)?;
        let segments = Segments::load(index.segments()?);
        let checkpoint = index.checkpoint()?;
        let (apply_tx, apply_rx) = mpsc::sync_channel(APPLY_QUEUE_BATCHES);
        let shared = Arc::new(Shared {
            index,
            logs,
            segments,
            counters: Counters::default(),
            disk: disk::DiskGuard::new(data_dir, config.min_free_bytes),
            failure: OnceLock::new(),
            progress: Mutex::new(Progress {
                journal: checkpoint.unwrap_or(JournalPosition {
                    file_id: 0,
                    offset: 0,
                }),
                log_id,
                log_file: log.file(),
            }),
            apply_tx: Mutex::new(Some(apply_tx.clone())),
        });
        let max_batch_bytes = usize::try_from(config.journal_max_batch_bytes).unwrap_or(usize::MAX);
        let mut applier = Applier::new(Arc::clone(&shared), log);
        let replayed = recovery::replay(&journal_dir, checkpoint, &mut applier, max_batch_bytes)?;
        bump(&shared.counters.replayed_records, replayed.records);
        let writer = JournalWriter::create(
            &journal_dir,
            replayed.next_file_id,
            config.journal_file_bytes,
            config.journal_sync,
        )?;
        applier.publish_progress(Some(writer.position()));

        // One add must always fit the budget, whatever the config says.
        let max_frame = config.max_entry_bytes as usize + frame_overhead();
        let budget = (config.max_pending_add_bytes as usize)
            .max(max_frame)
            .min(Semaphore::MAX_PERMITS);
        let storage = Self {
            shared: Arc::clone(&shared),
            queue: Arc::new(JournalQueue::default()),
            pending_bytes: Arc::new(Semaphore::new(budget)),
            threads: Mutex::new(Vec::new()),
            checkpoint_lock: Mutex::new(()),
            journal_dir: journal_dir.clone(),
            max_entry_bytes: config.max_entry_bytes,
            max_read_bytes: config.max_read_bytes,
        };
        // What was replayed is now in synced entry logs and index.
        storage.checkpoint()?;

        let group_commit = GroupCommit {
            queue: Arc::clone(&storage.queue),
            writer,
            apply: apply_tx,
            shared,
            max_batch_bytes,
            max_wait: Duration::from_micros(config.journal_max_wait_us),
        };
        let spawn = |name: &str, run: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(run)
                .map_err(|e| StorageError::io("start thread", &journal_dir, e))
        };
        let journal_thread = spawn("bookie-journal", Box::new(move || group_commit.run()))?;
        let apply_thread = spawn("bookie-apply", Box::new(move || applier.run(apply_rx)))?;
        *lock(&storage.threads) = vec![journal_thread, apply_thread];
        Ok(storage)
    }

    /// Admits an add and queues it for the journal, waiting while too many
    /// bytes of adds are pending. The returned ticket resolves once the entry
    /// is durable and readable. Adds are journaled in the order this is called.
    pub async fn submit_add(&self, add: AddRequest) -> Result<AddTicket, StorageError> {
        self.check_add(&add)?;
        self.shared.check_failed()?;
        let admission = AddAdmission {
            segment_id: add.segment_id,
            entry_id: add.entry_id,
            writer_epoch: add.writer_epoch,
            recovery: add.recovery,
        };
        let record = JournalRecord::Add(AddRecord {
            segment_id: add.segment_id,
            entry_id: add.entry_id,
            last_add_confirmed: add.last_add_confirmed,
            base_offset: add.base_offset,
            payload: add.payload,
        });
        let bytes = u32::try_from(frame_len(&record)).map_err(|_| invalid("entry too large"))?;
        let permit = Arc::clone(&self.pending_bytes)
            .acquire_many_owned(bytes)
            .await
            .map_err(|_| StorageError::Closed)?;
        let state = self.shared.segments.get_or_create(admission.segment_id);
        let mut state = lock(&state);
        let decision = state.admit_add(admission, self.shared.disk.check(), || {
            Ok(self
                .shared
                .index
                .entry(admission.segment_id, admission.entry_id)?
                .is_some())
        })?;
        if decision == AddDecision::AlreadyHeld {
            return Ok(AddTicket(None));
        }
        let (waiter, done) = oneshot::channel();
        // Queued while the segment is locked, so that a fence or seal admitted
        // after this add is journaled after it too.
        self.queue
            .push(Pending {
                record,
                waiter,
                _room: Some(permit),
            })
            .map_err(|_| StorageError::Closed)?;
        Ok(AddTicket(Some(done)))
    }

    /// Adds an entry and waits until it is durable and readable.
    pub async fn add(&self, add: AddRequest) -> Result<(), StorageError> {
        self.submit_add(add).await?.await
    }

    /// Fences a segment at `epoch` (creating it if this bookie never saw it):
    /// once this returns, adds of older epochs are refused, durably.
    pub async fn fence(&self, segment_id: u64, epoch: u32) -> Result<FenceResult, StorageError> {
        if epoch == 0 {
            return Err(invalid("fence epochs start at 1"));
        }
        let done = self.journal_change(
            segment_id,
            |state| state.admit_fence(segment_id, epoch),
            || JournalRecord::Fence { segment_id, epoch },
        )?;
        match done.await {
            Ok(Ok(Applied::Fenced {
                last_add_confirmed,
                last_entry_id,
            })) => Ok(FenceResult {
                last_add_confirmed,
                last_entry_id,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Seals a segment at `last_entry_id` (-1: empty), durably; a writer of an
    /// epoch older than the fence is refused, and so is a different end.
    pub async fn seal(
        &self,
        segment_id: u64,
        epoch: u32,
        last_entry_id: i64,
    ) -> Result<(), StorageError> {
        if last_entry_id < -1 {
            return Err(invalid(format!(
                "last_entry_id {last_entry_id} is below -1"
            )));
        }
        let done = self.journal_change(
            segment_id,
            |state| state.admit_seal(segment_id, epoch, last_entry_id),
            || JournalRecord::Seal {
                segment_id,
                last_entry_id,
            },
        )?;
        match done.await {
            Ok(Ok(Applied::Sealed)) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes a segment from this bookie, durably; deleting a segment it
    /// does not hold succeeds.
    pub async fn delete_segment(&self, segment_id: u64) -> Result<(), StorageError> {
        if self.shared.segments.get(segment_id).is_none() {
            return Ok(());
        }
        let done = self.journal_change(
            segment_id,
            |state| {
                state.deleting = true;
                Ok(())
            },
            || JournalRecord::Delete { segment_id },
        )?;
        match done.await {
            Ok(Ok(Applied::Deleted)) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Reads entries (see [`ReadResult`]); blocks on disk I/O.
    pub fn read(&self, request: &ReadEntriesRequest) -> Result<ReadResult, StorageError> {
        read::read_entries(&self.shared, request, self.max_read_bytes)
    }

    /// A segment's state on this bookie (LAC, last entry, sealed, fence).
    pub fn segment(&self, segment_id: u64) -> Option<SegmentSummary> {
        self.shared
            .segments
            .readable(segment_id)
            .map(|meta| meta.summary(segment_id))
    }

    /// Every segment this bookie holds, in id order.
    pub fn segments(&self) -> Vec<SegmentSummary> {
        self.shared
            .segments
            .stored()
            .into_iter()
            .map(|(segment_id, meta)| meta.summary(segment_id))
            .collect()
    }

    /// The counters since open.
    pub fn stats(&self) -> StorageStats {
        self.shared.counters.snapshot()
    }

    /// Measures the data disk's free space again (adds are refused below
    /// the floor) and returns it.
    pub fn refresh_free_space(&self) -> u64 {
        self.shared.disk.refresh()
    }

    /// Syncs the entry logs and the index, records the journal position they
    /// cover, and deletes the journal files before it. Blocks on disk I/O.
    pub fn checkpoint(&self) -> Result<JournalPosition, StorageError> {
        let _one_at_a_time = lock(&self.checkpoint_lock);
        let position = self.sync_applied()?;
        self.shared.index.put_checkpoint(position)?;
        let mut removed = false;
        for file_id in list_journal_files(&self.journal_dir)? {
            if file_id < position.file_id {
                let path = journal_path(&self.journal_dir, file_id);
                match std::fs::remove_file(&path) {
                    Ok(()) => removed = true,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StorageError::io("delete journal", &path, e)),
                }
            }
        }
        if removed {
            sync_dir(&self.journal_dir)?;
        }
        bump(&self.shared.counters.checkpoints, 1);
        Ok(position)
    }

    /// Syncs the entry log being written and the index; returns the journal
    /// position everything before which they now hold durably.
    fn sync_applied(&self) -> Result<JournalPosition, StorageError> {
        let (position, log_id, log_file) = {
            let progress = lock(&self.shared.progress);
            (
                progress.journal,
                progress.log_id,
                Arc::clone(&progress.log_file),
            )
        };
        // Everything applied before `position` is in this log or in one
        // synced when it was rolled.
        log_file
            .sync_data()
            .map_err(|e| StorageError::io("sync entry log", &self.shared.logs.path(log_id), e))?;
        self.shared.index.sync()?;
        Ok(position)
    }

    /// Stops taking changes, lets the queued ones finish, stops the threads
    /// and takes a final checkpoint. Blocks on disk I/O.
    pub fn close(&self) -> Result<(), StorageError> {
        if self.stop() {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Stops the threads; returns whether they were running.
    fn stop(&self) -> bool {
        self.queue.close();
        self.pending_bytes.close();
        lock(&self.shared.apply_tx).take();
        let threads = std::mem::take(&mut *lock(&self.threads));
        let running = !threads.is_empty();
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("a bookie storage thread panicked");
            }
        }
        running
    }

    /// Refuses malformed adds.
    fn check_add(&self, add: &AddRequest) -> Result<(), StorageError> {
        if add.entry_id < 0 {
            return Err(invalid(format!("entry_id {} is negative", add.entry_id)));
        }
        if add.base_offset < 0 {
            return Err(invalid(format!(
                "base_offset {} is negative",
                add.base_offset
            )));
        }
        if add.last_add_confirmed < -1 {
            return Err(invalid(format!(
                "last_add_confirmed {} is below -1",
                add.last_add_confirmed
            )));
        }
        if add.payload.len() as u64 > self.max_entry_bytes {
            return Err(invalid(format!(
                "entry of {} bytes is larger than max_entry_bytes {}",
                add.payload.len(),
                self.max_entry_bytes
            )));
        }
        Ok(())
    }

    /// Admits a fence, seal or delete under the segment's lock and queues its
    /// record; returns where its outcome will arrive.
    fn journal_change(
        &self,
        segment_id: u64,
        admit: impl FnOnce(&mut segment::SegmentState) -> Result<(), StorageError>,
        record: impl FnOnce() -> JournalRecord,
    ) -> Result<oneshot::Receiver<Result<Applied, StorageError>>, StorageError> {
        self.shared.check_failed()?;
        let state = self.shared.segments.get_or_create(segment_id);
        let mut state = lock(&state);
        admit(&mut state)?;
        let (waiter, done) = oneshot::channel();
        self.queue
            .push(Pending {
                record: record(),
                waiter,
                _room: None,
            })
            .map_err(|_| StorageError::Closed)?;
        Ok(done)
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Bytes a journal frame adds around an entry's payload.
fn frame_overhead() -> usize {
    journal::FRAME_HEADER_LEN + record::ADD_HEADER_LEN
}

/// The error for an outcome that is not the one a request expects.
fn unexpected(
    outcome: Result<Result<Applied, StorageError>, oneshot::error::RecvError>,
) -> StorageError {
    match outcome {
        Ok(Err(error)) => error,
        Err(_) => StorageError::Closed,
        Ok(Ok(applied)) => StorageError::Failed(format!("unexpected outcome {applied:?}")),
    }
}

/// Resolves once an admitted add is durable and readable.
#[must_use = "an add is acknowledged only once its ticket resolves"]
pub struct AddTicket(Option<oneshot::Receiver<Result<Applied, StorageError>>>);

impl Future for AddTicket {
    type Output = Result<(), StorageError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(done) = &mut self.get_mut().0 else {
            return Poll::Ready(Ok(()));
        };
        Pin::new(done).poll(cx).map(|outcome| match outcome {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(StorageError::Closed),
        })
    }
}
