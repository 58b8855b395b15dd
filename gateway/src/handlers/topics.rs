//! Topic administration: CreateTopics, DeleteTopics and CreatePartitions,
//! passed to the metadata service, whose state machine checks every rule and
//! answers with the Kafka error code the client gets.

use super::Gatekeeper;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use std::collections::{BTreeMap, HashSet};
use strata_metadata::client::ClientError;
use strata_proto::error_code;
use strata_proto::metadata::{
    CreatePartitionsRequest as MetaCreatePartitions, CreateTopicRequest, DeleteTopicRequest,
    Outcome, TopicInfo,
};

/// Replication factor reported for every topic: each segment is written to a
/// write quorum of three bookies.
const REPORTED_REPLICATION_FACTOR: i16 = 3;
/// Kafka's `config_source` for a config set on the topic.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;

/// The outcome of a metadata call, or the error a client should retry on.
fn outcome_of<T>(result: Result<T, ClientError>, outcome: impl FnOnce(&T) -> Outcome) -> Outcome {
    match result {
        Ok(reply) => outcome(&reply),
        Err(error) => {
            tracing::warn!(%error, "metadata call for topic administration failed");
            Outcome::error(
                error_code::REQUEST_TIMED_OUT,
                format!("metadata service unavailable: {error}"),
            )
        }
    }
}

fn message(outcome: &Outcome) -> Option<StrBytes> {
    (!outcome.is_ok()).then(|| StrBytes::from_string(outcome.error_message.clone()))
}

/// Creates each requested topic (or only checks it, with `validate_only`).
pub async fn create_topics(
    gatekeeper: &Gatekeeper,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut seen = HashSet::new();
    let duplicated: HashSet<String> = request
        .topics
        .iter()
        .map(|t| t.name.to_string())
        .filter(|name| !seen.insert(name.clone()))
        .collect();
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.clone();
        let (outcome, created) = if duplicated.contains(name.as_str()) {
            let outcome = Outcome::error(
                error_code::INVALID_REQUEST,
                format!("topic {name:?} appears more than once in the request"),
            );
            (outcome, None)
        } else {
            create_one(gatekeeper, topic, request.validate_only).await
        };
        results.push(created_result(name, &outcome, created.as_ref(), version));
    }
    CreateTopicsResponse::default().with_topics(results)
}

async fn create_one(
    gatekeeper: &Gatekeeper,
    topic: CreatableTopic,
    validate_only: bool,
) -> (Outcome, Option<TopicInfo>) {
    if topic.replication_factor == 0 || topic.replication_factor < -1 {
        let outcome = Outcome::error(
            error_code::INVALID_REPLICATION_FACTOR,
            format!(
                "replication factor {} is invalid: use -1 or a positive count",
                topic.replication_factor
            ),
        );
        return (outcome, None);
    }
    if !topic.assignments.is_empty() {
        let outcome = Outcome::error(
            error_code::INVALID_REQUEST,
            "manual replica assignment is not supported: partitions are owned by gateways",
        );
        return (outcome, None);
    }
    let mut configs = BTreeMap::new();
    for config in topic.configs {
        let Some(value) = config.value else {
            let outcome = Outcome::error(
                error_code::INVALID_CONFIG,
                format!("config {} has no value", config.name),
            );
            return (outcome, None);
        };
        configs.insert(config.name.to_string(), value.to_string());
    }
    let request = CreateTopicRequest {
        name: topic.name.to_string(),
        partition_count: topic.num_partitions,
        configs: configs.into_iter().collect(),
        validate_only,
    };
    let result = gatekeeper
        .client()
        .send(request, |mut c, request| async move {
            c.create_topic(request).await
        })
        .await;
    match result {
        Ok(reply) => (reply.outcome.unwrap_or_default(), reply.topic),
        Err(error) => (outcome_of::<()>(Err(error), |_| Outcome::ok()), None),
    }
}

fn created_result(
    name: TopicName,
    outcome: &Outcome,
    topic: Option<&TopicInfo>,
    version: i16,
) -> CreatableTopicResult {
    let mut result = CreatableTopicResult::default()
        .with_name(name)
        .with_error_code(outcome.error_code as i16)
        .with_error_message(message(outcome));
    if version >= 5 {
        result = match topic.filter(|_| outcome.is_ok()) {
            Some(topic) => result
                .with_num_partitions(topic.partition_count as i32)
                .with_replication_factor(REPORTED_REPLICATION_FACTOR)
                .with_configs(Some(
                    topic
                        .configs
                        .iter()
                        .map(|(key, value)| {
                            CreatableTopicConfigs::default()
                                .with_name(StrBytes::from_string(key.clone()))
                                .with_value(Some(StrBytes::from_string(value.clone())))
                                .with_config_source(DYNAMIC_TOPIC_CONFIG)
                        })
                        .collect(),
                )),
            None => result
                .with_num_partitions(-1)
                .with_replication_factor(-1)
                .with_configs(None),
        };
    }
    if version >= 7 {
        let topic_id = topic
            .and_then(|t| uuid::Uuid::from_slice(&t.topic_id).ok())
            .unwrap_or_default();
        result = result.with_topic_id(topic_id);
    }
    result
}

/// Deletes each named topic (by name, or by id from v6).
pub async fn delete_topics(
    gatekeeper: &Gatekeeper,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    // v1–5 name topics; v6 names them or gives their ids.
    let mut wanted: Vec<(Option<String>, uuid::Uuid)> = request
        .topic_names
        .iter()
        .map(|name| (Some(name.to_string()), uuid::Uuid::nil()))
        .collect();
    wanted.extend(
        request
            .topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.to_string()), t.topic_id)),
    );
    let mut responses = Vec::with_capacity(wanted.len());
    for (name, topic_id) in wanted {
        let name = name.or_else(|| name_of(gatekeeper, topic_id));
        let (outcome, name) = match name {
            Some(name) => {
                let request = DeleteTopicRequest { name: name.clone() };
                let result = gatekeeper
                    .client()
                    .send(request, |mut c, request| async move {
                        c.delete_topic(request).await
                    })
                    .await;
                let outcome = outcome_of(result, |r| r.outcome.clone().unwrap_or_default());
                (outcome, Some(name))
            }
            None => {
                let outcome = Outcome::error(
                    error_code::UNKNOWN_TOPIC_ID,
                    format!("no topic has id {topic_id}"),
                );
                (outcome, None)
            }
        };
        responses.push(
            DeletableTopicResult::default()
                .with_name(name.map(|n| TopicName(StrBytes::from_string(n))))
                .with_topic_id(topic_id)
                .with_error_code(outcome.error_code as i16)
                .with_error_message(message(&outcome)),
        );
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

fn name_of(gatekeeper: &Gatekeeper, topic_id: uuid::Uuid) -> Option<String> {
    if topic_id.is_nil() {
        return None;
    }
    gatekeeper.cache().read(|state| {
        state
            .topics
            .values()
            .find(|t| t.topic_id.as_ref() == topic_id.as_bytes())
            .map(|t| t.name.clone())
    })
}

/// Raises each topic's partition count.
pub async fn create_partitions(
    gatekeeper: &Gatekeeper,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let outcome = if topic.assignments.is_some_and(|a| !a.is_empty()) {
            Outcome::error(
                error_code::INVALID_REQUEST,
                "manual replica assignment is not supported: partitions are owned by gateways",
            )
        } else if topic.count < 1 {
            Outcome::error(
                error_code::INVALID_PARTITIONS,
                format!("partition count {} must be positive", topic.count),
            )
        } else {
            let request = MetaCreatePartitions {
                topic: topic.name.to_string(),
                new_total: topic.count as u32,
                validate_only: request.validate_only,
            };
            let result = gatekeeper
                .client()
                .send(request, |mut c, request| async move {
                    c.create_partitions(request).await
                })
                .await;
            outcome_of(result, |r| r.outcome.clone().unwrap_or_default())
        };
        results.push(
            CreatePartitionsTopicResult::default()
                .with_name(topic.name)
                .with_error_code(outcome.error_code as i16)
                .with_error_message(message(&outcome)),
        );
    }
    CreatePartitionsResponse::default().with_results(results)
}
