//! A fake bookie for the ledger client's tests: an in-memory `BookieService`
//! served over real tonic gRPC on loopback, with the real bookie's rules for
//! fencing, sealing and reads, that can be told to refuse adds, swallow acks,
//! or die.

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
    pub last_add_confirmed: i64,
    pub fenced_epoch: u32,
    pub sealed: Option<i64>,
}

impl Default for FakeSegment {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
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
}

struct FakeState {
    segments: HashMap<u64, FakeSegment>,
    ack_mode: AckMode,
    add_failure: Option<BookieStatus>,
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

    /// Stores an entry directly, as if an add had landed.
    pub fn plant(&self, segment_id: u64, entry_id: i64, base_offset: i64, payload: &'static [u8]) {
        self.service
            .lock()
            .segments
            .entry(segment_id)
            .or_default()
            .entries
            .insert(
                entry_id,
                Entry {
                    entry_id,
                    base_offset,
                    payload: Bytes::from_static(payload),
                },
            );
    }
}

impl Drop for FakeBookie {
    fn drop(&mut self) {
        self.kill();
    }
}

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
        let answer = |status: BookieStatus| {
            Some(AddResponse {
                segment_id: request.segment_id,
                entry_id: request.entry_id,
                status: status as i32,
                message: String::new(),
            })
        };
        if let Some(status) = state.add_failure {
            return answer(status);
        }
        let mode = state.ack_mode;
        if mode == AckMode::Swallow {
            return None;
        }
        let segment = state.segments.entry(request.segment_id).or_default();
        if request.writer_epoch < segment.fenced_epoch {
            return answer(BookieStatus::BookieFenced);
        }
        let held = segment.entries.contains_key(&request.entry_id);
        if held && (segment.sealed.is_none() || request.recovery) {
            return answer(BookieStatus::BookieOk);
        }
        if segment.sealed.is_some() {
            return answer(BookieStatus::BookieSealed);
        }
        segment.entries.insert(
            request.entry_id,
            Entry {
                entry_id: request.entry_id,
                base_offset: request.base_offset,
                payload: request.payload.clone(),
            },
        );
        segment.last_add_confirmed = segment.last_add_confirmed.max(request.last_add_confirmed);
        match mode {
            AckMode::StoreSilently => None,
            _ => answer(BookieStatus::BookieOk),
        }
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
        let refuse = |status: BookieStatus| {
            Ok(Response::new(ReadEntriesResponse {
                status: status as i32,
                ..Default::default()
            }))
        };
        let Some(segment) = state.segments.get(&request.segment_id) else {
            return refuse(BookieStatus::BookieNoSuchSegment);
        };
        let first = match request.start {
            Some(Start::FirstEntryId(first)) => first,
            Some(Start::KafkaOffset(offset)) => {
                match segment
                    .entries
                    .values()
                    .rev()
                    .find(|e| e.base_offset <= offset)
                {
                    Some(entry) => entry.entry_id,
                    None => return refuse(BookieStatus::BookieNoSuchEntry),
                }
            }
            None => return refuse(BookieStatus::BookieInvalidRequest),
        };
        if !segment.entries.contains_key(&first) {
            return refuse(BookieStatus::BookieNoSuchEntry);
        }
        let end = segment.readable_end(request.recovery);
        let last = if request.last_entry_id < 0 {
            end
        } else {
            request.last_entry_id.min(end)
        };
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let mut next = first;
        while next <= last {
            let Some(entry) = segment.entries.get(&next) else {
                break;
            };
            if !entries.is_empty() && bytes + entry.payload.len() > request.max_bytes as usize {
                break;
            }
            bytes += entry.payload.len();
            entries.push(entry.clone());
            next += 1;
        }
        Ok(Response::new(ReadEntriesResponse {
            status: BookieStatus::BookieOk as i32,
            message: String::new(),
            entries,
            last_add_confirmed: segment.visible_lac(),
        }))
    }

    async fn read_lac(
        &self,
        request: Request<ReadLacRequest>,
    ) -> Result<Response<ReadLacResponse>, Status> {
        self.alive()?;
        let state = self.lock();
        let Some(segment) = state.segments.get(&request.get_ref().segment_id) else {
            return Ok(Response::new(ReadLacResponse {
                status: BookieStatus::BookieNoSuchSegment as i32,
                ..Default::default()
            }));
        };
        Ok(Response::new(ReadLacResponse {
            status: BookieStatus::BookieOk as i32,
            message: String::new(),
            last_add_confirmed: segment.visible_lac(),
            last_entry_id: segment.last_entry_id(),
            sealed: segment.sealed.is_some(),
            fenced_epoch: segment.fenced_epoch,
        }))
    }

    async fn fence(
        &self,
        request: Request<FenceRequest>,
    ) -> Result<Response<FenceResponse>, Status> {
        self.alive()?;
        let request = request.into_inner();
        let mut state = self.lock();
        let segment = state.segments.entry(request.segment_id).or_default();
        if request.epoch < segment.fenced_epoch {
            return Ok(Response::new(FenceResponse {
                status: BookieStatus::BookieFenced as i32,
                ..Default::default()
            }));
        }
        segment.fenced_epoch = request.epoch;
        Ok(Response::new(FenceResponse {
            status: BookieStatus::BookieOk as i32,
            message: String::new(),
            last_add_confirmed: segment.visible_lac(),
            last_entry_id: segment.last_entry_id(),
        }))
    }

    async fn seal(&self, request: Request<SealRequest>) -> Result<Response<SealResponse>, Status> {
        self.alive()?;
        let request = request.into_inner();
        let mut state = self.lock();
        let segment = state.segments.entry(request.segment_id).or_default();
        let status = if request.epoch < segment.fenced_epoch {
            BookieStatus::BookieFenced
        } else if segment
            .sealed
            .is_some_and(|end| end != request.last_entry_id)
        {
            BookieStatus::BookieSealed
        } else {
            segment.sealed = Some(request.last_entry_id);
            BookieStatus::BookieOk
        };
        Ok(Response::new(SealResponse {
            status: status as i32,
            message: String::new(),
        }))
    }

    async fn delete_segment(
        &self,
        request: Request<DeleteSegmentRequest>,
    ) -> Result<Response<DeleteSegmentResponse>, Status> {
        self.alive()?;
        self.lock().segments.remove(&request.get_ref().segment_id);
        Ok(Response::new(DeleteSegmentResponse::default()))
    }

    async fn list_segments(
        &self,
        _request: Request<ListSegmentsRequest>,
    ) -> Result<Response<ListSegmentsResponse>, Status> {
        self.alive()?;
        Ok(Response::new(ListSegmentsResponse::default()))
    }
}
