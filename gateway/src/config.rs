//! Configuration of one gateway.

use crate::coordinator::CoordinatorOptions;
use crate::offload::reader::ReaderConfig;
use crate::offload::store::ObjectStoreConfig;
use crate::partition::retention::LocalRetentionDefaults;
use crate::partition::LogOptions;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;
use strata_bookie::ledger::LedgerOptions;

/// Everything a gateway needs to start.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// This gateway's Kafka broker id, unique in the cluster.
    pub node_id: i32,
    /// Address the Kafka listener binds.
    pub kafka_listen_addr: SocketAddr,
    /// Host that clients are told to connect to; defaults to the listener's IP.
    pub advertised_host: Option<String>,
    /// Port that clients are told to connect to; defaults to the listener's port.
    pub advertised_port: Option<u16>,
    /// Availability zone (Kafka's rack), used to keep reads in-zone.
    pub zone: String,
    /// Addresses (`host:port`) of the metadata nodes.
    pub metadata_addrs: Vec<String>,
    /// Largest Kafka request frame accepted; a longer one closes the connection.
    pub max_frame_bytes: usize,
    /// Requests of one connection handled at once (pipelining); the next
    /// frame is not read until one of them is answered. At least 1.
    pub max_inflight_requests_per_connection: usize,
    /// Request bytes of one connection handled at once: no further frame is
    /// read while the frames in flight add up to this much.
    pub max_inflight_bytes_per_connection: usize,
    /// Request bytes handled at once by the whole gateway, over all
    /// connections: a frame waits (and its connection reads nothing more)
    /// until earlier requests are answered.
    pub max_inflight_bytes: usize,
    /// Whether a Metadata request naming an unknown topic creates it, with
    /// the default partition count, as Kafka's `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// Bookies per segment this gateway opens (E).
    pub ensemble_size: usize,
    /// Bookies that store each entry (Qw).
    pub write_quorum: usize,
    /// Bookie acks that confirm an entry (Qa).
    pub ack_quorum: usize,
    /// Bytes of recently appended batches kept in memory for all served
    /// partitions together, so that tailing consumers are served without
    /// reading bookies.
    pub batch_cache_bytes: u64,
    /// How the gateway talks to bookies (in-flight bytes, timeouts).
    pub ledger: LedgerOptions,
    /// Where offloaded segments are stored (local directory or S3) and how
    /// they are uploaded.
    pub object_store: ObjectStoreConfig,
    /// Caches and block size of reads from object storage.
    pub tiered_reads: ReaderConfig,
    /// Segments uploaded at once by this gateway.
    pub offload_concurrency: usize,
    /// How often retention and offloading look at the partitions this
    /// gateway serves (`log.retention.check.interval.ms`).
    pub retention_check_interval_ms: u64,
    /// `local.retention.ms` of topics that do not set it: sealed segments
    /// older than this move to object storage (0: as soon as they are sealed;
    /// -1: never by age).
    pub default_local_retention_ms: i64,
    /// `local.retention.bytes` of topics that do not set it (-1: no bound).
    pub default_local_retention_bytes: i64,
    /// How long the first rebalance of an empty group waits for more members
    /// to join (Kafka's `group.initial.rebalance.delay.ms`).
    pub group_initial_rebalance_delay_ms: u64,
    /// Shortest session timeout a group member may ask for
    /// (`group.min.session.timeout.ms`).
    pub group_min_session_timeout_ms: u64,
    /// Longest session timeout a group member may ask for
    /// (`group.max.session.timeout.ms`).
    pub group_max_session_timeout_ms: u64,
    /// How long the committed offsets of an empty group are kept
    /// (`offsets.retention.minutes`).
    pub offsets_retention_minutes: u64,
    /// How often expired committed offsets are looked for
    /// (`offsets.retention.check.interval.ms`).
    pub offsets_retention_check_interval_ms: u64,
}

impl GatewayConfig {
    /// `local.retention.*` of topics that do not set them.
    pub fn local_retention_defaults(&self) -> LocalRetentionDefaults {
        LocalRetentionDefaults {
            ms: self.default_local_retention_ms,
            bytes: self.default_local_retention_bytes,
        }
    }

    /// The group coordinator's settings.
    pub fn coordinator_options(&self) -> CoordinatorOptions {
        CoordinatorOptions {
            initial_rebalance_delay: Duration::from_millis(self.group_initial_rebalance_delay_ms),
            min_session_timeout: Duration::from_millis(self.group_min_session_timeout_ms),
            max_session_timeout: Duration::from_millis(self.group_max_session_timeout_ms),
            offsets_retention: Duration::from_secs(
                self.offsets_retention_minutes.saturating_mul(60),
            ),
            offsets_retention_check_interval: Duration::from_millis(
                self.offsets_retention_check_interval_ms.max(1),
            ),
        }
    }

    /// The segment layout and memory bounds of the partitions this gateway serves.
    pub fn log_options(&self) -> LogOptions {
        LogOptions {
            ensemble_size: self.ensemble_size,
            write_quorum: self.write_quorum,
            ack_quorum: self.ack_quorum,
            batch_cache_bytes: self.batch_cache_bytes,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            kafka_listen_addr: SocketAddr::from(([127, 0, 0, 1], 9092)),
            advertised_host: None,
            advertised_port: None,
            zone: String::new(),
            metadata_addrs: vec!["127.0.0.1:7600".into()],
            max_frame_bytes: 100 * 1024 * 1024,
            max_inflight_requests_per_connection: 32,
            max_inflight_bytes_per_connection: 64 * 1024 * 1024,
            max_inflight_bytes: 512 * 1024 * 1024,
            auto_create_topics: false,
            ensemble_size: 3,
            write_quorum: 3,
            ack_quorum: 2,
            batch_cache_bytes: 256 * 1024 * 1024,
            ledger: LedgerOptions::default(),
            object_store: ObjectStoreConfig::default(),
            tiered_reads: ReaderConfig::default(),
            offload_concurrency: 2,
            retention_check_interval_ms: 30_000,
            default_local_retention_ms: 0,
            default_local_retention_bytes: -1,
            group_initial_rebalance_delay_ms: 3_000,
            group_min_session_timeout_ms: 6_000,
            group_max_session_timeout_ms: 1_800_000,
            offsets_retention_minutes: 7 * 24 * 60,
            offsets_retention_check_interval_ms: 600_000,
        }
    }
}
