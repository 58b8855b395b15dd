//! ListOffsets: a partition's earliest offset (-2) and latest offset (-1, the
//! high watermark). Lookups by timestamp are not served yet and answer
//! UNSUPPORTED_VERSION, so clients fail clearly instead of reading a wrong offset.

use super::Gatekeeper;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use strata_proto::error_code;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

/// Answers each partition's earliest or latest offset.
pub fn handle(gatekeeper: &Gatekeeper, request: ListOffsetsRequest) -> ListOffsetsResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let answer = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_timestamp(-1);
                    let log = u32::try_from(p.partition_index)
                        .map_err(|_| error_code::UNKNOWN_TOPIC_OR_PARTITION as i16)
                        .and_then(|partition| {
                            gatekeeper.partitions().log(topic.name.as_str(), partition)
                        });
                    let log = match log {
                        Ok(log) => log,
                        Err(code) => return answer.with_error_code(code).with_offset(-1),
                    };
                    let epoch = p.current_leader_epoch;
                    if epoch >= 0 && epoch != log.leader_epoch() {
                        let code = if epoch < log.leader_epoch() {
                            error_code::FENCED_LEADER_EPOCH
                        } else {
                            error_code::UNKNOWN_LEADER_EPOCH
                        };
                        return answer.with_error_code(code as i16).with_offset(-1);
                    }
                    let offset = match p.timestamp {
                        LATEST => log.high_watermark(),
                        EARLIEST => log.log_start_offset(),
                        _ => {
                            return answer
                                .with_error_code(error_code::UNSUPPORTED_VERSION as i16)
                                .with_offset(-1)
                        }
                    };
                    answer
                        .with_offset(offset)
                        .with_leader_epoch(log.leader_epoch())
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}
