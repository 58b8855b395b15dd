//! Fetch: whole batches from each partition's log up to its high watermark,
//! long-polling until `min_bytes` arrive or `max_wait_ms` passes; the wait is
//! woken by appends, not by a timer.

use super::Gatekeeper;
use bytes::{Bytes, BytesMut};
use futures::future::select_all;
use kafka_protocol::messages::fetch_request::FetchPartition;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use std::time::Duration;
use strata_proto::error_code;
use tokio::sync::watch;

/// Longest long poll honoured, whatever the client asks.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Answers a Fetch, waiting for data as the request allows.
pub async fn handle(gatekeeper: &Gatekeeper, request: FetchRequest) -> FetchResponse {
    let wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let min_bytes = request.min_bytes.max(0) as usize;
    loop {
        // Subscribe before reading, so an append after the read wakes the wait.
        let mut watchers = high_watermarks(gatekeeper, &request);
        let (response, bytes, any_error) = fetch_once(gatekeeper, &request).await;
        let done = bytes >= min_bytes.max(1)
            || any_error
            || watchers.is_empty()
            || tokio::time::Instant::now() >= deadline;
        if done {
            return response;
        }
        let woken = select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
        if tokio::time::timeout_at(deadline, woken).await.is_err() {
            // One last look: the wait ended without an append anywhere.
            return fetch_once(gatekeeper, &request).await.0;
        }
    }
}

fn high_watermarks(gatekeeper: &Gatekeeper, request: &FetchRequest) -> Vec<watch::Receiver<i64>> {
    request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().filter_map(|p| {
                let partition = u32::try_from(p.partition).ok()?;
                let log = gatekeeper
                    .partitions()
                    .log(topic.topic.as_str(), partition)
                    .ok()?;
                Some(log.watch_high_watermark())
            })
        })
        .collect()
}

/// Reads every requested partition once; returns the response, the record
/// bytes in it, and whether any partition answered with an error.
async fn fetch_once(
    gatekeeper: &Gatekeeper,
    request: &FetchRequest,
) -> (FetchResponse, usize, bool) {
    let mut left = request.max_bytes.max(0) as usize;
    let mut total = 0;
    let mut any_error = false;
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for wanted in &topic.partitions {
            // KIP-74: the first batch is returned even if larger than the limits.
            let budget = (wanted.partition_max_bytes.max(0) as usize).min(left);
            let data = fetch_partition(gatekeeper, topic.topic.as_str(), wanted, budget).await;
            let size = data.records.as_ref().map_or(0, |r| r.len());
            any_error |= data.error_code != 0;
            left = left.saturating_sub(size);
            total += size;
            partitions.push(data);
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_topic_id(topic.topic_id)
                .with_partitions(partitions),
        );
    }
    (
        FetchResponse::default().with_responses(topics),
        total,
        any_error,
    )
}

async fn fetch_partition(
    gatekeeper: &Gatekeeper,
    topic: &str,
    wanted: &FetchPartition,
    budget: usize,
) -> PartitionData {
    let failed = |code: i16| {
        PartitionData::default()
            .with_partition_index(wanted.partition)
            .with_error_code(code)
            .with_high_watermark(-1)
            .with_last_stable_offset(-1)
            .with_log_start_offset(-1)
            .with_records(Some(Bytes::new()))
    };
    let Ok(partition) = u32::try_from(wanted.partition) else {
        return failed(error_code::UNKNOWN_TOPIC_OR_PARTITION as i16);
    };
    let log = match gatekeeper.partitions().log(topic, partition) {
        Ok(log) => log,
        Err(code) => return failed(code),
    };
    let epoch = wanted.current_leader_epoch;
    if epoch >= 0 && epoch < log.leader_epoch() {
        return failed(error_code::FENCED_LEADER_EPOCH as i16);
    }
    if epoch > log.leader_epoch() {
        return failed(error_code::UNKNOWN_LEADER_EPOCH as i16);
    }
    let high_watermark = log.high_watermark();
    let batches = match log.read(wanted.fetch_offset, budget.max(1)).await {
        Ok(batches) => batches,
        Err(code) => {
            return failed(code)
                .with_high_watermark(high_watermark)
                .with_last_stable_offset(high_watermark)
                .with_log_start_offset(log.log_start_offset())
        }
    };
    let mut records = BytesMut::new();
    for (i, batch) in batches.iter().enumerate() {
        if i > 0 && records.len() + batch.len() > budget {
            break;
        }
        records.extend_from_slice(batch);
    }
    PartitionData::default()
        .with_partition_index(wanted.partition)
        .with_high_watermark(high_watermark)
        .with_last_stable_offset(high_watermark)
        .with_log_start_offset(log.log_start_offset())
        .with_records(Some(records.freeze()))
}
