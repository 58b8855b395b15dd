//! `strata admin groups`: list consumer groups, describe one with its lag, and
//! reset its committed offsets, like Kafka's `kafka-consumer-groups.sh`. It
//! talks the Kafka protocol to the gateways, as any Kafka admin client would.

use super::kafka_wire::{coordinator_moved, error_name, leader_moving, KafkaConnection};
use anyhow::{bail, Context};
use bytes::Buf;
use clap::{Args, Subcommand};
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{
    BrokerId, ConsumerProtocolAssignment, DescribeGroupsRequest, FindCoordinatorRequest, GroupId,
    ListGroupsRequest, ListOffsetsRequest, MetadataRequest, MetadataResponse, OffsetCommitRequest,
    OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, Request, StrBytes};
use kafka_protocol::ResponseError;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};
use strata_metadata::client::MetadataClient;
use strata_proto::admin::ClusterStatusRequest;

/// Request versions used: all within what Strata's gateways (and Kafka 3.x) accept.
const METADATA_VERSION: i16 = 12;
const FIND_COORDINATOR_VERSION: i16 = 3;
const DESCRIBE_GROUPS_VERSION: i16 = 5;
const LIST_GROUPS_VERSION: i16 = 4;
const OFFSET_FETCH_VERSION: i16 = 7;
const OFFSET_COMMIT_VERSION: i16 = 8;
const LIST_OFFSETS_VERSION: i16 = 7;

/// FindCoordinator key type of consumer groups.
const GROUP_KEY_TYPE: i8 = 0;
/// ListOffsets timestamp asking for the log-end offset (high watermark).
const LATEST_TIMESTAMP: i64 = -1;
/// ListOffsets timestamp asking for the log-start offset.
const EARLIEST_TIMESTAMP: i64 = -2;
/// The protocol type of Kafka consumers, whose assignments we can decode.
const CONSUMER_PROTOCOL: &str = "consumer";
/// How long a coordinator or partition leader that is moving (or still
/// starting) is waited for before giving up.
const RETRY_FOR: Duration = Duration::from_secs(10);
/// Pause between two tries while a coordinator or leader moves.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Flags of `strata admin groups`.
#[derive(Debug, Args)]
pub struct GroupsArgs {
    /// A gateway's Kafka listener, `host:port`; other gateways are found
    /// through it. Default: the live gateways the metadata service knows.
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub bootstrap: Option<String>,

    #[command(subcommand)]
    pub command: GroupsCommand,
}

/// Consumer-group operations.
#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List every group with its state and protocol type.
    List,
    /// Show a group's members and, per partition, its committed offset,
    /// log-end offset, lag and owner.
    Describe {
        /// Group id.
        group: String,
    },
    /// Move a group's committed offsets (a dry run unless `--execute`). The
    /// group must have no members.
    ResetOffsets(ResetArgs),
}

/// Flags of `strata admin groups reset-offsets`.
#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Group id.
    pub group: String,
    /// The topic whose offsets move: `TOPIC` for all its partitions, or
    /// `TOPIC:0,2` for some.
    #[arg(long, value_name = "TOPIC[:PARTITIONS]")]
    pub topic: String,
    /// Where the offsets move to.
    #[command(flatten)]
    pub target: ResetTarget,
    /// Commit the new offsets; without it only the plan is printed.
    #[arg(long)]
    pub execute: bool,
}

/// Where `reset-offsets` moves a group's offsets: exactly one of these.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ResetTarget {
    /// To each partition's log-start offset.
    #[arg(long)]
    pub to_earliest: bool,
    /// To each partition's log-end offset (nothing left to read).
    #[arg(long)]
    pub to_latest: bool,
    /// To this offset, kept within each partition's earliest and latest.
    #[arg(long, value_name = "OFFSET")]
    pub to_offset: Option<i64>,
}

/// Runs one `strata admin groups` operation.
pub async fn run(args: GroupsArgs, metadata: &MetadataClient) -> anyhow::Result<()> {
    let mut cluster = match args.bootstrap {
        Some(bootstrap) => Cluster::new(bootstrap, None),
        None => {
            let gateways = live_gateways(metadata).await?;
            let Some(first) = gateways.values().next() else {
                bail!("no live gateway: the metadata service knows none whose lease is current");
            };
            Cluster::new(first.clone(), Some(gateways))
        }
    };
    match args.command {
        GroupsCommand::List => list(&mut cluster).await,
        GroupsCommand::Describe { group } => describe(&mut cluster, &group).await,
        GroupsCommand::ResetOffsets(reset) => reset_offsets(&mut cluster, reset).await,
    }
}

/// The live gateways the metadata service knows, by node id, as `host:port`.
async fn live_gateways(metadata: &MetadataClient) -> anyhow::Result<BTreeMap<i32, String>> {
    let status = metadata
        .admin_call(|mut c| async move { c.cluster_status(ClusterStatusRequest {}).await })
        .await
        .with_context(|| format!("cannot reach metadata at {}", metadata.addrs().join(",")))?;
    Ok(status
        .gateways
        .iter()
        .filter(|g| g.lease_expires_ms > status.now_ms)
        .map(|g| (g.node_id, address(&g.kafka_host, g.kafka_port)))
        .collect())
}

/// `host:port`, with an IPv6 host in brackets.
fn address(host: &str, port: impl std::fmt::Display) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The gateways this command talks to, with one connection to each kept open.
struct Cluster {
    /// Where cluster-wide questions (Metadata, FindCoordinator) go.
    bootstrap: String,
    /// Live gateways by node id, when the metadata service named them.
    gateways: Option<BTreeMap<i32, String>>,
    connections: HashMap<String, KafkaConnection>,
}

impl Cluster {
    fn new(bootstrap: String, gateways: Option<BTreeMap<i32, String>>) -> Self {
        Self {
            bootstrap,
            gateways,
            connections: HashMap::new(),
        }
    }

    /// Sends `request` to the gateway at `addr`, connecting first if needed.
    /// A connection whose request failed is dropped, not reused.
    async fn call<R: Request>(
        &mut self,
        addr: &str,
        request: &R,
        version: i16,
    ) -> anyhow::Result<R::Response> {
        let mut connection = match self.connections.remove(addr) {
            Some(connection) => connection,
            None => KafkaConnection::connect(addr).await?,
        };
        let response = connection.call(request, version).await?;
        self.connections
            .insert(connection.addr().to_string(), connection);
        Ok(response)
    }

    /// Metadata of `topics` (none: only the brokers) from the bootstrap gateway.
    async fn metadata(&mut self, topics: &BTreeSet<String>) -> anyhow::Result<MetadataResponse> {
        let request = MetadataRequest::default()
            .with_topics(Some(
                topics
                    .iter()
                    .map(|t| MetadataRequestTopic::default().with_name(Some(topic_name(t))))
                    .collect(),
            ))
            .with_allow_auto_topic_creation(false);
        let bootstrap = self.bootstrap.clone();
        self.call(&bootstrap, &request, METADATA_VERSION).await
    }

    /// Every gateway (Kafka broker) by node id.
    async fn brokers(&mut self) -> anyhow::Result<BTreeMap<i32, String>> {
        if let Some(gateways) = &self.gateways {
            return Ok(gateways.clone());
        }
        let metadata = self.metadata(&BTreeSet::new()).await?;
        Ok(broker_addresses(&metadata))
    }

    /// The address of `group`'s coordinator, waiting while it moves.
    async fn find_coordinator(&mut self, group: &str) -> anyhow::Result<String> {
        let request = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(group.to_string()))
            .with_key_type(GROUP_KEY_TYPE);
        let deadline = Instant::now() + RETRY_FOR;
        let bootstrap = self.bootstrap.clone();
        loop {
            let response = self
                .call(&bootstrap, &request, FIND_COORDINATOR_VERSION)
                .await?;
            match response.error_code {
                0 => return Ok(address(&response.host, response.port)),
                code if coordinator_moved(code) && Instant::now() < deadline => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                code => bail!(
                    "cannot find the coordinator of group {group:?}: {}",
                    error_name(code)
                ),
            }
        }
    }

    /// Sends `request` to `group`'s coordinator; finds the coordinator again
    /// and retries while `error_of` the response says it moved.
    async fn at_coordinator<R: Request>(
        &mut self,
        group: &str,
        request: &R,
        version: i16,
        error_of: impl Fn(&R::Response) -> i16,
    ) -> anyhow::Result<R::Response> {
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            let coordinator = self.find_coordinator(group).await?;
            let response = self.call(&coordinator, request, version).await?;
            if coordinator_moved(error_of(&response)) && Instant::now() < deadline {
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            return Ok(response);
        }
    }
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// The brokers of a Metadata response by node id, as `host:port`.
fn broker_addresses(metadata: &MetadataResponse) -> BTreeMap<i32, String> {
    metadata
        .brokers
        .iter()
        .map(|b| (b.node_id.0, address(&b.host, b.port)))
        .collect()
}

/// A topic partition.
type Partition = (String, i32);

/// `groups list`: asks every gateway for the groups it coordinates.
async fn list(cluster: &mut Cluster) -> anyhow::Result<()> {
    let mut groups: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (node_id, addr) in cluster.brokers().await? {
        let response = cluster
            .call(&addr, &ListGroupsRequest::default(), LIST_GROUPS_VERSION)
            .await
            .with_context(|| format!("cannot list the groups of gateway {node_id}"))?;
        if response.error_code != 0 {
            bail!(
                "gateway {node_id} ({addr}) could not list its groups: {}",
                error_name(response.error_code)
            );
        }
        for listed in response.groups {
            groups.insert(
                listed.group_id.to_string(),
                (
                    listed.group_state.to_string(),
                    listed.protocol_type.to_string(),
                ),
            );
        }
    }
    let rows = groups
        .into_iter()
        .map(|(group, (state, protocol_type))| vec![group, state, or_dash(protocol_type)])
        .collect();
    print_table(&["GROUP", "STATE", "PROTOCOL-TYPE"], rows);
    Ok(())
}

fn or_dash(value: String) -> String {
    if value.is_empty() {
        "-".to_string()
    } else {
        value
    }
}

/// A group as its coordinator describes it.
struct GroupDescription {
    state: String,
    protocol_type: String,
    /// The assignor the members chose.
    protocol: String,
    members: Vec<GroupMember>,
}

/// One member of a group.
struct GroupMember {
    member_id: String,
    client_id: String,
    host: String,
    assigned: Vec<Partition>,
}

/// DescribeGroups at `group`'s coordinator.
async fn describe_group(cluster: &mut Cluster, group: &str) -> anyhow::Result<GroupDescription> {
    let request = DescribeGroupsRequest::default()
        .with_groups(vec![GroupId(StrBytes::from_string(group.to_string()))]);
    let first_error = |response: &kafka_protocol::messages::DescribeGroupsResponse| {
        response.groups.first().map_or(0, |g| g.error_code)
    };
    let response = cluster
        .at_coordinator(group, &request, DESCRIBE_GROUPS_VERSION, first_error)
        .await?;
    let Some(described) = response
        .groups
        .into_iter()
        .find(|g| g.group_id.as_str() == group)
    else {
        bail!("the coordinator did not describe group {group:?}");
    };
    if described.error_code != 0 {
        bail!(
            "cannot describe group {group:?}: {}",
            error_name(described.error_code)
        );
    }
    Ok(group_description(described))
}

fn group_description(described: DescribedGroup) -> GroupDescription {
    let consumer = described.protocol_type.as_str() == CONSUMER_PROTOCOL;
    let members = described
        .members
        .into_iter()
        .map(|m| {
            let assigned = if consumer {
                decode_assignment(&m.member_assignment).unwrap_or_else(|error| {
                    eprintln!(
                        "warning: the assignment of member {} does not decode: {error:#}",
                        m.member_id.as_str()
                    );
                    Vec::new()
                })
            } else {
                Vec::new()
            };
            GroupMember {
                member_id: m.member_id.to_string(),
                client_id: m.client_id.to_string(),
                host: m.client_host.to_string(),
                assigned,
            }
        })
        .collect();
    GroupDescription {
        state: described.group_state.to_string(),
        protocol_type: described.protocol_type.to_string(),
        protocol: described.protocol_data.to_string(),
        members,
    }
}

/// The partitions in a consumer-protocol assignment: a 2-byte version, then
/// the `ConsumerProtocolAssignment` of that version. Empty bytes (a member
/// not yet assigned) hold none.
fn decode_assignment(bytes: &[u8]) -> anyhow::Result<Vec<Partition>> {
    let mut bytes = bytes;
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    if bytes.len() < 2 {
        bail!("{} bytes", bytes.len());
    }
    let version = bytes.get_i16();
    // Later versions only add fields at the end, so the newest we know reads them.
    let assignment = ConsumerProtocolAssignment::decode(&mut bytes, version.clamp(0, 3))?;
    Ok(assignment
        .assigned_partitions
        .into_iter()
        .flat_map(|tp| {
            let topic = tp.topic.to_string();
            tp.partitions.into_iter().map(move |p| (topic.clone(), p))
        })
        .collect())
}

/// OffsetFetch at `group`'s coordinator: committed offsets of `partitions`
/// (every committed partition when `None`). Partitions never committed are
/// left out.
async fn committed_offsets(
    cluster: &mut Cluster,
    group: &str,
    partitions: Option<&BTreeSet<Partition>>,
) -> anyhow::Result<BTreeMap<Partition, i64>> {
    let topics = partitions.map(|partitions| {
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (topic, partition) in partitions {
            by_topic.entry(topic).or_default().push(*partition);
        }
        by_topic
            .into_iter()
            .map(|(topic, indexes)| {
                OffsetFetchRequestTopic::default()
                    .with_name(topic_name(topic))
                    .with_partition_indexes(indexes)
            })
            .collect()
    });
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_topics(topics);
    let response = cluster
        .at_coordinator(group, &request, OFFSET_FETCH_VERSION, |r| r.error_code)
        .await?;
    if response.error_code != 0 {
        bail!(
            "cannot fetch the committed offsets of group {group:?}: {}",
            error_name(response.error_code)
        );
    }
    let mut committed = BTreeMap::new();
    for topic in response.topics {
        for p in topic.partitions {
            if p.error_code != 0 {
                bail!(
                    "cannot fetch the committed offset of group {group:?} for {}-{}: {}",
                    topic.name.as_str(),
                    p.partition_index,
                    error_name(p.error_code)
                );
            }
            if p.committed_offset >= 0 {
                committed.insert(
                    (topic.name.to_string(), p.partition_index),
                    p.committed_offset,
                );
            }
        }
    }
    Ok(committed)
}

/// ListOffsets of `partitions` for `timestamp` at each partition's leader,
/// found through Metadata; retried while leaders move. Each partition gets
/// its offset or the Kafka error code that kept it from one.
async fn partition_offsets(
    cluster: &mut Cluster,
    partitions: &BTreeSet<Partition>,
    timestamp: i64,
) -> anyhow::Result<BTreeMap<Partition, Result<i64, i16>>> {
    let mut found = BTreeMap::new();
    let mut pending: BTreeSet<Partition> = partitions.clone();
    let deadline = Instant::now() + RETRY_FOR;
    while !pending.is_empty() {
        let topics: BTreeSet<String> = pending.iter().map(|(t, _)| t.clone()).collect();
        let metadata = cluster.metadata(&topics).await?;
        let brokers = broker_addresses(&metadata);
        let mut by_leader: BTreeMap<i32, BTreeSet<Partition>> = BTreeMap::new();
        let mut round: BTreeMap<Partition, Result<i64, i16>> = BTreeMap::new();
        for wanted in &pending {
            match partition_leader(&metadata, wanted) {
                Ok(leader) if brokers.contains_key(&leader) => {
                    by_leader.entry(leader).or_default().insert(wanted.clone());
                }
                Ok(_) => {
                    round.insert(
                        wanted.clone(),
                        Err(ResponseError::LeaderNotAvailable.code()),
                    );
                }
                Err(code) => {
                    round.insert(wanted.clone(), Err(code));
                }
            }
        }
        for (leader, asked) in by_leader {
            let addr = &brokers[&leader];
            let mut by_topic: BTreeMap<&str, Vec<ListOffsetsPartition>> = BTreeMap::new();
            for (topic, partition) in &asked {
                by_topic.entry(topic).or_default().push(
                    ListOffsetsPartition::default()
                        .with_partition_index(*partition)
                        .with_current_leader_epoch(-1)
                        .with_timestamp(timestamp),
                );
            }
            let request = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(
                    by_topic
                        .into_iter()
                        .map(|(topic, partitions)| {
                            ListOffsetsTopic::default()
                                .with_name(topic_name(topic))
                                .with_partitions(partitions)
                        })
                        .collect(),
                );
            let response = cluster
                .call(addr, &request, LIST_OFFSETS_VERSION)
                .await
                .with_context(|| format!("cannot ask gateway {leader} for offsets"))?;
            for topic in response.topics {
                for p in topic.partitions {
                    let key = (topic.name.to_string(), p.partition_index);
                    if asked.contains(&key) {
                        let offset = if p.error_code == 0 {
                            Ok(p.offset)
                        } else {
                            Err(p.error_code)
                        };
                        round.insert(key, offset);
                    }
                }
            }
            for missing in asked {
                round
                    .entry(missing)
                    .or_insert(Err(ResponseError::UnknownServerError.code()));
            }
        }
        let retry = Instant::now() < deadline;
        pending.clear();
        for (partition, offset) in round {
            match offset {
                Err(code) if retry && leader_moving(code) => {
                    pending.insert(partition);
                }
                offset => {
                    found.insert(partition, offset);
                }
            }
        }
        if !pending.is_empty() {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
    Ok(found)
}

/// The leader of `partition` in a Metadata response, or the error that
/// stands in its way.
fn partition_leader(metadata: &MetadataResponse, partition: &Partition) -> Result<i32, i16> {
    let (topic, index) = partition;
    let Some(found) = metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == topic))
    else {
        return Err(ResponseError::UnknownTopicOrPartition.code());
    };
    if found.error_code != 0 {
        return Err(found.error_code);
    }
    let Some(p) = found
        .partitions
        .iter()
        .find(|p| p.partition_index == *index)
    else {
        return Err(ResponseError::UnknownTopicOrPartition.code());
    };
    match (p.error_code, p.leader_id.0) {
        (0, leader) if leader >= 0 => Ok(leader),
        (0, _) => Err(ResponseError::LeaderNotAvailable.code()),
        (code, _) => Err(code),
    }
}

/// `groups describe GROUP`.
async fn describe(cluster: &mut Cluster, group: &str) -> anyhow::Result<()> {
    let description = describe_group(cluster, group).await?;
    let committed = committed_offsets(cluster, group, None).await?;
    if description.state == "Dead" && description.members.is_empty() && committed.is_empty() {
        bail!("consumer group {group:?} does not exist");
    }
    let mut owners: BTreeMap<Partition, &GroupMember> = BTreeMap::new();
    for member in &description.members {
        for partition in &member.assigned {
            owners.insert(partition.clone(), member);
        }
    }
    let shown: BTreeSet<Partition> = owners.keys().chain(committed.keys()).cloned().collect();
    let log_ends = partition_offsets(cluster, &shown, LATEST_TIMESTAMP).await?;

    let count = description.members.len();
    let mut summary = format!(
        "Consumer group '{group}' is {} with {count} member{}",
        description.state,
        if count == 1 { "" } else { "s" }
    );
    if !description.protocol.is_empty() {
        summary.push_str(&format!(
            " ({} protocol, assignor {})",
            description.protocol_type, description.protocol
        ));
    }
    println!("{summary}.");
    println!();

    let mut rows = Vec::new();
    let mut unknown_log_ends = Vec::new();
    for partition in &shown {
        let current = committed.get(partition).copied();
        let log_end = match log_ends.get(partition) {
            Some(Ok(offset)) => Some(*offset),
            Some(Err(code)) => {
                unknown_log_ends.push(format!(
                    "{}-{}: {}",
                    partition.0,
                    partition.1,
                    error_name(*code)
                ));
                None
            }
            None => None,
        };
        let lag = match (current, log_end) {
            (Some(current), Some(log_end)) => (log_end - current).max(0).to_string(),
            _ => "-".to_string(),
        };
        let (consumer_id, host, client_id) = match owners.get(partition) {
            Some(m) => (m.member_id.clone(), m.host.clone(), m.client_id.clone()),
            None => ("-".into(), "-".into(), "-".into()),
        };
        rows.push(vec![
            group.to_string(),
            partition.0.clone(),
            partition.1.to_string(),
            current.map_or("-".into(), |o| o.to_string()),
            log_end.map_or("-".into(), |o| o.to_string()),
            lag,
            consumer_id,
            host,
            client_id,
        ]);
    }
    // Members holding no partition still show, as kafka-consumer-groups.sh does.
    for member in description.members.iter().filter(|m| m.assigned.is_empty()) {
        rows.push(vec![
            group.to_string(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            member.member_id.clone(),
            member.host.clone(),
            member.client_id.clone(),
        ]);
    }
    print_table(
        &[
            "GROUP",
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "LOG-END-OFFSET",
            "LAG",
            "CONSUMER-ID",
            "HOST",
            "CLIENT-ID",
        ],
        rows,
    );
    for unknown in unknown_log_ends {
        eprintln!("warning: no log-end offset for {unknown}");
    }
    Ok(())
}

/// `TOPIC` or `TOPIC:0,2,5`: the topic and the chosen partitions, if any.
fn parse_topic(spec: &str) -> anyhow::Result<(String, Option<BTreeSet<i32>>)> {
    let Some((topic, partitions)) = spec.split_once(':') else {
        return Ok((spec.to_string(), None));
    };
    let partitions = partitions
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<i32>()
                .ok()
                .filter(|p| *p >= 0)
                .with_context(|| format!("{p:?} in --topic {spec:?} is not a partition number"))
        })
        .collect::<anyhow::Result<BTreeSet<i32>>>()?;
    Ok((topic.to_string(), Some(partitions)))
}

/// The partitions of `topic` (all, or the chosen ones, which must exist).
async fn topic_partitions(
    cluster: &mut Cluster,
    topic: &str,
    chosen: Option<BTreeSet<i32>>,
) -> anyhow::Result<BTreeSet<Partition>> {
    let metadata = cluster
        .metadata(&BTreeSet::from([topic.to_string()]))
        .await?;
    let Some(found) = metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == topic))
    else {
        bail!("topic {topic:?} does not exist");
    };
    match found.error_code {
        0 => {}
        code if code == ResponseError::UnknownTopicOrPartition.code() => {
            bail!("topic {topic:?} does not exist")
        }
        code => bail!("cannot look up topic {topic:?}: {}", error_name(code)),
    }
    let existing: BTreeSet<i32> = found.partitions.iter().map(|p| p.partition_index).collect();
    let partitions = match chosen {
        None => existing,
        Some(chosen) => {
            if let Some(missing) = chosen.iter().find(|p| !existing.contains(p)) {
                bail!(
                    "topic {topic:?} has no partition {missing} (it has {})",
                    existing.len()
                );
            }
            chosen
        }
    };
    Ok(partitions
        .into_iter()
        .map(|p| (topic.to_string(), p))
        .collect())
}

/// Offsets of `partitions` for `timestamp`; any partition without one is an
/// error named after the offset wanted (`what`).
async fn required_offsets(
    cluster: &mut Cluster,
    partitions: &BTreeSet<Partition>,
    timestamp: i64,
    what: &str,
) -> anyhow::Result<BTreeMap<Partition, i64>> {
    partition_offsets(cluster, partitions, timestamp)
        .await?
        .into_iter()
        .map(|((topic, partition), offset)| match offset {
            Ok(offset) => Ok(((topic, partition), offset)),
            Err(code) => bail!(
                "cannot find the {what} offset of {topic}-{partition}: {}",
                error_name(code)
            ),
        })
        .collect()
}

/// `groups reset-offsets`.
async fn reset_offsets(cluster: &mut Cluster, args: ResetArgs) -> anyhow::Result<()> {
    let group = args.group.as_str();
    let description = describe_group(cluster, group).await?;
    if !matches!(description.state.as_str(), "Empty" | "Dead") {
        bail!(
            "consumer group {group:?} is {} with {} member(s): offsets can only be reset \
             while it has none; stop its consumers first",
            description.state,
            description.members.len()
        );
    }
    let (topic, chosen) = parse_topic(&args.topic)?;
    let partitions = topic_partitions(cluster, &topic, chosen).await?;
    let current = committed_offsets(cluster, group, Some(&partitions)).await?;

    let target = &args.target;
    let new_offsets: BTreeMap<Partition, i64> = if target.to_earliest {
        required_offsets(cluster, &partitions, EARLIEST_TIMESTAMP, "earliest").await?
    } else if target.to_latest {
        required_offsets(cluster, &partitions, LATEST_TIMESTAMP, "latest").await?
    } else if let Some(wanted) = target.to_offset {
        let earliest =
            required_offsets(cluster, &partitions, EARLIEST_TIMESTAMP, "earliest").await?;
        let latest = required_offsets(cluster, &partitions, LATEST_TIMESTAMP, "latest").await?;
        let mut clamped = BTreeMap::new();
        for partition in &partitions {
            let (low, high) = (earliest[partition], latest[partition]);
            let offset = wanted.clamp(low, high.max(low));
            if offset != wanted {
                eprintln!(
                    "note: offset {wanted} is outside {}-{}'s range {low}..={high}; using {offset}",
                    partition.0, partition.1
                );
            }
            clamped.insert(partition.clone(), offset);
        }
        clamped
    } else {
        bail!("say where to reset to: --to-earliest, --to-latest or --to-offset N");
    };

    let rows = new_offsets
        .iter()
        .map(|(partition, offset)| {
            vec![
                group.to_string(),
                partition.0.clone(),
                partition.1.to_string(),
                current.get(partition).map_or("-".into(), |o| o.to_string()),
                offset.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "GROUP",
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "NEW-OFFSET",
        ],
        rows,
    );
    if !args.execute {
        println!();
        println!("Dry run: nothing was changed. Add --execute to commit these offsets.");
        return Ok(());
    }
    commit_offsets(cluster, group, &topic, &new_offsets).await?;
    println!();
    println!(
        "Committed {} offset(s) of group '{group}'.",
        new_offsets.len()
    );
    Ok(())
}

/// OffsetCommit in the simple form (generation -1, no member id) at the
/// coordinator, which only an empty group accepts.
async fn commit_offsets(
    cluster: &mut Cluster,
    group: &str,
    topic: &str,
    offsets: &BTreeMap<Partition, i64>,
) -> anyhow::Result<()> {
    let partitions = offsets
        .iter()
        .map(|((_, partition), offset)| {
            OffsetCommitRequestPartition::default()
                .with_partition_index(*partition)
                .with_committed_offset(*offset)
                .with_committed_leader_epoch(-1)
                .with_committed_metadata(Some(StrBytes::default()))
        })
        .collect();
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::default())
        .with_group_instance_id(None)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(partitions)]);
    let first_error = |response: &kafka_protocol::messages::OffsetCommitResponse| {
        response
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|p| p.error_code)
            .find(|code| *code != 0)
            .unwrap_or(0)
    };
    let response = cluster
        .at_coordinator(group, &request, OFFSET_COMMIT_VERSION, first_error)
        .await?;
    let failed: Vec<String> = response
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .filter(|p| p.error_code != 0)
                .map(move |p| {
                    format!(
                        "{}-{}: {}",
                        t.name.as_str(),
                        p.partition_index,
                        error_name(p.error_code)
                    )
                })
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "committing the offsets of group {group:?} failed: {}",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Prints `rows` under `header` in left-aligned columns.
fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    print!("{}", super::table::table(header, &rows, "", " "));
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::protocol::Encodable;

    #[test]
    fn consumer_assignments_decode_after_their_version() {
        let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
            TopicPartition::default()
                .with_topic(topic_name("orders"))
                .with_partitions(vec![0, 2]),
        ]);
        let mut bytes = bytes::BytesMut::new();
        bytes.extend_from_slice(&1i16.to_be_bytes());
        assignment.encode(&mut bytes, 1).unwrap();
        assert_eq!(
            decode_assignment(&bytes).unwrap(),
            vec![("orders".to_string(), 0), ("orders".to_string(), 2)]
        );
        assert!(decode_assignment(&[]).unwrap().is_empty());
        assert!(decode_assignment(&[0]).is_err());
        assert!(decode_assignment(&[0, 0, 0, 0, 0, 9]).is_err());
    }

    #[test]
    fn topic_specs_name_all_or_some_partitions() {
        assert_eq!(parse_topic("t").unwrap(), ("t".to_string(), None));
        assert_eq!(
            parse_topic("t:2,0").unwrap(),
            ("t".to_string(), Some(BTreeSet::from([0, 2])))
        );
        assert!(parse_topic("t:x").is_err());
        assert!(parse_topic("t:-1").is_err());
    }
}
