//! Committed-offset APIs: OffsetCommit, OffsetFetch (one group, or several in
//! the batched v8 form) and OffsetDelete.

use super::Gatekeeper;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use std::collections::BTreeMap;
use strata_metadata::state::MAX_OFFSET_METADATA_BYTES;
use strata_proto::metadata::{CommittedOffset, TopicPartition};

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// Whether `topic`-`partition` exists, as this gateway's cache knows it.
fn partition_exists(gatekeeper: &Gatekeeper, topic: &str, partition: i32) -> bool {
    u32::try_from(partition)
        .is_ok_and(|p| gatekeeper.cache.read(|s| s.partition(topic, p).is_some()))
}

/// Answers OffsetCommit: partitions that do not exist or carry too much
/// metadata are refused one by one; the rest are committed together.
pub async fn offset_commit(
    gatekeeper: &Gatekeeper,
    request: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let mut codes: Vec<(TopicName, Vec<(i32, i16)>)> = Vec::new();
    let mut offsets = Vec::new();
    for topic in &request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let metadata = p.committed_metadata.as_deref().unwrap_or("");
            let code = if !partition_exists(gatekeeper, &topic.name, p.partition_index) {
                ResponseError::UnknownTopicOrPartition.code()
            } else if metadata.len() > MAX_OFFSET_METADATA_BYTES {
                ResponseError::OffsetMetadataTooLarge.code()
            } else {
                offsets.push(CommittedOffset {
                    group: request.group_id.to_string(),
                    topic: topic.name.to_string(),
                    partition: p.partition_index as u32,
                    offset: p.committed_offset,
                    leader_epoch: if version >= 6 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata: metadata.to_string(),
                    commit_timestamp_ms: 0,
                });
                // Filled in once the commit's outcome is known.
                -1
            };
            partitions.push((p.partition_index, code));
        }
        codes.push((topic.name.clone(), partitions));
    }
    let instance = if version >= 7 {
        request.group_instance_id.as_deref()
    } else {
        None
    };
    let outcome = gatekeeper
        .coordinator
        .commit_offsets(
            &request.group_id,
            &request.member_id,
            instance,
            request.generation_id_or_member_epoch,
            offsets,
        )
        .await;
    let committed_code = outcome.err().unwrap_or(0);
    let topics = codes
        .into_iter()
        .map(|(name, partitions)| {
            OffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(partition_index, code)| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(partition_index)
                                .with_error_code(if code == -1 { committed_code } else { code })
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// One group's committed offsets by topic, each partition with its offset,
/// leader epoch, metadata and error code.
type GroupOffsets = BTreeMap<String, Vec<(i32, i64, i32, String, i16)>>;

/// The committed offsets of `group` for the asked partitions (every committed
/// partition when `None`); a partition never committed gets offset -1.
async fn fetch_group(
    gatekeeper: &Gatekeeper,
    group: &str,
    asked: Option<Vec<(String, Vec<i32>)>>,
) -> Result<GroupOffsets, i16> {
    let wanted = asked.map(|topics| {
        topics
            .into_iter()
            .flat_map(|(topic, partitions)| {
                partitions.into_iter().filter_map(move |p| {
                    u32::try_from(p).ok().map(|partition| TopicPartition {
                        topic: topic.clone(),
                        partition,
                    })
                })
            })
            .collect::<Vec<_>>()
    });
    let offsets = gatekeeper.coordinator.fetch_offsets(group, wanted).await?;
    let mut by_topic = GroupOffsets::new();
    for o in offsets {
        by_topic.entry(o.topic).or_default().push((
            o.partition as i32,
            o.offset,
            o.leader_epoch,
            o.metadata,
            0,
        ));
    }
    Ok(by_topic)
}

/// Answers OffsetFetch, for one group (v1–7) or several (v8).
pub async fn offset_fetch(
    gatekeeper: &Gatekeeper,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::with_capacity(request.groups.len());
        for group in request.groups {
            let asked = group.topics.map(|topics| {
                topics
                    .into_iter()
                    .map(|t| (t.name.to_string(), t.partition_indexes))
                    .collect()
            });
            let answer = match fetch_group(gatekeeper, &group.group_id, asked).await {
                Ok(by_topic) => OffsetFetchResponseGroup::default().with_topics(
                    by_topic
                        .into_iter()
                        .map(|(topic, partitions)| {
                            OffsetFetchResponseTopics::default()
                                .with_name(topic_name(&topic))
                                .with_partitions(
                                    partitions
                                        .into_iter()
                                        .map(|(index, offset, epoch, metadata, code)| {
                                            OffsetFetchResponsePartitions::default()
                                                .with_partition_index(index)
                                                .with_committed_offset(offset)
                                                .with_committed_leader_epoch(epoch)
                                                .with_metadata(Some(StrBytes::from_string(
                                                    metadata,
                                                )))
                                                .with_error_code(code)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
                Err(code) => OffsetFetchResponseGroup::default().with_error_code(code),
            };
            groups.push(answer.with_group_id(group.group_id));
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let asked: Option<Vec<(String, Vec<i32>)>> = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name.to_string(), t.partition_indexes))
            .collect()
    });
    let by_topic = match fetch_group(gatekeeper, &request.group_id, asked.clone()).await {
        Ok(by_topic) => by_topic,
        // v1 has no group-level error: every asked partition carries it.
        Err(code) if version < 2 => asked
            .unwrap_or_default()
            .into_iter()
            .map(|(topic, partitions)| {
                let failed = partitions
                    .into_iter()
                    .map(|p| (p, -1, -1, String::new(), code))
                    .collect();
                (topic, failed)
            })
            .collect(),
        Err(code) => return OffsetFetchResponse::default().with_error_code(code),
    };
    let topics = by_topic
        .into_iter()
        .map(|(topic, partitions)| {
            OffsetFetchResponseTopic::default()
                .with_name(topic_name(&topic))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(index, offset, epoch, metadata, code)| {
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(index)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(epoch)
                                .with_metadata(Some(StrBytes::from_string(metadata)))
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

/// Answers OffsetDelete.
pub async fn offset_delete(
    gatekeeper: &Gatekeeper,
    request: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let mut unknown: Vec<(String, i32)> = Vec::new();
    let mut wanted = Vec::new();
    for topic in &request.topics {
        for p in &topic.partitions {
            if partition_exists(gatekeeper, &topic.name, p.partition_index) {
                wanted.push(TopicPartition {
                    topic: topic.name.to_string(),
                    partition: p.partition_index as u32,
                });
            } else {
                unknown.push((topic.name.to_string(), p.partition_index));
            }
        }
    }
    let deleted = match gatekeeper
        .coordinator
        .delete_offsets(&request.group_id, wanted)
        .await
    {
        Ok(deleted) => deleted,
        Err(code) => return OffsetDeleteResponse::default().with_error_code(code),
    };
    let mut by_topic: BTreeMap<String, Vec<(i32, i16)>> = BTreeMap::new();
    for (partition, code) in deleted {
        by_topic
            .entry(partition.topic)
            .or_default()
            .push((partition.partition as i32, code));
    }
    for (topic, partition) in unknown {
        by_topic
            .entry(topic)
            .or_default()
            .push((partition, ResponseError::UnknownTopicOrPartition.code()));
    }
    let topics = by_topic
        .into_iter()
        .map(|(topic, partitions)| {
            OffsetDeleteResponseTopic::default()
                .with_name(topic_name(&topic))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(index, code)| {
                            OffsetDeleteResponsePartition::default()
                                .with_partition_index(index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}
