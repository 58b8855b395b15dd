//! The server half of the raft transport, and the leader's end of forwarded
//! requests.

use super::wire::{decode, encode, Prost};
use super::MetadataRaft;
use crate::node::MetadataNode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use strata_proto::metadata::{CommandReply, MetadataCommand};
use strata_proto::raft::raft_service_server::RaftService;
use strata_proto::raft::RaftPayload;
use tonic::{Request, Response, Status};

/// A request only the leader can carry out, sent to it by a follower.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderRequest {
    /// Propose a command.
    Write(Prost<MetadataCommand>),
    /// Add a node as a learner: it receives the log but does not vote.
    AddLearner {
        /// The new node's id.
        node_id: u64,
        /// Its gRPC address.
        addr: String,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner's id.
        node_id: u64,
    },
    /// Remove a node from the group (voter or learner).
    Remove {
        /// The node's id.
        node_id: u64,
    },
}

/// What the leader answers to a [`LeaderRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderReply {
    /// The reply of the state machine to a written command.
    Written(Box<Prost<CommandReply>>),
    /// A membership change was committed.
    MembershipChanged,
}

/// Why the leader could not carry out a [`LeaderRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// The receiver is not (or no longer) the leader; the sender should look again.
    #[error("not the metadata leader")]
    NotLeader,
    /// The leader may or may not have carried out the request; the sender must not retry it.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// The request was refused, with the reason.
    #[error("{0}")]
    Refused(String),
    /// Raft stopped on the leader.
    #[error("metadata node is shutting down: {0}")]
    Fatal(String),
}

/// Serves the raft RPCs of one node.
pub struct RaftGrpc {
    node: Arc<MetadataNode>,
}

impl RaftGrpc {
    /// Serves `node`'s raft.
    pub fn new(node: Arc<MetadataNode>) -> Self {
        Self { node }
    }

    fn raft(&self) -> &MetadataRaft {
        self.node.raft()
    }
}

fn bad_payload(error: bincode::Error) -> Status {
    Status::invalid_argument(format!("undecodable raft payload: {error}"))
}

fn payload<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let data =
        encode(value).map_err(|e| Status::internal(format!("cannot encode raft reply: {e}")))?;
    Ok(Response::new(RaftPayload { data: data.into() }))
}

#[tonic::async_trait]
impl RaftService for RaftGrpc {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&request.into_inner().data).map_err(bad_payload)?;
        payload(&self.raft().append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&request.into_inner().data).map_err(bad_payload)?;
        payload(&self.raft().vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&request.into_inner().data).map_err(bad_payload)?;
        payload(&self.raft().install_snapshot(rpc).await)
    }

    async fn forward(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let leader_request: LeaderRequest =
            decode(&request.into_inner().data).map_err(bad_payload)?;
        payload(&self.node.lead(leader_request).await)
    }
}
