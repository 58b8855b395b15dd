//! One consumer group's membership state machine: the classic Kafka group
//! protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) with generations,
//! member ids (KIP-394), static membership (KIP-345), session and rebalance
//! timeouts and the delayed initial rebalance.
//!
//! The state machine is synchronous and never reads the clock: every call is
//! given `now`, and the coordinator calls [`Group::tick`] often, so timeouts
//! are decided here and tests drive time by hand. Requests that must wait
//! (a JoinGroup until the rebalance completes, a follower's SyncGroup until the
//! leader's) get a receiver that is answered later.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A Kafka error code (0 = none).
pub type ErrorCode = i16;

const NONE: ErrorCode = 0;
const UNKNOWN_MEMBER_ID: ErrorCode = ResponseError::UnknownMemberId.code();
const ILLEGAL_GENERATION: ErrorCode = ResponseError::IllegalGeneration.code();
const REBALANCE_IN_PROGRESS: ErrorCode = ResponseError::RebalanceInProgress.code();
const FENCED_INSTANCE_ID: ErrorCode = ResponseError::FencedInstanceId.code();
const MEMBER_ID_REQUIRED: ErrorCode = ResponseError::MemberIdRequired.code();
const INCONSISTENT_GROUP_PROTOCOL: ErrorCode = ResponseError::InconsistentGroupProtocol.code();
const COORDINATOR_NOT_AVAILABLE: ErrorCode = ResponseError::CoordinatorNotAvailable.code();

/// The states of a Kafka group coordinator's group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members (it may still have committed offsets).
    Empty,
    /// Waiting for every member to (re)join.
    PreparingRebalance,
    /// Joined; waiting for the leader's assignment.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
    /// Deleted; the coordinator forgets it.
    Dead,
}

impl GroupState {
    /// The name Kafka uses in DescribeGroups and ListGroups.
    pub fn name(self) -> &'static str {
        match self {
            Self::Empty => "Empty",
            Self::PreparingRebalance => "PreparingRebalance",
            Self::CompletingRebalance => "CompletingRebalance",
            Self::Stable => "Stable",
            Self::Dead => "Dead",
        }
    }
}

/// Settings every group of a coordinator shares.
#[derive(Debug, Clone)]
pub struct GroupRules {
    /// How long the first rebalance of an empty group waits for more members
    /// (`group.initial.rebalance.delay.ms`).
    pub initial_rebalance_delay: Duration,
}

/// One member's JoinGroup, as the state machine needs it.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Empty on a first join.
    pub member_id: String,
    /// `group.instance.id` of a static member.
    pub group_instance_id: Option<String>,
    /// The client's id, for DescribeGroups.
    pub client_id: String,
    /// The client's address, for DescribeGroups.
    pub client_host: String,
    /// How long the member may go without a heartbeat.
    pub session_timeout: Duration,
    /// How long a rebalance waits for the member to rejoin.
    pub rebalance_timeout: Duration,
    /// "consumer" for consumers; members of a group must agree on it.
    pub protocol_type: String,
    /// The member's assignors in order of preference, with its metadata for each.
    pub protocols: Vec<(String, Bytes)>,
    /// Whether a first join gets MEMBER_ID_REQUIRED (JoinGroup v4+, KIP-394).
    pub require_known_member_id: bool,
}

/// One member's SyncGroup.
#[derive(Debug, Clone)]
pub struct SyncRequest {
    /// The member.
    pub member_id: String,
    /// `group.instance.id` of a static member.
    pub group_instance_id: Option<String>,
    /// The generation the member joined.
    pub generation_id: i32,
    /// The protocol type the member believes in (v5+).
    pub protocol_type: Option<String>,
    /// The protocol the member believes was chosen (v5+).
    pub protocol_name: Option<String>,
    /// The leader's assignment of every member; empty for followers.
    pub assignments: Vec<(String, Bytes)>,
}

/// A member as the leader sees it in a JoinGroup response.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinedMember {
    /// The member's id.
    pub member_id: String,
    /// Its `group.instance.id`, if static.
    pub group_instance_id: Option<String>,
    /// Its metadata for the chosen protocol.
    pub metadata: Bytes,
}

/// What a JoinGroup gets back.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinOutcome {
    /// Kafka error code.
    pub error: ErrorCode,
    /// The generation the member is now in (-1 on error).
    pub generation_id: i32,
    /// The group's protocol type.
    pub protocol_type: Option<String>,
    /// The protocol (assignor) chosen for this generation.
    pub protocol_name: Option<String>,
    /// The leader's member id.
    pub leader: String,
    /// The member's id (the new one on a first join).
    pub member_id: String,
    /// Whether the leader should not compute an assignment (a static leader
    /// that rejoined a stable group).
    pub skip_assignment: bool,
    /// Every member with its metadata; only for the leader.
    pub members: Vec<JoinedMember>,
}

impl JoinOutcome {
    /// A refusal with `error`.
    pub fn error(error: ErrorCode, member_id: &str) -> Self {
        Self {
            error,
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            skip_assignment: false,
            members: Vec::new(),
        }
    }
}

/// What a SyncGroup gets back.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncOutcome {
    /// Kafka error code.
    pub error: ErrorCode,
    /// The group's protocol type.
    pub protocol_type: Option<String>,
    /// The chosen protocol.
    pub protocol_name: Option<String>,
    /// The member's assignment, opaque to the coordinator.
    pub assignment: Bytes,
}

impl SyncOutcome {
    /// A refusal with `error`.
    pub fn error(error: ErrorCode) -> Self {
        Self {
            error,
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

/// One member in DescribeGroups.
#[derive(Debug, Clone)]
pub struct MemberSummary {
    /// The member's id.
    pub member_id: String,
    /// Its `group.instance.id`, if static.
    pub group_instance_id: Option<String>,
    /// The client's id.
    pub client_id: String,
    /// The client's address.
    pub client_host: String,
    /// Its metadata for the chosen protocol (only when Stable).
    pub metadata: Bytes,
    /// Its assignment (only when Stable).
    pub assignment: Bytes,
}

/// A group in DescribeGroups.
#[derive(Debug, Clone)]
pub struct GroupSummary {
    /// Kafka's name of the state.
    pub state: &'static str,
    /// The protocol type, empty when none.
    pub protocol_type: String,
    /// The chosen protocol when Stable, else empty.
    pub protocol: String,
    /// The members.
    pub members: Vec<MemberSummary>,
}

#[derive(Debug)]
struct Member {
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_heartbeat: Instant,
    /// Order of arrival: the first member to join leads when the leader left.
    joined_seq: u64,
    awaiting_join: Option<oneshot::Sender<JoinOutcome>>,
    awaiting_sync: Option<oneshot::Sender<SyncOutcome>>,
}

impl Member {
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }

    fn keeps_alive(&self, now: Instant) -> bool {
        self.awaiting_join.is_some()
            || self.awaiting_sync.is_some()
            || now < self.last_heartbeat + self.session_timeout
    }

    fn update(&mut self, request: &JoinRequest, now: Instant) {
        self.client_id.clone_from(&request.client_id);
        self.client_host.clone_from(&request.client_host);
        self.session_timeout = request.session_timeout;
        self.rebalance_timeout = request.rebalance_timeout;
        self.protocols.clone_from(&request.protocols);
        self.last_heartbeat = now;
    }

    fn answer_join(&mut self, outcome: JoinOutcome) {
        if let Some(waiter) = self.awaiting_join.take() {
            let _ = waiter.send(outcome);
        }
    }

    fn answer_sync(&mut self, outcome: SyncOutcome) {
        if let Some(waiter) = self.awaiting_sync.take() {
            let _ = waiter.send(outcome);
        }
    }
}

/// The delayed first rebalance of an empty group: it waits
/// `initial_rebalance_delay`, again as long as members keep arriving, but
/// never past the rebalance timeout.
#[derive(Debug)]
struct InitialJoin {
    deadline: Instant,
    limit: Instant,
    member_arrived: bool,
}

/// One consumer group.
#[derive(Debug)]
pub struct Group {
    rules: GroupRules,
    state: GroupState,
    generation_id: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// `group.instance.id` → member id of static members.
    static_members: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, until when they may join.
    pending_members: HashMap<String, Instant>,
    /// When the current rebalance stops waiting for members to rejoin.
    join_deadline: Option<Instant>,
    initial_join: Option<InitialJoin>,
    /// Members of the new generation that have not sent SyncGroup yet, and
    /// until when they may.
    pending_sync: BTreeSet<String>,
    sync_deadline: Option<Instant>,
    next_joined_seq: u64,
    empty_since: Option<Instant>,
}

impl Group {
    /// A new, empty group.
    pub fn new(rules: GroupRules, now: Instant) -> Self {
        Self {
            rules,
            state: GroupState::Empty,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending_members: HashMap::new(),
            join_deadline: None,
            initial_join: None,
            pending_sync: BTreeSet::new(),
            sync_deadline: None,
            next_joined_seq: 0,
            empty_since: Some(now),
        }
    }

    /// The group's state.
    pub fn state(&self) -> GroupState {
        self.state
    }

    /// The current generation.
    pub fn generation_id(&self) -> i32 {
        self.generation_id
    }

    /// The protocol type, once a member joined.
    pub fn protocol_type(&self) -> Option<&str> {
        self.protocol_type.as_deref()
    }

    /// How long the group has had no members, if it has none.
    pub fn empty_for(&self, now: Instant) -> Option<Duration> {
        self.empty_since
            .map(|since| now.saturating_duration_since(since))
    }

    /// Whether the group has members or members about to join.
    pub fn has_members(&self) -> bool {
        !self.members.is_empty() || !self.pending_members.is_empty()
    }

    /// Marks the group dead (deleted, or its coordinator moved): every waiting
    /// request is answered with `error`, so its member looks for the
    /// coordinator again.
    pub fn kill(&mut self, error: ErrorCode) {
        for member in self.members.values_mut() {
            member.answer_join(JoinOutcome::error(error, ""));
            member.answer_sync(SyncOutcome::error(error));
        }
        self.members.clear();
        self.static_members.clear();
        self.pending_members.clear();
        self.state = GroupState::Dead;
    }

    /// Handles a JoinGroup. `fresh_member_id` is the id a first join gets.
    pub fn join(
        &mut self,
        request: JoinRequest,
        fresh_member_id: String,
        now: Instant,
    ) -> oneshot::Receiver<JoinOutcome> {
        let (waiter, answer) = oneshot::channel();
        if self.state == GroupState::Dead {
            let _ = waiter.send(JoinOutcome::error(
                COORDINATOR_NOT_AVAILABLE,
                &request.member_id,
            ));
            return answer;
        }
        if !self.supports(&request.protocol_type, &request.protocols) {
            let _ = waiter.send(JoinOutcome::error(
                INCONSISTENT_GROUP_PROTOCOL,
                &request.member_id,
            ));
            return answer;
        }
        if request.member_id.is_empty() {
            self.join_unknown(request, fresh_member_id, waiter, now);
        } else {
            self.join_known(request, waiter, now);
        }
        self.try_complete_join(now);
        answer
    }

    fn join_unknown(
        &mut self,
        request: JoinRequest,
        member_id: String,
        waiter: oneshot::Sender<JoinOutcome>,
        now: Instant,
    ) {
        if let Some(instance) = &request.group_instance_id {
            if let Some(old_id) = self.static_members.get(instance).cloned() {
                self.replace_static_member(&old_id, member_id, request, waiter, now);
                return;
            }
            self.add_member(&request, member_id, waiter, now);
        } else if request.require_known_member_id {
            self.pending_members
                .insert(member_id.clone(), now + request.session_timeout);
            let _ = waiter.send(JoinOutcome::error(MEMBER_ID_REQUIRED, &member_id));
        } else {
            self.add_member(&request, member_id, waiter, now);
        }
    }

    fn join_known(
        &mut self,
        request: JoinRequest,
        waiter: oneshot::Sender<JoinOutcome>,
        now: Instant,
    ) {
        let member_id = request.member_id.clone();
        if self.pending_members.remove(&member_id).is_some() {
            self.add_member(&request, member_id, waiter, now);
            return;
        }
        if let Err(error) = self.check_member(&member_id, request.group_instance_id.as_deref()) {
            let _ = waiter.send(JoinOutcome::error(error, &member_id));
            return;
        }
        let is_leader = self.leader.as_deref() == Some(member_id.as_str());
        let Some(member) = self.members.get_mut(&member_id) else {
            return;
        };
        let unchanged = member.protocols == request.protocols;
        match self.state {
            GroupState::PreparingRebalance => {
                member.update(&request, now);
                member.answer_join(JoinOutcome::error(REBALANCE_IN_PROGRESS, &member_id));
                member.awaiting_join = Some(waiter);
            }
            GroupState::CompletingRebalance if unchanged => {
                member.last_heartbeat = now;
                let _ = waiter.send(self.current_generation(&member_id, false));
            }
            GroupState::Stable if unchanged && !is_leader => {
                member.last_heartbeat = now;
                let _ = waiter.send(self.current_generation(&member_id, false));
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                member.update(&request, now);
                member.awaiting_join = Some(waiter);
                self.prepare_rebalance(now);
            }
            GroupState::Empty | GroupState::Dead => {
                let _ = waiter.send(JoinOutcome::error(UNKNOWN_MEMBER_ID, &member_id));
            }
        }
    }

    /// A static member came back with a new member id: the old id is fenced,
    /// and a stable group carries on without a rebalance (KIP-345).
    fn replace_static_member(
        &mut self,
        old_id: &str,
        new_id: String,
        request: JoinRequest,
        waiter: oneshot::Sender<JoinOutcome>,
        now: Instant,
    ) {
        let Some(mut member) = self.members.remove(old_id) else {
            return;
        };
        member.answer_join(JoinOutcome::error(FENCED_INSTANCE_ID, old_id));
        member.answer_sync(SyncOutcome::error(FENCED_INSTANCE_ID));
        let unchanged = member.protocols == request.protocols;
        member.update(&request, now);
        if let Some(instance) = &member.group_instance_id {
            self.static_members.insert(instance.clone(), new_id.clone());
        }
        if self.leader.as_deref() == Some(old_id) {
            self.leader = Some(new_id.clone());
        }
        if self.pending_sync.remove(old_id) {
            self.pending_sync.insert(new_id.clone());
        }
        let is_leader = self.leader.as_deref() == Some(new_id.as_str());
        self.members.insert(new_id.clone(), member);
        match self.state {
            GroupState::Stable if unchanged => {
                let _ = waiter.send(self.current_generation(&new_id, is_leader));
            }
            _ => {
                if let Some(member) = self.members.get_mut(&new_id) {
                    member.awaiting_join = Some(waiter);
                }
                self.prepare_rebalance(now);
            }
        }
    }

    fn add_member(
        &mut self,
        request: &JoinRequest,
        member_id: String,
        waiter: oneshot::Sender<JoinOutcome>,
        now: Instant,
    ) {
        if self.members.is_empty() {
            self.protocol_type = Some(request.protocol_type.clone());
        }
        if let Some(instance) = &request.group_instance_id {
            self.static_members
                .insert(instance.clone(), member_id.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(member_id.clone());
        }
        let member = Member {
            group_instance_id: request.group_instance_id.clone(),
            client_id: request.client_id.clone(),
            client_host: request.client_host.clone(),
            session_timeout: request.session_timeout,
            rebalance_timeout: request.rebalance_timeout,
            protocols: request.protocols.clone(),
            assignment: Bytes::new(),
            last_heartbeat: now,
            joined_seq: self.next_joined_seq,
            awaiting_join: Some(waiter),
            awaiting_sync: None,
        };
        self.next_joined_seq += 1;
        self.members.insert(member_id, member);
        if let Some(initial) = &mut self.initial_join {
            initial.member_arrived = true;
        }
        self.prepare_rebalance(now);
    }

    /// Handles a SyncGroup.
    pub fn sync(&mut self, request: SyncRequest, now: Instant) -> oneshot::Receiver<SyncOutcome> {
        let (waiter, answer) = oneshot::channel();
        if let Err(error) = self.check_sync(&request) {
            let _ = waiter.send(SyncOutcome::error(error));
            return answer;
        }
        let member_id = request.member_id.as_str();
        self.pending_sync.remove(member_id);
        let is_leader = self.leader.as_deref() == Some(member_id);
        let Some(member) = self.members.get_mut(member_id) else {
            return answer;
        };
        member.last_heartbeat = now;
        if self.state == GroupState::Stable {
            let assignment = member.assignment.clone();
            let _ = waiter.send(self.sync_answer(assignment));
            return answer;
        }
        member.awaiting_sync = Some(waiter);
        if is_leader {
            self.complete_sync(request.assignments);
        }
        answer
    }

    /// Whether a SyncGroup may proceed: a known member of this generation,
    /// with the group's protocol, while the group is completing a rebalance
    /// or stable.
    fn check_sync(&self, request: &SyncRequest) -> Result<(), ErrorCode> {
        if self.state == GroupState::Dead {
            return Err(COORDINATOR_NOT_AVAILABLE);
        }
        self.check_member(&request.member_id, request.group_instance_id.as_deref())?;
        if request.generation_id != self.generation_id {
            return Err(ILLEGAL_GENERATION);
        }
        let type_differs = request
            .protocol_type
            .as_ref()
            .is_some_and(|t| Some(t) != self.protocol_type.as_ref());
        let name_differs = request
            .protocol_name
            .as_ref()
            .is_some_and(|n| Some(n) != self.protocol_name.as_ref());
        if type_differs || name_differs {
            return Err(INCONSISTENT_GROUP_PROTOCOL);
        }
        match self.state {
            GroupState::PreparingRebalance => Err(REBALANCE_IN_PROGRESS),
            GroupState::CompletingRebalance | GroupState::Stable => Ok(()),
            GroupState::Empty | GroupState::Dead => Err(UNKNOWN_MEMBER_ID),
        }
    }

    /// The leader's assignment arrived: every member gets its part.
    fn complete_sync(&mut self, assignments: Vec<(String, Bytes)>) {
        let mut assignments: HashMap<String, Bytes> = assignments.into_iter().collect();
        let protocol_type = self.protocol_type.clone();
        let protocol_name = self.protocol_name.clone();
        for (member_id, member) in &mut self.members {
            member.assignment = assignments.remove(member_id).unwrap_or_default();
            let assignment = member.assignment.clone();
            member.answer_sync(SyncOutcome {
                error: NONE,
                protocol_type: protocol_type.clone(),
                protocol_name: protocol_name.clone(),
                assignment,
            });
        }
        self.state = GroupState::Stable;
    }

    fn sync_answer(&self, assignment: Bytes) -> SyncOutcome {
        SyncOutcome {
            error: NONE,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment,
        }
    }

    /// Handles a Heartbeat; the answer tells the member whether to rejoin.
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
        now: Instant,
    ) -> ErrorCode {
        if self.state == GroupState::Dead {
            return COORDINATOR_NOT_AVAILABLE;
        }
        if let Err(error) = self.check_member(member_id, group_instance_id) {
            return error;
        }
        if generation_id != self.generation_id {
            return ILLEGAL_GENERATION;
        }
        if let Some(member) = self.members.get_mut(member_id) {
            member.last_heartbeat = now;
        }
        match self.state {
            GroupState::PreparingRebalance => REBALANCE_IN_PROGRESS,
            GroupState::CompletingRebalance | GroupState::Stable => NONE,
            GroupState::Empty | GroupState::Dead => UNKNOWN_MEMBER_ID,
        }
    }

    /// Handles one member of a LeaveGroup. A static member may be named by its
    /// instance id alone (an empty member id), as admin clients do.
    pub fn leave(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        now: Instant,
    ) -> ErrorCode {
        if self.state == GroupState::Dead {
            return COORDINATOR_NOT_AVAILABLE;
        }
        let resolved = match (member_id.is_empty(), group_instance_id) {
            (true, Some(instance)) => self.static_members.get(instance).cloned(),
            _ => Some(member_id.to_string()),
        };
        let Some(member_id) = resolved else {
            return UNKNOWN_MEMBER_ID;
        };
        if self.pending_members.remove(&member_id).is_some() {
            self.try_complete_join(now);
            return NONE;
        }
        if let Err(error) = self.check_member(&member_id, group_instance_id) {
            return error;
        }
        self.remove_member(&member_id, now);
        NONE
    }

    /// Checks that `member_id` is a member, and that a static member's
    /// instance id still belongs to it.
    fn check_member(&self, member_id: &str, instance: Option<&str>) -> Result<(), ErrorCode> {
        if let Some(instance) = instance {
            if let Some(owner) = self.static_members.get(instance) {
                if owner != member_id {
                    return Err(FENCED_INSTANCE_ID);
                }
            }
        }
        if self.members.contains_key(member_id) {
            Ok(())
        } else {
            Err(UNKNOWN_MEMBER_ID)
        }
    }

    /// Whether an offset commit from this member at this generation is
    /// accepted. A negative generation with no member is the simple form of
    /// consumers that assign partitions themselves: only an empty group takes it.
    pub fn check_commit(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
        now: Instant,
    ) -> Result<(), ErrorCode> {
        if self.state == GroupState::Dead {
            return Err(COORDINATOR_NOT_AVAILABLE);
        }
        if generation_id < 0 && self.state == GroupState::Empty {
            return Ok(());
        }
        if self.state == GroupState::CompletingRebalance {
            return Err(REBALANCE_IN_PROGRESS);
        }
        self.check_member(member_id, group_instance_id)?;
        if generation_id != self.generation_id {
            return Err(ILLEGAL_GENERATION);
        }
        if let Some(member) = self.members.get_mut(member_id) {
            member.last_heartbeat = now;
        }
        Ok(())
    }

    /// Topics the members subscribe to, read from their consumer-protocol
    /// metadata (empty for groups of other protocol types).
    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        let mut topics = BTreeSet::new();
        if self.protocol_type.as_deref() != Some("consumer") {
            return topics;
        }
        let Some(protocol) = &self.protocol_name else {
            return topics;
        };
        for member in self.members.values() {
            topics.extend(subscription_topics(&member.metadata(protocol)));
        }
        topics
    }

    /// The group as DescribeGroups shows it.
    pub fn summary(&self) -> GroupSummary {
        let stable = self.state == GroupState::Stable;
        let protocol = if stable {
            self.protocol_name.clone().unwrap_or_default()
        } else {
            String::new()
        };
        let members = self
            .members
            .iter()
            .map(|(member_id, member)| MemberSummary {
                member_id: member_id.clone(),
                group_instance_id: member.group_instance_id.clone(),
                client_id: member.client_id.clone(),
                client_host: member.client_host.clone(),
                metadata: if stable {
                    member.metadata(&protocol)
                } else {
                    Bytes::new()
                },
                assignment: if stable {
                    member.assignment.clone()
                } else {
                    Bytes::new()
                },
            })
            .collect();
        GroupSummary {
            state: self.state.name(),
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol,
            members,
        }
    }

    /// Applies the passage of time: members whose session lapsed leave,
    /// handed-out member ids that were never used lapse, members that did not
    /// sync in time leave, and a rebalance whose wait is over completes.
    pub fn tick(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, member)| !member.keeps_alive(now))
            .map(|(id, _)| id.clone())
            .collect();
        for member_id in expired {
            tracing::info!(member = %member_id, "group member's session expired");
            self.remove_member(&member_id, now);
        }
        let pending_before = self.pending_members.len();
        self.pending_members.retain(|_, deadline| now < *deadline);
        if self.sync_deadline.is_some_and(|deadline| now >= deadline) {
            self.sync_deadline = None;
            let laggards: Vec<String> =
                std::mem::take(&mut self.pending_sync).into_iter().collect();
            for member_id in laggards {
                tracing::info!(member = %member_id, "group member did not sync in time");
                self.remove_member(&member_id, now);
            }
        }
        if self.pending_members.len() != pending_before || self.join_deadline.is_some() {
            self.try_complete_join(now);
        }
    }

    fn remove_member(&mut self, member_id: &str, now: Instant) {
        let Some(mut member) = self.members.remove(member_id) else {
            return;
        };
        member.answer_join(JoinOutcome::error(UNKNOWN_MEMBER_ID, member_id));
        member.answer_sync(SyncOutcome::error(UNKNOWN_MEMBER_ID));
        if let Some(instance) = &member.group_instance_id {
            self.static_members.remove(instance);
        }
        self.pending_sync.remove(member_id);
        if self.leader.as_deref() == Some(member_id) {
            self.leader = self.first_member(|_| true);
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => self.prepare_rebalance(now),
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    fn first_member(&self, eligible: impl Fn(&Member) -> bool) -> Option<String> {
        self.members
            .iter()
            .filter(|(_, member)| eligible(member))
            .min_by_key(|(_, member)| member.joined_seq)
            .map(|(id, _)| id.clone())
    }

    fn max_rebalance_timeout(&self) -> Duration {
        self.members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default()
    }

    /// Starts a rebalance (if one is not already under way): members must
    /// rejoin, and a sync in progress is called off.
    fn prepare_rebalance(&mut self, now: Instant) {
        match self.state {
            GroupState::PreparingRebalance | GroupState::Dead => return,
            GroupState::CompletingRebalance => {
                for member in self.members.values_mut() {
                    member.assignment = Bytes::new();
                    member.answer_sync(SyncOutcome::error(REBALANCE_IN_PROGRESS));
                }
            }
            GroupState::Stable | GroupState::Empty => {}
        }
        let rebalance_timeout = self.max_rebalance_timeout();
        let delay = self.rules.initial_rebalance_delay;
        self.initial_join =
            (self.state == GroupState::Empty && !delay.is_zero()).then(|| InitialJoin {
                deadline: now + delay.min(rebalance_timeout),
                limit: now + rebalance_timeout,
                member_arrived: false,
            });
        self.pending_sync.clear();
        self.sync_deadline = None;
        self.join_deadline = Some(now + rebalance_timeout);
        self.state = GroupState::PreparingRebalance;
        self.empty_since = None;
    }

    fn try_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        if let Some(initial) = &mut self.initial_join {
            if now < initial.deadline {
                return;
            }
            if initial.member_arrived && now < initial.limit {
                let delay = self.rules.initial_rebalance_delay;
                initial.deadline = (now + delay).min(initial.limit);
                initial.member_arrived = false;
                return;
            }
            self.initial_join = None;
            self.complete_join(now);
            return;
        }
        let all_joined = self.pending_members.is_empty()
            && self.members.values().all(|m| m.awaiting_join.is_some());
        let timed_out = self.join_deadline.is_some_and(|deadline| now >= deadline);
        if all_joined || timed_out {
            self.complete_join(now);
        }
    }

    /// Ends the join phase: dynamic members that did not rejoin are dropped,
    /// the generation moves on, a protocol is chosen, and every member that
    /// joined is answered (the leader with everyone's metadata).
    fn complete_join(&mut self, now: Instant) {
        let stragglers: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.awaiting_join.is_none() && m.group_instance_id.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for member_id in stragglers {
            if let Some(member) = self.members.remove(&member_id) {
                tracing::info!(member = %member_id, "group member did not rejoin in time");
                drop(member);
            }
        }
        let leader_joined = self
            .leader
            .as_ref()
            .and_then(|id| self.members.get(id))
            .is_some_and(|m| m.awaiting_join.is_some());
        if !leader_joined {
            self.leader = self.first_member(|m| m.awaiting_join.is_some());
        }
        if self.leader.is_none() && !self.members.is_empty() {
            // Only static members that have not rejoined are left: wait for
            // them to come back or for their sessions to lapse.
            self.join_deadline = Some(now + self.max_rebalance_timeout());
            return;
        }
        self.join_deadline = None;
        self.initial_join = None;
        self.generation_id += 1;
        if self.members.is_empty() {
            self.protocol_name = None;
            self.leader = None;
            self.state = GroupState::Empty;
            self.empty_since = Some(now);
            return;
        }
        self.protocol_name = self.select_protocol();
        self.state = GroupState::CompletingRebalance;
        self.pending_sync = self.members.keys().cloned().collect();
        self.sync_deadline = Some(now + self.max_rebalance_timeout());
        let leader = self.leader.clone().unwrap_or_default();
        let everyone = self.joined_members();
        for (member_id, member) in &mut self.members {
            member.last_heartbeat = now;
            let is_leader = *member_id == leader;
            member.answer_join(JoinOutcome {
                error: NONE,
                generation_id: self.generation_id,
                protocol_type: self.protocol_type.clone(),
                protocol_name: self.protocol_name.clone(),
                leader: leader.clone(),
                member_id: member_id.clone(),
                skip_assignment: false,
                members: if is_leader {
                    everyone.clone()
                } else {
                    Vec::new()
                },
            });
        }
    }

    /// The current generation as a JoinGroup answer for `member_id`.
    fn current_generation(&self, member_id: &str, skip_assignment: bool) -> JoinOutcome {
        let leader = self.leader.clone().unwrap_or_default();
        JoinOutcome {
            error: NONE,
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            member_id: member_id.to_string(),
            skip_assignment,
            members: if leader == member_id {
                self.joined_members()
            } else {
                Vec::new()
            },
            leader,
        }
    }

    fn joined_members(&self) -> Vec<JoinedMember> {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let mut members: Vec<(&String, &Member)> = self.members.iter().collect();
        members.sort_by_key(|(_, m)| m.joined_seq);
        members
            .into_iter()
            .map(|(member_id, member)| JoinedMember {
                member_id: member_id.clone(),
                group_instance_id: member.group_instance_id.clone(),
                metadata: member.metadata(&protocol),
            })
            .collect()
    }

    /// Whether a member with these protocols may join: the first member needs
    /// a protocol type and at least one protocol; later ones the same type and
    /// a protocol every member supports.
    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        let candidates = self.candidate_protocols();
        protocols.iter().any(|(name, _)| candidates.contains(name))
    }

    /// Protocols every member supports, in the first member's order of preference.
    fn candidate_protocols(&self) -> Vec<String> {
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.joined_seq);
        let Some((first, rest)) = members.split_first() else {
            return Vec::new();
        };
        first
            .protocols
            .iter()
            .map(|(name, _)| name.clone())
            .filter(|name| {
                rest.iter()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            })
            .collect()
    }

    /// Each member votes for its most preferred candidate; most votes wins,
    /// ties going to the first member's preference.
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for member in self.members.values() {
            if let Some((name, _)) = member
                .protocols
                .iter()
                .find(|(name, _)| candidates.contains(name))
            {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        let mut best: Option<(&str, usize)> = None;
        for name in &candidates {
            let count = votes.get(name.as_str()).copied().unwrap_or(0);
            if best.is_none_or(|(_, most)| count > most) {
                best = Some((name.as_str(), count));
            }
        }
        best.map(|(name, _)| name.to_string())
    }
}

/// Topics named in a consumer-protocol subscription (any version); nothing
/// when the bytes are not one.
fn subscription_topics(metadata: &[u8]) -> Vec<String> {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::Decodable;
    let mut bytes = Bytes::copy_from_slice(metadata);
    if bytes.len() < 2 {
        return Vec::new();
    }
    let version = i16::from_be_bytes([bytes[0], bytes[1]]);
    let _ = bytes.split_to(2);
    // Newer versions only add fields; decode what this library knows.
    let version = version.clamp(0, 3);
    match ConsumerProtocolSubscription::decode(&mut bytes, version) {
        Ok(subscription) => subscription
            .topics
            .into_iter()
            .map(|t| t.to_string())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_secs(3);
    const SESSION: Duration = Duration::from_secs(10);
    const REBALANCE: Duration = Duration::from_secs(30);
    /// When a group that two members joined at once completes its first
    /// rebalance: the second arrival extends the initial delay once.
    const SETTLED: Duration = Duration::from_secs(6);

    fn group(start: Instant) -> Group {
        Group::new(
            GroupRules {
                initial_rebalance_delay: DELAY,
            },
            start,
        )
    }

    fn join_request(member_id: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            member_id: member_id.into(),
            group_instance_id: None,
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: SESSION,
            rebalance_timeout: REBALANCE,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|name| (name.to_string(), Bytes::from(format!("{member_id}:{name}"))))
                .collect(),
            require_known_member_id: false,
        }
    }

    fn answered<T: std::fmt::Debug>(answer: &mut oneshot::Receiver<T>) -> T {
        answer.try_recv().expect("answered by now")
    }

    fn waiting<T: std::fmt::Debug>(answer: &mut oneshot::Receiver<T>) {
        assert!(matches!(
            answer.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
    }

    fn sync_request(
        member_id: &str,
        generation_id: i32,
        assignments: &[(&str, &str)],
    ) -> SyncRequest {
        SyncRequest {
            member_id: member_id.into(),
            group_instance_id: None,
            generation_id,
            protocol_type: None,
            protocol_name: None,
            assignments: assignments
                .iter()
                .map(|(m, a)| (m.to_string(), Bytes::from(a.to_string())))
                .collect(),
        }
    }

    /// Two dynamic members "a" and "b" in a stable generation 1, "a" leading.
    fn stable_pair(t0: Instant) -> Group {
        let mut g = group(t0);
        let mut a = g.join(join_request("", &["range"]), "a".into(), t0);
        let mut b = g.join(join_request("", &["range"]), "b".into(), t0);
        g.tick(t0 + DELAY);
        waiting(&mut a);
        g.tick(t0 + SETTLED);
        let a = answered(&mut a);
        let b = answered(&mut b);
        assert_eq!((a.generation_id, b.generation_id), (1, 1));
        let mut sb = g.sync(sync_request("b", 1, &[]), t0 + SETTLED);
        let mut sa = g.sync(
            sync_request("a", 1, &[("a", "A"), ("b", "B")]),
            t0 + SETTLED,
        );
        assert_eq!(answered(&mut sa).assignment, Bytes::from("A"));
        assert_eq!(answered(&mut sb).assignment, Bytes::from("B"));
        assert_eq!(g.state(), GroupState::Stable);
        g
    }

    #[test]
    fn first_join_needs_a_member_id_then_waits_out_the_initial_delay() {
        let t0 = Instant::now();
        let mut g = group(t0);
        let request = JoinRequest {
            require_known_member_id: true,
            ..join_request("", &["range"])
        };
        let mut first = g.join(request.clone(), "m-1".into(), t0);
        let first = answered(&mut first);
        assert_eq!(first.error, MEMBER_ID_REQUIRED);
        assert_eq!(first.member_id, "m-1");
        assert_eq!(g.state(), GroupState::Empty);

        let rejoin = JoinRequest {
            member_id: first.member_id.clone(),
            ..request
        };
        let mut joined = g.join(rejoin, "unused".into(), t0);
        waiting(&mut joined);
        assert_eq!(g.state(), GroupState::PreparingRebalance);
        g.tick(t0 + DELAY - Duration::from_millis(1));
        waiting(&mut joined);
        g.tick(t0 + DELAY);
        let joined = answered(&mut joined);
        assert_eq!(joined.error, NONE);
        assert_eq!(joined.generation_id, 1);
        assert_eq!(joined.leader, "m-1");
        assert_eq!(joined.protocol_name.as_deref(), Some("range"));
        assert_eq!(joined.members.len(), 1);
        assert_eq!(g.state(), GroupState::CompletingRebalance);
    }

    #[test]
    fn the_initial_delay_is_extended_while_members_keep_arriving() {
        let t0 = Instant::now();
        let mut g = group(t0);
        let mut a = g.join(join_request("", &["range"]), "a".into(), t0);
        let later = t0 + Duration::from_secs(2);
        let mut b = g.join(join_request("", &["range"]), "b".into(), later);
        g.tick(t0 + DELAY);
        waiting(&mut a);
        g.tick(t0 + DELAY + DELAY);
        assert_eq!(answered(&mut a).members.len(), 2, "a leads both");
        assert!(answered(&mut b).members.is_empty(), "followers get no list");
    }

    #[test]
    fn the_leaders_assignment_reaches_every_member() {
        let t0 = Instant::now();
        let g = stable_pair(t0);
        let summary = g.summary();
        assert_eq!(summary.state, "Stable");
        assert_eq!(summary.protocol, "range");
        assert_eq!(summary.members.len(), 2);
        assert_eq!(summary.members[1].assignment, Bytes::from("B"));
        assert_eq!(summary.members[1].metadata, Bytes::from(":range"));
    }

    #[test]
    fn a_leaving_member_starts_a_rebalance_that_the_rest_rejoin() {
        let t0 = Instant::now();
        let mut g = stable_pair(t0);
        let t1 = t0 + SETTLED + Duration::from_secs(1);
        assert_eq!(g.leave("a", None, t1), NONE);
        assert_eq!(g.state(), GroupState::PreparingRebalance);
        assert_eq!(g.heartbeat("b", None, 1, t1), REBALANCE_IN_PROGRESS);
        assert_eq!(g.heartbeat("a", None, 1, t1), UNKNOWN_MEMBER_ID);
        let mut b = g.join(join_request("b", &["range"]), "unused".into(), t1);
        let b = answered(&mut b);
        assert_eq!(b.generation_id, 2);
        assert_eq!(b.leader, "b", "the leader left, so another member leads");
        let mut sb = g.sync(sync_request("b", 1, &[]), t1);
        assert_eq!(answered(&mut sb).error, ILLEGAL_GENERATION);
        let mut sb = g.sync(sync_request("b", 2, &[("b", "AB")]), t1);
        assert_eq!(answered(&mut sb).assignment, Bytes::from("AB"));
        assert_eq!(g.heartbeat("b", None, 2, t1), NONE);
    }

    #[test]
    fn a_silent_member_is_dropped_when_its_session_lapses() {
        let t0 = Instant::now();
        let mut g = stable_pair(t0);
        let synced = t0 + SETTLED;
        let t1 = synced + SESSION - Duration::from_secs(1);
        assert_eq!(g.heartbeat("b", None, 1, t1), NONE);
        g.tick(synced + SESSION);
        assert_eq!(g.state(), GroupState::PreparingRebalance, "a went silent");
        let mut b = g.join(join_request("b", &["range"]), "unused".into(), t1);
        let b = answered(&mut b);
        assert_eq!((b.generation_id, b.members.len()), (2, 1));
    }

    #[test]
    fn a_member_that_does_not_rejoin_is_dropped_at_the_rebalance_timeout() {
        let t0 = Instant::now();
        let mut g = stable_pair(t0);
        let t1 = t0 + SETTLED;
        let mut c = g.join(join_request("", &["range"]), "c".into(), t1);
        let mut a = g.join(join_request("a", &["range"]), "unused".into(), t1);
        // b keeps heartbeating but never rejoins.
        assert_eq!(
            g.heartbeat("b", None, 1, t1 + SESSION / 2),
            REBALANCE_IN_PROGRESS
        );
        g.tick(t1 + SESSION / 2);
        waiting(&mut a);
        g.tick(t1 + REBALANCE);
        let a = answered(&mut a);
        assert_eq!(a.generation_id, 2);
        let mut ids: Vec<String> = a.members.into_iter().map(|m| m.member_id).collect();
        ids.sort();
        assert_eq!(ids, vec!["a", "c"]);
        assert_eq!(answered(&mut c).generation_id, 2);
    }

    #[test]
    fn a_static_member_that_comes_back_keeps_its_assignment_without_a_rebalance() {
        let t0 = Instant::now();
        let mut g = group(t0);
        let static_request = |member_id: &str| JoinRequest {
            group_instance_id: Some("instance-1".into()),
            require_known_member_id: true,
            ..join_request(member_id, &["range"])
        };
        let mut first = g.join(static_request(""), "s-1".into(), t0);
        g.tick(t0 + DELAY);
        assert_eq!(answered(&mut first).generation_id, 1);
        let mut sync = g.sync(
            SyncRequest {
                group_instance_id: Some("instance-1".into()),
                ..sync_request("s-1", 1, &[("s-1", "P0")])
            },
            t0 + DELAY,
        );
        assert_eq!(answered(&mut sync).assignment, Bytes::from("P0"));

        // The process restarts: a first join again, with the same instance id.
        let t1 = t0 + DELAY + Duration::from_secs(2);
        let mut again = g.join(static_request(""), "s-2".into(), t1);
        let again = answered(&mut again);
        assert_eq!(again.error, NONE);
        assert_eq!(again.member_id, "s-2");
        assert_eq!(again.generation_id, 1, "no new generation");
        assert_eq!(g.state(), GroupState::Stable);
        assert_eq!(
            g.heartbeat("s-1", Some("instance-1"), 1, t1),
            FENCED_INSTANCE_ID,
            "the old incarnation is fenced"
        );
        let mut sync = g.sync(
            SyncRequest {
                group_instance_id: Some("instance-1".into()),
                ..sync_request("s-2", 1, &[])
            },
            t1,
        );
        assert_eq!(answered(&mut sync).assignment, Bytes::from("P0"));
    }

    #[test]
    fn the_protocol_most_members_prefer_is_chosen() {
        let t0 = Instant::now();
        let mut g = group(t0);
        let mut a = g.join(join_request("", &["range", "roundrobin"]), "a".into(), t0);
        g.join(join_request("", &["roundrobin", "range"]), "b".into(), t0);
        g.join(join_request("", &["roundrobin", "range"]), "c".into(), t0);
        let mut refused = g.join(join_request("", &["sticky"]), "d".into(), t0);
        assert_eq!(answered(&mut refused).error, INCONSISTENT_GROUP_PROTOCOL);
        g.tick(t0 + DELAY);
        g.tick(t0 + SETTLED);
        let a = answered(&mut a);
        assert_eq!(a.protocol_name.as_deref(), Some("roundrobin"));
        assert!(a
            .members
            .iter()
            .all(|m| m.metadata.ends_with(b"roundrobin")));
    }

    #[test]
    fn offset_commits_are_checked_against_member_and_generation() {
        let t0 = Instant::now();
        let mut empty = group(t0);
        assert_eq!(
            empty.check_commit("", None, -1, t0),
            Ok(()),
            "simple commit"
        );
        let mut g = stable_pair(t0);
        let t1 = t0 + SETTLED;
        assert_eq!(g.check_commit("a", None, 1, t1), Ok(()));
        assert_eq!(g.check_commit("a", None, 0, t1), Err(ILLEGAL_GENERATION));
        assert_eq!(g.check_commit("z", None, 1, t1), Err(UNKNOWN_MEMBER_ID));
        assert_eq!(g.check_commit("", None, -1, t1), Err(UNKNOWN_MEMBER_ID));
        // Commits during a rebalance (as partitions are revoked) still count.
        g.leave("b", None, t1);
        assert_eq!(g.state(), GroupState::PreparingRebalance);
        assert_eq!(g.check_commit("a", None, 1, t1), Ok(()));
    }

    #[test]
    fn a_group_whose_members_all_leave_becomes_empty() {
        let t0 = Instant::now();
        let mut g = stable_pair(t0);
        let t1 = t0 + SETTLED;
        assert_eq!(g.empty_for(t1), None);
        g.leave("a", None, t1);
        g.leave("b", None, t1);
        assert_eq!(g.state(), GroupState::Empty);
        assert_eq!(g.generation_id(), 2);
        assert_eq!(g.empty_for(t1 + SESSION), Some(SESSION));
        assert!(!g.has_members());
    }
}
