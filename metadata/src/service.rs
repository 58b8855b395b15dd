//! The gRPC face of a metadata node: `MetadataService` and `AdminService`.

use crate::node::{MetadataNode, NodeError};
use crate::state::Reply;
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use strata_proto::admin::admin_service_server::AdminService;
use strata_proto::admin::{ClusterStatusRequest, ClusterStatusResponse, MetadataMember};
use strata_proto::metadata::metadata_command::Op;
use strata_proto::metadata::metadata_service_server::MetadataService;
use strata_proto::metadata::*;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Serves a [`MetadataNode`] over gRPC.
#[derive(Clone)]
pub struct MetadataGrpc {
    node: Arc<MetadataNode>,
    shutdown: CancellationToken,
}

impl MetadataGrpc {
    /// Serves `node`; open watch streams end when `shutdown` is cancelled.
    pub fn new(node: Arc<MetadataNode>, shutdown: CancellationToken) -> Self {
        Self { node, shutdown }
    }

    async fn propose(&self, op: Op) -> Result<Reply, Status> {
        self.node.propose(op).await.map_err(node_status)
    }

    async fn propose_lease(&self, op: Op) -> Result<(Outcome, u64), Status> {
        match self.propose(op).await? {
            Reply::Lease {
                outcome,
                lease_expires_ms,
            } => Ok((outcome, lease_expires_ms)),
            other => Ok((other.outcome().clone(), 0)),
        }
    }

    async fn propose_outcome(&self, op: Op) -> Result<Outcome, Status> {
        Ok(self.propose(op).await?.outcome().clone())
    }

    async fn cluster_id(&self) -> String {
        self.node.read().await.state.meta.cluster_id.clone()
    }
}

fn node_status(error: NodeError) -> Status {
    tracing::error!(%error, "metadata command failed");
    Status::internal(error.to_string())
}

/// Answer for an API whose state-machine rules are not in this version.
fn not_supported(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not supported by this metadata service yet"
    ))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl MetadataService for MetadataGrpc {
    async fn get_cluster(
        &self,
        _request: Request<GetClusterRequest>,
    ) -> Result<Response<ClusterInfo>, Status> {
        let applied = self.node.read().await;
        Ok(Response::new(ClusterInfo {
            cluster_id: applied.state.meta.cluster_id.clone(),
            gateways: applied.state.gateways.values().cloned().collect(),
            bookies: applied.state.bookies.values().cloned().collect(),
            now_ms: crate::now_ms(),
        }))
    }

    async fn register_gateway(
        &self,
        request: Request<RegisterGatewayRequest>,
    ) -> Result<Response<RegisterGatewayResponse>, Status> {
        let (outcome, lease_expires_ms) = self
            .propose_lease(Op::RegisterGateway(request.into_inner()))
            .await?;
        Ok(Response::new(RegisterGatewayResponse {
            outcome: Some(outcome),
            cluster_id: self.cluster_id().await,
            lease_expires_ms,
            heartbeat_interval_ms: self.node.config().heartbeat_interval_ms,
        }))
    }

    async fn gateway_heartbeat(
        &self,
        request: Request<GatewayHeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let (outcome, lease_expires_ms) = self
            .propose_lease(Op::GatewayHeartbeat(request.into_inner()))
            .await?;
        Ok(Response::new(HeartbeatResponse {
            outcome: Some(outcome),
            lease_expires_ms,
        }))
    }

    async fn register_bookie(
        &self,
        request: Request<RegisterBookieRequest>,
    ) -> Result<Response<RegisterBookieResponse>, Status> {
        let (outcome, lease_expires_ms) = self
            .propose_lease(Op::RegisterBookie(request.into_inner()))
            .await?;
        Ok(Response::new(RegisterBookieResponse {
            outcome: Some(outcome),
            cluster_id: self.cluster_id().await,
            lease_expires_ms,
            heartbeat_interval_ms: self.node.config().heartbeat_interval_ms,
        }))
    }

    async fn bookie_heartbeat(
        &self,
        request: Request<BookieHeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let (outcome, lease_expires_ms) = self
            .propose_lease(Op::BookieHeartbeat(request.into_inner()))
            .await?;
        Ok(Response::new(HeartbeatResponse {
            outcome: Some(outcome),
            lease_expires_ms,
        }))
    }

    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let reply = self.propose(Op::CreateTopic(request.into_inner())).await?;
        let (outcome, topic) = match reply {
            Reply::Topic { outcome, topic } => (outcome, topic),
            other => (other.outcome().clone(), None),
        };
        Ok(Response::new(CreateTopicResponse {
            outcome: Some(outcome),
            topic,
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let outcome = self
            .propose_outcome(Op::DeleteTopic(request.into_inner()))
            .await?;
        Ok(Response::new(DeleteTopicResponse {
            outcome: Some(outcome),
        }))
    }

    async fn create_partitions(
        &self,
        request: Request<CreatePartitionsRequest>,
    ) -> Result<Response<CreatePartitionsResponse>, Status> {
        let outcome = self
            .propose_outcome(Op::CreatePartitions(request.into_inner()))
            .await?;
        Ok(Response::new(CreatePartitionsResponse {
            outcome: Some(outcome),
        }))
    }

    async fn list_topics(
        &self,
        _request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let applied = self.node.read().await;
        Ok(Response::new(ListTopicsResponse {
            topics: applied.state.topics.values().cloned().collect(),
        }))
    }

    async fn list_partitions(
        &self,
        request: Request<ListPartitionsRequest>,
    ) -> Result<Response<ListPartitionsResponse>, Status> {
        let topic = request.into_inner().topic;
        let applied = self.node.read().await;
        let Some(info) = applied.state.topics.get(&topic) else {
            return Ok(Response::new(ListPartitionsResponse {
                outcome: Some(Outcome::error(
                    strata_proto::error_code::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("topic {topic:?} does not exist"),
                )),
                partitions: Vec::new(),
            }));
        };
        let partitions = (0..info.partition_count)
            .filter_map(|p| applied.state.partitions.get(&(topic.clone(), p)).cloned())
            .collect();
        Ok(Response::new(ListPartitionsResponse {
            outcome: Some(Outcome::ok()),
            partitions,
        }))
    }

    async fn open_segment(
        &self,
        _request: Request<OpenSegmentRequest>,
    ) -> Result<Response<OpenSegmentResponse>, Status> {
        Err(not_supported("OpenSegment"))
    }

    async fn seal_segment(
        &self,
        _request: Request<SealSegmentRequest>,
    ) -> Result<Response<SealSegmentResponse>, Status> {
        Err(not_supported("SealSegment"))
    }

    async fn mark_offloaded(
        &self,
        _request: Request<MarkOffloadedRequest>,
    ) -> Result<Response<MarkOffloadedResponse>, Status> {
        Err(not_supported("MarkOffloaded"))
    }

    async fn delete_segments(
        &self,
        _request: Request<DeleteSegmentsRequest>,
    ) -> Result<Response<DeleteSegmentsResponse>, Status> {
        Err(not_supported("DeleteSegments"))
    }

    async fn list_segments(
        &self,
        _request: Request<ListSegmentsRequest>,
    ) -> Result<Response<ListSegmentsResponse>, Status> {
        Err(not_supported("ListSegments"))
    }

    async fn commit_offsets(
        &self,
        _request: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        Err(not_supported("CommitOffsets"))
    }

    async fn fetch_offsets(
        &self,
        _request: Request<FetchOffsetsRequest>,
    ) -> Result<Response<FetchOffsetsResponse>, Status> {
        Err(not_supported("FetchOffsets"))
    }

    async fn allocate_producer_ids(
        &self,
        _request: Request<AllocateProducerIdsRequest>,
    ) -> Result<Response<AllocateProducerIdsResponse>, Status> {
        Err(not_supported("AllocateProducerIds"))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        _request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (snapshot, receiver) = self.node.subscribe().await;
        let state = WatchState {
            node: self.node.clone(),
            receiver,
            pending: Some(snapshot),
            shutdown: self.shutdown.clone(),
        };
        let stream = futures::stream::unfold(state, next_watch_event);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Where one watch stream is: its receiver, and a snapshot waiting to be sent.
struct WatchState {
    node: Arc<MetadataNode>,
    receiver: tokio::sync::broadcast::Receiver<WatchEvent>,
    pending: Option<WatchEvent>,
    shutdown: CancellationToken,
}

async fn next_watch_event(
    mut state: WatchState,
) -> Option<(Result<WatchEvent, Status>, WatchState)> {
    loop {
        if let Some(event) = state.pending.take() {
            return Some((Ok(event), state));
        }
        let received = tokio::select! {
            _ = state.shutdown.cancelled() => return None,
            received = state.receiver.recv() => received,
        };
        match received {
            Ok(event) => return Some((Ok(event), state)),
            Err(RecvError::Lagged(skipped)) => {
                // A slow watcher gets a fresh snapshot instead of an unbounded queue.
                tracing::debug!(skipped, "watcher lagged; sending a new snapshot");
                let (snapshot, receiver) = state.node.subscribe().await;
                state.receiver = receiver;
                state.pending = Some(snapshot);
            }
            Err(RecvError::Closed) => return None,
        }
    }
}

#[tonic::async_trait]
impl AdminService for MetadataGrpc {
    async fn cluster_status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        let config = self.node.config();
        let applied = self.node.read().await;
        let state = &applied.state;
        Ok(Response::new(ClusterStatusResponse {
            cluster_id: state.meta.cluster_id.clone(),
            raft_leader: config.node_id,
            raft_term: 0,
            last_applied: applied.revision,
            metadata_members: vec![MetadataMember {
                node_id: config.node_id,
                grpc_addr: config.listen_addr.to_string(),
                role: "voter".into(),
            }],
            gateways: state.gateways.values().cloned().collect(),
            bookies: state.bookies.values().cloned().collect(),
            topic_count: state.topics.len() as u32,
            partition_count: state.partitions.len() as u32,
            now_ms: crate::now_ms(),
        }))
    }
}

/// Serves the metadata and admin services on `listener` until `shutdown` is cancelled.
pub async fn serve(
    node: Arc<MetadataNode>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    use strata_proto::admin::admin_service_server::AdminServiceServer;
    use strata_proto::metadata::metadata_service_server::MetadataServiceServer;
    let grpc = MetadataGrpc::new(node, shutdown.clone());
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(MetadataServiceServer::new(grpc.clone()))
        .add_service(AdminServiceServer::new(grpc))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}
