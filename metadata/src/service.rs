//! The gRPC face of a metadata node: `MetadataService` and `AdminService`.

use crate::node::{MetadataNode, NodeError, RaftStatus};
use crate::replication::under_replicated;
use crate::state::outcome;
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use strata_proto::admin::admin_service_server::AdminService;
use strata_proto::admin::{
    AddMetadataLearnerRequest, ClusterStatusRequest, ClusterStatusResponse, MembershipResponse,
    MetadataMember, PromoteMetadataNodeRequest, RemoveMetadataNodeRequest,
};
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

    async fn propose(&self, op: Op) -> Result<CommandReply, Status> {
        self.node.propose(op).await.map_err(node_status)
    }

    async fn propose_lease(&self, op: Op) -> Result<(Outcome, u64), Status> {
        let reply = self.propose(op).await?;
        Ok((outcome(&reply).clone(), reply.lease_expires_ms))
    }

    async fn propose_outcome(&self, op: Op) -> Result<Outcome, Status> {
        Ok(outcome(&self.propose(op).await?).clone())
    }

    async fn cluster_id(&self) -> String {
        self.node.read().await.state.meta.cluster_id.clone()
    }
}

fn node_status(error: NodeError) -> Status {
    match error {
        // No leader right now: the caller may retry, here or on another node.
        NodeError::Unavailable(_) | NodeError::Stopped(_) => {
            tracing::debug!(%error, "metadata command not applied");
            Status::unavailable(error.to_string())
        }
        NodeError::Refused(message) => Status::failed_precondition(message),
        // Not `Unavailable`: clients must not retry what may have been applied.
        NodeError::Indeterminate(_) => Status::deadline_exceeded(error.to_string()),
        error => {
            tracing::error!(%error, "metadata command failed");
            Status::internal(error.to_string())
        }
    }
}

/// What a group that never committed `partition` gets back: offset -1, as Kafka answers.
fn no_offset(group: &str, partition: &TopicPartition) -> CommittedOffset {
    CommittedOffset {
        group: group.to_string(),
        topic: partition.topic.clone(),
        partition: partition.partition,
        offset: -1,
        leader_epoch: -1,
        metadata: String::new(),
        commit_timestamp_ms: 0,
    }
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
        Ok(Response::new(CreateTopicResponse {
            outcome: Some(outcome(&reply).clone()),
            topic: reply.topic,
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

    async fn alter_topic_configs(
        &self,
        request: Request<AlterTopicConfigsRequest>,
    ) -> Result<Response<AlterTopicConfigsResponse>, Status> {
        let reply = self
            .propose(Op::AlterTopicConfigs(request.into_inner()))
            .await?;
        Ok(Response::new(AlterTopicConfigsResponse {
            outcome: Some(outcome(&reply).clone()),
            topic: reply.topic,
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
        request: Request<OpenSegmentRequest>,
    ) -> Result<Response<OpenSegmentResponse>, Status> {
        let reply = self.propose(Op::OpenSegment(request.into_inner())).await?;
        Ok(Response::new(OpenSegmentResponse {
            outcome: Some(outcome(&reply).clone()),
            segment: reply.segment,
        }))
    }

    async fn seal_segment(
        &self,
        request: Request<SealSegmentRequest>,
    ) -> Result<Response<SealSegmentResponse>, Status> {
        let outcome = self
            .propose_outcome(Op::SealSegment(request.into_inner()))
            .await?;
        Ok(Response::new(SealSegmentResponse {
            outcome: Some(outcome),
        }))
    }

    async fn mark_offloaded(
        &self,
        request: Request<MarkOffloadedRequest>,
    ) -> Result<Response<MarkOffloadedResponse>, Status> {
        let outcome = self
            .propose_outcome(Op::MarkOffloaded(request.into_inner()))
            .await?;
        Ok(Response::new(MarkOffloadedResponse {
            outcome: Some(outcome),
        }))
    }

    async fn delete_segments(
        &self,
        request: Request<DeleteSegmentsRequest>,
    ) -> Result<Response<DeleteSegmentsResponse>, Status> {
        let outcome = self
            .propose_outcome(Op::DeleteSegments(request.into_inner()))
            .await?;
        Ok(Response::new(DeleteSegmentsResponse {
            outcome: Some(outcome),
        }))
    }

    async fn drain_gateway(
        &self,
        request: Request<DrainGatewayRequest>,
    ) -> Result<Response<DrainGatewayResponse>, Status> {
        let outcome = self
            .propose_outcome(Op::DrainGateway(request.into_inner()))
            .await?;
        Ok(Response::new(DrainGatewayResponse {
            outcome: Some(outcome),
        }))
    }

    async fn advance_log_start(
        &self,
        request: Request<AdvanceLogStartRequest>,
    ) -> Result<Response<AdvanceLogStartResponse>, Status> {
        let outcome = self
            .propose_outcome(Op::AdvanceLogStart(request.into_inner()))
            .await?;
        Ok(Response::new(AdvanceLogStartResponse {
            outcome: Some(outcome),
        }))
    }

    async fn list_segments(
        &self,
        request: Request<ListSegmentsRequest>,
    ) -> Result<Response<ListSegmentsResponse>, Status> {
        let ListSegmentsRequest { topic, partition } = request.into_inner();
        let applied = self.node.read().await;
        let state = &applied.state;
        if state.partition(&topic, partition).is_none() {
            return Ok(Response::new(ListSegmentsResponse {
                outcome: Some(Outcome::error(
                    strata_proto::error_code::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("partition {topic}-{partition} does not exist"),
                )),
                segments: Vec::new(),
            }));
        }
        Ok(Response::new(ListSegmentsResponse {
            outcome: Some(Outcome::ok()),
            segments: state.segments.live(&topic, partition).cloned().collect(),
        }))
    }

    async fn replace_segment_replica(
        &self,
        request: Request<ReplaceSegmentReplicaRequest>,
    ) -> Result<Response<ReplaceSegmentReplicaResponse>, Status> {
        let reply = self
            .propose(Op::ReplaceSegmentReplica(request.into_inner()))
            .await?;
        Ok(Response::new(ReplaceSegmentReplicaResponse {
            outcome: Some(outcome(&reply).clone()),
            segment: reply.segment,
        }))
    }

    async fn list_under_replicated_segments(
        &self,
        request: Request<ListUnderReplicatedSegmentsRequest>,
    ) -> Result<Response<ListUnderReplicatedSegmentsResponse>, Status> {
        let ListUnderReplicatedSegmentsRequest { dead_for_ms, limit } = request.into_inner();
        let now_ms = crate::now_ms();
        let applied = self.node.read().await;
        let state = &applied.state;
        let mut segments = under_replicated(&state.segments, &state.bookies, now_ms, dead_for_ms);
        let total = segments.len() as u64;
        if limit > 0 {
            segments.truncate(limit as usize);
        }
        Ok(Response::new(ListUnderReplicatedSegmentsResponse {
            segments,
            now_ms,
            total,
        }))
    }

    async fn commit_offsets(
        &self,
        request: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        let outcome = self
            .propose_outcome(Op::CommitOffsets(request.into_inner()))
            .await?;
        Ok(Response::new(CommitOffsetsResponse {
            outcome: Some(outcome),
        }))
    }

    async fn fetch_offsets(
        &self,
        request: Request<FetchOffsetsRequest>,
    ) -> Result<Response<FetchOffsetsResponse>, Status> {
        let FetchOffsetsRequest { group, partitions } = request.into_inner();
        let applied = self.node.read_linearizable().await.map_err(node_status)?;
        let state = &applied.state;
        let offsets = if partitions.is_empty() {
            state.group_offsets(&group).cloned().collect()
        } else {
            partitions
                .iter()
                .map(|p| {
                    state
                        .committed_offset(&group, &p.topic, p.partition)
                        .cloned()
                        .unwrap_or_else(|| no_offset(&group, p))
                })
                .collect()
        };
        Ok(Response::new(FetchOffsetsResponse { offsets }))
    }

    async fn delete_offsets(
        &self,
        request: Request<DeleteOffsetsRequest>,
    ) -> Result<Response<DeleteOffsetsResponse>, Status> {
        let outcome = self
            .propose_outcome(Op::DeleteOffsets(request.into_inner()))
            .await?;
        Ok(Response::new(DeleteOffsetsResponse {
            outcome: Some(outcome),
        }))
    }

    async fn list_offset_groups(
        &self,
        request: Request<ListOffsetGroupsRequest>,
    ) -> Result<Response<ListOffsetGroupsResponse>, Status> {
        let ListOffsetGroupsRequest { slots } = request.into_inner();
        let applied = self.node.read_linearizable().await.map_err(node_status)?;
        Ok(Response::new(ListOffsetGroupsResponse {
            groups: applied.state.offset_groups(&slots),
        }))
    }

    async fn allocate_producer_ids(
        &self,
        request: Request<AllocateProducerIdsRequest>,
    ) -> Result<Response<AllocateProducerIdsResponse>, Status> {
        let reply = self
            .propose(Op::AllocateProducerIds(request.into_inner()))
            .await?;
        Ok(Response::new(AllocateProducerIdsResponse {
            outcome: Some(outcome(&reply).clone()),
            first_producer_id: reply.first_producer_id,
            count: reply.producer_id_count,
        }))
    }

    async fn deregister_gateway(
        &self,
        request: Request<DeregisterGatewayRequest>,
    ) -> Result<Response<DeregisterGatewayResponse>, Status> {
        let outcome = self
            .propose_outcome(Op::DeregisterGateway(request.into_inner()))
            .await?;
        Ok(Response::new(DeregisterGatewayResponse {
            outcome: Some(outcome),
        }))
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
        let raft = self.node.status();
        let now_ms = crate::now_ms();
        let applied = self.node.read().await;
        let state = &applied.state;
        let under_replicated = under_replicated(&state.segments, &state.bookies, now_ms, 0);
        Ok(Response::new(ClusterStatusResponse {
            cluster_id: state.meta.cluster_id.clone(),
            raft_leader: raft.leader.unwrap_or(0),
            raft_term: raft.term,
            last_applied: applied.revision,
            metadata_members: members(&raft),
            gateways: state.gateways.values().cloned().collect(),
            bookies: state.bookies.values().cloned().collect(),
            topic_count: state.topics.len() as u32,
            partition_count: state.partitions.len() as u32,
            now_ms,
            responding_node: raft.node_id,
            under_replicated_segments: u32::try_from(under_replicated.len()).unwrap_or(u32::MAX),
        }))
    }

    async fn add_metadata_learner(
        &self,
        request: Request<AddMetadataLearnerRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let request = request.into_inner();
        if request.node_id == 0 || request.grpc_addr.is_empty() {
            return Err(Status::invalid_argument(
                "a learner needs a node id of at least 1 and a gRPC address",
            ));
        }
        self.node
            .add_learner(request.node_id, request.grpc_addr)
            .await
            .map_err(node_status)?;
        Ok(self.membership())
    }

    async fn promote_metadata_node(
        &self,
        request: Request<PromoteMetadataNodeRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        self.node
            .promote(request.into_inner().node_id)
            .await
            .map_err(node_status)?;
        Ok(self.membership())
    }

    async fn remove_metadata_node(
        &self,
        request: Request<RemoveMetadataNodeRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        self.node
            .remove(request.into_inner().node_id)
            .await
            .map_err(node_status)?;
        Ok(self.membership())
    }
}

impl MetadataGrpc {
    fn membership(&self) -> Response<MembershipResponse> {
        Response::new(MembershipResponse {
            metadata_members: members(&self.node.status()),
        })
    }
}

/// The metadata group's members as the admin API lists them.
fn members(raft: &RaftStatus) -> Vec<MetadataMember> {
    let member = |(id, addr): (&u64, &String), role: &str| MetadataMember {
        node_id: *id,
        grpc_addr: addr.clone(),
        role: role.into(),
    };
    raft.voters
        .iter()
        .map(|m| member(m, "voter"))
        .chain(raft.learners.iter().map(|m| member(m, "learner")))
        .collect()
}

/// Serves the metadata, admin and raft services on `listener` until `shutdown` is cancelled.
pub async fn serve(
    node: Arc<MetadataNode>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    use strata_proto::admin::admin_service_server::AdminServiceServer;
    use strata_proto::metadata::metadata_service_server::MetadataServiceServer;
    use strata_proto::raft::raft_service_server::RaftServiceServer;
    let raft = RaftServiceServer::new(crate::raft::service::RaftGrpc::new(node.clone()))
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let grpc = MetadataGrpc::new(node, shutdown.clone());
    // Small requests and replies must not wait on delayed ACKs.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = tonic::transport::Server::builder()
        .add_service(MetadataServiceServer::new(grpc.clone()))
        .add_service(AdminServiceServer::new(grpc))
        .add_service(raft)
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    strata_proto::serving::serve_until_deadline(
        server,
        shutdown.cancelled_owned(),
        strata_proto::serving::SHUTDOWN_GRACE,
    )
    .await
}
