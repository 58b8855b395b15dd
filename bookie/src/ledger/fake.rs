//! A fake bookie for the ledger client's tests: an in-memory `BookieService`
//! served over real tonic gRPC on loopback, answering as the real bookie
//! (`crate::service` over `crate::storage`) does, by the rules documented in
//! `bookie.proto`, and that can be told to refuse adds, swallow acks, or die.
//!
//! The rules it keeps, as the real bookie does:
//! - adds: malformed ones are `INVALID_REQUEST`; an epoch below the fence is
//!   `FENCED`; an entry already held is acked without writing (on a sealed
//!   segment only for recovery adds), else a sealed segment is `SEALED`; an
//!   add of an unknown segment creates it; the piggybacked LAC only grows;
//! - reads: unknown segment `NO_SUCH_SEGMENT`; a start past what may be read
//!   (the LAC, the sealed end, or for recovery the last entry held) is OK with
//!   no entries and the LAC; a start within it that is not held is
//!   `NO_SUCH_ENTRY`; entries stop before a gap; `max_bytes = 0` means the
//!   bookie's `max_read_bytes`, which also caps larger values;
//! - fence: epoch 0 is `INVALID_REQUEST`; below the fence `FENCED`; an unknown
//!   segment is created, fenced and empty;
//! - seal: below the fence `FENCED`; again at the same end OK, at another
//!   `SEALED`; an unknown segment is created, sealed;
//! - `ReadLac` reports a sealed segment's end as its LAC; deleting an unknown
//!   segment is OK.
//!
//! Refusals carry the LAC the bookie knows (-1 if none) as the real one does.

use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use strata_proto::bookie::bookie_service_server::{BookieService, BookieServiceServer};
use strata_proto::bookie::read_entries_request::Start;
use strata_proto::bookie::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// The real bookie's default `max_entry_bytes` and `max_read_bytes`.
const DEFAULT_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// What the fake does with an add it would accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckMode {
    /// Store it and ack it.
    Normal,
    /// Store it, never ack it (the ack is "lost").
    StoreSilently,
    /// Neither store nor ack it (a hung bookie).
    Swallow,
}

/// One segment on the fake.
#[derive(Debug, Clone)]
pub(crate) struct FakeSegment {
    pub entries: BTreeMap<i64, Entry>,
    /// Base offset -> entry id, as the real bookie's offset index keeps them.
    offsets: BTreeMap<i64, i64>,
    pub last_add_confirmed: i64,
    pub fenced_epoch: u32,
    pub sealed: Option<i64>,
}

impl Default for FakeSegment {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
            offsets: BTreeMap::new(),
            last_add_confirmed: -1,
            fenced_epoch: 0,
            sealed: None,
        }
    }
}

impl FakeSegment {
    fn visible_lac(&self) -> i64 {
        self.sealed.unwrap_or(self.last_add_confirmed)
    }

    fn last_entry_id(&self) -> i64 {
        self.entries.keys().next_back().copied().unwrap_or(-1)
    }

    fn readable_end(&self, recovery: bool) -> i64 {
        match self.sealed {
            Some(last) => last,
            None if recovery => self.last_entry_id(),
            None => self.last_add_confirmed,
        }
    }

    /// Stores an entry (again), keeping the offset index as the real one does.
    fn store(&mut self, entry: Entry) {
        let (entry_id, base_offset) = (entry.entry_id, entry.base_offset);
        if let Some(old) = self.entries.insert(entry_id, entry) {
            if old.base_offset != base_offset {
                self.offsets.remove(&old.base_offset);
            }
        }
        self.offsets.insert(base_offset, entry_id);
    }

    fn summary(&self, segment_id: u64) -> SegmentSummary {
        SegmentSummary {
            segment_id,
            last_add_confirmed: self.visible_lac(),
            last_entry_id: self.last_entry_id(),
            sealed: self.sealed.is_some(),
            fenced_epoch: self.fenced_epoch,
            bytes: self.entries.values().map(|e| e.payload.len() as u64).sum(),
        }
    }
}

struct FakeState {
    segments: HashMap<u64, FakeSegment>,
    ack_mode: AckMode,
    add_failure: Option<BookieStatus>,
    max_entry_bytes: u64,
    max_read_bytes: u64,
}

#[derive(Clone)]
struct FakeService {
    state: Arc<Mutex<FakeState>>,
    killed: CancellationToken,
}

/// A running fake bookie; killed when dropped.
pub(crate) struct FakeBookie {
    addr: String,
    service: FakeService,
}

impl FakeBookie {
    /// Starts a fake bookie on a free loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr").to_string();
        let service = FakeService {
            state: Arc::new(Mutex::new(FakeState {
                segments: HashMap::new(),
                ack_mode: AckMode::Normal,
                add_failure: None,
                max_entry_bytes: DEFAULT_MAX_BYTES,
                max_read_bytes: DEFAULT_MAX_BYTES,
            })),
            killed: CancellationToken::new(),
        };
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tonic::transport::Server::builder()
            .add_service(BookieServiceServer::new(service.clone()))
            .serve_with_incoming_shutdown(incoming, service.killed.clone().cancelled_owned());
        tokio::spawn(server);
        Self { addr, service }
    }

    /// The `host:port` the fake serves on.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// Kills the bookie: open streams fail, calls are refused, the listener closes.
    pub fn kill(&self) {
        self.service.killed.cancel();
    }

    /// Sets what happens to adds the fake would accept.
    pub fn set_ack_mode(&self, mode: AckMode) {
        self.service.lock().ack_mode = mode;
    }

    /// Makes every add answer `status` (e.g. `BookieIoError`), or not.
    pub fn set_add_failure(&self, status: Option<BookieStatus>) {
        self.service.lock().add_failure = status;
    }

    /// Sets the most payload bytes one read returns (the bookie's
    /// `max_read_bytes`, 4 MiB by default).
    pub fn set_max_read_bytes(&self, bytes: u64) {
        self.service.lock().max_read_bytes = bytes;
    }

    /// A copy of segment `segment_id`'s state, if the fake knows it.
    pub fn segment(&self, segment_id: u64) -> Option<FakeSegment> {
        self.service.lock().segments.get(&segment_id).cloned()
    }

    /// Ids of the entries the fake holds of `segment_id`.
    pub fn held(&self, segment_id: u64) -> Vec<i64> {
        self.segment(segment_id)
            .map(|s| s.entries.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Stores an entry directly, as if an add had landed (the LAC is left alone).
    pub fn plant(&self, segment_id: u64, entry_id: i64, base_offset: i64, payload: &'static [u8]) {
        self.service
            .lock()
            .segments
            .entry(segment_id)
            .or_default()
            .store(Entry {
                entry_id,
                base_offset,
                payload: Bytes::from_static(payload),
            });
    }

    /// Sets the LAC the fake knows of `segment_id`, as if an add had carried it.
    pub fn set_last_add_confirmed(&self, segment_id: u64, last_add_confirmed: i64) {
        self.service
            .lock()
            .segments
            .entry(segment_id)
            .or_default()
            .last_add_confirmed = last_add_confirmed;
    }
}

impl Drop for FakeBookie {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Why a malformed add is refused, as the real bookie checks it.
fn malformed_add(add: &AddRequest, max_entry_bytes: u64) -> Option<String> {
    if add.entry_id < 0 {
        Some(format!("entry_id {} is negative", add.entry_id))
    } else if add.base_offset < 0 {
        Some(format!("base_offset {} is negative", add.base_offset))
    } else if add.last_add_confirmed < -1 {
        Some(format!(
            "last_add_confirmed {} is below -1",
            add.last_add_confirmed
        ))
    } else if add.payload.len() as u64 > max_entry_bytes {
        Some(format!(
            "entry of {} bytes is larger than max_entry_bytes {max_entry_bytes}",
            add.payload.len()
        ))
    } else {
        None
    }
}

fn fenced_message(segment_id: u64, fenced_epoch: u32, epoch: u32) -> String {
    format!(
        "segment {segment_id} is fenced at epoch {fenced_epoch}; requests of epoch {epoch} are \
         refused"
    )
}

fn sealed_message(segment_id: u64, last_entry_id: i64) -> String {
    format!("segment {segment_id} is sealed at entry {last_entry_id}")
}

fn no_such_segment_message(segment_id: u64) -> String {
    format!("segment {segment_id} is not on this bookie")
}

/// A refused read: the status and why.
struct ReadRefusal(BookieStatus, String);

impl FakeService {
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn alive(&self) -> Result<(), Status> {
        if self.killed.is_cancelled() {
            Err(Status::unavailable("bookie killed"))
        } else {
            Ok(())
        }
    }

    /// The answer to one add, or `None` if the ack is to be lost.
    fn add(&self, request: AddRequest) -> Option<AddResponse> {
        let mut state = self.lock();
        let segment_id = request.segment_id;
        let answer = |status: BookieStatus, message: String| {
            Some(AddResponse {
                segment_id,
                entry_id: request.entry_id,
                status: status as i32,
                message,
            })
        };
        if let Some(status) = state.add_failure {
            return answer(status, "injected failure".into());
        }
        let mode = state.ack_mode;
        if mode == AckMode::Swallow {
            return None;
        }
        if let Some(why) = malformed_add(&request, state.max_entry_bytes) {
            return answer(
                BookieStatus::BookieInvalidRequest,
                format!("invalid request: {why}"),
            );
        }
        if let Some(segment) = state.segments.get(&segment_id) {
            if request.writer_epoch < segment.fenced_epoch {
                return answer(
                    BookieStatus::BookieFenced,
                    fenced_message(segment_id, segment.fenced_epoch, request.writer_epoch),
                );
            }
            let held = segment.entries.contains_key(&request.entry_id);
            if held && (segment.sealed.is_none() || request.recovery) {
                // Acked without writing: the LAC it carries is not taken.
                return answer(BookieStatus::BookieOk, String::new());
            }
            if let Some(last) = segment.sealed {
                return answer(BookieStatus::BookieSealed, sealed_message(segment_id, last));
            }
        }
        // An add of a segment the bookie does not know creates it.
        let segment = state.segments.entry(segment_id).or_default();
        segment.store(Entry {
            entry_id: request.entry_id,
            base_offset: request.base_offset,
            payload: request.payload.clone(),
        });
        segment.last_add_confirmed = segment.last_add_confirmed.max(request.last_add_confirmed);
        match mode {
            AckMode::StoreSilently => None,
            _ => answer(BookieStatus::BookieOk, String::new()),
        }
    }

    /// Serves a read as the real bookie's storage does.
    fn read(
        segment: &FakeSegment,
        request: &ReadEntriesRequest,
        max_read_bytes: u64,
    ) -> Result<Vec<Entry>, ReadRefusal> {
        let segment_id = request.segment_id;
        let invalid = |why: String| {
            ReadRefusal(
                BookieStatus::BookieInvalidRequest,
                format!("invalid request: {why}"),
            )
        };
        let readable_end = segment.readable_end(request.recovery);
        let end = match request.last_entry_id {
            -1 => readable_end,
            last if last >= 0 => last.min(readable_end),
            last => return Err(invalid(format!("last_entry_id {last} is below -1"))),
        };
        let first = match request.start {
            Some(Start::FirstEntryId(first)) if first >= 0 => first,
            Some(Start::KafkaOffset(offset)) if offset >= 0 => {
                match segment.offsets.range(..=offset).next_back() {
                    Some((_, &entry_id)) => entry_id,
                    None => {
                        return Err(ReadRefusal(
                            BookieStatus::BookieNoSuchEntry,
                            format!(
                                "no entry of segment {segment_id} on this bookie holds offset \
                                 {offset}"
                            ),
                        ))
                    }
                }
            }
            Some(Start::FirstEntryId(first)) => {
                return Err(invalid(format!("first_entry_id {first} is negative")))
            }
            Some(Start::KafkaOffset(offset)) => {
                return Err(invalid(format!("kafka_offset {offset} is negative")))
            }
            None => {
                return Err(invalid(
                    "a read needs first_entry_id or kafka_offset".into(),
                ))
            }
        };
        let budget = match u64::from(request.max_bytes) {
            0 => max_read_bytes,
            asked => asked.min(max_read_bytes),
        };
        let mut entries = Vec::new();
        if first > end {
            return Ok(entries);
        }
        let mut bytes = 0u64;
        for (expected, (&entry_id, entry)) in (first..).zip(segment.entries.range(first..)) {
            // Stop at the end, or at a gap: the entries returned are consecutive.
            if entry_id != expected || entry_id > end {
                break;
            }
            let len = entry.payload.len() as u64;
            if !entries.is_empty() && bytes + len > budget {
                break;
            }
            bytes += len;
            entries.push(entry.clone());
        }
        if entries.is_empty() {
            return Err(ReadRefusal(
                BookieStatus::BookieNoSuchEntry,
                format!("entry {first} of segment {segment_id} is not on this bookie"),
            ));
        }
        Ok(entries)
    }
}

type AddStream = Pin<Box<dyn futures::Stream<Item = Result<AddResponse, Status>> + Send>>;

#[tonic::async_trait]
impl BookieService for FakeService {
    type AddEntriesStream = AddStream;

    async fn add_entries(
        &self,
        request: Request<Streaming<AddRequest>>,
    ) -> Result<Response<Self::AddEntriesStream>, Status> {
        self.alive()?;
        let service = self.clone();
        let responses = futures::stream::unfold(Some(request.into_inner()), move |inbound| {
            let service = service.clone();
            async move {
                let mut inbound = inbound?;
                loop {
                    let next = tokio::select! {
                        _ = service.killed.cancelled() => {
                            return Some((Err(Status::unavailable("bookie killed")), None));
                        }
                        next = inbound.message() => next,
                    };
                    match next {
                        Ok(Some(add)) => {
                            if let Some(response) = service.add(add) {
                                return Some((Ok(response), Some(inbound)));
                            }
                        }
                        Ok(None) => return None,
                        Err(status) => return Some((Err(status), None)),
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn read_entries(
        &self,
        request: Request<ReadEntriesRequest>,
    ) -> Result<Response<ReadEntriesResponse>, Status> {
        self.alive()?;
        let request = request.into_inner();
        let state = self.lock();
        let Some(segment) = state.segments.get(&request.segment_id) else {
            return Ok(Response::new(ReadEntriesResponse {
                status: BookieStatus::BookieNoSuchSegment as i32,
                message: no_such_segment_message(request.segment_id),
                entries: Vec::new(),
                last_add_confirmed: -1,
            }));
        };
        let (status, message, entries) = match Self::read(segment, &request, state.max_read_bytes) {
            Ok(entries) => (BookieStatus::BookieOk, String::new(), entries),
            Err(ReadRefusal(status, message)) => (status, message, Vec::new()),
        };
        Ok(Response::new(ReadEntriesResponse {
            status: status as i32,
            message,
            entries,
            last_add_confirmed: segment.visible_lac(),
        }))
    }

    async fn read_lac(
        &self,
        request: Request<ReadLacRequest>,
    ) -> Result<Response<ReadLacResponse>, Status> {
        self.alive()?;
        let segment_id = request.get_ref().segment_id;
        let state = self.lock();
        let Some(segment) = state.segments.get(&segment_id) else {
            return Ok(Response::new(ReadLacResponse {
                status: BookieStatus::BookieNoSuchSegment as i32,
                message: no_such_segment_message(segment_id),
                last_add_confirmed: -1,
                last_entry_id: -1,
                sealed: false,
                fenced_epoch: 0,
            }));
        };
        let summary = segment.summary(segment_id);
        Ok(Response::new(ReadLacResponse {
            status: BookieStatus::BookieOk as i32,
            message: String::new(),
            last_add_confirmed: summary.last_add_confirmed,
            last_entry_id: summary.last_entry_id,
            sealed: summary.sealed,
            fenced_epoch: summary.fenced_epoch,
        }))
    }

    async fn fence(
        &self,
        request: Request<FenceRequest>,
    ) -> Result<Response<FenceResponse>, Status> {
        self.alive()?;
        let FenceRequest { segment_id, epoch } = request.into_inner();
        let refuse = |status: BookieStatus, message: String| {
            Ok(Response::new(FenceResponse {
                status: status as i32,
                message,
                last_add_confirmed: -1,
                last_entry_id: -1,
            }))
        };
        if epoch == 0 {
            return refuse(
                BookieStatus::BookieInvalidRequest,
                "invalid request: fence epochs start at 1".into(),
            );
        }
        let mut state = self.lock();
        // A segment the bookie never saw is created, fenced and empty.
        let segment = state.segments.entry(segment_id).or_default();
        if epoch < segment.fenced_epoch {
            return refuse(
                BookieStatus::BookieFenced,
                fenced_message(segment_id, segment.fenced_epoch, epoch),
            );
        }
        segment.fenced_epoch = epoch;
        Ok(Response::new(FenceResponse {
            status: BookieStatus::BookieOk as i32,
            message: String::new(),
            last_add_confirmed: segment.visible_lac(),
            last_entry_id: segment.last_entry_id(),
        }))
    }

    async fn seal(&self, request: Request<SealRequest>) -> Result<Response<SealResponse>, Status> {
        self.alive()?;
        let SealRequest {
            segment_id,
            epoch,
            last_entry_id,
        } = request.into_inner();
        let (status, message) = if last_entry_id < -1 {
            (
                BookieStatus::BookieInvalidRequest,
                format!("invalid request: last_entry_id {last_entry_id} is below -1"),
            )
        } else {
            let mut state = self.lock();
            // A segment the bookie never saw is created, sealed.
            let segment = state.segments.entry(segment_id).or_default();
            match segment.sealed {
                _ if epoch < segment.fenced_epoch => (
                    BookieStatus::BookieFenced,
                    fenced_message(segment_id, segment.fenced_epoch, epoch),
                ),
                Some(end) if end != last_entry_id => {
                    (BookieStatus::BookieSealed, sealed_message(segment_id, end))
                }
                _ => {
                    segment.sealed = Some(last_entry_id);
                    (BookieStatus::BookieOk, String::new())
                }
            }
        };
        Ok(Response::new(SealResponse {
            status: status as i32,
            message,
        }))
    }

    async fn delete_segment(
        &self,
        request: Request<DeleteSegmentRequest>,
    ) -> Result<Response<DeleteSegmentResponse>, Status> {
        self.alive()?;
        // OK whether or not the bookie holds the segment.
        self.lock().segments.remove(&request.get_ref().segment_id);
        Ok(Response::new(DeleteSegmentResponse {
            status: BookieStatus::BookieOk as i32,
            message: String::new(),
        }))
    }

    async fn list_segments(
        &self,
        _request: Request<ListSegmentsRequest>,
    ) -> Result<Response<ListSegmentsResponse>, Status> {
        self.alive()?;
        let state = self.lock();
        let mut segments: Vec<SegmentSummary> = state
            .segments
            .iter()
            .map(|(&segment_id, segment)| segment.summary(segment_id))
            .collect();
        segments.sort_unstable_by_key(|s| s.segment_id);
        Ok(Response::new(ListSegmentsResponse { segments }))
    }
}
