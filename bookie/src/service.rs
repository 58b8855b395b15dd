//! The gRPC face of a bookie: `BookieService`, over the storage engine.
//!
//! Every refusal is an answer with a [`BookieStatus`] and a message, never a
//! gRPC error: gRPC errors mean the transport or the server broke.

use crate::storage::{Storage, StorageError};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use std::pin::Pin;
use std::sync::Arc;
use strata_proto::bookie::bookie_service_server::BookieService;
use strata_proto::bookie::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

/// Most adds of one stream waiting to become durable; the stream is not read
/// further until some are answered.
const MAX_IN_FLIGHT_ADDS_PER_STREAM: usize = 8192;
/// Answers of one add stream buffered for a slow reader.
const ADD_RESPONSE_BUFFER: usize = 1024;

/// Serves one bookie's storage over gRPC.
#[derive(Clone)]
pub struct BookieGrpc {
    storage: Arc<Storage>,
    /// Owner of the tasks serving add streams.
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl BookieGrpc {
    /// Serves `storage`; add streams run as tasks of `tasks` and end on `shutdown`.
    pub fn new(storage: Arc<Storage>, tasks: TaskTracker, shutdown: CancellationToken) -> Self {
        Self {
            storage,
            tasks,
            shutdown,
        }
    }

    /// The LAC to report alongside a refused read.
    fn known_lac(&self, segment_id: u64) -> i64 {
        self.storage
            .segment(segment_id)
            .map_or(-1, |segment| segment.last_add_confirmed)
    }
}

type AddStream = Pin<Box<dyn futures::Stream<Item = Result<AddResponse, Status>> + Send>>;

/// `(status, message)` of an outcome.
fn status_of<T>(result: &Result<T, StorageError>) -> (i32, String) {
    match result {
        Ok(_) => (BookieStatus::BookieOk as i32, String::new()),
        Err(error) => {
            tracing::debug!(%error, "bookie request refused");
            (error.status() as i32, error.to_string())
        }
    }
}

/// Reads adds from one stream, submits them in order, and answers each once
/// it is durable (in whatever order that happens), until the stream ends and
/// every add is answered, the client goes away, or the bookie shuts down.
async fn serve_adds(
    storage: Arc<Storage>,
    mut inbound: Streaming<AddRequest>,
    responses: mpsc::Sender<Result<AddResponse, Status>>,
    shutdown: CancellationToken,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut reading = true;
    // Why the client's half broke (e.g. an oversized message), told once the
    // adds already taken are answered.
    let mut broke: Option<Status> = None;
    loop {
        if !reading && in_flight.is_empty() {
            if let Some(status) = broke {
                let _ = responses.send(Err(status)).await;
            }
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = responses.closed() => return,
            message = inbound.message(), if reading && in_flight.len() < MAX_IN_FLIGHT_ADDS_PER_STREAM => {
                match message {
                    Ok(Some(add)) => {
                        let (segment_id, entry_id) = (add.segment_id, add.entry_id);
                        // Waits while too many bytes of adds are pending.
                        let submitted = storage.submit_add(add).await;
                        in_flight.push(async move {
                            let result = match submitted {
                                Ok(ticket) => ticket.await,
                                Err(error) => Err(error),
                            };
                            (segment_id, entry_id, result)
                        });
                    }
                    Ok(None) => reading = false,
                    Err(status) => {
                        tracing::debug!(%status, "add stream broke");
                        reading = false;
                        broke = Some(status);
                    }
                }
            }
            Some((segment_id, entry_id, result)) = in_flight.next(), if !in_flight.is_empty() => {
                let (status, message) = status_of(&result);
                let response = AddResponse {
                    segment_id,
                    entry_id,
                    status,
                    message,
                };
                if responses.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[tonic::async_trait]
impl BookieService for BookieGrpc {
    type AddEntriesStream = AddStream;

    async fn add_entries(
        &self,
        request: Request<Streaming<AddRequest>>,
    ) -> Result<Response<Self::AddEntriesStream>, Status> {
        let (responses, outbound) = mpsc::channel(ADD_RESPONSE_BUFFER);
        self.tasks.spawn(serve_adds(
            Arc::clone(&self.storage),
            request.into_inner(),
            responses,
            self.shutdown.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound))))
    }

    async fn read_entries(
        &self,
        request: Request<ReadEntriesRequest>,
    ) -> Result<Response<ReadEntriesResponse>, Status> {
        let request = request.into_inner();
        let segment_id = request.segment_id;
        let storage = Arc::clone(&self.storage);
        let result = tokio::task::spawn_blocking(move || storage.read(&request))
            .await
            .map_err(|e| Status::internal(format!("read failed: {e}")))?;
        let (status, message) = status_of(&result);
        let response = match result {
            Ok(read) => ReadEntriesResponse {
                status,
                message,
                entries: read.entries,
                last_add_confirmed: read.last_add_confirmed,
            },
            Err(_) => ReadEntriesResponse {
                status,
                message,
                entries: Vec::new(),
                last_add_confirmed: self.known_lac(segment_id),
            },
        };
        Ok(Response::new(response))
    }

    async fn read_lac(
        &self,
        request: Request<ReadLacRequest>,
    ) -> Result<Response<ReadLacResponse>, Status> {
        let segment_id = request.into_inner().segment_id;
        let result = self
            .storage
            .segment(segment_id)
            .ok_or(StorageError::NoSuchSegment(segment_id));
        let (status, message) = status_of(&result);
        let segment = result.unwrap_or(SegmentSummary {
            last_add_confirmed: -1,
            last_entry_id: -1,
            ..Default::default()
        });
        Ok(Response::new(ReadLacResponse {
            status,
            message,
            last_add_confirmed: segment.last_add_confirmed,
            last_entry_id: segment.last_entry_id,
            sealed: segment.sealed,
            fenced_epoch: segment.fenced_epoch,
        }))
    }

    async fn fence(
        &self,
        request: Request<FenceRequest>,
    ) -> Result<Response<FenceResponse>, Status> {
        let FenceRequest { segment_id, epoch } = request.into_inner();
        let result = self.storage.fence(segment_id, epoch).await;
        let (status, message) = status_of(&result);
        let (last_add_confirmed, last_entry_id) = match result {
            Ok(fenced) => (fenced.last_add_confirmed, fenced.last_entry_id),
            Err(_) => (-1, -1),
        };
        Ok(Response::new(FenceResponse {
            status,
            message,
            last_add_confirmed,
            last_entry_id,
        }))
    }

    async fn seal(&self, request: Request<SealRequest>) -> Result<Response<SealResponse>, Status> {
        let SealRequest {
            segment_id,
            epoch,
            last_entry_id,
        } = request.into_inner();
        let result = self.storage.seal(segment_id, epoch, last_entry_id).await;
        let (status, message) = status_of(&result);
        Ok(Response::new(SealResponse { status, message }))
    }

    async fn delete_segment(
        &self,
        request: Request<DeleteSegmentRequest>,
    ) -> Result<Response<DeleteSegmentResponse>, Status> {
        let segment_id = request.into_inner().segment_id;
        let result = self.storage.delete_segment(segment_id).await;
        let (status, message) = status_of(&result);
        Ok(Response::new(DeleteSegmentResponse { status, message }))
    }

    async fn list_segments(
        &self,
        _request: Request<ListSegmentsRequest>,
    ) -> Result<Response<ListSegmentsResponse>, Status> {
        Ok(Response::new(ListSegmentsResponse {
            segments: self.storage.segments(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BookieConfig;
    use bytes::Bytes;
    use strata_proto::bookie::bookie_service_client::BookieServiceClient;
    use strata_proto::bookie::bookie_service_server::BookieServiceServer;
    use tonic::transport::Channel;

    fn add(entry_id: i64, writer_epoch: u32) -> AddRequest {
        AddRequest {
            segment_id: 4,
            entry_id,
            writer_epoch,
            last_add_confirmed: entry_id - 1,
            base_offset: entry_id,
            payload: Bytes::from(format!("batch {entry_id}")),
            recovery: false,
        }
    }

    /// A bookie service on a loopback port over storage in `dir`.
    async fn serve(
        dir: &std::path::Path,
    ) -> (BookieServiceClient<Channel>, CancellationToken, TaskTracker) {
        let storage = Storage::open(&BookieConfig {
            data_dir: dir.to_path_buf(),
            min_free_bytes: 0,
            ..Default::default()
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let service = BookieGrpc::new(Arc::new(storage), tasks.clone(), shutdown.clone());
        let server = tonic::transport::Server::builder()
            .add_service(BookieServiceServer::new(service))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                shutdown.clone().cancelled_owned(),
            );
        tasks.spawn(server);
        let client = BookieServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        (client, shutdown, tasks)
    }

    async fn stream_adds(
        client: &mut BookieServiceClient<Channel>,
        adds: Vec<AddRequest>,
    ) -> Vec<AddResponse> {
        let count = adds.len();
        let mut responses = client
            .add_entries(tokio_stream::iter(adds))
            .await
            .unwrap()
            .into_inner();
        let mut answered = Vec::new();
        while answered.len() < count {
            answered.push(
                responses
                    .message()
                    .await
                    .unwrap()
                    .expect("an answer per add"),
            );
        }
        answered
    }

    #[tokio::test]
    async fn pipelined_adds_are_answered_and_read_back_over_grpc() {
        let dir = tempfile::tempdir().unwrap();
        let (mut client, shutdown, tasks) = serve(dir.path()).await;
        let answers = stream_adds(&mut client, (0..200).map(|id| add(id, 1)).collect()).await;
        let ok = BookieStatus::BookieOk as i32;
        assert!(answers.iter().all(|a| a.status == ok), "{answers:?}");
        let mut ids: Vec<i64> = answers.iter().map(|a| a.entry_id).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..200).collect::<Vec<_>>());

        let read = client
            .read_entries(ReadEntriesRequest {
                segment_id: 4,
                start: Some(read_entries_request::Start::KafkaOffset(150)),
                last_entry_id: -1,
                max_bytes: 0,
                recovery: false,
                known_lac: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(read.status, ok);
        assert_eq!(read.last_add_confirmed, 198);
        let read_ids: Vec<i64> = read.entries.iter().map(|e| e.entry_id).collect();
        assert_eq!(read_ids, (150..=198).collect::<Vec<_>>());
        assert_eq!(read.entries[0].payload, Bytes::from("batch 150"));

        let fenced = client
            .fence(FenceRequest {
                segment_id: 4,
                epoch: 2,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (
                fenced.status,
                fenced.last_add_confirmed,
                fenced.last_entry_id
            ),
            (ok, 198, 199)
        );
        let refused = stream_adds(&mut client, vec![add(200, 1), add(-1, 2)]).await;
        let status = |id| refused.iter().find(|a| a.entry_id == id).unwrap();
        assert_eq!(status(200).status, BookieStatus::BookieFenced as i32);
        assert!(status(200).message.contains("fenced"));
        assert_eq!(status(-1).status, BookieStatus::BookieInvalidRequest as i32);

        let lac = client
            .read_lac(ReadLacRequest { segment_id: 4 })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (lac.fenced_epoch, lac.last_entry_id, lac.sealed),
            (2, 199, false)
        );
        let missing = client
            .read_lac(ReadLacRequest { segment_id: 5 })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(missing.status, BookieStatus::BookieNoSuchSegment as i32);

        let sealed = client
            .seal(SealRequest {
                segment_id: 4,
                epoch: 2,
                last_entry_id: 199,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(sealed.status, ok);
        let listed = client
            .list_segments(ListSegmentsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.segments.len(), 1);
        assert!(listed.segments[0].sealed);
        let deleted = client
            .delete_segment(DeleteSegmentRequest { segment_id: 4 })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(deleted.status, ok);

        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
    }

    #[tokio::test]
    async fn an_oversized_add_ends_the_stream_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (mut client, shutdown, tasks) = serve(dir.path()).await;
        let huge = AddRequest {
            // Past tonic's default 4 MiB message limit, which `serve` keeps.
            payload: Bytes::from(vec![0; 5 << 20]),
            ..add(1, 1)
        };
        let mut responses = client
            .add_entries(tokio_stream::iter(vec![add(0, 1), huge]))
            .await
            .unwrap()
            .into_inner();
        let first = responses.message().await.unwrap().unwrap();
        assert_eq!(first.status, BookieStatus::BookieOk as i32);
        let broke = responses.message().await.unwrap_err();
        assert!(
            broke.message().contains("message length too large"),
            "{broke}"
        );
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
    }
}
