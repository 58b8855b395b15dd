//! Producer ids for InitProducerId: taken from the metadata service in blocks
//! (one Raft proposal per [`PRODUCER_ID_BLOCK`] ids, not one per producer) and
//! handed out from the block this gateway holds. Ids of a block left unused
//! when the gateway stops are never handed out: ids are plentiful (`i64`).

use std::ops::Range;
use strata_metadata::client::{ClientError, MetadataClient};
use strata_proto::metadata::AllocateProducerIdsRequest;
use tokio::sync::Mutex;

/// Producer ids taken from metadata at a time.
pub const PRODUCER_ID_BLOCK: u32 = 1_000;

/// Why no producer id could be handed out.
#[derive(Debug, thiserror::Error)]
pub enum ProducerIdError {
    /// The metadata service could not be reached.
    #[error(transparent)]
    Metadata(#[from] ClientError),
    /// The metadata service refused to allocate a block.
    #[error("metadata refused to allocate producer ids: {0}")]
    Refused(String),
}

/// The block of producer ids this gateway hands out from.
pub struct ProducerIds {
    client: MetadataClient,
    /// Ids not yet handed out; refilled from metadata when empty. A tokio
    /// mutex so that concurrent requests wait for one allocation, not each
    /// make their own.
    block: Mutex<Range<i64>>,
}

impl ProducerIds {
    /// No ids held yet: the first request allocates a block.
    pub fn new(client: MetadataClient) -> Self {
        Self {
            client,
            block: Mutex::new(0..0),
        }
    }

    /// A producer id no one else has been given.
    pub async fn next(&self) -> Result<i64, ProducerIdError> {
        let mut block = self.block.lock().await;
        if block.is_empty() {
            *block = self.allocate().await?;
        }
        let id = block.start;
        block.start += 1;
        debug_assert!(id >= 0, "producer ids are never negative");
        Ok(id)
    }

    async fn allocate(&self) -> Result<Range<i64>, ProducerIdError> {
        let request = AllocateProducerIdsRequest {
            count: PRODUCER_ID_BLOCK,
        };
        let reply = self
            .client
            .call(|mut c| async move { c.allocate_producer_ids(request).await })
            .await?;
        let outcome = reply.outcome.unwrap_or_default();
        if !outcome.is_ok() || reply.count == 0 || reply.first_producer_id < 0 {
            return Err(ProducerIdError::Refused(outcome.error_message));
        }
        let end = reply
            .first_producer_id
            .checked_add(i64::from(reply.count))
            .ok_or_else(|| ProducerIdError::Refused("producer ids are exhausted".into()))?;
        tracing::debug!(
            first = reply.first_producer_id,
            count = reply.count,
            "allocated producer ids"
        );
        Ok(reply.first_producer_id..end)
    }
}
