//! Metadata: the live gateways as brokers, the controller, the cluster id, and
//! each requested topic's partitions with their owning gateway as leader.
//! With `auto_create_topics`, named topics that do not exist are created first.

use super::Gatekeeper;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use std::collections::HashSet;
use std::time::Duration;
use strata_metadata::cache::CachedState;
use strata_proto::error_code;
use strata_proto::metadata::{CreateTopicRequest, TopicInfo};

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const LEADER_NOT_AVAILABLE: i16 = 5;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const UNKNOWN_TOPIC_ID: i16 = 100;
/// Partition count that asks metadata for its default.
const DEFAULT_PARTITIONS: i32 = -1;
/// How long a Metadata request that created topics waits for them to reach
/// this gateway's cache; one still missing is answered LEADER_NOT_AVAILABLE,
/// and the client asks again.
const AUTO_CREATE_WAIT: Duration = Duration::from_secs(2);

/// Answers a Metadata request from the cluster cache, creating the unknown
/// topics it names first when the gateway auto-creates topics and the client
/// allows it.
pub async fn handle(
    gatekeeper: &Gatekeeper,
    request: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let created = if gatekeeper.config.auto_create_topics && request.allow_auto_topic_creation {
        create_missing(gatekeeper, &request).await
    } else {
        HashSet::new()
    };
    let now_ms = strata_metadata::now_ms();
    gatekeeper
        .cache()
        .read(|state| respond(gatekeeper, state, request, version, now_ms, &created))
}

/// Creates the topics `request` names that this gateway's cache does not
/// have, with the default partition count, and waits (briefly) until the cache
/// has them. Returns the names that exist now or are being created. Names
/// starting with `__` are left alone: Kafka keeps them for internal topics.
async fn create_missing(gatekeeper: &Gatekeeper, request: &MetadataRequest) -> HashSet<String> {
    let named = request
        .topics
        .iter()
        .flatten()
        .filter_map(|t| t.name.as_ref());
    let missing: Vec<String> = gatekeeper.cache().read(|state| {
        named
            .map(|name| name.0.to_string())
            .filter(|name| !state.topics.contains_key(name))
            .filter(|name| !name.starts_with("__"))
            .filter(|name| strata_metadata::topic_rules::check_topic_name(name).is_ok())
            .collect()
    });
    let mut created = HashSet::new();
    for name in missing {
        let create = CreateTopicRequest {
            name: name.clone(),
            partition_count: DEFAULT_PARTITIONS,
            configs: Default::default(),
            validate_only: false,
        };
        let result = gatekeeper
            .client()
            .call(|mut c| {
                let create = create.clone();
                async move { c.create_topic(create).await }
            })
            .await;
        match result.map(|reply| reply.outcome.unwrap_or_default()) {
            Ok(outcome)
                if outcome.is_ok() || outcome.error_code == error_code::TOPIC_ALREADY_EXISTS =>
            {
                tracing::info!(topic = %name, "auto-created topic");
                created.insert(name);
            }
            Ok(outcome) => {
                tracing::warn!(topic = %name, error = %outcome.error_message, "auto-creating topic refused")
            }
            Err(error) => tracing::warn!(topic = %name, %error, "auto-creating topic failed"),
        }
    }
    if !created.is_empty() {
        gatekeeper
            .cache()
            .wait_for(AUTO_CREATE_WAIT, |state| {
                created.iter().all(|name| state.topics.contains_key(name))
            })
            .await;
    }
    created
}

fn respond(
    gatekeeper: &Gatekeeper,
    state: &CachedState,
    request: MetadataRequest,
    version: i16,
    now_ms: u64,
    created: &HashSet<String>,
) -> MetadataResponse {
    // This gateway describes itself from its own settings: a gateway answering
    // requests is alive, and after a restart the cache may still hold its
    // previous registration (an old port) until the new one arrives.
    let own_id = gatekeeper.config.node_id;
    let mut brokers: Vec<MetadataResponseBroker> = state
        .live_gateways(now_ms)
        .filter(|g| g.node_id != own_id)
        .map(|g| broker(g.node_id, &g.kafka_host, g.kafka_port as i32, &g.zone))
        .collect();
    brokers.push(broker(
        own_id,
        &gatekeeper.advertised_host,
        gatekeeper.advertised_port as i32,
        &gatekeeper.config.zone,
    ));
    brokers.sort_by_key(|b| *b.node_id);
    let controller_id = brokers.first().map(|b| *b.node_id).unwrap_or(-1);
    let live: Vec<i32> = brokers.iter().map(|b| *b.node_id).collect();

    // v0 asks for every topic with an empty list; later versions with a null one.
    let wanted = match request.topics {
        None => None,
        Some(topics) if topics.is_empty() && version == 0 => None,
        Some(topics) => Some(topics),
    };
    let topics = match wanted {
        None => state
            .topics
            .values()
            .map(|topic| describe_topic(state, topic, &live))
            .collect(),
        Some(requested) => requested
            .into_iter()
            .map(|wanted| match wanted.name {
                Some(name) => match state.topics.get(name.0.as_str()) {
                    Some(topic) => describe_topic(state, topic, &live),
                    None => {
                        let code = if created.contains(name.0.as_str()) {
                            LEADER_NOT_AVAILABLE
                        } else if strata_metadata::topic_rules::check_topic_name(&name.0).is_ok() {
                            UNKNOWN_TOPIC_OR_PARTITION
                        } else {
                            INVALID_TOPIC_EXCEPTION
                        };
                        MetadataResponseTopic::default()
                            .with_name(Some(name))
                            .with_error_code(code)
                    }
                },
                None => state
                    .topics
                    .values()
                    .find(|t| t.topic_id.as_ref() == wanted.topic_id.as_bytes())
                    .map(|topic| describe_topic(state, topic, &live))
                    .unwrap_or_else(|| {
                        MetadataResponseTopic::default()
                            .with_topic_id(wanted.topic_id)
                            .with_error_code(UNKNOWN_TOPIC_ID)
                    }),
            })
            .collect(),
    };

    let cluster_id =
        (!state.cluster_id.is_empty()).then(|| StrBytes::from_string(state.cluster_id.clone()));
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(cluster_id)
        .with_controller_id(BrokerId(controller_id))
        .with_topics(topics)
}

fn broker(node_id: i32, host: &str, port: i32, zone: &str) -> MetadataResponseBroker {
    MetadataResponseBroker::default()
        .with_node_id(BrokerId(node_id))
        .with_host(StrBytes::from_string(host.to_string()))
        .with_port(port)
        .with_rack((!zone.is_empty()).then(|| StrBytes::from_string(zone.to_string())))
}

fn describe_topic(state: &CachedState, topic: &TopicInfo, live: &[i32]) -> MetadataResponseTopic {
    let partitions = (0..topic.partition_count)
        .map(|index| {
            let owner = state
                .partitions
                .get(&(topic.name.clone(), index))
                .filter(|p| live.contains(&p.owner));
            let partition = MetadataResponsePartition::default().with_partition_index(index as i32);
            match owner {
                Some(p) => partition
                    .with_leader_id(BrokerId(p.owner))
                    .with_leader_epoch(p.leader_epoch as i32)
                    .with_replica_nodes(vec![BrokerId(p.owner)])
                    .with_isr_nodes(vec![BrokerId(p.owner)]),
                None => partition
                    .with_error_code(LEADER_NOT_AVAILABLE)
                    .with_leader_id(BrokerId(-1)),
            }
        })
        .collect();
    let topic_id = uuid::Uuid::from_slice(&topic.topic_id).unwrap_or_default();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
        .with_topic_id(topic_id)
        .with_partitions(partitions)
}
