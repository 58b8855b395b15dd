//! `LedgerWriter`: the single writer of one open segment, with pipelined
//! quorum writes.
//!
//! Entry `i` is sent to its write set `ensemble[(i + k) % E]` for `k` in
//! `0..Qw` (with `E == Qw`, every bookie), over one `AddEntries` stream per
//! bookie that carries many entries in flight. An entry is confirmed when Qa
//! bookies of its write set acked it and every earlier entry is confirmed
//! ([`LacTracker`]); `add` then resolves, and the new last-add-confirmed
//! rides on the next adds so that bookies may serve reads up to it.
//!
//! A bookie whose stream breaks, that answers `BOOKIE_IO_ERROR`,
//! `BOOKIE_DISK_FULL` (or any other refusal), or that leaves an add
//! unacknowledged past `add_timeout_ms`, is dropped from the writer for good.
//! Writes go on while every pending entry can still reach Qa acks; once one
//! cannot, the writer fails every pending add with [`LedgerError::QuorumLost`].
//! `BOOKIE_FENCED` or `BOOKIE_SEALED` fails the writer at once: another owner
//! has taken the segment over.
//!
//! **Seal-and-roll, not ensemble change.** When the writer fails, its owner
//! seals the segment (by [recovery](super::recovery)) and opens a new segment
//! on a new ensemble, instead of replacing the failed bookie inside this one as
//! BookKeeper does. That keeps the metadata segment list a simple ordered list
//! with exactly one ensemble per segment (readers and the offloader never meet
//! a segment whose replicas moved half-way), and with `Qa < Qw` (3/3/2 by
//! default) a single bookie failure does not even interrupt writes, so rolls
//! are rare.
//!
//! Memory is bounded: an entry holds `payload + ENTRY_OVERHEAD_BYTES` of the
//! `max_in_flight_bytes` window from `add` until every live bookie of its
//! write set acked it (or was dropped), so a slow bookie throttles the writer
//! rather than queueing without limit; a silent one is dropped after the add
//! timeout. The per-bookie queues are therefore bounded by the window too.

use super::error::LedgerError;
use super::lac::LacTracker;
use super::pool::{describe, status_of, BookiePool};
use super::spec::{LedgerSpec, WriteSet, NO_ENTRY};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use strata_proto::bookie::bookie_service_client::BookieServiceClient;
use strata_proto::bookie::{AddRequest, AddResponse, BookieStatus, SealRequest};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;

/// Bytes charged to the in-flight window per entry on top of its payload:
/// the request's fields and the writer's bookkeeping, so that a flood of tiny
/// entries is bounded too.
pub const ENTRY_OVERHEAD_BYTES: usize = 128;

/// The single writer of one open segment.
///
/// Dropping it fails pending adds with [`LedgerError::WriterClosed`] and stops
/// its streams; [`LedgerWriter::seal`] closes it cleanly.
pub struct LedgerWriter {
    shared: Arc<Shared>,
    tasks: TaskTracker,
}

/// State shared by the writer, its per-bookie stream tasks and its watchdog.
struct Shared {
    spec: LedgerSpec,
    writer_epoch: u32,
    clients: Vec<BookieServiceClient<Channel>>,
    request_timeout: Duration,
    add_timeout: Duration,
    /// The in-flight window, in bytes.
    window: Arc<Semaphore>,
    window_bytes: usize,
    state: Mutex<WriterState>,
    /// The last-add-confirmed; also bumped (unchanged) when the writer fails,
    /// to wake waiters.
    lac: watch::Sender<i64>,
    /// Stops every task of the writer.
    shutdown: CancellationToken,
}

struct WriterState {
    tracker: LacTracker,
    /// Entries `first_in_flight ..` not yet both confirmed and settled.
    in_flight: VecDeque<InFlight>,
    first_in_flight: i64,
    /// Highest entry whose add has been resolved as confirmed.
    resolved: i64,
    links: Vec<Link>,
    failure: Option<LedgerError>,
    /// Set once `seal` stopped the streams on purpose.
    closing: bool,
    /// Base offset of the last entry added, to check they grow.
    last_base_offset: Option<i64>,
}

/// The writer's side of one bookie's add stream.
struct Link {
    /// Requests for the stream task; `None` once the bookie is dropped.
    requests: Option<mpsc::UnboundedSender<AddRequest>>,
    /// Why the bookie was dropped.
    failed: Option<String>,
    cancel: CancellationToken,
}

/// One entry sent and not yet both confirmed and settled.
struct InFlight {
    /// Live bookies of its write set that have not acked it yet.
    outstanding: WriteSet,
    completion: Option<oneshot::Sender<Result<i64, LedgerError>>>,
    /// Its share of the window, released once `outstanding` is empty.
    permit: Option<OwnedSemaphorePermit>,
    sent_at: Instant,
}

impl LedgerWriter {
    /// Opens the writer of segment `spec` at `writer_epoch` (the owner's
    /// leader epoch). Nothing is connected until the first add; must be
    /// called inside a Tokio runtime.
    pub fn open(
        spec: LedgerSpec,
        writer_epoch: u32,
        pool: &BookiePool,
    ) -> Result<Self, LedgerError> {
        let options = pool.options();
        let clients = pool.ensemble_clients(&spec)?;
        let window_bytes = usize::try_from(options.max_in_flight_bytes)
            .unwrap_or(usize::MAX)
            .clamp(1, u32::MAX as usize)
            .min(Semaphore::MAX_PERMITS);
        let shutdown = CancellationToken::new();
        let mut links = Vec::with_capacity(spec.ensemble_size());
        let mut receivers = Vec::with_capacity(spec.ensemble_size());
        for _ in spec.ensemble() {
            // Bounded by the window: each queued request holds window permits.
            let (sender, receiver) = mpsc::unbounded_channel();
            links.push(Link {
                requests: Some(sender),
                failed: None,
                cancel: shutdown.child_token(),
            });
            receivers.push(receiver);
        }
        let shared = Arc::new(Shared {
            writer_epoch,
            clients,
            request_timeout: options.request_timeout(),
            add_timeout: options.add_timeout().max(Duration::from_millis(1)),
            window: Arc::new(Semaphore::new(window_bytes)),
            window_bytes,
            state: Mutex::new(WriterState {
                tracker: LacTracker::new(spec.ack_quorum()),
                in_flight: VecDeque::new(),
                first_in_flight: 0,
                resolved: NO_ENTRY,
                links,
                failure: None,
                closing: false,
                last_base_offset: None,
            }),
            lac: watch::Sender::new(NO_ENTRY),
            shutdown,
            spec,
        });
        let tasks = TaskTracker::new();
        for (bookie, receiver) in receivers.into_iter().enumerate() {
            let cancel = shared.lock().links[bookie].cancel.clone();
            tasks.spawn(run_link(shared.clone(), bookie, receiver, cancel));
        }
        tasks.spawn(run_watchdog(shared.clone()));
        tasks.close();
        Ok(Self { shared, tasks })
    }

    /// The segment this writer writes.
    pub fn spec(&self) -> &LedgerSpec {
        &self.shared.spec
    }

    /// The epoch every add carries.
    pub fn writer_epoch(&self) -> u32 {
        self.shared.writer_epoch
    }

    /// Sends `payload` (a Kafka RecordBatch whose first offset is
    /// `base_offset`) as the next entry, waiting first while the in-flight
    /// window is full. The returned [`PendingAdd`] knows the entry id and
    /// resolves once the entry is confirmed (LAC >= its id).
    ///
    /// Fails at once if the writer has failed: the error is the writer's.
    pub async fn add(
        &mut self,
        payload: Bytes,
        base_offset: i64,
    ) -> Result<PendingAdd, LedgerError> {
        let shared = &self.shared;
        shared.check_failed()?;
        let cost = (payload.len() + ENTRY_OVERHEAD_BYTES).min(shared.window_bytes);
        let permit = shared
            .window
            .clone()
            // `cost` fits: the window is clamped to u32::MAX.
            .acquire_many_owned(cost as u32)
            .await
            .map_err(|_| shared.failure_or_closed())?;
        let (completion, receiver) = oneshot::channel();
        let mut broken = Vec::new();
        let entry_id = {
            let mut state = shared.lock();
            if let Some(failure) = &state.failure {
                return Err(failure.clone());
            }
            debug_assert!(
                state.last_base_offset.is_none_or(|last| base_offset > last),
                "base offsets grow with every entry"
            );
            state.last_base_offset = Some(base_offset);
            let entry_id = state.tracker.next_entry_id();
            let write_set = shared.spec.write_set(entry_id);
            state.tracker.push_entry(write_set);
            debug_assert_eq!(
                state.first_in_flight + state.in_flight.len() as i64,
                entry_id,
                "in-flight entries are contiguous"
            );
            let request = AddRequest {
                segment_id: shared.spec.segment_id(),
                entry_id,
                writer_epoch: shared.writer_epoch,
                last_add_confirmed: state.tracker.last_add_confirmed(),
                base_offset,
                payload,
                recovery: false,
            };
            let mut outstanding = WriteSet::EMPTY;
            for bookie in write_set.iter() {
                if let Some(requests) = &state.links[bookie].requests {
                    if requests.send(request.clone()).is_ok() {
                        outstanding = outstanding.with(bookie);
                    } else {
                        broken.push(bookie);
                    }
                }
            }
            state.in_flight.push_back(InFlight {
                outstanding,
                completion: Some(completion),
                permit: Some(permit),
                sent_at: Instant::now(),
            });
            entry_id
        };
        for bookie in broken {
            shared.bookie_failed(bookie, "its add stream task has stopped".into());
        }
        // Too many bookies may be gone already for this entry's write set.
        let unreachable = {
            let state = shared.lock();
            (!state.tracker.can_reach_quorum(entry_id))
                .then(|| shared.quorum_lost(&state, entry_id))
        };
        if let Some(error) = unreachable {
            shared.fail(error.clone());
            return Err(error);
        }
        Ok(PendingAdd {
            entry_id,
            segment_id: shared.spec.segment_id(),
            receiver,
        })
    }

    /// [`Self::add`], then waits until the entry is confirmed; returns its id.
    pub async fn append(&mut self, payload: Bytes, base_offset: i64) -> Result<i64, LedgerError> {
        self.add(payload, base_offset).await?.await
    }

    /// The last-add-confirmed: the highest confirmed entry, or [`NO_ENTRY`].
    pub fn last_add_confirmed(&self) -> i64 {
        *self.shared.lac.borrow()
    }

    /// A receiver of the last-add-confirmed, woken whenever it advances (and
    /// when the writer fails): for fetches that long-poll the tail.
    pub fn subscribe_lac(&self) -> watch::Receiver<i64> {
        self.shared.lac.subscribe()
    }

    /// The id the next add will get.
    pub fn next_entry_id(&self) -> i64 {
        self.shared.lock().tracker.next_entry_id()
    }

    /// Why the writer failed, if it has.
    pub fn failure(&self) -> Option<LedgerError> {
        self.shared.lock().failure.clone()
    }

    /// Bookies dropped from the writer (ensemble indexes) and why: the owner
    /// excludes them when it places the next segment.
    pub fn failed_bookies(&self) -> Vec<(usize, String)> {
        self.shared
            .lock()
            .links
            .iter()
            .enumerate()
            .filter_map(|(i, link)| link.failed.clone().map(|why| (i, why)))
            .collect()
    }

    /// Closes the writer cleanly: waits until every add is confirmed, stops the
    /// streams, and seals the segment on its bookies at the last entry, which
    /// it returns ([`NO_ENTRY`] if none). The seal must reach at least Qa
    /// bookies of every write set.
    ///
    /// If the writer has failed, returns its error: the owner must then run
    /// [recovery](super::recovery::recover) to find where the segment ends.
    pub async fn seal(self) -> Result<i64, LedgerError> {
        let shared = self.shared.clone();
        let mut lac = shared.lac.subscribe();
        loop {
            {
                let state = shared.lock();
                if let Some(failure) = &state.failure {
                    return Err(failure.clone());
                }
                if state.tracker.unconfirmed() == 0 {
                    break;
                }
            }
            if lac.changed().await.is_err() {
                return Err(shared.failure_or_closed());
            }
        }
        let (last_entry_id, live) = {
            let mut state = shared.lock();
            state.closing = true;
            let mut live = WriteSet::EMPTY;
            for (bookie, link) in state.links.iter_mut().enumerate() {
                link.requests = None;
                if link.failed.is_none() {
                    live = live.with(bookie);
                }
            }
            (state.tracker.last_add_confirmed(), live)
        };
        shared.shutdown.cancel();
        self.tasks.wait().await;

        let segment_id = shared.spec.segment_id();
        let calls = live.iter().map(|bookie| {
            let mut client = shared.clients[bookie].clone();
            let request = SealRequest {
                segment_id,
                epoch: shared.writer_epoch,
                last_entry_id,
            };
            let timeout = shared.request_timeout;
            async move {
                let answer = tokio::time::timeout(timeout, client.seal(request)).await;
                (bookie, answer)
            }
        });
        let mut sealed = WriteSet::EMPTY;
        let mut reasons = Vec::new();
        for (bookie, answer) in futures::future::join_all(calls).await {
            let addr = &shared.spec.ensemble()[bookie];
            match answer {
                Ok(Ok(response)) => {
                    let response = response.into_inner();
                    match status_of(response.status) {
                        Some(BookieStatus::BookieOk) => sealed = sealed.with(bookie),
                        Some(BookieStatus::BookieFenced | BookieStatus::BookieSealed) => {
                            return Err(LedgerError::Fenced {
                                segment_id,
                                bookie: addr.clone(),
                            })
                        }
                        _ => reasons.push(format!(
                            "{addr}: {}",
                            describe(response.status, &response.message)
                        )),
                    }
                }
                Ok(Err(status)) => reasons.push(format!("{addr}: {status}")),
                Err(_) => reasons.push(format!(
                    "{addr}: no answer within {timeout:?}",
                    timeout = shared.request_timeout
                )),
            }
        }
        let spec = &shared.spec;
        let may_miss = spec.write_quorum() - spec.ack_quorum();
        if !spec.covers(sealed, may_miss) {
            return Err(LedgerError::SealFailed {
                segment_id,
                sealed: sealed.len(),
                needed: spec.ack_quorum(),
                reasons: reasons.join("; "),
            });
        }
        tracing::debug!(segment_id, last_entry_id, "segment sealed by its writer");
        Ok(last_entry_id)
    }

    /// Stops the writer without sealing: pending adds fail with
    /// [`LedgerError::WriterClosed`]; waits until its tasks have stopped.
    pub async fn abort(self) {
        self.shared.fail(LedgerError::WriterClosed {
            segment_id: self.shared.spec.segment_id(),
        });
        self.tasks.wait().await;
    }
}

impl Drop for LedgerWriter {
    fn drop(&mut self) {
        let closing = self.shared.lock().closing;
        if !closing {
            self.shared.fail(LedgerError::WriterClosed {
                segment_id: self.shared.spec.segment_id(),
            });
        }
        self.shared.shutdown.cancel();
    }
}

/// An add on its way: resolves to the entry id once the entry is confirmed,
/// or to the writer's error.
#[must_use = "an add is only known to be durable once its PendingAdd resolves"]
pub struct PendingAdd {
    entry_id: i64,
    segment_id: u64,
    receiver: oneshot::Receiver<Result<i64, LedgerError>>,
}

impl PendingAdd {
    /// The entry id the add was given.
    pub fn entry_id(&self) -> i64 {
        self.entry_id
    }
}

impl Future for PendingAdd {
    type Output = Result<i64, LedgerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let segment_id = self.segment_id;
        Pin::new(&mut self.receiver)
            .poll(cx)
            .map(|result| result.unwrap_or(Err(LedgerError::WriterClosed { segment_id })))
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_failed(&self) -> Result<(), LedgerError> {
        match &self.lock().failure {
            Some(failure) => Err(failure.clone()),
            None => Ok(()),
        }
    }

    fn failure_or_closed(&self) -> LedgerError {
        self.lock()
            .failure
            .clone()
            .unwrap_or(LedgerError::WriterClosed {
                segment_id: self.spec.segment_id(),
            })
    }

    fn quorum_lost(&self, state: &WriterState, entry_id: i64) -> LedgerError {
        let failed: Vec<String> = state
            .links
            .iter()
            .enumerate()
            .filter_map(|(i, link)| {
                let why = link.failed.as_deref()?;
                Some(format!("{} ({why})", self.spec.ensemble()[i]))
            })
            .collect();
        LedgerError::QuorumLost {
            segment_id: self.spec.segment_id(),
            entry_id,
            ack_quorum: self.spec.ack_quorum(),
            failed: failed.join(", "),
        }
    }

    /// Fails the writer: every unresolved add gets `error`, streams stop.
    fn fail(&self, error: LedgerError) {
        {
            let mut state = self.lock();
            if state.failure.is_some() {
                return;
            }
            if !matches!(error, LedgerError::WriterClosed { .. }) {
                tracing::warn!(segment_id = self.spec.segment_id(), %error, "ledger writer failed");
            }
            state.failure = Some(error.clone());
            for entry in state.in_flight.drain(..) {
                if let Some(completion) = entry.completion {
                    let _ = completion.send(Err(error.clone()));
                }
            }
            for link in &mut state.links {
                link.requests = None;
            }
        }
        self.window.close();
        self.shutdown.cancel();
        self.lac.send_modify(|_| {});
    }

    /// Drops `bookie` from the writer; fails the writer if an entry can no
    /// longer reach its ack quorum.
    fn bookie_failed(&self, bookie: usize, reason: String) {
        let lost = {
            let mut state = self.lock();
            if state.failure.is_some() || state.closing || state.links[bookie].failed.is_some() {
                return;
            }
            tracing::warn!(
                segment_id = self.spec.segment_id(),
                bookie = %self.spec.ensemble()[bookie],
                %reason,
                "dropping bookie from ledger writer"
            );
            let link = &mut state.links[bookie];
            link.failed = Some(reason);
            link.requests = None;
            link.cancel.cancel();
            let unreachable = state.tracker.fail_bookie(bookie);
            for entry in &mut state.in_flight {
                entry.outstanding = entry.outstanding.without(WriteSet::single(bookie));
                if entry.outstanding.is_empty() {
                    entry.permit = None;
                }
            }
            state.retire_settled();
            unreachable.map(|entry_id| self.quorum_lost(&state, entry_id))
        };
        if let Some(error) = lost {
            self.fail(error);
        }
    }

    /// Handles one add response from `bookie`; `Err` drops the bookie.
    fn on_response(&self, bookie: usize, response: AddResponse) -> Result<(), String> {
        let segment_id = self.spec.segment_id();
        if response.segment_id != segment_id {
            return Err(format!(
                "answered for segment {} on the stream of segment {segment_id}",
                response.segment_id
            ));
        }
        let addr = || self.spec.ensemble()[bookie].clone();
        match status_of(response.status) {
            Some(BookieStatus::BookieOk) => {
                self.on_ack(bookie, response.entry_id);
                Ok(())
            }
            Some(BookieStatus::BookieFenced) => {
                self.fail(LedgerError::Fenced {
                    segment_id,
                    bookie: addr(),
                });
                Ok(())
            }
            Some(BookieStatus::BookieSealed) => {
                self.fail(LedgerError::Sealed {
                    segment_id,
                    bookie: addr(),
                });
                Ok(())
            }
            _ => Err(format!(
                "refused entry {}: {}",
                response.entry_id,
                describe(response.status, &response.message)
            )),
        }
    }

    fn on_ack(&self, bookie: usize, entry_id: i64) {
        let mut state = self.lock();
        if state.failure.is_some() || state.links[bookie].failed.is_some() {
            return;
        }
        // Below: settled and retired, a duplicate. Above: never sent, a
        // confused bookie. The tracker ignores both too.
        let Some(index) = entry_id
            .checked_sub(state.first_in_flight)
            .and_then(|index| usize::try_from(index).ok())
        else {
            return;
        };
        let Some(entry) = state.in_flight.get_mut(index) else {
            return;
        };
        entry.outstanding = entry.outstanding.without(WriteSet::single(bookie));
        if entry.outstanding.is_empty() {
            entry.permit = None;
        }
        let before = state.tracker.last_add_confirmed();
        state.tracker.ack(entry_id, bookie);
        let lac = state.tracker.last_add_confirmed();
        debug_assert!(lac >= before, "the LAC never moves backwards");
        if lac > before {
            // Publish the LAC first: whoever sees its add confirmed must see
            // a LAC (high watermark) at least that far.
            self.lac.send_replace(lac);
            state.resolve_confirmed();
        }
        state.retire_settled();
    }
}

impl WriterState {
    /// Resolves the adds of entries the LAC has passed.
    fn resolve_confirmed(&mut self) {
        let lac = self.tracker.last_add_confirmed();
        while self.resolved < lac {
            self.resolved += 1;
            let index = (self.resolved - self.first_in_flight) as usize;
            if let Some(completion) = self
                .in_flight
                .get_mut(index)
                .and_then(|entry| entry.completion.take())
            {
                let _ = completion.send(Ok(self.resolved));
            }
        }
    }

    /// Forgets entries at the front that are confirmed and settled.
    fn retire_settled(&mut self) {
        while let Some(front) = self.in_flight.front() {
            if self.first_in_flight > self.resolved || !front.outstanding.is_empty() {
                break;
            }
            self.in_flight.pop_front();
            self.first_in_flight += 1;
        }
    }
}

/// Streams the adds of one bookie until the stream fails or the writer stops.
async fn run_link(
    shared: Arc<Shared>,
    bookie: usize,
    requests: mpsc::UnboundedReceiver<AddRequest>,
    cancel: CancellationToken,
) {
    let reason = tokio::select! {
        _ = cancel.cancelled() => return,
        reason = stream_adds(&shared, bookie, requests) => reason,
    };
    shared.bookie_failed(bookie, reason);
}

/// Returns why the stream stopped.
async fn stream_adds(
    shared: &Shared,
    bookie: usize,
    mut requests: mpsc::UnboundedReceiver<AddRequest>,
) -> String {
    // Connect on the first add, not at open.
    let Some(first) = requests.recv().await else {
        return "the writer stopped".into();
    };
    let outbound =
        futures::stream::once(async { first }).chain(UnboundedReceiverStream::new(requests));
    let mut client = shared.clients[bookie].clone();
    let mut responses = match client.add_entries(outbound).await {
        Ok(response) => response.into_inner(),
        Err(status) => return format!("cannot open its add stream: {status}"),
    };
    loop {
        match responses.message().await {
            Ok(Some(response)) => {
                if let Err(reason) = shared.on_response(bookie, response) {
                    return reason;
                }
            }
            Ok(None) => return "the bookie closed its add stream".into(),
            Err(status) => return format!("its add stream failed: {status}"),
        }
    }
}

/// Drops bookies that leave an add unacknowledged past the add timeout.
async fn run_watchdog(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(shared.add_timeout / 2);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let overdue: Vec<(usize, i64)> = {
            let state = shared.lock();
            let now = Instant::now();
            let mut overdue = Vec::new();
            let mut seen = WriteSet::EMPTY;
            // Entries were sent in id order, so the overdue ones are a prefix.
            for (index, entry) in state.in_flight.iter().enumerate() {
                if now.duration_since(entry.sent_at) < shared.add_timeout {
                    break;
                }
                for bookie in entry.outstanding.without(seen).iter() {
                    overdue.push((bookie, state.first_in_flight + index as i64));
                }
                seen = seen.union(entry.outstanding);
            }
            overdue
        };
        for (bookie, entry_id) in overdue {
            shared.bookie_failed(
                bookie,
                format!("no ack of entry {entry_id} within {:?}", shared.add_timeout),
            );
        }
    }
}
