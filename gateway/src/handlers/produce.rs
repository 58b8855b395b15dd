//! Produce: each partition's batch is checked, given its offsets by the
//! partition's sequencer, written to bookies, and answered once confirmed.
//! Batches are placed in request order; their confirmations are awaited
//! together.

use super::{Gatekeeper, SequencingDone};
use crate::log::batch::RecordBatch;
use crate::partition::{PartitionLog, Sequenced};
use futures::future::join_all;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use std::sync::Arc;
use strata_proto::error_code;

/// Topic config that makes the broker stamp batches with its append time.
const TIMESTAMP_TYPE: &str = "message.timestamp.type";

/// Appends every partition's batch; `None` when the producer wants no answer
/// (acks=0). Every batch is first given its place in its partition's log, in
/// request order; `sequenced` is then released, so that the connection's next
/// Produce may be sequenced while this one waits for its confirmations.
pub async fn handle(
    gatekeeper: &Gatekeeper,
    request: ProduceRequest,
    sequenced: SequencingDone,
) -> Option<ProduceResponse> {
    let acks = request.acks;
    if !matches!(acks, -1..=1) {
        return Some(refuse_all(
            request,
            error_code::INVALID_REQUIRED_ACKS as i16,
        ));
    }
    let transactional = request.transactional_id.is_some();
    let mut placed = Vec::with_capacity(request.topic_data.len());
    for topic in request.topic_data {
        let name = topic.name;
        let log_append_time = gatekeeper.cache().read(|state| {
            state
                .topics
                .get(name.as_str())
                .and_then(|t| t.configs.get(TIMESTAMP_TYPE))
                .is_some_and(|v| v == "LogAppendTime")
        });
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for data in topic.partition_data {
            let step = if transactional {
                Err((
                    error_code::UNSUPPORTED_VERSION as i16,
                    "transactions are not supported yet".to_string(),
                ))
            } else {
                place(
                    gatekeeper,
                    name.as_str(),
                    data.index,
                    data.records,
                    log_append_time,
                )
                .await
            };
            partitions.push((data.index, step));
        }
        placed.push((name, partitions));
    }
    sequenced.release();
    let mut topics = Vec::with_capacity(placed.len());
    for (name, partitions) in placed {
        let confirms = partitions.into_iter().map(|(index, step)| async move {
            let result = match step {
                Ok((log, sequenced)) => log
                    .confirm(sequenced)
                    .await
                    .map(|appended| {
                        (
                            appended.base_offset,
                            appended.log_append_time_ms,
                            log.log_start_offset(),
                        )
                    })
                    .map_err(|code| (code, String::new())),
                Err(refused) => Err(refused),
            };
            partition_response(index, result)
        });
        let partitions = join_all(confirms).await;
        topics.push(
            TopicProduceResponse::default()
                .with_name(name)
                .with_partition_responses(partitions),
        );
    }
    (acks != 0).then(|| ProduceResponse::default().with_responses(topics))
}

/// Answers every partition of `request` with `code`.
fn refuse_all(request: ProduceRequest, code: i16) -> ProduceResponse {
    let topics = request
        .topic_data
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partition_data
                .iter()
                .map(|p| partition_response(p.index, Err((code, String::new()))))
                .collect();
            TopicProduceResponse::default()
                .with_name(topic.name)
                .with_partition_responses(partitions)
        })
        .collect();
    ProduceResponse::default().with_responses(topics)
}

/// What one partition's append came to.
type PartitionResult = Result<(i64, i64, i64), (i16, String)>;

/// A batch placed in its partition's log, or why it was refused.
type Placed = Result<(Arc<PartitionLog>, Sequenced), (i16, String)>;

async fn place(
    gatekeeper: &Gatekeeper,
    topic: &str,
    index: i32,
    records: Option<bytes::Bytes>,
    log_append_time: bool,
) -> Placed {
    let partition = u32::try_from(index).map_err(|_| {
        (
            error_code::UNKNOWN_TOPIC_OR_PARTITION as i16,
            format!("partition {index} does not exist"),
        )
    })?;
    let log = gatekeeper
        .partitions()
        .log(topic, partition)
        .map_err(|code| (code, String::new()))?;
    let records = records.unwrap_or_default();
    let batch = RecordBatch::parse(&records).map_err(|e| (e.code, e.message))?;
    if batch.is_control() || batch.is_transactional() {
        return Err((
            error_code::INVALID_RECORD as i16,
            "control and transactional batches are not accepted from producers".to_string(),
        ));
    }
    let sequenced = log
        .sequence(batch, log_append_time)
        .await
        .map_err(|code| (code, String::new()))?;
    Ok((log, sequenced))
}

fn partition_response(index: i32, result: PartitionResult) -> PartitionProduceResponse {
    match result {
        Ok((base_offset, log_append_time_ms, log_start_offset)) => {
            PartitionProduceResponse::default()
                .with_index(index)
                .with_base_offset(base_offset)
                .with_log_append_time_ms(log_append_time_ms)
                .with_log_start_offset(log_start_offset)
        }
        Err((code, message)) => PartitionProduceResponse::default()
            .with_index(index)
            .with_error_code(code)
            .with_base_offset(-1)
            .with_log_append_time_ms(-1)
            .with_log_start_offset(-1)
            .with_error_message((!message.is_empty()).then(|| StrBytes::from_string(message))),
    }
}
