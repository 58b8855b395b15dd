//! Group commit: the journal thread.
//!
//! Requests queue their records here. The journal thread takes every record
//! that arrived while its previous write and sync ran, covers them with one
//! write and one `fdatasync`, and hands them to the apply thread. It never
//! waits for more work when the queue is empty (a lone add is written at
//! once); it stops gathering at the batch size or once the batch's first
//! record has waited the maximum time.

use super::apply::{ApplyCommand, Pending};
use super::error::StorageError;
use super::journal::{frame_into, frame_len, JournalWriter};
use super::shared::{lock, Shared};
use super::stats::bump;
use std::collections::VecDeque;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Records waiting for the journal thread.
#[derive(Default)]
pub(crate) struct JournalQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Pending>,
    closed: bool,
}

impl JournalQueue {
    /// Queues a record; gives it back if the queue is closed.
    pub fn push(&self, item: Pending) -> Result<(), Pending> {
        let mut state = lock(&self.state);
        if state.closed {
            return Err(item);
        }
        let was_empty = state.items.is_empty();
        state.items.push_back(item);
        drop(state);
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Stops taking records; the journal thread drains what is queued and stops.
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.ready.notify_all();
    }

    /// Waits for a record, then takes records up to `max_bytes` of frames (at
    /// least one). Returns `false` once the queue is closed and empty.
    fn take_first(&self, into: &mut Vec<Pending>, max_bytes: usize) -> bool {
        let mut state = lock(&self.state);
        while state.items.is_empty() {
            if state.closed {
                return false;
            }
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        take(&mut state.items, into, max_bytes, true);
        true
    }

    /// Takes the records queued now, up to `max_bytes` of frames; returns
    /// how many bytes it took.
    fn take_more(&self, into: &mut Vec<Pending>, max_bytes: usize) -> usize {
        take(&mut lock(&self.state).items, into, max_bytes, false)
    }
}

fn take(
    queue: &mut VecDeque<Pending>,
    into: &mut Vec<Pending>,
    max_bytes: usize,
    at_least_one: bool,
) -> usize {
    let mut taken = 0;
    while let Some(next) = queue.front() {
        let len = frame_len(&next.record);
        let first = at_least_one && taken == 0;
        if !first && taken + len > max_bytes {
            break;
        }
        taken += len;
        into.extend(queue.pop_front());
    }
    taken
}

/// The journal thread's loop and its limits.
pub(crate) struct GroupCommit {
    pub queue: Arc<JournalQueue>,
    pub writer: JournalWriter,
    pub apply: SyncSender<ApplyCommand>,
    pub shared: Arc<Shared>,
    pub max_batch_bytes: usize,
    pub max_wait: Duration,
}

impl GroupCommit {
    /// Runs until the queue is closed and drained.
    pub fn run(mut self) {
        let mut frames = Vec::with_capacity(self.max_batch_bytes.min(1 << 20));
        loop {
            let mut items = Vec::new();
            if !self.queue.take_first(&mut items, self.max_batch_bytes) {
                return;
            }
            let started = Instant::now();
            frames.clear();
            let mut framed = 0;
            loop {
                for item in &items[framed..] {
                    frame_into(&item.record, &mut frames);
                }
                framed = items.len();
                let room = self.max_batch_bytes.saturating_sub(frames.len());
                if room == 0 || started.elapsed() >= self.max_wait {
                    break;
                }
                // Whatever arrived while framing joins this write; nothing
                // arrived means nobody is waiting to be grouped: write now.
                if self.queue.take_more(&mut items, room) == 0 {
                    break;
                }
            }
            self.commit(items, &frames);
        }
    }

    /// Writes and syncs one batch, then hands it to the apply thread.
    fn commit(&mut self, items: Vec<Pending>, frames: &[u8]) {
        let result = self
            .shared
            .check_failed()
            .and_then(|()| self.writer.append(frames));
        match result {
            Ok((end, synced)) => {
                let counters = &self.shared.counters;
                bump(&counters.journal_writes, 1);
                bump(&counters.journal_bytes, frames.len() as u64);
                if synced {
                    bump(&counters.journal_fsyncs, 1);
                }
                if let Err(refused) = self.apply.send(ApplyCommand::Journal { items, end }) {
                    // The apply thread is gone: only when the storage stops.
                    if let ApplyCommand::Journal { items, .. } = refused.0 {
                        for item in items {
                            item.complete(Err(StorageError::Closed));
                        }
                    }
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
}
