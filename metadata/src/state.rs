//! The cluster state machine: the in-memory cluster state and the rules that
//! decide whether each [`MetadataCommand`] may change it.
//!
//! Applying a command is deterministic (time comes from the command), returns the
//! reply for the proposer and the list of [`Change`]s that the store persists and
//! the watch stream publishes.

use crate::topic_rules::{check_topic_config, check_topic_name};
use std::collections::BTreeMap;
use strata_proto::error_code;
use strata_proto::metadata::metadata_command::Op;
use strata_proto::metadata::{
    BookieInfo, ClusterMeta, ClusterSnapshot, GatewayInfo, MetadataCommand, Outcome, PartitionInfo,
    TopicInfo,
};

/// Most partitions one topic may have.
pub const MAX_PARTITIONS_PER_TOPIC: u32 = 100_000;

/// Rules of the state machine that come from configuration, identical on every replica.
#[derive(Debug, Clone)]
pub struct StateRules {
    /// How long a gateway or bookie stays live after its last heartbeat.
    pub lease_ms: u64,
    /// Partition count of a topic created without one.
    pub default_partitions: u32,
}

/// One entity changed by a command, to persist and to publish.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Cluster identity and counters.
    Meta(ClusterMeta),
    /// A gateway registered or renewed its lease.
    Gateway(GatewayInfo),
    /// A bookie registered or renewed its lease.
    Bookie(BookieInfo),
    /// A topic was created or changed.
    Topic(TopicInfo),
    /// A topic and all its partitions were deleted.
    TopicDeleted {
        /// Name of the deleted topic.
        name: String,
        /// How many partitions it had, so their records can be removed.
        partition_count: u32,
    },
    /// A partition was created or changed owner.
    Partition(PartitionInfo),
}

/// What the proposer of a command gets back.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Success or a Kafka error code.
    Outcome(Outcome),
    /// A registration or heartbeat: the new lease expiry.
    Lease {
        /// Success or why the lease was refused.
        outcome: Outcome,
        /// Wall-clock milliseconds after which the node counts as dead.
        lease_expires_ms: u64,
    },
    /// A created topic.
    Topic {
        /// Success or why the topic was refused.
        outcome: Outcome,
        /// The topic as created (or as it would be, for `validate_only`).
        topic: Option<TopicInfo>,
    },
}

impl Reply {
    /// The outcome inside any reply.
    pub fn outcome(&self) -> &Outcome {
        match self {
            Reply::Outcome(outcome) => outcome,
            Reply::Lease { outcome, .. } => outcome,
            Reply::Topic { outcome, .. } => outcome,
        }
    }
}

/// The whole cluster state, as held in memory by every metadata node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterState {
    /// Cluster id and counters.
    pub meta: ClusterMeta,
    /// Registered gateways by node id.
    pub gateways: BTreeMap<i32, GatewayInfo>,
    /// Registered bookies by node id.
    pub bookies: BTreeMap<i32, BookieInfo>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicInfo>,
    /// Partitions by (topic, partition index).
    pub partitions: BTreeMap<(String, u32), PartitionInfo>,
}

impl ClusterState {
    /// Applies one command and returns the reply plus what changed.
    pub fn apply(&mut self, rules: &StateRules, command: &MetadataCommand) -> (Reply, Vec<Change>) {
        let now_ms = command.now_ms;
        let Some(op) = &command.op else {
            let reply = Outcome::error(error_code::INVALID_REQUEST, "empty metadata command");
            return (Reply::Outcome(reply), Vec::new());
        };
        match op {
            Op::InitCluster(init) => self.init_cluster(&init.cluster_id),
            Op::RegisterGateway(req) => {
                let gateway = GatewayInfo {
                    node_id: req.node_id,
                    kafka_host: req.kafka_host.clone(),
                    kafka_port: req.kafka_port,
                    zone: req.zone.clone(),
                    lease_expires_ms: now_ms + rules.lease_ms,
                };
                self.register_gateway(gateway)
            }
            Op::GatewayHeartbeat(req) => self.renew_gateway(req.node_id, now_ms + rules.lease_ms),
            Op::RegisterBookie(req) => {
                let bookie = BookieInfo {
                    node_id: req.node_id,
                    grpc_addr: req.grpc_addr.clone(),
                    zone: req.zone.clone(),
                    free_bytes: req.free_bytes,
                    lease_expires_ms: now_ms + rules.lease_ms,
                };
                self.register_bookie(bookie)
            }
            Op::BookieHeartbeat(req) => {
                self.renew_bookie(req.node_id, req.free_bytes, now_ms + rules.lease_ms)
            }
            Op::CreateTopic(req) => self.create_topic(rules, req, now_ms),
            Op::DeleteTopic(req) => self.delete_topic(&req.name),
            Op::CreatePartitions(req) => {
                self.create_partitions(&req.topic, req.new_total, req.validate_only)
            }
        }
    }

    /// A snapshot of everything, as the first event of a watch stream.
    pub fn snapshot(&self) -> ClusterSnapshot {
        ClusterSnapshot {
            cluster_id: self.meta.cluster_id.clone(),
            gateways: self.gateways.values().cloned().collect(),
            bookies: self.bookies.values().cloned().collect(),
            topics: self.topics.values().cloned().collect(),
            partitions: self.partitions.values().cloned().collect(),
            segments: Vec::new(),
        }
    }

    /// Gateways whose lease has not lapsed at `now_ms`.
    pub fn live_gateways(&self, now_ms: u64) -> impl Iterator<Item = &GatewayInfo> {
        self.gateways
            .values()
            .filter(move |g| g.lease_expires_ms > now_ms)
    }

    fn init_cluster(&mut self, cluster_id: &str) -> (Reply, Vec<Change>) {
        if !self.meta.cluster_id.is_empty() {
            return (Reply::Outcome(Outcome::ok()), Vec::new());
        }
        if cluster_id.is_empty() {
            let outcome = Outcome::error(error_code::INVALID_REQUEST, "cluster id is empty");
            return (Reply::Outcome(outcome), Vec::new());
        }
        self.meta.cluster_id = cluster_id.to_string();
        if self.meta.next_segment_id == 0 {
            self.meta.next_segment_id = 1;
        }
        (
            Reply::Outcome(Outcome::ok()),
            vec![Change::Meta(self.meta.clone())],
        )
    }

    fn register_gateway(&mut self, gateway: GatewayInfo) -> (Reply, Vec<Change>) {
        if gateway.node_id < 0 {
            return lease_refused(error_code::INVALID_REQUEST, "gateway node id must be >= 0");
        }
        if gateway.kafka_host.is_empty() || gateway.kafka_port == 0 || gateway.kafka_port > 65535 {
            return lease_refused(
                error_code::INVALID_REQUEST,
                "gateway must advertise a Kafka host and port",
            );
        }
        let lease_expires_ms = gateway.lease_expires_ms;
        self.gateways.insert(gateway.node_id, gateway.clone());
        let reply = Reply::Lease {
            outcome: Outcome::ok(),
            lease_expires_ms,
        };
        (reply, vec![Change::Gateway(gateway)])
    }

    fn renew_gateway(&mut self, node_id: i32, lease_expires_ms: u64) -> (Reply, Vec<Change>) {
        let Some(gateway) = self.gateways.get_mut(&node_id) else {
            return lease_refused(
                error_code::INVALID_REQUEST,
                format!("gateway {node_id} is not registered"),
            );
        };
        gateway.lease_expires_ms = gateway.lease_expires_ms.max(lease_expires_ms);
        let reply = Reply::Lease {
            outcome: Outcome::ok(),
            lease_expires_ms: gateway.lease_expires_ms,
        };
        (reply, vec![Change::Gateway(gateway.clone())])
    }

    fn register_bookie(&mut self, bookie: BookieInfo) -> (Reply, Vec<Change>) {
        if bookie.node_id < 0 {
            return lease_refused(error_code::INVALID_REQUEST, "bookie node id must be >= 0");
        }
        if bookie.grpc_addr.is_empty() {
            return lease_refused(
                error_code::INVALID_REQUEST,
                "bookie must advertise an address",
            );
        }
        let lease_expires_ms = bookie.lease_expires_ms;
        self.bookies.insert(bookie.node_id, bookie.clone());
        let reply = Reply::Lease {
            outcome: Outcome::ok(),
            lease_expires_ms,
        };
        (reply, vec![Change::Bookie(bookie)])
    }

    fn renew_bookie(
        &mut self,
        node_id: i32,
        free_bytes: u64,
        lease_expires_ms: u64,
    ) -> (Reply, Vec<Change>) {
        let Some(bookie) = self.bookies.get_mut(&node_id) else {
            return lease_refused(
                error_code::INVALID_REQUEST,
                format!("bookie {node_id} is not registered"),
            );
        };
        bookie.lease_expires_ms = bookie.lease_expires_ms.max(lease_expires_ms);
        bookie.free_bytes = free_bytes;
        let reply = Reply::Lease {
            outcome: Outcome::ok(),
            lease_expires_ms: bookie.lease_expires_ms,
        };
        (reply, vec![Change::Bookie(bookie.clone())])
    }

    fn create_topic(
        &mut self,
        rules: &StateRules,
        req: &strata_proto::metadata::CreateTopicRequest,
        now_ms: u64,
    ) -> (Reply, Vec<Change>) {
        let refuse = |outcome: Outcome| {
            (
                Reply::Topic {
                    outcome,
                    topic: None,
                },
                Vec::new(),
            )
        };
        if let Err(outcome) = check_topic_name(&req.name) {
            return refuse(outcome);
        }
        if self.topics.contains_key(&req.name) {
            return refuse(Outcome::error(
                error_code::TOPIC_ALREADY_EXISTS,
                format!("topic {:?} already exists", req.name),
            ));
        }
        let partition_count = match req.partition_count {
            -1 => rules.default_partitions,
            n if n >= 1 && n as u32 <= MAX_PARTITIONS_PER_TOPIC => n as u32,
            n => {
                return refuse(Outcome::error(
                    error_code::INVALID_PARTITIONS,
                    format!(
                        "partition count {n} is not in 1..={MAX_PARTITIONS_PER_TOPIC} (or -1 for the default)"
                    ),
                ))
            }
        };
        for (key, value) in &req.configs {
            if let Err(outcome) = check_topic_config(key, value) {
                return refuse(outcome);
            }
        }
        let topic = TopicInfo {
            name: req.name.clone(),
            topic_id: topic_id_for(&self.meta.cluster_id, &req.name, now_ms),
            partition_count,
            configs: req.configs.clone(),
            created_ms: now_ms,
        };
        if req.validate_only {
            let reply = Reply::Topic {
                outcome: Outcome::ok(),
                topic: Some(topic),
            };
            return (reply, Vec::new());
        }
        self.topics.insert(topic.name.clone(), topic.clone());
        let mut changes = vec![Change::Topic(topic.clone())];
        changes.extend(self.add_partitions(&topic.name, 0, partition_count));
        let reply = Reply::Topic {
            outcome: Outcome::ok(),
            topic: Some(topic),
        };
        (reply, changes)
    }

    fn delete_topic(&mut self, name: &str) -> (Reply, Vec<Change>) {
        let Some(topic) = self.topics.remove(name) else {
            let outcome = Outcome::error(
                error_code::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic {name:?} does not exist"),
            );
            return (Reply::Outcome(outcome), Vec::new());
        };
        for partition in 0..topic.partition_count {
            self.partitions.remove(&(name.to_string(), partition));
        }
        let change = Change::TopicDeleted {
            name: name.to_string(),
            partition_count: topic.partition_count,
        };
        (Reply::Outcome(Outcome::ok()), vec![change])
    }

    fn create_partitions(
        &mut self,
        name: &str,
        new_total: u32,
        validate_only: bool,
    ) -> (Reply, Vec<Change>) {
        let refuse =
            |code, message: String| (Reply::Outcome(Outcome::error(code, message)), Vec::new());
        let Some(topic) = self.topics.get(name) else {
            return refuse(
                error_code::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic {name:?} does not exist"),
            );
        };
        let current = topic.partition_count;
        if new_total <= current {
            return refuse(
                error_code::INVALID_PARTITIONS,
                format!("topic {name:?} has {current} partitions; the new total must be larger, got {new_total}"),
            );
        }
        if new_total > MAX_PARTITIONS_PER_TOPIC {
            return refuse(
                error_code::INVALID_PARTITIONS,
                format!("a topic may have at most {MAX_PARTITIONS_PER_TOPIC} partitions"),
            );
        }
        if validate_only {
            return (Reply::Outcome(Outcome::ok()), Vec::new());
        }
        let mut topic = topic.clone();
        topic.partition_count = new_total;
        self.topics.insert(name.to_string(), topic.clone());
        let mut changes = vec![Change::Topic(topic)];
        changes.extend(self.add_partitions(name, current, new_total));
        (Reply::Outcome(Outcome::ok()), changes)
    }

    /// Creates partitions `from..to` of a topic, unowned until the controller grants them.
    fn add_partitions(&mut self, topic: &str, from: u32, to: u32) -> Vec<Change> {
        (from..to)
            .map(|partition| {
                let info = PartitionInfo {
                    topic: topic.to_string(),
                    partition,
                    owner: -1,
                    leader_epoch: 0,
                };
                self.partitions
                    .insert((topic.to_string(), partition), info.clone());
                Change::Partition(info)
            })
            .collect()
    }

    /// Applies a change read back from the store while loading.
    pub fn restore(&mut self, change: Change) {
        match change {
            Change::Meta(meta) => self.meta = meta,
            Change::Gateway(g) => {
                self.gateways.insert(g.node_id, g);
            }
            Change::Bookie(b) => {
                self.bookies.insert(b.node_id, b);
            }
            Change::Topic(t) => {
                self.topics.insert(t.name.clone(), t);
            }
            Change::TopicDeleted { name, .. } => {
                self.topics.remove(&name);
                self.partitions.retain(|(topic, _), _| *topic != name);
            }
            Change::Partition(p) => {
                self.partitions.insert((p.topic.clone(), p.partition), p);
            }
        }
    }
}

fn lease_refused(code: i32, message: impl Into<String>) -> (Reply, Vec<Change>) {
    let reply = Reply::Lease {
        outcome: Outcome::error(code, message),
        lease_expires_ms: 0,
    };
    (reply, Vec::new())
}

/// A topic id that every replica derives identically from the command, so the
/// state machine stays deterministic: a name-based UUID over the cluster id, the
/// topic name and the creation time (a re-created topic gets a new id).
fn topic_id_for(cluster_id: &str, name: &str, now_ms: u64) -> bytes::Bytes {
    let seed = format!("{cluster_id}/{name}/{now_ms}");
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, seed.as_bytes());
    bytes::Bytes::copy_from_slice(id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::metadata::{
        CreatePartitionsRequest, CreateTopicRequest, DeleteTopicRequest, GatewayHeartbeatRequest,
        InitCluster, RegisterGatewayRequest,
    };

    fn rules() -> StateRules {
        StateRules {
            lease_ms: 1_000,
            default_partitions: 3,
        }
    }

    fn run(state: &mut ClusterState, now_ms: u64, op: Op) -> (Reply, Vec<Change>) {
        let command = MetadataCommand {
            now_ms,
            op: Some(op),
        };
        state.apply(&rules(), &command)
    }

    fn create(state: &mut ClusterState, name: &str, partitions: i32) -> Reply {
        let req = CreateTopicRequest {
            name: name.into(),
            partition_count: partitions,
            ..Default::default()
        };
        run(state, 5, Op::CreateTopic(req)).0
    }

    #[test]
    fn cluster_id_is_set_once() {
        let mut state = ClusterState::default();
        let init = |id: &str| {
            Op::InitCluster(InitCluster {
                cluster_id: id.into(),
            })
        };
        let (_, changes) = run(&mut state, 1, init("first"));
        assert_eq!(changes.len(), 1);
        let (reply, changes) = run(&mut state, 2, init("second"));
        assert!(reply.outcome().is_ok());
        assert!(changes.is_empty());
        assert_eq!(state.meta.cluster_id, "first");
    }

    #[test]
    fn gateway_lease_expires_unless_renewed() {
        let mut state = ClusterState::default();
        let register = RegisterGatewayRequest {
            node_id: 1,
            kafka_host: "127.0.0.1".into(),
            kafka_port: 9092,
            zone: String::new(),
        };
        run(&mut state, 100, Op::RegisterGateway(register));
        assert_eq!(state.live_gateways(1_099).count(), 1);
        assert_eq!(state.live_gateways(1_100).count(), 0);
        let (reply, _) = run(
            &mut state,
            1_050,
            Op::GatewayHeartbeat(GatewayHeartbeatRequest { node_id: 1 }),
        );
        assert_eq!(
            reply,
            Reply::Lease {
                outcome: Outcome::ok(),
                lease_expires_ms: 2_050
            }
        );
        assert_eq!(state.live_gateways(2_000).count(), 1);
    }

    #[test]
    fn heartbeat_of_unknown_gateway_is_refused() {
        let mut state = ClusterState::default();
        let (reply, changes) = run(
            &mut state,
            1,
            Op::GatewayHeartbeat(GatewayHeartbeatRequest { node_id: 7 }),
        );
        assert!(!reply.outcome().is_ok());
        assert!(changes.is_empty());
    }

    #[test]
    fn create_topic_makes_unowned_partitions() {
        let mut state = ClusterState::default();
        assert!(create(&mut state, "orders", 4).outcome().is_ok());
        assert_eq!(state.partitions.len(), 4);
        assert!(state.partitions.values().all(|p| p.owner == -1));
        assert_eq!(state.topics["orders"].topic_id.len(), 16);
    }

    #[test]
    fn create_topic_errors_are_kafka_codes() {
        let mut state = ClusterState::default();
        create(&mut state, "orders", 1);
        let code = |r: Reply| r.outcome().error_code;
        assert_eq!(
            code(create(&mut state, "orders", 1)),
            error_code::TOPIC_ALREADY_EXISTS
        );
        assert_eq!(
            code(create(&mut state, "bad name", 1)),
            error_code::INVALID_TOPIC_EXCEPTION
        );
        assert_eq!(
            code(create(&mut state, "zero", 0)),
            error_code::INVALID_PARTITIONS
        );
        assert_eq!(
            code(create(&mut state, "negative", -7)),
            error_code::INVALID_PARTITIONS
        );
    }

    #[test]
    fn default_partition_count_applies_to_minus_one() {
        let mut state = ClusterState::default();
        create(&mut state, "t", -1);
        assert_eq!(state.topics["t"].partition_count, 3);
    }

    #[test]
    fn validate_only_changes_nothing() {
        let mut state = ClusterState::default();
        let req = CreateTopicRequest {
            name: "t".into(),
            partition_count: 2,
            validate_only: true,
            ..Default::default()
        };
        let (reply, changes) = run(&mut state, 1, Op::CreateTopic(req));
        assert!(reply.outcome().is_ok());
        assert!(changes.is_empty());
        assert!(state.topics.is_empty());
    }

    #[test]
    fn delete_topic_removes_partitions() {
        let mut state = ClusterState::default();
        create(&mut state, "t", 2);
        let (reply, _) = run(
            &mut state,
            1,
            Op::DeleteTopic(DeleteTopicRequest { name: "t".into() }),
        );
        assert!(reply.outcome().is_ok());
        assert!(state.partitions.is_empty());
        let (reply, _) = run(
            &mut state,
            1,
            Op::DeleteTopic(DeleteTopicRequest { name: "t".into() }),
        );
        assert_eq!(
            reply.outcome().error_code,
            error_code::UNKNOWN_TOPIC_OR_PARTITION
        );
    }

    #[test]
    fn partitions_only_grow() {
        let mut state = ClusterState::default();
        create(&mut state, "t", 2);
        let grow = |total| {
            Op::CreatePartitions(CreatePartitionsRequest {
                topic: "t".into(),
                new_total: total,
                validate_only: false,
            })
        };
        let (reply, _) = run(&mut state, 1, grow(2));
        assert_eq!(reply.outcome().error_code, error_code::INVALID_PARTITIONS);
        let (reply, _) = run(&mut state, 1, grow(5));
        assert!(reply.outcome().is_ok());
        assert_eq!(state.partitions.len(), 5);
        assert_eq!(state.topics["t"].partition_count, 5);
    }
}
