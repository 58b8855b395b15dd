//! DeleteRecords: moves partitions' log start offsets forward. Metadata
//! records the new start (only from the partition's owner at its epoch);
//! retention then deletes the segments wholly below it.

use super::Gatekeeper;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use kafka_protocol::ResponseError;
use strata_proto::metadata::AdvanceLogStartRequest;

/// Kafka's DeleteRecords offset meaning "up to the high watermark".
const TO_HIGH_WATERMARK: i64 = -1;

/// Answers DeleteRecords.
pub async fn handle(
    gatekeeper: &Gatekeeper,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let result =
                match delete_below(gatekeeper, &topic.name, p.partition_index, p.offset).await {
                    Ok(low_watermark) => {
                        DeleteRecordsPartitionResult::default().with_low_watermark(low_watermark)
                    }
                    Err(code) => DeleteRecordsPartitionResult::default()
                        .with_low_watermark(-1)
                        .with_error_code(code),
                };
            partitions.push(result.with_partition_index(p.partition_index));
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

/// Moves one partition's log start to `offset`; returns the new log start.
async fn delete_below(
    gatekeeper: &Gatekeeper,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<i64, i16> {
    let index =
        u32::try_from(partition).map_err(|_| ResponseError::UnknownTopicOrPartition.code())?;
    let log = gatekeeper.partitions().log(topic, index)?;
    let high_watermark = log.high_watermark();
    let offset = if offset == TO_HIGH_WATERMARK {
        high_watermark
    } else {
        offset
    };
    if offset < 0 || offset > high_watermark {
        return Err(ResponseError::OffsetOutOfRange.code());
    }
    if offset <= log.log_start_offset() {
        return Ok(log.log_start_offset());
    }
    let request = AdvanceLogStartRequest {
        topic: topic.to_string(),
        partition: index,
        owner: gatekeeper.config().node_id,
        leader_epoch: u32::try_from(log.leader_epoch()).unwrap_or(0),
        log_start_offset: offset,
    };
    let response = gatekeeper
        .client()
        .send(request, |mut metadata, request| async move {
            metadata.advance_log_start(request).await
        })
        .await
        .map_err(|error| {
            tracing::warn!(%error, "cannot record a new log start offset");
            ResponseError::RequestTimedOut.code()
        })?;
    match response.outcome {
        Some(outcome) if outcome.error_code == 0 => {
            log.advance_log_start(offset);
            Ok(log.log_start_offset())
        }
        Some(outcome) => {
            Err(i16::try_from(outcome.error_code)
                .unwrap_or(ResponseError::UnknownServerError.code()))
        }
        None => Err(ResponseError::UnknownServerError.code()),
    }
}
