//! One Kafka client connection: length-prefixed framing, pipelined requests
//! answered in request order, bounded bytes in flight, and closing the
//! connection on a frame that is too long or does not decode.
//!
//! Requests are pipelined: the next frame is read while earlier ones are being
//! handled. Their futures sit in a `FuturesOrdered`, so responses are written
//! in request order whatever order the handlers finish in; a request that
//! wants no response (Produce with acks=0) simply writes nothing.
//!
//! Produce requests of one connection are placed one after another: a produce
//! starts once the previous one has given every batch its offsets (its
//! `SequencingDone` is released), so batches reach each partition in the order
//! the client sent them, while the confirmations of several produces are
//! awaited at once. Every other request runs concurrently with them and with
//! each other.
//!
//! Memory is bounded three ways, all by back-pressure (the connection stops
//! reading, and TCP pushes back on the client), never by queueing: at most
//! `max_inflight_requests_per_connection` requests and (past the first)
//! `max_inflight_bytes_per_connection` request bytes of one connection are in
//! flight; and every frame holds permits of the gateway-wide
//! `max_inflight_bytes` semaphore, one per byte, from before it is handled
//! until its response is written. A frame is read whole before its size is
//! known, so one connection holds at most one frame (`max_frame_bytes`)
//! beyond those bounds.

use crate::config::GatewayConfig;
use crate::handlers::{self, Gatekeeper, RequestError, SequencingDone};
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, SinkExt, StreamExt};
use kafka_protocol::messages::ApiKey;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

/// Largest response frame: Kafka's frame size is a signed 32-bit integer.
const MAX_RESPONSE_FRAME_BYTES: usize = i32::MAX as usize;

/// How many requests, and how many request bytes, connections handle at once.
#[derive(Debug, Clone)]
pub struct InflightLimits {
    /// Most requests of one connection handled at once (at least 1).
    pub max_requests_per_connection: usize,
    /// Request bytes of one connection in flight past which no frame is read.
    pub max_bytes_per_connection: usize,
    /// Request bytes in flight over the whole gateway: one permit per byte.
    pub gateway_bytes: Arc<Semaphore>,
    /// Permits `gateway_bytes` was created with; a frame never takes more.
    gateway_capacity: usize,
}

impl InflightLimits {
    /// Limits with a gateway-wide budget of `max_inflight_bytes`, shared by
    /// every connection given a clone of them.
    pub fn new(
        max_requests_per_connection: usize,
        max_bytes_per_connection: usize,
        max_inflight_bytes: usize,
    ) -> Self {
        // At least one byte, so that every frame can eventually be handled.
        let gateway_capacity = max_inflight_bytes.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            max_requests_per_connection: max_requests_per_connection.max(1),
            max_bytes_per_connection,
            gateway_bytes: Arc::new(Semaphore::new(gateway_capacity)),
            gateway_capacity,
        }
    }

    /// The limits a gateway configuration asks for.
    pub fn from_config(config: &GatewayConfig) -> Self {
        Self::new(
            config.max_inflight_requests_per_connection,
            config.max_inflight_bytes_per_connection,
            config.max_inflight_bytes,
        )
    }

    /// Gateway-wide permits a frame of `len` bytes takes: its size, capped so
    /// that a frame larger than the whole budget still runs (alone).
    fn permits_for(&self, len: usize) -> u32 {
        u32::try_from(len.min(self.gateway_capacity)).unwrap_or(u32::MAX)
    }
}

/// Whether a request frame must wait for the connection's previous such
/// request to be answered before it is handled: Produce, whose batches must
/// reach each partition in the order they were sent.
fn in_sequence(frame: &[u8]) -> bool {
    frame.len() >= 2 && i16::from_be_bytes([frame[0], frame[1]]) == ApiKey::Produce as i16
}

/// Serves requests from one client until it disconnects, sends bad bytes, or
/// the gateway shuts down.
pub async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    gatekeeper: Arc<Gatekeeper>,
    limits: InflightLimits,
    shutdown: CancellationToken,
) {
    let max_frame_bytes = gatekeeper.config().max_frame_bytes;
    let gatekeeper: &Gatekeeper = &gatekeeper;
    let handle = move |frame, done| handlers::handle(gatekeeper, peer, frame, SequencingDone(done));
    let (reader, writer) = stream.into_split();
    let closed = pipeline(
        reader,
        writer,
        max_frame_bytes,
        &limits,
        in_sequence,
        handle,
        &shutdown,
    )
    .await;
    match closed {
        Ok(()) => tracing::debug!(%peer, "client disconnected"),
        Err(Closed::BadFrame(error)) => {
            tracing::warn!(%peer, %error, "closing connection: bad frame")
        }
        Err(Closed::BadRequest(error)) => {
            tracing::warn!(%peer, %error, "closing connection: bad request")
        }
        Err(Closed::Write(error)) => tracing::debug!(%peer, %error, "client went away"),
        Err(Closed::Semaphore(error)) => {
            tracing::error!(%peer, %error, "closing connection: in-flight budget is gone")
        }
    }
}

/// Why a connection was closed before the client closed it.
#[derive(Debug, thiserror::Error)]
enum Closed {
    /// A frame was too long, or the socket failed while reading.
    #[error("{0}")]
    BadFrame(std::io::Error),
    /// A request did not decode or is not supported.
    #[error("{0}")]
    BadRequest(RequestError),
    /// A response could not be written.
    #[error("{0}")]
    Write(std::io::Error),
    /// The gateway's byte semaphore was closed (never done while serving).
    #[error("{0}")]
    Semaphore(AcquireError),
}

/// A request whose handler is done: its answer, the permits it holds, and its
/// frame size.
type Handled = (
    Result<Option<BytesMut>, RequestError>,
    OwnedSemaphorePermit,
    usize,
);

/// A frame's wait for gateway-wide permits.
type Acquiring = BoxFuture<'static, Result<OwnedSemaphorePermit, AcquireError>>;

/// Reads request frames from `reader`, handles up to the limits at once with
/// `handle` (a frame for which `sequenced` holds only after the previous such
/// frame is handled), and writes each response to `writer` in request order.
/// Returns `Ok` when the client closed its side (after answering what it
/// sent) or at shutdown.
async fn pipeline<R, W, H, Fut>(
    reader: R,
    writer: W,
    max_frame_bytes: usize,
    limits: &InflightLimits,
    sequenced: fn(&[u8]) -> bool,
    handle: H,
    shutdown: &CancellationToken,
) -> Result<(), Closed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    H: Fn(Bytes, Option<oneshot::Sender<()>>) -> Fut,
    Fut: Future<Output = Result<Option<BytesMut>, RequestError>>,
{
    // Kafka frames are a 4-byte big-endian size followed by the request.
    let request_codec = LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max_frame_bytes)
        .new_codec();
    let response_codec = LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(MAX_RESPONSE_FRAME_BYTES)
        .new_codec();
    let mut frames = FramedRead::new(reader, request_codec);
    let mut responses = FramedWrite::new(writer, response_codec);

    let handle = &handle;
    // Dropped when the last sequenced request is handled, which lets the next
    // one start.
    let mut last_sequenced: Option<oneshot::Receiver<()>> = None;
    let mut start = |frame: Bytes, permit: OwnedSemaphorePermit| {
        let len = frame.len();
        let (previous, done) = if sequenced(&frame) {
            let (done, handled) = oneshot::channel::<()>();
            (last_sequenced.replace(handled), Some(done))
        } else {
            (None, None)
        };
        async move {
            if let Some(previous) = previous {
                // Nothing is ever sent: the sender is dropped once handled.
                let _ = previous.await;
            }
            // The handler drops `done` once the request has taken its place
            // (for Produce, once its batches are sequenced), or at its end.
            let answer = handle(frame, done).await;
            (answer, permit, len)
        }
    };
    let mut in_flight = FuturesOrdered::new();
    let mut in_flight_bytes = 0usize;
    // A frame already read, waiting for gateway-wide permits; nothing more is
    // read meanwhile.
    let mut waiting: Option<(Bytes, Acquiring)> = None;
    let mut reading = true;

    loop {
        if !reading && waiting.is_none() && in_flight.is_empty() {
            return Ok(());
        }
        let room = in_flight.len() < limits.max_requests_per_connection
            && in_flight_bytes < limits.max_bytes_per_connection;
        // With nothing in flight any frame may be read, however large.
        let may_read = reading && waiting.is_none() && (in_flight.is_empty() || room);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            Some(handled) = in_flight.next(), if !in_flight.is_empty() => {
                let written = write_ready(&mut responses, &mut in_flight, handled).await?;
                // Only now are these requests done with: release their bytes.
                for (permit, len) in written {
                    drop(permit);
                    debug_assert!(in_flight_bytes >= len, "in-flight bytes never go negative");
                    in_flight_bytes -= len;
                }
            }
            permit = acquire(&mut waiting), if waiting.is_some() => {
                let permit = permit.map_err(Closed::Semaphore)?;
                if let Some((frame, _)) = waiting.take() {
                    in_flight.push_back(start(frame, permit));
                }
            }
            frame = frames.next(), if may_read => {
                let frame = match frame {
                    None => {
                        // The client is done sending: answer what it sent, then close.
                        reading = false;
                        continue;
                    }
                    Some(Err(error)) => return Err(Closed::BadFrame(error)),
                    Some(Ok(frame)) => frame.freeze(),
                };
                in_flight_bytes += frame.len();
                let permits = limits.permits_for(frame.len());
                match limits.gateway_bytes.clone().try_acquire_many_owned(permits) {
                    Ok(permit) => in_flight.push_back(start(frame, permit)),
                    Err(_) => {
                        let acquiring = limits.gateway_bytes.clone().acquire_many_owned(permits);
                        waiting = Some((frame, acquiring.boxed()));
                    }
                }
            }
        }
    }
}

/// Writes the answer of `first` and of every later request already handled,
/// in order, and flushes once. Returns the permits and frame sizes of the
/// requests answered; a request that did not decode closes the connection
/// after the answers before it are flushed.
async fn write_ready<W, F>(
    responses: &mut FramedWrite<W, LengthDelimitedCodec>,
    in_flight: &mut FuturesOrdered<F>,
    first: Handled,
) -> Result<Vec<(OwnedSemaphorePermit, usize)>, Closed>
where
    W: AsyncWrite + Unpin,
    F: Future<Output = Handled>,
{
    let mut written = Vec::new();
    let mut next = Some(first);
    while let Some((answer, permit, len)) = next.take() {
        match answer {
            Ok(Some(response)) => responses
                .feed(response.freeze())
                .await
                .map_err(Closed::Write)?,
            Ok(None) => {}
            Err(error) => {
                SinkExt::<Bytes>::flush(responses)
                    .await
                    .map_err(Closed::Write)?;
                return Err(Closed::BadRequest(error));
            }
        }
        written.push((permit, len));
        // Polled without a waker: a request not done yet is polled again (with
        // the task's waker) by the connection loop right after.
        next = in_flight.next().now_or_never().flatten();
    }
    SinkExt::<Bytes>::flush(responses)
        .await
        .map_err(Closed::Write)?;
    Ok(written)
}

/// Waits for the permits of the frame in `waiting`; never ready when there is none.
async fn acquire(
    waiting: &mut Option<(Bytes, Acquiring)>,
) -> Result<OwnedSemaphorePermit, AcquireError> {
    match waiting {
        Some((_, acquiring)) => acquiring.await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Buf, BufMut};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A request of the fake protocol: an id, how long handling takes,
    /// whether it wants an answer and whether it is sequenced; padded to `len`
    /// bytes.
    fn frame(id: u32, delay_ms: u32, answer: bool, sequenced: bool, len: usize) -> Vec<u8> {
        let mut body = Vec::with_capacity(len.max(10));
        body.put_u32(id);
        body.put_u32(delay_ms);
        body.put_u8(u8::from(answer));
        body.put_u8(u8::from(sequenced));
        body.resize(len.max(10), 0);
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.put_u32(body.len() as u32);
        frame.extend_from_slice(&body);
        frame
    }

    /// A request that is not sequenced.
    fn request(id: u32, delay_ms: u32, answer: bool, len: usize) -> Vec<u8> {
        frame(id, delay_ms, answer, false, len)
    }

    fn fake_sequenced(frame: &[u8]) -> bool {
        frame.get(9) == Some(&1)
    }

    /// Counts requests being handled (all, and sequenced ones) and remembers
    /// the most seen at once.
    #[derive(Default)]
    struct Concurrency {
        now: AtomicUsize,
        most: AtomicUsize,
        sequenced_now: AtomicUsize,
        sequenced_most: AtomicUsize,
    }

    impl Concurrency {
        fn most(&self) -> usize {
            self.most.load(Ordering::SeqCst)
        }

        fn sequenced_most(&self) -> usize {
            self.sequenced_most.load(Ordering::SeqCst)
        }
    }

    /// Handles a fake request: waits its delay and answers with its id; an
    /// id of `u32::MAX` is a request that does not decode.
    async fn fake_handle(
        mut frame: Bytes,
        concurrency: &Concurrency,
    ) -> Result<Option<BytesMut>, RequestError> {
        let id = frame.get_u32();
        let delay_ms = frame.get_u32();
        let answer = frame.get_u8() == 1;
        let sequenced = frame.get_u8() == 1;
        if id == u32::MAX {
            return Err(RequestError::Truncated(0));
        }
        let now = concurrency.now.fetch_add(1, Ordering::SeqCst) + 1;
        concurrency.most.fetch_max(now, Ordering::SeqCst);
        if sequenced {
            let now = concurrency.sequenced_now.fetch_add(1, Ordering::SeqCst) + 1;
            concurrency.sequenced_most.fetch_max(now, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(u64::from(delay_ms))).await;
        concurrency.now.fetch_sub(1, Ordering::SeqCst);
        if sequenced {
            concurrency.sequenced_now.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(answer.then(|| {
            let mut response = BytesMut::new();
            response.put_u32(id);
            response
        }))
    }

    /// Serves one fake connection on `server` until the client closes it.
    async fn serve(
        server: DuplexStream,
        limits: InflightLimits,
        concurrency: Arc<Concurrency>,
    ) -> Result<(), Closed> {
        let (reader, writer) = tokio::io::split(server);
        let handle = |frame, done: Option<oneshot::Sender<()>>| {
            let concurrency = concurrency.clone();
            async move {
                let answer = fake_handle(frame, &concurrency).await;
                drop(done);
                answer
            }
        };
        pipeline(
            reader,
            writer,
            1 << 20,
            &limits,
            fake_sequenced,
            handle,
            &CancellationToken::new(),
        )
        .await
    }

    /// Reads response ids until the server closes the connection.
    async fn read_ids(client: &mut DuplexStream) -> Vec<u32> {
        let mut ids = Vec::new();
        loop {
            let mut size = [0u8; 4];
            if client.read_exact(&mut size).await.is_err() {
                return ids;
            }
            assert_eq!(u32::from_be_bytes(size), 4);
            ids.push(client.read_u32().await.unwrap());
        }
    }

    /// Sends `requests` at once, half-closes, and returns the answers' ids.
    async fn exchange(
        limits: InflightLimits,
        concurrency: Arc<Concurrency>,
        requests: Vec<Vec<u8>>,
    ) -> (Vec<u32>, Result<(), Closed>) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let served = tokio::spawn(serve(server, limits, concurrency));
        for frame in requests {
            // The server may close first, on a frame it refuses.
            if client.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = client.shutdown().await;
        let ids = read_ids(&mut client).await;
        (ids, served.await.unwrap())
    }

    #[tokio::test]
    async fn pipelined_answers_come_back_in_request_order() {
        let concurrency = Arc::new(Concurrency::default());
        // Later requests finish first; id 3 wants no answer (acks=0).
        let requests = (1..=6)
            .map(|id| request(id, 300 - id * 40, id != 3, 16))
            .collect();
        let limits = InflightLimits::new(8, 1 << 20, 1 << 20);
        let (ids, closed) = exchange(limits, concurrency.clone(), requests).await;
        assert!(closed.is_ok());
        assert_eq!(ids, vec![1, 2, 4, 5, 6]);
        assert_eq!(concurrency.most(), 6, "all six were handled at once");
    }

    #[tokio::test]
    async fn sequenced_requests_run_one_at_a_time_beside_the_others() {
        let concurrency = Arc::new(Concurrency::default());
        // Odd ids are sequenced (as produces are); later ones are quicker.
        let requests = (1..=8)
            .map(|id| frame(id, 200 - id * 20, true, id % 2 == 1, 16))
            .collect();
        let limits = InflightLimits::new(8, 1 << 20, 1 << 20);
        let (ids, closed) = exchange(limits, concurrency.clone(), requests).await;
        assert!(closed.is_ok());
        assert_eq!(ids, (1..=8).collect::<Vec<_>>());
        assert_eq!(concurrency.sequenced_most(), 1);
        assert!(concurrency.most() >= 4, "the others ran beside them");
    }

    #[test]
    fn only_produce_is_sequenced() {
        let produce = (ApiKey::Produce as i16).to_be_bytes();
        let fetch = (ApiKey::Fetch as i16).to_be_bytes();
        assert!(in_sequence(&[produce[0], produce[1], 0, 9]));
        assert!(!in_sequence(&[fetch[0], fetch[1], 0, 12]));
        assert!(!in_sequence(&[0]));
    }

    #[tokio::test]
    async fn requests_in_flight_per_connection_are_bounded() {
        let concurrency = Arc::new(Concurrency::default());
        let requests = (1..=20).map(|id| request(id, 50, true, 16)).collect();
        let limits = InflightLimits::new(4, 1 << 20, 1 << 20);
        let (ids, _) = exchange(limits, concurrency.clone(), requests).await;
        assert_eq!(ids, (1..=20).collect::<Vec<_>>());
        assert_eq!(concurrency.most(), 4);
    }

    #[tokio::test]
    async fn bytes_in_flight_per_connection_are_bounded() {
        let concurrency = Arc::new(Concurrency::default());
        let requests = (1..=10).map(|id| request(id, 50, true, 100)).collect();
        // Reading stops once 250 bytes are in flight: three 100-byte frames.
        let limits = InflightLimits::new(100, 250, 1 << 20);
        let (ids, _) = exchange(limits, concurrency.clone(), requests).await;
        assert_eq!(ids, (1..=10).collect::<Vec<_>>());
        assert_eq!(concurrency.most(), 3);
    }

    #[tokio::test]
    async fn a_frame_larger_than_every_budget_still_runs_alone() {
        let concurrency = Arc::new(Concurrency::default());
        let requests = (1..=3).map(|id| request(id, 50, true, 1000)).collect();
        let limits = InflightLimits::new(100, 10, 10);
        let (ids, _) = exchange(limits, concurrency.clone(), requests).await;
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(concurrency.most(), 1);
    }

    #[tokio::test]
    async fn gateway_bytes_in_flight_are_shared_by_connections() {
        let concurrency = Arc::new(Concurrency::default());
        // 250 bytes for the gateway: two 100-byte frames at once, over both connections.
        let limits = InflightLimits::new(100, 1 << 20, 250);
        let requests = || (1..=5).map(|id| request(id, 50, true, 100)).collect();
        let (first, second) = tokio::join!(
            exchange(limits.clone(), concurrency.clone(), requests()),
            exchange(limits.clone(), concurrency.clone(), requests()),
        );
        assert_eq!(first.0, vec![1, 2, 3, 4, 5]);
        assert_eq!(second.0, vec![1, 2, 3, 4, 5]);
        assert_eq!(concurrency.most(), 2);
        assert_eq!(
            limits.gateway_bytes.available_permits(),
            250,
            "all released"
        );
    }

    #[tokio::test]
    async fn a_bad_request_closes_the_connection_after_earlier_answers() {
        let concurrency = Arc::new(Concurrency::default());
        let requests = vec![
            request(1, 100, true, 16),
            request(2, 50, true, 16),
            request(u32::MAX, 0, true, 16),
            request(4, 0, true, 16),
        ];
        let limits = InflightLimits::new(8, 1 << 20, 1 << 20);
        let (ids, closed) = exchange(limits, concurrency, requests).await;
        assert_eq!(ids, vec![1, 2]);
        assert!(matches!(closed, Err(Closed::BadRequest(_))));
    }

    #[tokio::test]
    async fn a_frame_over_the_size_limit_closes_the_connection() {
        let concurrency = Arc::new(Concurrency::default());
        let requests = vec![request(1, 0, true, 2 << 20)];
        let limits = InflightLimits::new(8, 1 << 20, 1 << 20);
        let (ids, closed) = exchange(limits, concurrency, requests).await;
        assert!(ids.is_empty());
        assert!(matches!(closed, Err(Closed::BadFrame(_))));
    }
}
