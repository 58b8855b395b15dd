//! ListOffsets: a partition's earliest offset (-2), latest offset (-1, the
//! high watermark), the record with the largest timestamp (-3), or the first
//! record whose timestamp is at or after a given one.

use super::Gatekeeper;
use crate::log::time_lookup;
use kafka_protocol::messages::list_offsets_request::ListOffsetsPartition;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use strata_proto::error_code;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

/// Answers each partition's offset for the requested time.
pub async fn handle(gatekeeper: &Gatekeeper, request: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for wanted in &topic.partitions {
            partitions.push(answer(gatekeeper, topic.name.as_str(), wanted).await);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

async fn answer(
    gatekeeper: &Gatekeeper,
    topic: &str,
    wanted: &ListOffsetsPartition,
) -> ListOffsetsPartitionResponse {
    let response = ListOffsetsPartitionResponse::default()
        .with_partition_index(wanted.partition_index)
        .with_timestamp(-1)
        .with_offset(-1);
    let log = u32::try_from(wanted.partition_index)
        .map_err(|_| error_code::UNKNOWN_TOPIC_OR_PARTITION as i16)
        .and_then(|partition| gatekeeper.partitions().log(topic, partition));
    let log = match log {
        Ok(log) => log,
        Err(code) => return response.with_error_code(code),
    };
    let epoch = wanted.current_leader_epoch;
    if epoch >= 0 && epoch != log.leader_epoch() {
        let code = if epoch < log.leader_epoch() {
            error_code::FENCED_LEADER_EPOCH
        } else {
            error_code::UNKNOWN_LEADER_EPOCH
        };
        return response.with_error_code(code as i16);
    }
    let response = response.with_leader_epoch(log.leader_epoch());
    let found = match wanted.timestamp {
        LATEST => return response.with_offset(log.high_watermark()),
        EARLIEST => return response.with_offset(log.log_start_offset()),
        MAX_TIMESTAMP => time_lookup::max_timestamp(&log).await,
        target => time_lookup::first_at_or_after(&log, target).await,
    };
    match found {
        Ok(Some((offset, timestamp))) => response.with_offset(offset).with_timestamp(timestamp),
        // No record that late: Kafka answers offset and timestamp -1.
        Ok(None) => response,
        Err(code) => response.with_error_code(code),
    }
}
