//! The partitions this gateway serves: which ones metadata grants it, taking
//! them over (recover and seal the previous segment, open a new one), and the
//! log of each — appends through the ledger client, reads from recent batches
//! or from bookies — with the sequence state of idempotent producers, and the
//! producer ids handed out to them.

mod batch_cache;
mod log;
mod producer_ids;
pub mod producers;
mod rebuild;
pub mod retention;
mod takeover;

pub use log::{Appended, PartitionLog, Sequenced};
pub use producer_ids::{ProducerIdError, ProducerIds, PRODUCER_ID_BLOCK};
pub use rebuild::{RebuildError, REBUILD_BYTES};

use crate::offload::reader::TieredReader;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use strata_bookie::ledger::BookiePool;
use strata_metadata::cache::ClusterCache;
use strata_metadata::client::MetadataClient;
use strata_proto::error_code;
use tokio_util::sync::CancellationToken;

/// How this gateway lays out the segments it opens and bounds its memory.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Bookies per segment (E).
    pub ensemble_size: usize,
    /// Bookies that store each entry (Qw).
    pub write_quorum: usize,
    /// Acks that confirm an entry (Qa).
    pub ack_quorum: usize,
    /// Bytes of recent batches kept in memory, for all partitions together,
    /// so that tailing readers are served without reading bookies.
    pub batch_cache_bytes: u64,
}

/// Kafka's answer while a partition is not (yet) served here.
pub const NOT_SERVED: i16 = error_code::NOT_LEADER_OR_FOLLOWER as i16;

/// Every partition this gateway serves, by (topic, partition).
pub struct Partitions {
    node_id: i32,
    cache: ClusterCache,
    client: MetadataClient,
    pool: BookiePool,
    options: LogOptions,
    logs: RwLock<HashMap<(String, u32), Arc<PartitionLog>>>,
    producer_ids: ProducerIds,
    batches: Arc<batch_cache::BatchCache>,
    tiered: TieredReader,
}

impl Partitions {
    /// The partitions of gateway `node_id`, none served until [`Partitions::run`] takes them.
    pub fn new(
        node_id: i32,
        cache: ClusterCache,
        client: MetadataClient,
        pool: BookiePool,
        options: LogOptions,
        tiered: TieredReader,
    ) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            cache,
            producer_ids: ProducerIds::new(client.clone()),
            client,
            pool,
            batches: Arc::new(batch_cache::BatchCache::new(options.batch_cache_bytes)),
            options,
            logs: RwLock::new(HashMap::new()),
            tiered,
        })
    }

    /// Every log this gateway serves now.
    pub fn served(&self) -> Vec<Arc<PartitionLog>> {
        self.logs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The gateway's bookie connections.
    pub fn pool(&self) -> &BookiePool {
        &self.pool
    }

    /// The metadata client.
    pub fn client(&self) -> &MetadataClient {
        &self.client
    }

    /// The watch-fed cluster cache.
    pub fn cache(&self) -> &ClusterCache {
        &self.cache
    }

    /// The producer ids this gateway hands out to idempotent producers.
    pub fn producer_ids(&self) -> &ProducerIds {
        &self.producer_ids
    }

    /// The log of a partition this gateway serves and is ready to serve, or the
    /// Kafka error code to answer with (NOT_LEADER_OR_FOLLOWER while another
    /// gateway owns it or while this one is still taking it over;
    /// UNKNOWN_TOPIC_OR_PARTITION if it does not exist).
    pub fn log(&self, topic: &str, partition: u32) -> Result<Arc<PartitionLog>, i16> {
        let key = (topic.to_string(), partition);
        if let Some(log) = self
            .logs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(log.clone());
        }
        let exists = self
            .cache
            .read(|state| state.partition(topic, partition).is_some());
        if exists {
            Err(NOT_SERVED)
        } else {
            Err(error_code::UNKNOWN_TOPIC_OR_PARTITION as i16)
        }
    }

    /// Whether a ready log serves `key`.
    fn is_served(&self, key: &(String, u32)) -> bool {
        self.logs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .is_some_and(|log| !log.is_broken())
    }

    /// Follows ownership in the cluster cache until `shutdown`: takes over
    /// partitions granted to this gateway and drops those it lost.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        takeover::follow_ownership(self, shutdown).await
    }
}
