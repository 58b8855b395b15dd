//! Topic configs over Kafka: DescribeConfigs, IncrementalAlterConfigs and the
//! legacy AlterConfigs. Descriptions are read from the cluster cache; changes
//! go to the metadata service, whose state machine checks every key and value
//! and applies one resource's changes all together or not at all.
//!
//! Broker configs live in each gateway's config file: they are described as an
//! empty list and cannot be altered over Kafka.

use super::Gatekeeper;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse as LegacyResult;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use strata_metadata::topic_rules::{
    check_topic_name, topic_config_default, topic_config_defaults, topic_config_type, ConfigType,
};
use strata_proto::error_code;
use strata_proto::metadata::{
    AlterTopicConfigsRequest, ConfigOperation, Outcome, TopicConfigChange,
};

/// Kafka's resource type of a topic.
const RESOURCE_TOPIC: i8 = 2;
/// Kafka's resource type of a broker.
const RESOURCE_BROKER: i8 = 4;
/// Kafka's `config_source` of a config set on the topic.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
/// Kafka's `config_source` of a config left at its default.
const DEFAULT_CONFIG: i8 = 5;
/// IncrementalAlterConfigs operations, as Kafka numbers them.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;
/// How long a successful alter waits for this gateway's cache to show it, so
/// that a DescribeConfigs sent right after it reads the new values.
const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(2);

/// Kafka's `config_type` code of a config type (DescribeConfigs v3+).
fn kafka_config_type(config_type: Option<ConfigType>) -> i8 {
    match config_type {
        None => 0,
        Some(ConfigType::String) => 2,
        Some(ConfigType::Int) => 3,
        Some(ConfigType::Long) => 5,
        Some(ConfigType::List) => 7,
    }
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn message(outcome: &Outcome) -> Option<StrBytes> {
    (!outcome.is_ok()).then(|| StrBytes::from_string(outcome.error_message.clone()))
}

/// Describes each requested resource: a topic's configs (every config Strata
/// honours, set or default, and any other set on the topic), or a broker's
/// (none).
pub fn describe_configs(
    gatekeeper: &Gatekeeper,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match resource.resource_type {
                RESOURCE_TOPIC => {
                    match describe_topic(gatekeeper, &resource, request.include_synonyms) {
                        Ok(configs) => result.with_configs(configs),
                        Err(outcome) => result
                            .with_error_code(outcome.error_code as i16)
                            .with_error_message(message(&outcome)),
                    }
                }
                RESOURCE_BROKER => result,
                other => result
                    .with_error_code(error_code::INVALID_REQUEST as i16)
                    .with_error_message(Some(str_bytes(&format!(
                        "resource type {other} has no configs here"
                    )))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn describe_topic(
    gatekeeper: &Gatekeeper,
    resource: &DescribeConfigsResource,
    include_synonyms: bool,
) -> Result<Vec<DescribeConfigsResourceResult>, Outcome> {
    let name = resource.resource_name.as_str();
    let set = gatekeeper
        .cache()
        .read(|state| state.topics.get(name).map(|t| t.configs.clone()));
    let Some(set) = set else {
        check_topic_name(name)?;
        return Err(Outcome::error(
            error_code::UNKNOWN_TOPIC_OR_PARTITION,
            format!("topic {name:?} does not exist"),
        ));
    };
    // Every honoured config at its value or default, then the other configs
    // set on the topic; sorted by name.
    let mut described: BTreeMap<&str, (&str, i8)> = topic_config_defaults()
        .map(|(key, default)| (key, (default, DEFAULT_CONFIG)))
        .collect();
    for (key, value) in &set {
        described.insert(key, (value, DYNAMIC_TOPIC_CONFIG));
    }
    let wanted = |key: &str| {
        resource
            .configuration_keys
            .as_ref()
            .is_none_or(|keys| keys.iter().any(|k| k.as_str() == key))
    };
    Ok(described
        .into_iter()
        .filter(|(key, _)| wanted(key))
        .map(|(key, (value, source))| {
            let default = topic_config_default(key);
            let synonyms = if include_synonyms {
                synonyms(key, value, source, default)
            } else {
                Vec::new()
            };
            DescribeConfigsResourceResult::default()
                .with_name(str_bytes(key))
                .with_value(Some(str_bytes(value)))
                .with_read_only(false)
                .with_config_source(source)
                .with_is_sensitive(false)
                .with_synonyms(synonyms)
                .with_config_type(kafka_config_type(topic_config_type(key)))
        })
        .collect())
}

/// Where a config's value may come from, most specific first, as Kafka lists
/// them: the topic's own value, then the default.
fn synonyms(
    key: &str,
    value: &str,
    source: i8,
    default: Option<&str>,
) -> Vec<DescribeConfigsSynonym> {
    let synonym = |value: &str, source| {
        DescribeConfigsSynonym::default()
            .with_name(str_bytes(key))
            .with_value(Some(str_bytes(value)))
            .with_source(source)
    };
    let mut synonyms = Vec::new();
    if source == DYNAMIC_TOPIC_CONFIG {
        synonyms.push(synonym(value, DYNAMIC_TOPIC_CONFIG));
    }
    if let Some(default) = default {
        synonyms.push(synonym(default, DEFAULT_CONFIG));
    }
    synonyms
}

/// Applies each resource's SET, DELETE, APPEND and SUBTRACT operations; a
/// topic's operations apply together or not at all.
pub async fn incremental_alter_configs(
    gatekeeper: &Gatekeeper,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let outcome = match resource.resource_type {
            RESOURCE_TOPIC => {
                let name = resource.resource_name.to_string();
                match incremental_changes(gatekeeper, &name, &resource.configs) {
                    Ok(changes) => {
                        alter_topic(gatekeeper, name, changes, request.validate_only, false).await
                    }
                    Err(outcome) => outcome,
                }
            }
            other => not_alterable(other),
        };
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(outcome.error_code as i16)
                .with_error_message(message(&outcome))
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// Replaces each topic's configs with those given (Kafka's legacy
/// AlterConfigs): configs not named go back to their defaults.
pub async fn alter_configs(
    gatekeeper: &Gatekeeper,
    request: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let outcome = match resource.resource_type {
            RESOURCE_TOPIC => {
                let changes: Result<Vec<_>, _> = resource
                    .configs
                    .iter()
                    .map(|config| match &config.value {
                        Some(value) => Ok(set(config.name.as_str(), value.as_str())),
                        None => Err(no_value(config.name.as_str())),
                    })
                    .collect();
                match changes {
                    Ok(changes) => {
                        let name = resource.resource_name.to_string();
                        alter_topic(gatekeeper, name, changes, request.validate_only, true).await
                    }
                    Err(outcome) => outcome,
                }
            }
            other => not_alterable(other),
        };
        responses.push(
            LegacyResult::default()
                .with_error_code(outcome.error_code as i16)
                .with_error_message(message(&outcome))
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}

fn not_alterable(resource_type: i8) -> Outcome {
    let why = if resource_type == RESOURCE_BROKER {
        "broker configs are set in each gateway's config file, not over Kafka".to_string()
    } else {
        format!("resource type {resource_type} has no alterable configs")
    };
    Outcome::error(error_code::INVALID_REQUEST, why)
}

fn no_value(key: &str) -> Outcome {
    Outcome::error(
        error_code::INVALID_REQUEST,
        format!("config {key:?} is set without a value"),
    )
}

fn set(key: &str, value: &str) -> TopicConfigChange {
    TopicConfigChange {
        key: key.to_string(),
        value: value.to_string(),
        op: ConfigOperation::Set as i32,
    }
}

/// The metadata changes of a topic's incremental operations. APPEND and
/// SUBTRACT become a SET of the list they make from the topic's current value
/// (as this gateway's cache has it, or the default); they apply to list
/// configs only.
fn incremental_changes(
    gatekeeper: &Gatekeeper,
    topic: &str,
    configs: &[AlterableConfig],
) -> Result<Vec<TopicConfigChange>, Outcome> {
    let current: HashMap<String, String> = gatekeeper.cache().read(|state| {
        state
            .topics
            .get(topic)
            .map(|t| t.configs.clone())
            .unwrap_or_default()
    });
    configs
        .iter()
        .map(|config| {
            let key = config.name.as_str();
            let value = config.value.as_ref().map(|v| v.as_str());
            match config.config_operation {
                OP_SET => value.map(|v| set(key, v)).ok_or_else(|| no_value(key)),
                OP_DELETE => Ok(TopicConfigChange {
                    key: key.to_string(),
                    value: String::new(),
                    op: ConfigOperation::Delete as i32,
                }),
                op @ (OP_APPEND | OP_SUBTRACT) => {
                    match topic_config_type(key) {
                        Some(ConfigType::List) => {}
                        Some(_) => {
                            return Err(Outcome::error(
                                error_code::INVALID_REQUEST,
                                format!(
                                "config {key:?} is not a list: APPEND and SUBTRACT do not apply"
                            ),
                            ))
                        }
                        None => {
                            return Err(Outcome::error(
                                error_code::INVALID_CONFIG,
                                format!("unknown topic config {key:?}"),
                            ))
                        }
                    }
                    let value = value.ok_or_else(|| no_value(key))?;
                    let old = current
                        .get(key)
                        .map(String::as_str)
                        .or(topic_config_default(key))
                        .unwrap_or_default();
                    Ok(set(key, &list_op(old, value, op == OP_APPEND)))
                }
                op => Err(Outcome::error(
                    error_code::INVALID_REQUEST,
                    format!("unknown config operation {op} for {key:?}"),
                )),
            }
        })
        .collect()
}

/// A comma-separated list with `items` appended (those not already in it) or
/// subtracted.
fn list_op(list: &str, items: &str, append: bool) -> String {
    let split = |s: &str| -> Vec<String> {
        s.split(',')
            .map(|item| item.trim().to_string())
            .filter(|item| !item.is_empty())
            .collect()
    };
    let mut result = split(list);
    let items = split(items);
    if append {
        for item in items {
            if !result.contains(&item) {
                result.push(item);
            }
        }
    } else {
        result.retain(|item| !items.contains(item));
    }
    result.join(",")
}

/// Sends a topic's config changes to the metadata service; on success, waits
/// (briefly) until this gateway's cache shows the new configs.
async fn alter_topic(
    gatekeeper: &Gatekeeper,
    topic: String,
    changes: Vec<TopicConfigChange>,
    validate_only: bool,
    replace: bool,
) -> Outcome {
    let request = AlterTopicConfigsRequest {
        topic,
        changes,
        validate_only,
        replace,
    };
    let result = gatekeeper
        .client()
        .send(request, |mut c, request| async move {
            c.alter_topic_configs(request).await
        })
        .await;
    let reply = match result {
        Ok(reply) => reply,
        Err(error) => {
            tracing::warn!(%error, "metadata call to alter topic configs failed");
            return Outcome::error(
                error_code::REQUEST_TIMED_OUT,
                format!("metadata service unavailable: {error}"),
            );
        }
    };
    let outcome = reply.outcome.unwrap_or_else(|| {
        Outcome::error(error_code::UNKNOWN_SERVER_ERROR, "metadata gave no outcome")
    });
    if let Some(altered) = reply.topic.filter(|_| outcome.is_ok() && !validate_only) {
        let seen = gatekeeper
            .cache()
            .wait_for(READ_YOUR_WRITES_WAIT, |state| {
                state
                    .topics
                    .get(&altered.name)
                    .is_some_and(|t| t.configs == altered.configs)
            })
            .await;
        if !seen {
            tracing::debug!(topic = %altered.name, "altered configs not in the cache yet");
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_operations_append_missing_items_and_subtract_present_ones() {
        assert_eq!(list_op("delete", "delete", true), "delete");
        assert_eq!(list_op("delete", "compact", true), "delete,compact");
        assert_eq!(list_op("", "delete", true), "delete");
        assert_eq!(list_op("delete,compact", "delete", false), "compact");
        assert_eq!(list_op("delete", "delete", false), "");
        assert_eq!(list_op("a, b", "c,a", true), "a,b,c");
    }

    #[test]
    fn synonyms_list_the_topic_value_before_the_default() {
        let both = synonyms("retention.ms", "1", DYNAMIC_TOPIC_CONFIG, Some("2"));
        let sources: Vec<i8> = both.iter().map(|s| s.source).collect();
        assert_eq!(sources, vec![DYNAMIC_TOPIC_CONFIG, DEFAULT_CONFIG]);
        let default = synonyms("retention.ms", "2", DEFAULT_CONFIG, Some("2"));
        assert_eq!(default.len(), 1);
        assert!(synonyms("compression.type", "lz4", DYNAMIC_TOPIC_CONFIG, None).len() == 1);
    }
}
