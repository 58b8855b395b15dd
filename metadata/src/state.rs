//! The cluster state machine: the in-memory cluster state and the rules that
//! decide whether each [`MetadataCommand`] may change it.
//!
//! Applying a command is deterministic (time comes from the command), returns the
//! [`CommandReply`] for the proposer and the list of [`Change`]s that the store
//! persists and the watch stream publishes. A refused command changes nothing:
//! every handler checks all of its rules before it touches the state.
//!
//! Segment commands live in the `segments` module, ownership (the controller
//! tick) in `ownership`, auto-recovery's replica swap in `replicas`.

mod ownership;
mod replicas;
mod segments;

pub use segments::SegmentTable;

use crate::topic_rules::{check_topic_config, check_topic_config_key, check_topic_name};
use std::collections::{BTreeMap, BTreeSet};
use strata_proto::error_code;
use strata_proto::metadata::metadata_command::Op;
use strata_proto::metadata::watch_event::Change as WatchChange;
use strata_proto::metadata::{
    AlterTopicConfigsRequest, BookieInfo, ClusterMeta, ClusterSnapshot, CommandReply, CommandRules,
    CommittedOffset, ConfigOperation, CoordinatorSlot, CreateTopicRequest, DeleteOffsetsRequest,
    GatewayInfo, MetadataCommand, Outcome, PartitionInfo, SegmentInfo, TopicInfo,
};

/// Most partitions one topic may have.
pub const MAX_PARTITIONS_PER_TOPIC: u32 = 100_000;
/// Coordinator slots of a cluster, as Kafka's 50 `__consumer_offsets` partitions.
pub const DEFAULT_COORDINATOR_SLOTS: u32 = 50;
/// Most coordinator slots a cluster may have; a larger configured count is clamped.
pub const MAX_COORDINATOR_SLOTS: u32 = 10_000;
/// Largest block of producer ids one command hands out.
pub const MAX_PRODUCER_ID_BLOCK: u32 = 1_000_000;
/// Longest metadata string of a committed offset (Kafka's `offset.metadata.max.bytes`).
pub const MAX_OFFSET_METADATA_BYTES: usize = 4096;
/// The owner of a partition or slot that nobody owns.
pub const NO_OWNER: i32 = -1;

/// Rules of the state machine that come from configuration, identical on every replica.
#[derive(Debug, Clone)]
pub struct StateRules {
    /// How long a gateway or bookie stays live after its last heartbeat.
    pub lease_ms: u64,
    /// Partition count of a topic created without one.
    pub default_partitions: u32,
    /// Coordinator slots of a new cluster (clamped to `1..=MAX_COORDINATOR_SLOTS`);
    /// fixed in [`ClusterMeta`] once the cluster has them.
    pub coordinator_slots: u32,
}

impl From<&CommandRules> for StateRules {
    fn from(rules: &CommandRules) -> Self {
        Self {
            lease_ms: rules.lease_ms,
            default_partitions: rules.default_partitions,
            coordinator_slots: rules.coordinator_slots,
        }
    }
}

impl From<&StateRules> for CommandRules {
    fn from(rules: &StateRules) -> Self {
        Self {
            lease_ms: rules.lease_ms,
            default_partitions: rules.default_partitions,
            coordinator_slots: rules.coordinator_slots,
        }
    }
}

/// One entity changed by a command, to persist and to publish.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Cluster identity and counters.
    Meta(ClusterMeta),
    /// A gateway registered, renewed or gave up its lease.
    Gateway(GatewayInfo),
    /// A bookie registered or renewed its lease.
    Bookie(BookieInfo),
    /// A topic was created or changed.
    Topic(TopicInfo),
    /// A topic, its partitions and its committed offsets were deleted (its
    /// segments are marked deleted by [`Change::Segment`]s of the same command).
    TopicDeleted {
        /// Name of the deleted topic.
        name: String,
        /// How many partitions it had, so their records can be removed.
        partition_count: u32,
    },
    /// A partition was created or changed owner.
    Partition(PartitionInfo),
    /// A segment was opened, sealed, offloaded or deleted.
    Segment(SegmentInfo),
    /// A consumer group committed an offset (not published on the watch stream).
    Offset(CommittedOffset),
    /// A committed offset was deleted (not published on the watch stream).
    OffsetDeleted(OffsetKey),
    /// A coordinator slot was created or changed owner.
    Slot(CoordinatorSlot),
}

/// Key of a committed offset: (group, topic, partition).
pub type OffsetKey = (String, String, u32);

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
    /// Every segment by id, with each partition's live segments in log order.
    pub segments: SegmentTable,
    /// Committed offsets by (group, topic, partition).
    pub offsets: BTreeMap<OffsetKey, CommittedOffset>,
    /// Coordinator slots by index.
    pub slots: BTreeMap<u32, CoordinatorSlot>,
}

/// A command's reply and changes.
type Effect = (CommandReply, Vec<Change>);
/// A command's effect, or the outcome that refused it (and changed nothing).
type Checked = Result<Effect, Outcome>;

impl ClusterState {
    /// Applies one command and returns the reply plus what changed.
    pub fn apply(
        &mut self,
        rules: &StateRules,
        command: &MetadataCommand,
    ) -> (CommandReply, Vec<Change>) {
        let result = match &command.op {
            Some(op) => self.apply_op(rules, command.now_ms, op),
            None => Err(Outcome::error(
                error_code::INVALID_REQUEST,
                "empty metadata command",
            )),
        };
        match result {
            Ok(effect) => {
                debug_assert!(outcome(&effect.0).is_ok(), "refusals go through Err");
                effect
            }
            Err(refusal) => {
                debug_assert!(!refusal.is_ok(), "a refusal carries an error code");
                (reply_with(refusal), Vec::new())
            }
        }
    }

    fn apply_op(&mut self, rules: &StateRules, now_ms: u64, op: &Op) -> Checked {
        let lease_expires_ms = now_ms.saturating_add(rules.lease_ms);
        match op {
            Op::InitCluster(init) => self.init_cluster(rules, &init.cluster_id),
            Op::RegisterGateway(req) => self.register_gateway(GatewayInfo {
                node_id: req.node_id,
                kafka_host: req.kafka_host.clone(),
                kafka_port: req.kafka_port,
                zone: req.zone.clone(),
                lease_expires_ms,
                draining: false,
            }),
            Op::GatewayHeartbeat(req) => self.renew_gateway(req.node_id, lease_expires_ms),
            Op::DeregisterGateway(req) => self.deregister_gateway(req.node_id, now_ms),
            Op::RegisterBookie(req) => self.register_bookie(BookieInfo {
                node_id: req.node_id,
                grpc_addr: req.grpc_addr.clone(),
                zone: req.zone.clone(),
                free_bytes: req.free_bytes,
                lease_expires_ms,
            }),
            Op::BookieHeartbeat(req) => {
                self.renew_bookie(req.node_id, req.free_bytes, lease_expires_ms)
            }
            Op::CreateTopic(req) => self.create_topic(rules, req, now_ms),
            Op::DeleteTopic(req) => self.delete_topic(&req.name),
            Op::CreatePartitions(req) => {
                self.create_partitions(&req.topic, req.new_total, req.validate_only)
            }
            Op::AlterTopicConfigs(req) => self.alter_topic_configs(req),
            Op::OpenSegment(req) => self.open_segment(req),
            Op::SealSegment(req) => self.seal_segment(req),
            Op::MarkOffloaded(req) => self.mark_offloaded(req),
            Op::DeleteSegments(req) => self.delete_segments(&req.segment_ids),
            Op::CommitOffsets(req) => self.commit_offsets(&req.offsets, req.coordinator),
            Op::DeleteOffsets(req) => self.delete_offsets(req),
            Op::AdvanceLogStart(req) => self.advance_log_start(req),
            Op::DrainGateway(req) => self.drain_gateway(req.node_id, now_ms),
            Op::ReplaceSegmentReplica(req) => self.replace_segment_replica(req, now_ms),
            Op::AllocateProducerIds(req) => self.allocate_producer_ids(req.count),
            Op::ControllerTick(_) => Ok((ok_reply(), self.controller_tick(rules, now_ms))),
        }
    }

    /// A snapshot of everything published on the watch stream, as its first
    /// event: every segment (deleted ones included) but no committed offsets.
    pub fn snapshot(&self) -> ClusterSnapshot {
        ClusterSnapshot {
            cluster_id: self.meta.cluster_id.clone(),
            gateways: self.gateways.values().cloned().collect(),
            bookies: self.bookies.values().cloned().collect(),
            topics: self.topics.values().cloned().collect(),
            partitions: self.partitions.values().cloned().collect(),
            segments: self.segments.iter().cloned().collect(),
            coordinator_slots: self.slots.values().cloned().collect(),
        }
    }

    /// Gateways whose lease has not lapsed at `now_ms`.
    pub fn live_gateways(&self, now_ms: u64) -> impl Iterator<Item = &GatewayInfo> {
        self.gateways
            .values()
            .filter(move |g| g.lease_expires_ms > now_ms)
    }

    /// A partition of an existing topic.
    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionInfo> {
        self.partitions.get(&(topic.to_string(), partition))
    }

    /// What `group` committed for one partition, if anything.
    pub fn committed_offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Option<&CommittedOffset> {
        self.offsets
            .get(&(group.to_string(), topic.to_string(), partition))
    }

    /// Every offset `group` has committed, by topic and partition.
    pub fn group_offsets<'a>(
        &'a self,
        group: &'a str,
    ) -> impl Iterator<Item = &'a CommittedOffset> + 'a {
        self.offsets
            .range((group.to_string(), String::new(), 0)..)
            .take_while(move |((g, _, _), _)| g == group)
            .map(|(_, offset)| offset)
    }

    /// The partition of `topic`, or UNKNOWN_TOPIC_OR_PARTITION.
    fn existing_partition(&self, topic: &str, partition: u32) -> Result<&PartitionInfo, Outcome> {
        self.partition(topic, partition).ok_or_else(|| {
            Outcome::error(
                error_code::UNKNOWN_TOPIC_OR_PARTITION,
                format!("partition {topic}-{partition} does not exist"),
            )
        })
    }

    fn init_cluster(&mut self, rules: &StateRules, cluster_id: &str) -> Checked {
        if !self.meta.cluster_id.is_empty() {
            return Ok((ok_reply(), Vec::new()));
        }
        if cluster_id.is_empty() {
            return Err(Outcome::error(
                error_code::INVALID_REQUEST,
                "cluster id is empty",
            ));
        }
        self.meta.cluster_id = cluster_id.to_string();
        if self.meta.next_segment_id == 0 {
            self.meta.next_segment_id = 1;
        }
        self.fix_slot_count(rules);
        let mut changes = self.create_missing_slots();
        changes.push(Change::Meta(self.meta.clone()));
        Ok((ok_reply(), changes))
    }

    fn register_gateway(&mut self, gateway: GatewayInfo) -> Checked {
        if gateway.node_id < 0 {
            return Err(Outcome::error(
                error_code::INVALID_REQUEST,
                "gateway node id must be >= 0",
            ));
        }
        if gateway.kafka_host.is_empty() || gateway.kafka_port == 0 || gateway.kafka_port > 65535 {
            return Err(Outcome::error(
                error_code::INVALID_REQUEST,
                "gateway must advertise a Kafka host and port",
            ));
        }
        let node_id = gateway.node_id;
        let lease_expires_ms = gateway.lease_expires_ms;
        self.gateways.insert(node_id, gateway.clone());
        let mut changes = vec![Change::Gateway(gateway)];
        changes.extend(self.fence_previous_incarnation(node_id));
        Ok((lease_reply(lease_expires_ms), changes))
    }

    fn renew_gateway(&mut self, node_id: i32, lease_expires_ms: u64) -> Checked {
        let gateway = self.gateways.get_mut(&node_id).ok_or_else(|| {
            Outcome::error(
                error_code::INVALID_REQUEST,
                format!("gateway {node_id} is not registered"),
            )
        })?;
        gateway.lease_expires_ms = gateway.lease_expires_ms.max(lease_expires_ms);
        let reply = lease_reply(gateway.lease_expires_ms);
        Ok((reply, vec![Change::Gateway(gateway.clone())]))
    }

    /// Ends a gateway's lease at `now_ms` (a clean shutdown); the next
    /// controller tick moves what it owned.
    fn deregister_gateway(&mut self, node_id: i32, now_ms: u64) -> Checked {
        let gateway = self.gateways.get_mut(&node_id).ok_or_else(|| {
            Outcome::error(
                error_code::INVALID_REQUEST,
                format!("gateway {node_id} is not registered"),
            )
        })?;
        gateway.lease_expires_ms = gateway.lease_expires_ms.min(now_ms);
        let reply = lease_reply(gateway.lease_expires_ms);
        Ok((reply, vec![Change::Gateway(gateway.clone())]))
    }

    /// Marks a live gateway as draining, so that the controller moves what it
    /// owns away. Refused for a gateway that is not live, and for the last
    /// live gateway that is not draining (nobody could take over).
    fn drain_gateway(&mut self, node_id: i32, now_ms: u64) -> Checked {
        let live = self
            .gateways
            .get(&node_id)
            .is_some_and(|g| g.lease_expires_ms > now_ms);
        if !live {
            return Err(Outcome::error(
                error_code::INVALID_REQUEST,
                format!("gateway {node_id} is not live"),
            ));
        }
        let others = self
            .live_gateways(now_ms)
            .filter(|g| g.node_id != node_id && !g.draining)
            .count();
        if others == 0 {
            return Err(Outcome::error(
                error_code::INVALID_REQUEST,
                format!("gateway {node_id} is the only live gateway left; nobody could take over its partitions"),
            ));
        }
        let Some(gateway) = self.gateways.get_mut(&node_id) else {
            return Err(Outcome::error(
                error_code::INVALID_REQUEST,
                "unknown gateway",
            ));
        };
        if gateway.draining {
            return Ok((ok_reply(), Vec::new()));
        }
        gateway.draining = true;
        Ok((ok_reply(), vec![Change::Gateway(gateway.clone())]))
    }

    fn register_bookie(&mut self, bookie: BookieInfo) -> Checked {
        if bookie.node_id < 0 {
            return Err(Outcome::error(
                error_code::INVALID_REQUEST,
                "bookie node id must be >= 0",
            ));
        }
        if bookie.grpc_addr.is_empty() {
            return Err(Outcome::error(
                error_code::INVALID_REQUEST,
                "bookie must advertise an address",
            ));
        }
        let lease_expires_ms = bookie.lease_expires_ms;
        self.bookies.insert(bookie.node_id, bookie.clone());
        Ok((lease_reply(lease_expires_ms), vec![Change::Bookie(bookie)]))
    }

    fn renew_bookie(&mut self, node_id: i32, free_bytes: u64, lease_expires_ms: u64) -> Checked {
        let bookie = self.bookies.get_mut(&node_id).ok_or_else(|| {
            Outcome::error(
                error_code::INVALID_REQUEST,
                format!("bookie {node_id} is not registered"),
            )
        })?;
        bookie.lease_expires_ms = bookie.lease_expires_ms.max(lease_expires_ms);
        bookie.free_bytes = free_bytes;
        let reply = lease_reply(bookie.lease_expires_ms);
        Ok((reply, vec![Change::Bookie(bookie.clone())]))
    }

    fn create_topic(
        &mut self,
        rules: &StateRules,
        req: &CreateTopicRequest,
        now_ms: u64,
    ) -> Checked {
        check_topic_name(&req.name)?;
        if self.topics.contains_key(&req.name) {
            return Err(Outcome::error(
                error_code::TOPIC_ALREADY_EXISTS,
                format!("topic {:?} already exists", req.name),
            ));
        }
        let partition_count = match req.partition_count {
            -1 => rules.default_partitions,
            n if n >= 1 && n as u32 <= MAX_PARTITIONS_PER_TOPIC => n as u32,
            n => {
                return Err(Outcome::error(
                    error_code::INVALID_PARTITIONS,
                    format!(
                        "partition count {n} is not in 1..={MAX_PARTITIONS_PER_TOPIC} (or -1 for the default)"
                    ),
                ))
            }
        };
        for (key, value) in &req.configs {
            check_topic_config(key, value)?;
        }
        let topic = TopicInfo {
            name: req.name.clone(),
            topic_id: topic_id_for(&self.meta.cluster_id, &req.name, now_ms),
            partition_count,
            configs: req.configs.clone(),
            created_ms: now_ms,
        };
        let reply = CommandReply {
            topic: Some(topic.clone()),
            ..ok_reply()
        };
        if req.validate_only {
            return Ok((reply, Vec::new()));
        }
        self.topics.insert(topic.name.clone(), topic.clone());
        let mut changes = vec![Change::Topic(topic)];
        changes.extend(self.add_partitions(&req.name, 0, partition_count));
        Ok((reply, changes))
    }

    /// Deletes a topic with its partitions and committed offsets, and marks its
    /// segments deleted so that bookies and the offloader drop their data.
    fn delete_topic(&mut self, name: &str) -> Checked {
        let Some(topic) = self.topics.remove(name) else {
            return Err(Outcome::error(
                error_code::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic {name:?} does not exist"),
            ));
        };
        let mut changes = Vec::new();
        for partition in 0..topic.partition_count {
            self.partitions.remove(&(name.to_string(), partition));
            changes.extend(
                self.segments
                    .delete_partition(name, partition)
                    .into_iter()
                    .map(Change::Segment),
            );
        }
        self.offsets.retain(|(_, t, _), _| t != name);
        changes.push(Change::TopicDeleted {
            name: name.to_string(),
            partition_count: topic.partition_count,
        });
        Ok((ok_reply(), changes))
    }

    fn create_partitions(&mut self, name: &str, new_total: u32, validate_only: bool) -> Checked {
        let refuse = |code, message: String| Err(Outcome::error(code, message));
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
            return Ok((ok_reply(), Vec::new()));
        }
        let mut topic = topic.clone();
        topic.partition_count = new_total;
        self.topics.insert(name.to_string(), topic.clone());
        let mut changes = vec![Change::Topic(topic)];
        changes.extend(self.add_partitions(name, current, new_total));
        Ok((ok_reply(), changes))
    }

    /// Sets and deletes a topic's configs: every change is checked first, then
    /// all of them apply (or, with `validate_only`, none). With `replace`, keys
    /// the changes do not set are removed, as Kafka's legacy AlterConfigs does.
    fn alter_topic_configs(&mut self, req: &AlterTopicConfigsRequest) -> Checked {
        let name = &req.topic;
        let Some(topic) = self.topics.get(name) else {
            return Err(Outcome::error(
                error_code::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic {name:?} does not exist"),
            ));
        };
        let mut configs = if req.replace {
            Default::default()
        } else {
            topic.configs.clone()
        };
        let mut seen = BTreeSet::new();
        for change in &req.changes {
            if !seen.insert(change.key.as_str()) {
                return Err(Outcome::error(
                    error_code::INVALID_REQUEST,
                    format!("config {:?} is changed more than once", change.key),
                ));
            }
            match ConfigOperation::try_from(change.op) {
                Ok(ConfigOperation::Set) => {
                    check_topic_config(&change.key, &change.value)?;
                    configs.insert(change.key.clone(), change.value.clone());
                }
                Ok(ConfigOperation::Delete) => {
                    check_topic_config_key(&change.key)?;
                    configs.remove(&change.key);
                }
                Err(_) => {
                    return Err(Outcome::error(
                        error_code::INVALID_REQUEST,
                        format!("unknown config operation {}", change.op),
                    ))
                }
            }
        }
        let altered = TopicInfo {
            configs,
            ..topic.clone()
        };
        let reply = CommandReply {
            topic: Some(altered.clone()),
            ..ok_reply()
        };
        if req.validate_only || altered == *topic {
            return Ok((reply, Vec::new()));
        }
        self.topics.insert(name.clone(), altered.clone());
        Ok((reply, vec![Change::Topic(altered)]))
    }

    /// Creates partitions `from..to` of a topic, unowned until the controller grants them.
    fn add_partitions(&mut self, topic: &str, from: u32, to: u32) -> Vec<Change> {
        (from..to)
            .map(|partition| {
                let info = PartitionInfo {
                    topic: topic.to_string(),
                    partition,
                    owner: NO_OWNER,
                    leader_epoch: 0,
                    log_start_offset: 0,
                };
                self.partitions
                    .insert((topic.to_string(), partition), info.clone());
                Change::Partition(info)
            })
            .collect()
    }

    /// Records a batch of committed offsets: all of them, or none if any is
    /// refused (an empty group, an unknown partition, an offset below -1, or
    /// metadata longer than [`MAX_OFFSET_METADATA_BYTES`]).
    fn commit_offsets(&mut self, offsets: &[CommittedOffset], coordinator: Option<i32>) -> Checked {
        for offset in offsets {
            self.check_coordinator(&offset.group, coordinator)?;
            self.check_commit(offset)?;
        }
        let changes = offsets
            .iter()
            .map(|offset| {
                let key = (offset.group.clone(), offset.topic.clone(), offset.partition);
                self.offsets.insert(key, offset.clone());
                Change::Offset(offset.clone())
            })
            .collect();
        Ok((ok_reply(), changes))
    }

    /// Deletes some or all committed offsets of one group. Offsets that were
    /// never committed are skipped, so a retry succeeds.
    fn delete_offsets(&mut self, req: &DeleteOffsetsRequest) -> Checked {
        self.check_coordinator(&req.group, req.coordinator)?;
        let doomed: BTreeSet<OffsetKey> = if req.partitions.is_empty() {
            self.group_offsets(&req.group)
                .map(|o| (o.group.clone(), o.topic.clone(), o.partition))
                .collect()
        } else {
            req.partitions
                .iter()
                .map(|p| (req.group.clone(), p.topic.clone(), p.partition))
                .filter(|key| self.offsets.contains_key(key))
                .collect()
        };
        let changes = doomed
            .into_iter()
            .map(|key| {
                self.offsets.remove(&key);
                Change::OffsetDeleted(key)
            })
            .collect();
        Ok((ok_reply(), changes))
    }

    /// Refuses a group change from a gateway that does not own the group's
    /// coordinator slot (when the command names its coordinator).
    fn check_coordinator(&self, group: &str, coordinator: Option<i32>) -> Result<(), Outcome> {
        let Some(coordinator) = coordinator else {
            return Ok(());
        };
        let slot = coordinator_slot_for(group, self.meta.coordinator_slots);
        let owner = self.slots.get(&slot).map_or(NO_OWNER, |s| s.owner);
        if owner != coordinator {
            return Err(Outcome::error(
                error_code::NOT_COORDINATOR,
                format!(
                    "gateway {coordinator} does not coordinate group {group:?} (slot {slot} is owned by {owner})"
                ),
            ));
        }
        Ok(())
    }

    /// Groups with committed offsets whose coordinator slot is in `slots`
    /// (every group when `slots` is empty), each once, in order.
    pub fn offset_groups(&self, slots: &[u32]) -> Vec<String> {
        let mut groups: Vec<String> = Vec::new();
        for (group, _, _) in self.offsets.keys() {
            if groups.last() == Some(group) {
                continue;
            }
            let slot = coordinator_slot_for(group, self.meta.coordinator_slots);
            if slots.is_empty() || slots.contains(&slot) {
                groups.push(group.clone());
            }
        }
        groups
    }

    fn check_commit(&self, offset: &CommittedOffset) -> Result<(), Outcome> {
        if offset.group.is_empty() {
            return Err(Outcome::error(
                error_code::INVALID_GROUP_ID,
                "group id is empty",
            ));
        }
        self.existing_partition(&offset.topic, offset.partition)?;
        if offset.offset < -1 {
            return Err(Outcome::error(
                error_code::INVALID_REQUEST,
                format!(
                    "committed offset {} of {}-{} is below -1",
                    offset.offset, offset.topic, offset.partition
                ),
            ));
        }
        if offset.metadata.len() > MAX_OFFSET_METADATA_BYTES {
            return Err(Outcome::error(
                error_code::OFFSET_METADATA_TOO_LARGE,
                format!(
                    "offset metadata is {} bytes; at most {MAX_OFFSET_METADATA_BYTES} are allowed",
                    offset.metadata.len()
                ),
            ));
        }
        Ok(())
    }

    /// Hands out the next `count` producer ids; blocks never overlap.
    fn allocate_producer_ids(&mut self, count: u32) -> Checked {
        if count == 0 || count > MAX_PRODUCER_ID_BLOCK {
            return Err(Outcome::error(
                error_code::INVALID_REQUEST,
                format!("producer id block size {count} is not in 1..={MAX_PRODUCER_ID_BLOCK}"),
            ));
        }
        let first = self.meta.next_producer_id;
        debug_assert!(first >= 0, "producer ids start at 0 and only grow");
        let next = first.checked_add(i64::from(count)).ok_or_else(|| {
            Outcome::error(
                error_code::UNKNOWN_SERVER_ERROR,
                "producer ids are exhausted",
            )
        })?;
        self.meta.next_producer_id = next;
        let reply = CommandReply {
            first_producer_id: first,
            producer_id_count: count,
            ..ok_reply()
        };
        Ok((reply, vec![Change::Meta(self.meta.clone())]))
    }

    /// Applies a change read back from the store (or a snapshot) while loading.
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
                self.offsets.retain(|(_, topic, _), _| *topic != name);
            }
            Change::Partition(p) => {
                self.partitions.insert((p.topic.clone(), p.partition), p);
            }
            Change::Segment(s) => self.segments.upsert(s),
            Change::Offset(o) => {
                self.offsets
                    .insert((o.group.clone(), o.topic.clone(), o.partition), o);
            }
            Change::OffsetDeleted(key) => {
                self.offsets.remove(&key);
            }
            Change::Slot(s) => {
                self.slots.insert(s.slot, s);
            }
        }
    }
}

/// The outcome of a reply. A reply without one (never made by [`ClusterState::apply`])
/// counts as UNKNOWN_SERVER_ERROR, so that it can never pass for a success.
pub fn outcome(reply: &CommandReply) -> &Outcome {
    static MISSING: Outcome = Outcome {
        error_code: error_code::UNKNOWN_SERVER_ERROR,
        error_message: String::new(),
    };
    reply.outcome.as_ref().unwrap_or(&MISSING)
}

/// A successful reply with nothing else in it.
pub fn ok_reply() -> CommandReply {
    reply_with(Outcome::ok())
}

/// A reply carrying only `outcome`.
pub fn reply_with(outcome: Outcome) -> CommandReply {
    CommandReply {
        outcome: Some(outcome),
        ..Default::default()
    }
}

fn lease_reply(lease_expires_ms: u64) -> CommandReply {
    CommandReply {
        lease_expires_ms,
        ..ok_reply()
    }
}

/// The watch-stream form of a change. Cluster counters and committed offsets
/// are not published: offsets change too often, and only metadata serves them.
pub fn watch_change(change: Change) -> Option<WatchChange> {
    Some(match change {
        Change::Meta(_) | Change::Offset(_) | Change::OffsetDeleted(_) => return None,
        Change::Gateway(g) => WatchChange::GatewayUpserted(g),
        Change::Bookie(b) => WatchChange::BookieUpserted(b),
        Change::Topic(t) => WatchChange::TopicUpserted(t),
        Change::TopicDeleted { name, .. } => WatchChange::TopicDeleted(name),
        Change::Partition(p) => WatchChange::PartitionUpserted(p),
        Change::Segment(s) => WatchChange::SegmentUpserted(s),
        Change::Slot(s) => WatchChange::CoordinatorSlotUpserted(s),
    })
}

/// The coordinator slot of a consumer group: Kafka's
/// `abs(groupId.hashCode()) % slots`, with Java's `String.hashCode` over UTF-16
/// code units, so that every process (in any language) agrees. 0 when `slots` is 0.
pub fn coordinator_slot_for(group: &str, slots: u32) -> u32 {
    if slots == 0 {
        return 0;
    }
    let hash = group.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    // Kafka's Utils.abs: i32::MIN maps to 0 rather than staying negative.
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive as u32 % slots
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
pub(crate) mod tests {
    use super::*;
    use strata_proto::metadata::{
        AllocateProducerIdsRequest, BookieHeartbeatRequest, CommitOffsetsRequest, ControllerTick,
        CreatePartitionsRequest, DeleteTopicRequest, DeregisterGatewayRequest,
        GatewayHeartbeatRequest, InitCluster, RegisterBookieRequest, RegisterGatewayRequest,
        TopicConfigChange, TopicPartition,
    };

    pub(crate) fn rules() -> StateRules {
        StateRules {
            lease_ms: 1_000,
            default_partitions: 3,
            coordinator_slots: DEFAULT_COORDINATOR_SLOTS,
        }
    }

    pub(crate) fn run(state: &mut ClusterState, now_ms: u64, op: Op) -> Effect {
        let command = MetadataCommand {
            now_ms,
            op: Some(op),
            rules: None,
        };
        state.apply(&rules(), &command)
    }

    /// Runs `op` and returns its error code (0 on success).
    pub(crate) fn code(state: &mut ClusterState, now_ms: u64, op: Op) -> i32 {
        outcome(&run(state, now_ms, op).0).error_code
    }

    /// Runs `op`, expects it refused with `expected`, and checks it changed nothing.
    pub(crate) fn refused(state: &mut ClusterState, now_ms: u64, op: Op, expected: i32) {
        let before = state.clone();
        let (reply, changes) = run(state, now_ms, op);
        assert_eq!(outcome(&reply).error_code, expected, "{reply:?}");
        assert!(changes.is_empty());
        assert_eq!(
            *state, before,
            "a refused command must not change the state"
        );
    }

    pub(crate) fn create(state: &mut ClusterState, name: &str, partitions: i32) -> CommandReply {
        let req = CreateTopicRequest {
            name: name.into(),
            partition_count: partitions,
            ..Default::default()
        };
        run(state, 5, Op::CreateTopic(req)).0
    }

    pub(crate) fn register_gateway(state: &mut ClusterState, node_id: i32, now_ms: u64) {
        let register = RegisterGatewayRequest {
            node_id,
            kafka_host: "127.0.0.1".into(),
            kafka_port: 9092,
            zone: String::new(),
        };
        assert_eq!(code(state, now_ms, Op::RegisterGateway(register)), 0);
    }

    pub(crate) fn register_bookie(state: &mut ClusterState, node_id: i32, now_ms: u64) {
        let register = RegisterBookieRequest {
            node_id,
            grpc_addr: format!("127.0.0.1:{}", 7700 + node_id),
            zone: String::new(),
            free_bytes: 1 << 30,
        };
        assert_eq!(code(state, now_ms, Op::RegisterBookie(register)), 0);
    }

    /// A cluster with an id, three bookies and the given gateways, all live at `now_ms`.
    pub(crate) fn cluster(gateways: &[i32], now_ms: u64) -> ClusterState {
        let mut state = ClusterState::default();
        let init = InitCluster {
            cluster_id: "c".into(),
        };
        assert_eq!(code(&mut state, now_ms, Op::InitCluster(init)), 0);
        for bookie in 1..=3 {
            register_bookie(&mut state, bookie, now_ms);
        }
        for &gateway in gateways {
            register_gateway(&mut state, gateway, now_ms);
        }
        state
    }

    fn commit(group: &str, topic: &str, partition: u32, offset: i64) -> CommittedOffset {
        CommittedOffset {
            group: group.into(),
            topic: topic.into(),
            partition,
            offset,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: 0,
        }
    }

    fn commit_op(offsets: Vec<CommittedOffset>) -> Op {
        Op::CommitOffsets(CommitOffsetsRequest {
            offsets,
            coordinator: None,
        })
    }

    fn allocate(count: u32) -> Op {
        Op::AllocateProducerIds(AllocateProducerIdsRequest { count })
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
        assert!(changes.contains(&Change::Meta(state.meta.clone())));
        let (reply, changes) = run(&mut state, 2, init("second"));
        assert!(outcome(&reply).is_ok());
        assert!(changes.is_empty());
        assert_eq!(state.meta.cluster_id, "first");
    }

    #[test]
    fn init_creates_the_coordinator_slots() {
        let mut state = ClusterState::default();
        let init = Op::InitCluster(InitCluster {
            cluster_id: "c".into(),
        });
        let (_, changes) = run(&mut state, 1, init);
        assert_eq!(state.meta.coordinator_slots, DEFAULT_COORDINATOR_SLOTS);
        assert_eq!(state.slots.len(), DEFAULT_COORDINATOR_SLOTS as usize);
        assert!(state.slots.values().all(|s| s.owner == NO_OWNER));
        let slot_changes = changes
            .iter()
            .filter(|c| matches!(c, Change::Slot(_)))
            .count();
        assert_eq!(slot_changes, DEFAULT_COORDINATOR_SLOTS as usize);
        let meta_changes = changes
            .iter()
            .filter(|c| matches!(c, Change::Meta(_)))
            .count();
        assert_eq!(meta_changes, 1);
    }

    #[test]
    fn gateway_lease_expires_unless_renewed() {
        let mut state = ClusterState::default();
        register_gateway(&mut state, 1, 100);
        assert_eq!(state.live_gateways(1_099).count(), 1);
        assert_eq!(state.live_gateways(1_100).count(), 0);
        let (reply, _) = run(
            &mut state,
            1_050,
            Op::GatewayHeartbeat(GatewayHeartbeatRequest { node_id: 1 }),
        );
        assert_eq!(reply, lease_reply(2_050));
        assert_eq!(state.live_gateways(2_000).count(), 1);
    }

    #[test]
    fn heartbeat_of_unknown_node_is_refused() {
        let mut state = ClusterState::default();
        let heartbeat = Op::GatewayHeartbeat(GatewayHeartbeatRequest { node_id: 7 });
        refused(&mut state, 1, heartbeat, error_code::INVALID_REQUEST);
        let heartbeat = Op::BookieHeartbeat(BookieHeartbeatRequest {
            node_id: 7,
            free_bytes: 0,
        });
        refused(&mut state, 1, heartbeat, error_code::INVALID_REQUEST);
    }

    #[test]
    fn deregistered_gateway_is_no_longer_live() {
        let mut state = cluster(&[1, 2], 100);
        let deregister = |node_id| Op::DeregisterGateway(DeregisterGatewayRequest { node_id });
        let (reply, changes) = run(&mut state, 500, deregister(1));
        assert!(outcome(&reply).is_ok());
        assert_eq!(reply.lease_expires_ms, 500);
        assert_eq!(changes, vec![Change::Gateway(state.gateways[&1].clone())]);
        let live: Vec<i32> = state.live_gateways(500).map(|g| g.node_id).collect();
        assert_eq!(live, vec![2]);
        assert!(state.controller_work_pending(500) || state.partitions.is_empty());
        refused(&mut state, 500, deregister(9), error_code::INVALID_REQUEST);
    }

    #[test]
    fn deregistering_never_extends_a_lapsed_lease() {
        let mut state = cluster(&[1], 100);
        let lapsed = state.gateways[&1].lease_expires_ms;
        let deregister = Op::DeregisterGateway(DeregisterGatewayRequest { node_id: 1 });
        let (reply, _) = run(&mut state, lapsed + 5_000, deregister);
        assert_eq!(reply.lease_expires_ms, lapsed);
    }

    #[test]
    fn create_topic_makes_unowned_partitions() {
        let mut state = ClusterState::default();
        let reply = create(&mut state, "orders", 4);
        assert!(outcome(&reply).is_ok());
        assert_eq!(reply.topic.as_ref().map(|t| t.partition_count), Some(4));
        assert_eq!(state.partitions.len(), 4);
        assert!(state.partitions.values().all(|p| p.owner == NO_OWNER));
        assert_eq!(state.topics["orders"].topic_id.len(), 16);
    }

    #[test]
    fn create_topic_errors_are_kafka_codes() {
        let mut state = ClusterState::default();
        create(&mut state, "orders", 1);
        let code = |r: CommandReply| outcome(&r).error_code;
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
        assert!(outcome(&reply).is_ok());
        assert!(reply.topic.is_some());
        assert!(changes.is_empty());
        assert!(state.topics.is_empty());
    }

    #[test]
    fn delete_topic_removes_partitions_and_offsets() {
        let mut state = ClusterState::default();
        create(&mut state, "t", 2);
        create(&mut state, "kept", 1);
        let offsets = vec![commit("g", "t", 1, 5), commit("g", "kept", 0, 7)];
        assert_eq!(code(&mut state, 1, commit_op(offsets)), 0);
        let delete = || Op::DeleteTopic(DeleteTopicRequest { name: "t".into() });
        let (reply, changes) = run(&mut state, 1, delete());
        assert!(outcome(&reply).is_ok());
        assert!(changes.contains(&Change::TopicDeleted {
            name: "t".into(),
            partition_count: 2
        }));
        assert_eq!(state.partitions.len(), 1);
        let left: Vec<&str> = state.offsets.values().map(|o| o.topic.as_str()).collect();
        assert_eq!(left, vec!["kept"]);
        refused(
            &mut state,
            1,
            delete(),
            error_code::UNKNOWN_TOPIC_OR_PARTITION,
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
        refused(&mut state, 1, grow(2), error_code::INVALID_PARTITIONS);
        assert_eq!(code(&mut state, 1, grow(5)), 0);
        assert_eq!(state.partitions.len(), 5);
        assert_eq!(state.topics["t"].partition_count, 5);
    }

    #[test]
    fn empty_command_is_invalid() {
        let mut state = ClusterState::default();
        let (reply, changes) = state.apply(&rules(), &MetadataCommand::default());
        assert_eq!(outcome(&reply).error_code, error_code::INVALID_REQUEST);
        assert!(changes.is_empty());
    }

    #[test]
    fn a_reply_without_outcome_is_not_a_success() {
        assert!(!outcome(&CommandReply::default()).is_ok());
        assert!(outcome(&ok_reply()).is_ok());
    }

    #[test]
    fn committed_offsets_are_stored_and_read_back_by_group() {
        let mut state = ClusterState::default();
        create(&mut state, "a", 2);
        create(&mut state, "b", 1);
        let batch = vec![
            commit("g1", "a", 0, 10),
            commit("g1", "b", 0, -1),
            commit("g2", "a", 1, 3),
            commit("g1", "a", 0, 11),
        ];
        let (reply, changes) = run(&mut state, 1, commit_op(batch));
        assert!(outcome(&reply).is_ok());
        assert_eq!(changes.len(), 4);
        assert_eq!(
            state.committed_offset("g1", "a", 0).map(|o| o.offset),
            Some(11)
        );
        assert_eq!(state.committed_offset("g1", "a", 1), None);
        let g1: Vec<(&str, u32, i64)> = state
            .group_offsets("g1")
            .map(|o| (o.topic.as_str(), o.partition, o.offset))
            .collect();
        assert_eq!(g1, vec![("a", 0, 11), ("b", 0, -1)]);
        assert_eq!(state.group_offsets("g").count(), 0);
    }

    #[test]
    fn offsets_are_deleted_by_partition_or_whole_group() {
        let mut state = ClusterState::default();
        create(&mut state, "a", 2);
        let batch = vec![
            commit("g1", "a", 0, 1),
            commit("g1", "a", 1, 2),
            commit("g2", "a", 0, 3),
        ];
        assert_eq!(code(&mut state, 1, commit_op(batch)), 0);
        assert_eq!(state.offset_groups(&[]), vec!["g1", "g2"]);
        let delete = |group: &str, partitions: Vec<u32>| {
            Op::DeleteOffsets(DeleteOffsetsRequest {
                group: group.into(),
                partitions: partitions
                    .into_iter()
                    .map(|partition| TopicPartition {
                        topic: "a".into(),
                        partition,
                    })
                    .collect(),
                coordinator: None,
            })
        };
        let (reply, changes) = run(&mut state, 2, delete("g1", vec![1, 1]));
        assert!(outcome(&reply).is_ok());
        assert_eq!(changes.len(), 1, "a partition named twice is deleted once");
        assert_eq!(state.group_offsets("g1").count(), 1);
        assert_eq!(code(&mut state, 3, delete("g1", vec![])), 0);
        assert_eq!(state.offset_groups(&[]), vec!["g2"]);
        // Deleting what is already gone succeeds, so retries do.
        assert_eq!(code(&mut state, 4, delete("g1", vec![0])), 0);
        assert_eq!(state.offsets.len(), 1);
    }

    #[test]
    fn group_changes_naming_a_coordinator_need_its_slot() {
        let mut state = cluster(&[1, 2], 1);
        run(&mut state, 2, Op::ControllerTick(ControllerTick {}));
        create(&mut state, "a", 1);
        let slot = coordinator_slot_for("g", state.meta.coordinator_slots);
        let owner = state.slots[&slot].owner;
        assert!(owner == 1 || owner == 2, "the tick assigns every slot");
        let other = 3 - owner;
        let commit_by = |coordinator| {
            Op::CommitOffsets(CommitOffsetsRequest {
                offsets: vec![commit("g", "a", 0, 5)],
                coordinator: Some(coordinator),
            })
        };
        refused(&mut state, 3, commit_by(other), error_code::NOT_COORDINATOR);
        assert_eq!(code(&mut state, 3, commit_by(owner)), 0);
        let delete_by = |coordinator| {
            Op::DeleteOffsets(DeleteOffsetsRequest {
                group: "g".into(),
                partitions: Vec::new(),
                coordinator: Some(coordinator),
            })
        };
        refused(&mut state, 4, delete_by(other), error_code::NOT_COORDINATOR);
        assert_eq!(state.offset_groups(&[slot]), vec!["g"]);
        assert!(state.offset_groups(&[slot + 1]).is_empty());
        assert_eq!(code(&mut state, 4, delete_by(owner)), 0);
        assert!(state.offsets.is_empty());
    }

    #[test]
    fn commit_offsets_is_all_or_nothing() {
        let mut state = ClusterState::default();
        create(&mut state, "a", 1);
        let good = commit("g", "a", 0, 1);
        let cases = [
            (commit("", "a", 0, 1), error_code::INVALID_GROUP_ID),
            (
                commit("g", "nope", 0, 1),
                error_code::UNKNOWN_TOPIC_OR_PARTITION,
            ),
            (
                commit("g", "a", 1, 1),
                error_code::UNKNOWN_TOPIC_OR_PARTITION,
            ),
            (commit("g", "a", 0, -2), error_code::INVALID_REQUEST),
            (
                CommittedOffset {
                    metadata: "x".repeat(MAX_OFFSET_METADATA_BYTES + 1),
                    ..good.clone()
                },
                error_code::OFFSET_METADATA_TOO_LARGE,
            ),
        ];
        for (bad, expected) in cases {
            // The good offset comes first: it must not be kept either.
            refused(&mut state, 1, commit_op(vec![good.clone(), bad]), expected);
        }
        assert!(state.offsets.is_empty());
    }

    #[test]
    fn producer_id_blocks_never_overlap() {
        let mut state = ClusterState::default();
        let mut blocks = Vec::new();
        for count in [1, 1_000, MAX_PRODUCER_ID_BLOCK, 7] {
            let (reply, changes) = run(&mut state, 1, allocate(count));
            assert!(outcome(&reply).is_ok());
            assert_eq!(reply.producer_id_count, count);
            assert_eq!(changes, vec![Change::Meta(state.meta.clone())]);
            blocks.push((reply.first_producer_id, i64::from(count)));
        }
        assert_eq!(blocks[0].0, 0, "Kafka producer ids start at 0");
        for pair in blocks.windows(2) {
            assert_eq!(pair[0].0 + pair[0].1, pair[1].0);
        }
        refused(&mut state, 1, allocate(0), error_code::INVALID_REQUEST);
        refused(
            &mut state,
            1,
            allocate(MAX_PRODUCER_ID_BLOCK + 1),
            error_code::INVALID_REQUEST,
        );
    }

    #[test]
    fn exhausted_producer_ids_are_refused() {
        let mut state = ClusterState::default();
        state.meta.next_producer_id = i64::MAX - 5;
        refused(
            &mut state,
            1,
            allocate(10),
            error_code::UNKNOWN_SERVER_ERROR,
        );
        assert_eq!(code(&mut state, 1, allocate(5)), 0);
    }

    #[test]
    fn coordinator_slot_follows_java_string_hash_code() {
        // Java: "".hashCode() == 0, "abc".hashCode() == 96354, "hello" == 99162322.
        assert_eq!(coordinator_slot_for("", 50), 0);
        assert_eq!(coordinator_slot_for("abc", 50), 96354 % 50);
        assert_eq!(coordinator_slot_for("hello", 1000), 99162322 % 1000);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE: Kafka maps it to 0.
        assert_eq!(coordinator_slot_for("polygenelubricants", 7), 0);
        // Java: "orders-consumer".hashCode() == -1204742690; Kafka takes abs first.
        assert_eq!(coordinator_slot_for("orders-consumer", 50), 1204742690 % 50);
        assert_eq!(coordinator_slot_for("orders-consumer", 50), 40);
        // Non-ASCII hashes UTF-16 code units, as Java does: "é" is U+00E9 = 233.
        assert_eq!(coordinator_slot_for("é", 1000), 233);
        assert_eq!(coordinator_slot_for("anything", 0), 0);
    }

    fn set(key: &str, value: &str) -> TopicConfigChange {
        TopicConfigChange {
            key: key.into(),
            value: value.into(),
            op: ConfigOperation::Set as i32,
        }
    }

    fn delete(key: &str) -> TopicConfigChange {
        TopicConfigChange {
            key: key.into(),
            value: String::new(),
            op: ConfigOperation::Delete as i32,
        }
    }

    fn alter(topic: &str, changes: Vec<TopicConfigChange>) -> AlterTopicConfigsRequest {
        AlterTopicConfigsRequest {
            topic: topic.into(),
            changes,
            validate_only: false,
            replace: false,
        }
    }

    fn configs_of(state: &ClusterState, topic: &str) -> Vec<(String, String)> {
        let mut configs: Vec<_> = state.topics[topic]
            .configs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        configs.sort();
        configs
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn alter_topic_configs_sets_and_deletes_and_publishes_the_topic() {
        let mut state = ClusterState::default();
        create(&mut state, "t", 1);
        let first = alter(
            "t",
            vec![set("retention.ms", "1000"), set("segment.ms", "60000")],
        );
        assert_eq!(code(&mut state, 1, Op::AlterTopicConfigs(first)), 0);
        let second = alter(
            "t",
            vec![delete("segment.ms"), set("cleanup.policy", "delete")],
        );
        let (reply, changes) = run(&mut state, 2, Op::AlterTopicConfigs(second));
        assert!(outcome(&reply).is_ok());
        let expected = pairs(&[("cleanup.policy", "delete"), ("retention.ms", "1000")]);
        assert_eq!(configs_of(&state, "t"), expected);
        assert_eq!(reply.topic.as_ref(), Some(&state.topics["t"]));
        assert_eq!(changes, vec![Change::Topic(state.topics["t"].clone())]);
        assert!(matches!(
            watch_change(changes[0].clone()),
            Some(WatchChange::TopicUpserted(t)) if t == state.topics["t"]
        ));
        // Identity is kept: only configs change.
        assert_eq!(state.topics["t"].partition_count, 1);
        assert_eq!(state.topics["t"].topic_id.len(), 16);
    }

    #[test]
    fn alter_topic_configs_is_all_or_nothing() {
        let mut state = ClusterState::default();
        create(&mut state, "t", 1);
        let good = set("retention.bytes", "4096");
        let cases = [
            (set("retention.ms", "soon"), error_code::INVALID_CONFIG),
            (set("no.such.config", "1"), error_code::INVALID_CONFIG),
            (delete("no.such.config"), error_code::INVALID_CONFIG),
            (set("segment.ms", "0"), error_code::INVALID_CONFIG),
            (
                TopicConfigChange {
                    op: 7,
                    ..set("segment.ms", "1")
                },
                error_code::INVALID_REQUEST,
            ),
            // The same key twice.
            (delete("retention.bytes"), error_code::INVALID_REQUEST),
        ];
        for (bad, expected) in cases {
            // The good change comes first: it must not be kept either.
            let op = Op::AlterTopicConfigs(alter("t", vec![good.clone(), bad]));
            refused(&mut state, 1, op, expected);
        }
        let op = Op::AlterTopicConfigs(alter("missing", vec![good]));
        refused(&mut state, 1, op, error_code::UNKNOWN_TOPIC_OR_PARTITION);
        assert!(state.topics["t"].configs.is_empty());
    }

    #[test]
    fn alter_topic_configs_validate_only_changes_nothing() {
        let mut state = ClusterState::default();
        create(&mut state, "t", 1);
        let before = state.clone();
        let req = AlterTopicConfigsRequest {
            validate_only: true,
            ..alter("t", vec![set("retention.ms", "1000")])
        };
        let (reply, changes) = run(&mut state, 1, Op::AlterTopicConfigs(req));
        assert!(outcome(&reply).is_ok());
        let would_be = reply.topic.expect("the topic as it would be");
        assert_eq!(
            would_be.configs.get("retention.ms").map(String::as_str),
            Some("1000")
        );
        assert!(changes.is_empty());
        assert_eq!(state, before);
    }

    #[test]
    fn alter_topic_configs_replace_drops_unnamed_keys() {
        let mut state = ClusterState::default();
        create(&mut state, "t", 1);
        let first = alter(
            "t",
            vec![set("retention.ms", "1000"), set("segment.ms", "9")],
        );
        assert_eq!(code(&mut state, 1, Op::AlterTopicConfigs(first)), 0);
        let replace = AlterTopicConfigsRequest {
            replace: true,
            ..alter("t", vec![set("retention.bytes", "4096")])
        };
        assert_eq!(code(&mut state, 2, Op::AlterTopicConfigs(replace)), 0);
        assert_eq!(
            configs_of(&state, "t"),
            pairs(&[("retention.bytes", "4096")])
        );
    }

    #[test]
    fn alter_topic_configs_that_change_nothing_publish_nothing() {
        let mut state = ClusterState::default();
        create(&mut state, "t", 1);
        let op = || Op::AlterTopicConfigs(alter("t", vec![set("retention.ms", "1000")]));
        assert_eq!(run(&mut state, 1, op()).1.len(), 1);
        let (reply, changes) = run(&mut state, 2, op());
        assert!(outcome(&reply).is_ok());
        assert!(changes.is_empty());
    }

    #[test]
    fn watch_skips_counters_and_offsets() {
        assert!(watch_change(Change::Meta(ClusterMeta::default())).is_none());
        assert!(watch_change(Change::Offset(CommittedOffset::default())).is_none());
        assert!(matches!(
            watch_change(Change::Slot(CoordinatorSlot::default())),
            Some(WatchChange::CoordinatorSlotUpserted(_))
        ));
        assert!(matches!(
            watch_change(Change::Segment(SegmentInfo::default())),
            Some(WatchChange::SegmentUpserted(_))
        ));
    }
}
