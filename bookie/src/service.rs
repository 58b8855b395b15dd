//! The gRPC face of a bookie: `BookieService`.

use crate::index::BookieIndex;
use std::pin::Pin;
use std::sync::Arc;
use strata_proto::bookie::bookie_service_server::BookieService;
use strata_proto::bookie::*;
use tonic::{Request, Response, Status, Streaming};

/// Serves one bookie's storage over gRPC.
#[derive(Clone)]
pub struct BookieGrpc {
    index: Arc<BookieIndex>,
}

impl BookieGrpc {
    /// Serves the segments recorded in `index`.
    pub fn new(index: Arc<BookieIndex>) -> Self {
        Self { index }
    }
}

/// Answer for an operation that needs the journal and entry logs, which this
/// version of the bookie does not have yet.
fn no_storage(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not supported by this bookie yet"))
}

type AddStream = Pin<Box<dyn futures::Stream<Item = Result<AddResponse, Status>> + Send>>;

#[tonic::async_trait]
impl BookieService for BookieGrpc {
    type AddEntriesStream = AddStream;

    async fn add_entries(
        &self,
        _request: Request<Streaming<AddRequest>>,
    ) -> Result<Response<Self::AddEntriesStream>, Status> {
        Err(no_storage("AddEntries"))
    }

    async fn read_entries(
        &self,
        _request: Request<ReadEntriesRequest>,
    ) -> Result<Response<ReadEntriesResponse>, Status> {
        Err(no_storage("ReadEntries"))
    }

    async fn read_lac(
        &self,
        _request: Request<ReadLacRequest>,
    ) -> Result<Response<ReadLacResponse>, Status> {
        Err(no_storage("ReadLac"))
    }

    async fn fence(
        &self,
        _request: Request<FenceRequest>,
    ) -> Result<Response<FenceResponse>, Status> {
        Err(no_storage("Fence"))
    }

    async fn seal(&self, _request: Request<SealRequest>) -> Result<Response<SealResponse>, Status> {
        Err(no_storage("Seal"))
    }

    async fn delete_segment(
        &self,
        _request: Request<DeleteSegmentRequest>,
    ) -> Result<Response<DeleteSegmentResponse>, Status> {
        Err(no_storage("DeleteSegment"))
    }

    async fn list_segments(
        &self,
        _request: Request<ListSegmentsRequest>,
    ) -> Result<Response<ListSegmentsResponse>, Status> {
        let segments = self
            .index
            .segments()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ListSegmentsResponse { segments }))
    }
}
