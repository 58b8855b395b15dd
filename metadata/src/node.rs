//! One metadata node: its raft member, the applied state it serves reads from,
//! and the path of every write to the leader (followers forward).

use crate::config::{ConfigError, MetadataConfig};
use crate::raft::log_store::LogStore;
use crate::raft::network::{peer_channel, NetworkFactory};
use crate::raft::service::{ForwardError, LeaderReply, LeaderRequest};
use crate::raft::state_machine::{Applied, SharedState, StateMachine};
use crate::raft::wire::{decode, encode, Prost};
use crate::raft::MetadataRaft;
use crate::state::StateRules;
use crate::store::{MetadataStore, StoreError};
use base64::Engine;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, RaftMetrics};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use strata_proto::metadata::metadata_command::Op;
use strata_proto::metadata::{
    CommandReply, ControllerTick, InitCluster, MetadataCommand, WatchEvent,
};
use strata_proto::raft::raft_service_client::RaftServiceClient;
use strata_proto::raft::RaftPayload;
use tokio::sync::broadcast;

/// How long a write waits for a leader before giving up as unavailable.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// Errors of a metadata node that are not domain errors (those are Kafka codes in a reply).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory could not be created.
    #[error("cannot create metadata data dir {path}: {source}")]
    DataDir {
        /// The directory that could not be created.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Raft could not start.
    #[error("cannot start raft: {0}")]
    Start(String),
    /// No leader could be reached in time: the caller may retry.
    #[error("metadata group has no reachable leader: {0}")]
    Unavailable(String),
    /// The leader did not answer a forwarded request: it may or may not have
    /// been applied, so it is not retried.
    #[error(
        "the metadata leader did not answer; the request may or may not have been applied: {0}"
    )]
    Indeterminate(String),
    /// The leader refused a membership change.
    #[error("refused: {0}")]
    Refused(String),
    /// Raft has stopped on this node.
    #[error("metadata node stopped: {0}")]
    Stopped(String),
}

/// What raft says about the group, as seen by this node.
#[derive(Debug, Clone)]
pub struct RaftStatus {
    /// This node's id.
    pub node_id: u64,
    /// The current leader, if known.
    pub leader: Option<u64>,
    /// The current term.
    pub term: u64,
    /// Index of the last applied entry.
    pub last_applied: u64,
    /// Voters by id with their addresses.
    pub voters: BTreeMap<u64, String>,
    /// Learners by id with their addresses.
    pub learners: BTreeMap<u64, String>,
}

/// A metadata node: a raft member that applies commands and serves their results.
pub struct MetadataNode {
    config: MetadataConfig,
    rules: StateRules,
    raft: MetadataRaft,
    shared: Arc<SharedState>,
}

impl MetadataNode {
    /// Opens the node's store, starts its raft member reachable at
    /// `advertised_addr`, and forms a new group if this node is new and is
    /// configured to (a single node, or a `peers` list).
    pub async fn open(
        config: MetadataConfig,
        advertised_addr: String,
    ) -> Result<Arc<Self>, NodeError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let db = crate::store::open_db(&config.data_dir)?;
        let store = Arc::new(MetadataStore::new(db.clone()));
        let rules = StateRules {
            lease_ms: config.lease_ms,
            default_partitions: config.default_partitions,
            coordinator_slots: config.coordinator_slots,
        };
        let state_machine = StateMachine::open(store, rules.clone(), config.watch_buffer)?;
        let shared = state_machine.shared();
        let log_store = LogStore::new(db);
        let pristine = log_store
            .is_pristine()
            .map_err(|e| NodeError::Start(e.to_string()))?;
        let raft_config = openraft::Config {
            cluster_name: "strata-metadata".into(),
            heartbeat_interval: config.raft_heartbeat_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_after_entries),
            max_in_snapshot_log_to_keep: config.snapshot_after_entries / 2,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Start(e.to_string()))?;
        let raft = MetadataRaft::new(
            config.node_id,
            Arc::new(raft_config),
            NetworkFactory,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| NodeError::Start(e.to_string()))?;
        if pristine && !config.join {
            let mut members: BTreeMap<u64, BasicNode> = config
                .peer_map()?
                .into_iter()
                .map(|(id, addr)| (id, BasicNode { addr }))
                .collect();
            if members.is_empty() {
                members.insert(
                    config.node_id,
                    BasicNode {
                        addr: advertised_addr,
                    },
                );
            }
            tracing::info!(voters = ?members.keys().collect::<Vec<_>>(), "forming a new metadata group");
            if let Err(error) = raft.initialize(members).await {
                // Another node of the same list may have initialised first.
                tracing::info!(%error, "metadata group already formed");
            }
        }
        Ok(Arc::new(Self {
            config,
            rules,
            raft,
            shared,
        }))
    }

    /// The node's configuration.
    pub fn config(&self) -> &MetadataConfig {
        &self.config
    }

    /// This node's raft member.
    pub fn raft(&self) -> &MetadataRaft {
        &self.raft
    }

    /// Reads the applied state (possibly behind the leader; see [`Self::read_linearizable`]).
    pub async fn read(&self) -> tokio::sync::RwLockReadGuard<'_, Applied> {
        self.shared.applied.read().await
    }

    /// Reads the applied state after making sure it holds every write committed
    /// before this call: a linearizable read, served only on the leader.
    pub async fn read_linearizable(
        &self,
    ) -> Result<tokio::sync::RwLockReadGuard<'_, Applied>, NodeError> {
        self.raft
            .ensure_linearizable()
            .await
            .map_err(|e| NodeError::Unavailable(e.to_string()))?;
        Ok(self.read().await)
    }

    /// A snapshot event and a receiver of every later change.
    pub async fn subscribe(&self) -> (WatchEvent, broadcast::Receiver<WatchEvent>) {
        self.shared.subscribe().await
    }

    /// Proposes a command to the group and returns the state machine's reply,
    /// forwarding to the leader when this node is not it.
    pub async fn propose(&self, op: Op) -> Result<CommandReply, NodeError> {
        let command = self.command(crate::now_ms(), op);
        match self.submit(LeaderRequest::Write(Prost(command))).await? {
            LeaderReply::Written(reply) => Ok(reply.0),
            LeaderReply::MembershipChanged => Err(NodeError::Stopped(
                "leader answered a write with a membership reply".into(),
            )),
        }
    }

    /// A command stamped with the time and this node's rules, so that every
    /// replica applies it the same way.
    fn command(&self, now_ms: u64, op: Op) -> MetadataCommand {
        MetadataCommand {
            now_ms,
            rules: Some((&self.rules).into()),
            op: Some(op),
        }
    }

    /// Adds a node as a learner of the group; returns once it has caught up.
    pub async fn add_learner(&self, node_id: u64, addr: String) -> Result<(), NodeError> {
        self.submit(LeaderRequest::AddLearner { node_id, addr })
            .await
            .map(|_| ())
    }

    /// Makes a learner a voter.
    pub async fn promote(&self, node_id: u64) -> Result<(), NodeError> {
        self.submit(LeaderRequest::Promote { node_id })
            .await
            .map(|_| ())
    }

    /// Removes a node from the group.
    pub async fn remove(&self, node_id: u64) -> Result<(), NodeError> {
        self.submit(LeaderRequest::Remove { node_id })
            .await
            .map(|_| ())
    }

    /// Runs `request` on the leader: here if this node leads, else forwarded,
    /// retrying through elections until [`WRITE_DEADLINE`].
    async fn submit(&self, request: LeaderRequest) -> Result<LeaderReply, NodeError> {
        let deadline = tokio::time::Instant::now() + WRITE_DEADLINE;
        loop {
            let leader = self.raft.metrics().borrow().current_leader;
            let attempt = match leader {
                Some(id) if id == self.config.node_id => self.lead(request.clone()).await,
                Some(id) => self.forward(id, &request).await,
                None => Err(ForwardError::NotLeader),
            };
            match attempt {
                Ok(reply) => return Ok(reply),
                Err(ForwardError::Refused(message)) => return Err(NodeError::Refused(message)),
                Err(ForwardError::Indeterminate(message)) => {
                    return Err(NodeError::Indeterminate(message))
                }
                Err(ForwardError::Fatal(message)) if leader == Some(self.config.node_id) => {
                    return Err(NodeError::Stopped(message))
                }
                Err(error) if tokio::time::Instant::now() >= deadline => {
                    return Err(NodeError::Unavailable(error.to_string()))
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `request` to the leader `leader_id` over the raft transport.
    async fn forward(
        &self,
        leader_id: u64,
        request: &LeaderRequest,
    ) -> Result<LeaderReply, ForwardError> {
        let addr = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            metrics
                .membership_config
                .membership()
                .get_node(&leader_id)
                .map(|node| node.addr.clone())
        };
        let Some(addr) = addr else {
            return Err(ForwardError::NotLeader);
        };
        let channel = peer_channel(&addr).map_err(|e| ForwardError::Fatal(e.to_string()))?;
        let data = encode(request).map_err(|e| ForwardError::Fatal(e.to_string()))?;
        let mut call = tonic::Request::new(RaftPayload { data: data.into() });
        call.set_timeout(WRITE_DEADLINE);
        let reply = RaftServiceClient::new(channel)
            .forward(call)
            .await
            .map_err(|status| {
                tracing::debug!(%status, leader_id, "forwarding to the metadata leader failed");
                if status.code() == tonic::Code::Unavailable {
                    // Not delivered: the leader is gone or unreachable.
                    ForwardError::NotLeader
                } else {
                    // Perhaps delivered and applied: trying again could apply it twice.
                    ForwardError::Indeterminate(status.message().to_string())
                }
            })?;
        decode::<Result<LeaderReply, ForwardError>>(&reply.into_inner().data)
            .map_err(|e| ForwardError::Fatal(e.to_string()))?
    }

    /// Carries out `request` as the leader; [`ForwardError::NotLeader`] if this
    /// node is not the leader.
    pub async fn lead(&self, request: LeaderRequest) -> Result<LeaderReply, ForwardError> {
        let result = match request {
            LeaderRequest::Write(command) => {
                return self
                    .raft
                    .client_write(command)
                    .await
                    .map(|response| LeaderReply::Written(Box::new(response.data)))
                    .map_err(leader_error)
            }
            LeaderRequest::AddLearner { node_id, addr } => {
                self.raft
                    .add_learner(node_id, BasicNode { addr }, true)
                    .await
            }
            LeaderRequest::Promote { node_id } => {
                let status = self.status();
                if !status.learners.contains_key(&node_id) && !status.voters.contains_key(&node_id)
                {
                    return Err(ForwardError::Refused(format!(
                        "node {node_id} is not a member; add it as a learner first"
                    )));
                }
                let mut voters: BTreeSet<u64> = status.voters.keys().copied().collect();
                voters.insert(node_id);
                self.raft.change_membership(voters, true).await
            }
            LeaderRequest::Remove { node_id } => {
                let status = self.status();
                let ids = BTreeSet::from([node_id]);
                if status.voters.contains_key(&node_id) {
                    if status.voters.len() == 1 {
                        return Err(ForwardError::Refused(
                            "cannot remove the last voter of the group".into(),
                        ));
                    }
                    self.raft
                        .change_membership(ChangeMembers::RemoveVoters(ids), false)
                        .await
                } else if status.learners.contains_key(&node_id) {
                    self.raft
                        .change_membership(ChangeMembers::RemoveNodes(ids), false)
                        .await
                } else {
                    return Err(ForwardError::Refused(format!(
                        "node {node_id} is not a member"
                    )));
                }
            }
        };
        result
            .map(|_| LeaderReply::MembershipChanged)
            .map_err(leader_error)
    }

    /// The group as this node sees it.
    pub fn status(&self) -> RaftStatus {
        let metrics: RaftMetrics<u64, BasicNode> = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voter_ids: BTreeSet<u64> = membership.voter_ids().collect();
        let mut voters = BTreeMap::new();
        let mut learners = BTreeMap::new();
        for (id, node) in membership.nodes() {
            if voter_ids.contains(id) {
                voters.insert(*id, node.addr.clone());
            } else {
                learners.insert(*id, node.addr.clone());
            }
        }
        RaftStatus {
            node_id: self.config.node_id,
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_applied: metrics.last_applied.map(|id| id.index).unwrap_or(0),
            voters,
            learners,
        }
    }

    /// Waits until the group has a cluster id, so that registrations get one.
    pub async fn wait_for_cluster_id(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if !self.read().await.state.meta.cluster_id.is_empty() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The controller: while this node leads, gives a new cluster its id,
    /// expires lapsed leases and keeps ownership assigned and balanced.
    pub async fn run_controller(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let interval = Duration::from_millis(self.config.controller_interval_ms.max(10));
        let mut metrics = self.raft.metrics();
        loop {
            // Wake on the interval, or at once when raft's view changes (such as
            // this node becoming leader).
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
                changed = metrics.changed() => if changed.is_err() { return },
            }
            if self.raft.metrics().borrow().current_leader != Some(self.config.node_id) {
                continue;
            }
            let now_ms = crate::now_ms();
            let op = {
                let applied = self.read().await;
                if applied.state.meta.cluster_id.is_empty() {
                    let cluster_id = new_cluster_id();
                    tracing::info!(%cluster_id, "initialising a new cluster");
                    Some(Op::InitCluster(InitCluster { cluster_id }))
                } else if applied.state.controller_work_pending(now_ms) {
                    Some(Op::ControllerTick(ControllerTick {}))
                } else {
                    None
                }
            };
            let Some(op) = op else { continue };
            let command = self.command(now_ms, op);
            if let Err(error) = self.lead(LeaderRequest::Write(Prost(command))).await {
                tracing::debug!(%error, "controller command not applied");
            }
        }
    }

    /// Stops this node's raft member.
    pub async fn shutdown(&self) {
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft did not stop cleanly");
        }
    }
}

/// A raft write error as seen by the node that forwarded the request.
fn leader_error(error: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> ForwardError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ForwardError::NotLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ForwardError::Refused(e.to_string())
        }
        RaftError::Fatal(fatal) => ForwardError::Fatal(fatal.to_string()),
    }
}

/// A new cluster id in Kafka's form: a random UUID in URL-safe base64 without padding.
fn new_cluster_id() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
}
