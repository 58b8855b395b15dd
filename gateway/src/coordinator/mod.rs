//! The group coordinator: this gateway coordinates the consumer groups whose
//! coordinator slot (`hash(group) mod N`) it owns, as Kafka brokers coordinate
//! the groups of the `__consumer_offsets` partitions they lead.
//!
//! Membership lives in memory ([`group::Group`]); when a slot moves, its groups
//! are dropped here and their members rejoin at the new owner. Committed
//! offsets live in metadata, written only by the slot's owner.

pub mod group;
pub mod offsets;

use group::{ErrorCode, Group, GroupRules, GroupState, GroupSummary, JoinOutcome, JoinRequest};
use group::{SyncOutcome, SyncRequest};
use kafka_protocol::ResponseError;
use offsets::{offset_expired, outcome_result, unavailable, OffsetCommitter};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use strata_metadata::cache::ClusterCache;
use strata_metadata::client::MetadataClient;
use strata_proto::metadata::{
    CommittedOffset, CoordinatorSlot, DeleteOffsetsRequest, FetchOffsetsRequest,
    ListOffsetGroupsRequest, TopicPartition,
};
use tokio_util::sync::CancellationToken;

/// How often group timeouts (sessions, rebalances) are checked.
const TICK: Duration = Duration::from_millis(100);

const NOT_COORDINATOR: ErrorCode = ResponseError::NotCoordinator.code();
const COORDINATOR_NOT_AVAILABLE: ErrorCode = ResponseError::CoordinatorNotAvailable.code();
const INVALID_GROUP_ID: ErrorCode = ResponseError::InvalidGroupId.code();
const GROUP_ID_NOT_FOUND: ErrorCode = ResponseError::GroupIdNotFound.code();
const NON_EMPTY_GROUP: ErrorCode = ResponseError::NonEmptyGroup.code();
const ILLEGAL_GENERATION: ErrorCode = ResponseError::IllegalGeneration.code();
const UNKNOWN_MEMBER_ID: ErrorCode = ResponseError::UnknownMemberId.code();
const INVALID_SESSION_TIMEOUT: ErrorCode = ResponseError::InvalidSessionTimeout.code();
const GROUP_SUBSCRIBED_TO_TOPIC: ErrorCode = ResponseError::GroupSubscribedToTopic.code();

/// The coordinator's settings, from the gateway's configuration.
#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    /// `group.initial.rebalance.delay.ms`.
    pub initial_rebalance_delay: Duration,
    /// Shortest session timeout a member may ask for.
    pub min_session_timeout: Duration,
    /// Longest session timeout a member may ask for.
    pub max_session_timeout: Duration,
    /// How long an empty group's offsets are kept (`offsets.retention.minutes`).
    pub offsets_retention: Duration,
    /// How often expired offsets are looked for.
    pub offsets_retention_check_interval: Duration,
}

/// A group as ListGroups shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedGroup {
    /// The group id.
    pub group_id: String,
    /// Its protocol type ("consumer"), empty for groups that only hold offsets.
    pub protocol_type: String,
    /// Kafka's name of its state.
    pub state: &'static str,
}

/// A group this gateway holds in memory, with the slot epoch it was created at.
struct HeldGroup {
    slot_epoch: u32,
    group: Arc<Mutex<Group>>,
}

/// The coordinator of every group whose slot this gateway owns.
pub struct GroupCoordinator {
    node_id: i32,
    cache: ClusterCache,
    client: MetadataClient,
    options: CoordinatorOptions,
    committer: OffsetCommitter,
    groups: Mutex<HashMap<String, HeldGroup>>,
    /// Slots this gateway owns: epoch, and since when (for offset expiry of
    /// groups it has not seen).
    slots: Mutex<BTreeMap<u32, (u32, Instant)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl GroupCoordinator {
    /// A coordinator for gateway `node_id`, and the task that proposes its
    /// offset commits (run it until shutdown).
    pub fn new(
        node_id: i32,
        cache: ClusterCache,
        client: MetadataClient,
        options: CoordinatorOptions,
        shutdown: CancellationToken,
    ) -> (Arc<Self>, impl std::future::Future<Output = ()>) {
        let (committer, commits) = OffsetCommitter::new(node_id, client.clone(), shutdown);
        let coordinator = Arc::new(Self {
            node_id,
            cache,
            client,
            options,
            committer,
            groups: Mutex::new(HashMap::new()),
            slots: Mutex::new(BTreeMap::new()),
        });
        (coordinator, commits)
    }

    /// The slot of `group_id` if this gateway coordinates it.
    pub fn coordinates(&self, group_id: &str) -> Result<CoordinatorSlot, ErrorCode> {
        if group_id.is_empty() {
            return Err(INVALID_GROUP_ID);
        }
        let slot = self
            .cache
            .read(|state| state.coordinator_slot(group_id).cloned())
            .ok_or(COORDINATOR_NOT_AVAILABLE)?;
        if slot.owner == self.node_id {
            Ok(slot)
        } else if slot.owner < 0 {
            Err(COORDINATOR_NOT_AVAILABLE)
        } else {
            Err(NOT_COORDINATOR)
        }
    }

    /// The group held in memory, created when `create` is set. A group from an
    /// earlier ownership of the slot is dropped first.
    fn group(&self, group_id: &str, create: bool) -> Result<Option<Arc<Mutex<Group>>>, ErrorCode> {
        let slot = self.coordinates(group_id)?;
        let mut groups = lock(&self.groups);
        if let Some(held) = groups.get(group_id) {
            if held.slot_epoch == slot.leader_epoch {
                return Ok(Some(held.group.clone()));
            }
            lock(&held.group).kill(NOT_COORDINATOR);
            groups.remove(group_id);
        }
        if !create {
            return Ok(None);
        }
        let rules = GroupRules {
            initial_rebalance_delay: self.options.initial_rebalance_delay,
        };
        let group = Arc::new(Mutex::new(Group::new(rules, Instant::now())));
        groups.insert(
            group_id.to_string(),
            HeldGroup {
                slot_epoch: slot.leader_epoch,
                group: group.clone(),
            },
        );
        Ok(Some(group))
    }

    /// JoinGroup: waits until the rebalance the member joins completes.
    pub async fn join(&self, group_id: &str, request: JoinRequest) -> JoinOutcome {
        let timeout_ok = (self.options.min_session_timeout..=self.options.max_session_timeout)
            .contains(&request.session_timeout);
        if !timeout_ok {
            return JoinOutcome::error(INVALID_SESSION_TIMEOUT, &request.member_id);
        }
        let group = match self.group(group_id, true) {
            Ok(Some(group)) => group,
            Ok(None) => return JoinOutcome::error(COORDINATOR_NOT_AVAILABLE, &request.member_id),
            Err(error) => return JoinOutcome::error(error, &request.member_id),
        };
        let prefix = request
            .group_instance_id
            .as_deref()
            .unwrap_or(&request.client_id);
        let fresh_member_id = format!("{prefix}-{}", uuid::Uuid::new_v4());
        let member_id = request.member_id.clone();
        let answer = lock(&group).join(request, fresh_member_id, Instant::now());
        answer
            .await
            .unwrap_or_else(|_| JoinOutcome::error(NOT_COORDINATOR, &member_id))
    }

    /// SyncGroup: a follower waits for the leader's assignment.
    pub async fn sync(&self, group_id: &str, request: SyncRequest) -> SyncOutcome {
        let group = match self.group(group_id, false) {
            Ok(Some(group)) => group,
            Ok(None) => return SyncOutcome::error(UNKNOWN_MEMBER_ID),
            Err(error) => return SyncOutcome::error(error),
        };
        let answer = lock(&group).sync(request, Instant::now());
        answer
            .await
            .unwrap_or_else(|_| SyncOutcome::error(NOT_COORDINATOR))
    }

    /// Heartbeat.
    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
    ) -> ErrorCode {
        match self.group(group_id, false) {
            Ok(Some(group)) => {
                lock(&group).heartbeat(member_id, group_instance_id, generation_id, Instant::now())
            }
            Ok(None) => UNKNOWN_MEMBER_ID,
            Err(error) => error,
        }
    }

    /// LeaveGroup: one error code per member, or one for the whole request.
    pub fn leave(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<ErrorCode>, ErrorCode> {
        let Some(group) = self.group(group_id, false)? else {
            return Ok(vec![UNKNOWN_MEMBER_ID; members.len()]);
        };
        let mut group = lock(&group);
        let now = Instant::now();
        Ok(members
            .iter()
            .map(|(member_id, instance)| group.leave(member_id, instance.as_deref(), now))
            .collect())
    }

    /// OffsetCommit: checks the member and generation, then records the
    /// offsets in metadata.
    pub async fn commit_offsets(
        &self,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
        mut offsets: Vec<CommittedOffset>,
    ) -> Result<(), ErrorCode> {
        match self.group(group_id, false)? {
            Some(group) => lock(&group).check_commit(
                member_id,
                group_instance_id,
                generation_id,
                Instant::now(),
            )?,
            // A group this coordinator has never seen has no generation yet:
            // only the simple (generation -1) form is accepted.
            None if generation_id >= 0 => return Err(ILLEGAL_GENERATION),
            None => {}
        }
        let committed_at = i64::try_from(now_ms()).unwrap_or(i64::MAX);
        for offset in &mut offsets {
            offset.group = group_id.to_string();
            offset.commit_timestamp_ms = committed_at;
        }
        if offsets.is_empty() {
            return Ok(());
        }
        self.committer.commit(offsets).await
    }

    /// OffsetFetch: the group's committed offsets of `partitions` (-1 for
    /// those never committed), or of every partition when `None`.
    pub async fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<Vec<TopicPartition>>,
    ) -> Result<Vec<CommittedOffset>, ErrorCode> {
        self.coordinates(group_id)?;
        let partitions = match partitions {
            Some(partitions) if partitions.is_empty() => return Ok(Vec::new()),
            Some(partitions) => partitions,
            None => Vec::new(),
        };
        self.committed(group_id, partitions).await
    }

    async fn committed(
        &self,
        group_id: &str,
        partitions: Vec<TopicPartition>,
    ) -> Result<Vec<CommittedOffset>, ErrorCode> {
        let request = FetchOffsetsRequest {
            group: group_id.to_string(),
            partitions,
        };
        let response = self
            .client
            .send(request, |mut metadata, request| async move {
                metadata.fetch_offsets(request).await
            })
            .await
            .map_err(|error| unavailable(&error))?;
        Ok(response.offsets)
    }

    async fn delete_committed(
        &self,
        group_id: &str,
        partitions: Vec<TopicPartition>,
    ) -> Result<(), ErrorCode> {
        let request = DeleteOffsetsRequest {
            group: group_id.to_string(),
            partitions,
            coordinator: Some(self.node_id),
        };
        let response = self
            .client
            .send(request, |mut metadata, request| async move {
                metadata.delete_offsets(request).await
            })
            .await
            .map_err(|error| unavailable(&error))?;
        outcome_result(response.outcome)
    }

    /// OffsetDelete: removes the group's offsets of `partitions`, except those
    /// of topics a live consumer group is subscribed to. Returns each
    /// partition's error code.
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        partitions: Vec<TopicPartition>,
    ) -> Result<Vec<(TopicPartition, ErrorCode)>, ErrorCode> {
        let subscribed = match self.group(group_id, false)? {
            Some(group) => {
                let group = lock(&group);
                match group.state() {
                    GroupState::Dead => return Err(GROUP_ID_NOT_FOUND),
                    GroupState::Empty => Default::default(),
                    _ if group.protocol_type() == Some("consumer") => group.subscribed_topics(),
                    _ => return Err(NON_EMPTY_GROUP),
                }
            }
            None => {
                if self.committed(group_id, Vec::new()).await?.is_empty() {
                    return Err(GROUP_ID_NOT_FOUND);
                }
                Default::default()
            }
        };
        let (refused, deletable): (Vec<_>, Vec<_>) = partitions
            .into_iter()
            .partition(|p| subscribed.contains(&p.topic));
        // An empty list would mean every partition to metadata.
        if !deletable.is_empty() {
            self.delete_committed(group_id, deletable.clone()).await?;
        }
        Ok(deletable
            .into_iter()
            .map(|p| (p, 0))
            .chain(refused.into_iter().map(|p| (p, GROUP_SUBSCRIBED_TO_TOPIC)))
            .collect())
    }

    /// DeleteGroups, for one group: only an empty group may be deleted; its
    /// committed offsets go with it.
    pub async fn delete_group(&self, group_id: &str) -> ErrorCode {
        let held = match self.group(group_id, false) {
            Ok(held) => held,
            Err(error) => return error,
        };
        if let Some(group) = &held {
            let group = lock(group);
            if group.has_members() {
                return NON_EMPTY_GROUP;
            }
        } else {
            match self.committed(group_id, Vec::new()).await {
                Ok(offsets) if offsets.is_empty() => return GROUP_ID_NOT_FOUND,
                Ok(_) => {}
                Err(error) => return error,
            }
        }
        if let Err(error) = self.delete_committed(group_id, Vec::new()).await {
            return error;
        }
        let mut groups = lock(&self.groups);
        if let Some(removed) = groups.remove(group_id) {
            lock(&removed.group).kill(COORDINATOR_NOT_AVAILABLE);
        }
        0
    }

    /// DescribeGroups, for one group. A group this coordinator does not hold
    /// is Empty if it has committed offsets and Dead otherwise, as in Kafka.
    pub async fn describe(&self, group_id: &str) -> Result<GroupSummary, ErrorCode> {
        if let Some(group) = self.group(group_id, false)? {
            return Ok(lock(&group).summary());
        }
        let state = if self.committed(group_id, Vec::new()).await?.is_empty() {
            GroupState::Dead
        } else {
            GroupState::Empty
        };
        Ok(GroupSummary {
            state: state.name(),
            protocol_type: String::new(),
            protocol: String::new(),
            members: Vec::new(),
        })
    }

    /// ListGroups: the groups of the slots this gateway owns, those in memory
    /// and those that only have committed offsets.
    pub async fn list(&self) -> Result<Vec<ListedGroup>, ErrorCode> {
        let owned: Vec<(u32, u32)> = self.cache.read(|state| {
            state
                .slots
                .values()
                .filter(|s| s.owner == self.node_id)
                .map(|s| (s.slot, s.leader_epoch))
                .collect()
        });
        if owned.is_empty() {
            return Ok(Vec::new());
        }
        let mut listed: BTreeMap<String, ListedGroup> = BTreeMap::new();
        let held: Vec<(String, Arc<Mutex<Group>>)> = lock(&self.groups)
            .iter()
            .map(|(id, held)| (id.clone(), held.group.clone()))
            .collect();
        for (group_id, group) in held {
            if self.coordinates(&group_id).is_err() {
                continue;
            }
            let group = lock(&group);
            if group.state() != GroupState::Dead {
                listed.insert(
                    group_id.clone(),
                    ListedGroup {
                        group_id,
                        protocol_type: group.protocol_type().unwrap_or_default().to_string(),
                        state: group.state().name(),
                    },
                );
            }
        }
        let request = ListOffsetGroupsRequest {
            slots: owned.iter().map(|(slot, _)| *slot).collect(),
        };
        let response = self
            .client
            .send(request, |mut metadata, request| async move {
                metadata.list_offset_groups(request).await
            })
            .await
            .map_err(|error| unavailable(&error))?;
        for group_id in response.groups {
            listed.entry(group_id.clone()).or_insert(ListedGroup {
                group_id,
                protocol_type: String::new(),
                state: GroupState::Empty.name(),
            });
        }
        Ok(listed.into_values().collect())
    }

    /// Runs the coordinator's timers until shutdown: group timeouts, dropping
    /// the groups of slots that moved away, and offset expiry.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let timers = async {
            let mut changes = self.cache.subscribe();
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => self.tick(),
                    changed = changes.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        self.follow_slots();
                    }
                }
            }
        };
        let expiry = async {
            let mut check = tokio::time::interval(self.options.offsets_retention_check_interval);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = check.tick() => self.expire_offsets().await,
                }
            }
        };
        tokio::join!(timers, expiry);
        for (_, held) in lock(&self.groups).drain() {
            lock(&held.group).kill(NOT_COORDINATOR);
        }
    }

    fn tick(&self) {
        let now = Instant::now();
        let held: Vec<Arc<Mutex<Group>>> = lock(&self.groups)
            .values()
            .map(|held| held.group.clone())
            .collect();
        for group in held {
            lock(&group).tick(now);
        }
    }

    /// Drops groups that have had no members for the offsets retention
    /// period, so that memory holds only groups in use.
    fn forget_idle_groups(&self) {
        let now = Instant::now();
        let retention = self.options.offsets_retention;
        lock(&self.groups).retain(|_, held| {
            let group = lock(&held.group);
            group.has_members() || group.empty_for(now).is_none_or(|idle| idle < retention)
        });
    }

    /// Notes newly owned slots, and drops the groups of slots this gateway no
    /// longer owns (their waiting members are told NOT_COORDINATOR).
    fn follow_slots(&self) {
        let owned: BTreeMap<u32, u32> = self.cache.read(|state| {
            state
                .slots
                .values()
                .filter(|s| s.owner == self.node_id)
                .map(|s| (s.slot, s.leader_epoch))
                .collect()
        });
        {
            let mut slots = lock(&self.slots);
            slots.retain(|slot, (epoch, _)| owned.get(slot) == Some(epoch));
            for (slot, epoch) in &owned {
                slots.entry(*slot).or_insert((*epoch, Instant::now()));
            }
        }
        let mut groups = lock(&self.groups);
        groups.retain(|group_id, held| {
            let keep =
                self.coordinates(group_id).ok().map(|s| s.leader_epoch) == Some(held.slot_epoch);
            if !keep {
                tracing::info!(group = %group_id, "no longer coordinating group");
                lock(&held.group).kill(NOT_COORDINATOR);
            }
            keep
        });
    }

    /// Deletes offsets of groups that have been empty for the retention
    /// period and were not committed within it, and forgets such groups.
    async fn expire_offsets(&self) {
        self.forget_idle_groups();
        let slots: BTreeMap<u32, Instant> = lock(&self.slots)
            .iter()
            .map(|(slot, (_, since))| (*slot, *since))
            .collect();
        if slots.is_empty() {
            return;
        }
        let request = ListOffsetGroupsRequest {
            slots: slots.keys().copied().collect(),
        };
        let groups = match self
            .client
            .send(request, |mut metadata, request| async move {
                metadata.list_offset_groups(request).await
            })
            .await
        {
            Ok(response) => response.groups,
            Err(error) => {
                tracing::warn!(%error, "cannot list groups for offset expiry");
                return;
            }
        };
        let slot_count = u32::try_from(self.cache.read(|s| s.slots.len())).unwrap_or(0);
        for group_id in groups {
            let now = Instant::now();
            let held = lock(&self.groups).get(&group_id).map(|h| h.group.clone());
            let empty_for = match held {
                Some(group) => lock(&group).empty_for(now),
                None => {
                    let slot = strata_metadata::state::coordinator_slot_for(&group_id, slot_count);
                    slots
                        .get(&slot)
                        .map(|since| now.saturating_duration_since(*since))
                }
            };
            let Some(empty_for) = empty_for else {
                continue;
            };
            if empty_for < self.options.offsets_retention {
                continue;
            }
            let offsets = match self.committed(&group_id, Vec::new()).await {
                Ok(offsets) => offsets,
                Err(_) => continue,
            };
            let now_ms = now_ms();
            let expired: Vec<TopicPartition> = offsets
                .iter()
                .filter(|o| offset_expired(o, now_ms, empty_for, self.options.offsets_retention))
                .map(|o| TopicPartition {
                    topic: o.topic.clone(),
                    partition: o.partition,
                })
                .collect();
            if expired.is_empty() {
                continue;
            }
            tracing::info!(group = %group_id, offsets = expired.len(), "committed offsets expired");
            if let Err(code) = self.delete_committed(&group_id, expired).await {
                tracing::warn!(group = %group_id, code, "cannot delete expired offsets");
            }
        }
    }
}
