//! InitProducerId for idempotent (non-transactional) producers: a fresh
//! producer id at epoch 0 from the block this gateway holds.
//!
//! As in Apache Kafka, a non-transactional request that carries its current
//! producer id and epoch (v3+, KIP-360) gets a fresh id rather than a bumped
//! epoch: the sequence state of the old id is simply never used again.
//! Transactions are not supported yet, so a request with a transactional id
//! is answered UNSUPPORTED_VERSION: the Java client fails at once with
//! "the version of API is not supported", and librdkafka logs that error and
//! fails `init_transactions`, where COORDINATOR_NOT_AVAILABLE would have both
//! retry until they time out, and TRANSACTIONAL_ID_AUTHORIZATION_FAILED would
//! send the user looking at ACLs.

use super::Gatekeeper;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

/// Answers one InitProducerId request.
pub async fn handle(
    gatekeeper: &Gatekeeper,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    match producer_id(gatekeeper, &request).await {
        Ok(producer_id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(0),
        Err(error) => InitProducerIdResponse::default()
            .with_error_code(error.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    }
}

async fn producer_id(
    gatekeeper: &Gatekeeper,
    request: &InitProducerIdRequest,
) -> Result<i64, ResponseError> {
    match request.transactional_id.as_ref().map(|id| id.0.as_str()) {
        None => {}
        // Kafka's coordinator refuses an empty transactional id as invalid.
        Some("") => return Err(ResponseError::InvalidRequest),
        Some(_) => return Err(ResponseError::UnsupportedVersion),
    }
    // Kafka refuses a producer id without an epoch and the other way round.
    if (request.producer_id.0 == -1) != (request.producer_epoch == -1) {
        return Err(ResponseError::InvalidRequest);
    }
    gatekeeper
        .partitions()
        .producer_ids()
        .next()
        .await
        .map_err(|error| {
            tracing::warn!(%error, "cannot hand out a producer id");
            // Kafka's answer while its producer id manager waits for a block:
            // retriable, and both librdkafka and the Java client retry it.
            ResponseError::CoordinatorLoadInProgress
        })
}
