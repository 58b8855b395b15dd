//! `strata metadata`, `strata bookie` and `strata gateway`: one role per process.

use super::settings::{load, set};
use super::shutdown;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use strata_bookie::config::JournalSync;
use strata_bookie::{Bookie, BookieConfig};
use strata_gateway::{Gateway, GatewayConfig};
use strata_metadata::{MetadataConfig, MetadataServer};

/// Flags of `strata metadata`; each overrides the config file's key of the same name.
#[derive(Debug, Args)]
pub struct MetadataArgs {
    /// Print the resolved configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// TOML file with the node's settings.
    #[arg(long, env = "STRATA_METADATA_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id within the metadata group.
    #[arg(long, env = "STRATA_METADATA_NODE_ID")]
    pub node_id: Option<u64>,
    /// Address the gRPC server listens on.
    #[arg(long, env = "STRATA_METADATA_LISTEN_ADDR")]
    pub listen_addr: Option<SocketAddr>,
    /// Address other metadata nodes and clients reach this node at (default: the listen address).
    #[arg(long, env = "STRATA_METADATA_ADVERTISED_ADDR")]
    pub advertised_addr: Option<String>,
    /// Voters of a new group, comma-separated `ID=HOST:PORT`, this node included.
    #[arg(long, env = "STRATA_METADATA_PEERS", value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// Wait to be added to an existing group instead of forming one.
    #[arg(long, env = "STRATA_METADATA_JOIN")]
    pub join: Option<bool>,
    /// Directory of the node's RocksDB database.
    #[arg(long, env = "STRATA_METADATA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// How long a gateway or bookie stays live after its last heartbeat (ms).
    #[arg(long, env = "STRATA_METADATA_LEASE_MS")]
    pub lease_ms: Option<u64>,
    /// How often gateways and bookies heartbeat (ms).
    #[arg(long, env = "STRATA_METADATA_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Partition count of a topic created without one.
    #[arg(long, env = "STRATA_METADATA_DEFAULT_PARTITIONS")]
    pub default_partitions: Option<u32>,
    /// Number of consumer-group coordinator slots spread over gateways.
    #[arg(long, env = "STRATA_METADATA_COORDINATOR_SLOTS")]
    pub coordinator_slots: Option<u32>,
    /// Watch events buffered per watcher before it gets a fresh snapshot instead.
    #[arg(long, env = "STRATA_METADATA_WATCH_BUFFER")]
    pub watch_buffer: Option<usize>,
    /// Interval of the raft leader's heartbeats (ms).
    #[arg(long, env = "STRATA_METADATA_RAFT_HEARTBEAT_MS")]
    pub raft_heartbeat_ms: Option<u64>,
    /// Lower bound of the raft election timeout (ms).
    #[arg(long, env = "STRATA_METADATA_ELECTION_TIMEOUT_MIN_MS")]
    pub election_timeout_min_ms: Option<u64>,
    /// Upper bound of the raft election timeout (ms).
    #[arg(long, env = "STRATA_METADATA_ELECTION_TIMEOUT_MAX_MS")]
    pub election_timeout_max_ms: Option<u64>,
    /// Build a snapshot after this many log entries.
    #[arg(long, env = "STRATA_METADATA_SNAPSHOT_AFTER_ENTRIES")]
    pub snapshot_after_entries: Option<u64>,
    /// How often the controller checks leases and balance (ms).
    #[arg(long, env = "STRATA_METADATA_CONTROLLER_INTERVAL_MS")]
    pub controller_interval_ms: Option<u64>,
}

impl MetadataArgs {
    /// The node's config: file, then environment, then flags.
    pub fn resolve(self) -> anyhow::Result<MetadataConfig> {
        let mut config: MetadataConfig = load(self.config.as_deref())?;
        set(&mut config.node_id, self.node_id);
        set(&mut config.listen_addr, self.listen_addr);
        set(&mut config.advertised_addr, self.advertised_addr.map(Some));
        set(&mut config.peers, self.peers);
        set(&mut config.join, self.join);
        set(&mut config.data_dir, self.data_dir);
        set(&mut config.lease_ms, self.lease_ms);
        set(
            &mut config.heartbeat_interval_ms,
            self.heartbeat_interval_ms,
        );
        set(&mut config.default_partitions, self.default_partitions);
        set(&mut config.coordinator_slots, self.coordinator_slots);
        set(&mut config.watch_buffer, self.watch_buffer);
        set(&mut config.raft_heartbeat_ms, self.raft_heartbeat_ms);
        set(
            &mut config.election_timeout_min_ms,
            self.election_timeout_min_ms,
        );
        set(
            &mut config.election_timeout_max_ms,
            self.election_timeout_max_ms,
        );
        set(
            &mut config.snapshot_after_entries,
            self.snapshot_after_entries,
        );
        set(
            &mut config.controller_interval_ms,
            self.controller_interval_ms,
        );
        Ok(config)
    }
}

/// Flags of `strata bookie`; each overrides the config file's key of the same name.
#[derive(Debug, Args)]
pub struct BookieArgs {
    /// Print the resolved configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// TOML file with the bookie's settings.
    #[arg(long, env = "STRATA_BOOKIE_CONFIG")]
    pub config: Option<PathBuf>,
    /// This bookie's id, unique among bookies.
    #[arg(long, env = "STRATA_BOOKIE_NODE_ID")]
    pub node_id: Option<i32>,
    /// Address the gRPC server listens on.
    #[arg(long, env = "STRATA_BOOKIE_LISTEN_ADDR")]
    pub listen_addr: Option<SocketAddr>,
    /// Address other nodes reach this bookie at (default: the listen address).
    #[arg(long, env = "STRATA_BOOKIE_ADVERTISED_ADDR")]
    pub advertised_addr: Option<String>,
    /// Availability zone.
    #[arg(long, env = "STRATA_BOOKIE_ZONE")]
    pub zone: Option<String>,
    /// Directory of the journal, entry logs and index.
    #[arg(long, env = "STRATA_BOOKIE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Metadata node addresses, comma-separated `host:port`.
    #[arg(long, env = "STRATA_BOOKIE_METADATA_ADDRS", value_delimiter = ',')]
    pub metadata_addrs: Option<Vec<String>>,
    /// Journal sync policy: `always` (fdatasync before acknowledging) or `never-unsafe` (tests and benchmarks only).
    #[arg(long, env = "STRATA_BOOKIE_JOURNAL_SYNC")]
    pub journal_sync: Option<JournalSync>,
    /// Most bytes one group commit writes and syncs at once.
    #[arg(long, env = "STRATA_BOOKIE_JOURNAL_MAX_BATCH_BYTES")]
    pub journal_max_batch_bytes: Option<u64>,
    /// Longest time (µs) a group commit keeps gathering adds that keep arriving.
    #[arg(long, env = "STRATA_BOOKIE_JOURNAL_MAX_WAIT_US")]
    pub journal_max_wait_us: Option<u64>,
    /// Size at which a journal file is closed and a new one started.
    #[arg(long, env = "STRATA_BOOKIE_JOURNAL_FILE_BYTES")]
    pub journal_file_bytes: Option<u64>,
    /// Size at which an entry-log file is closed and a new one started.
    #[arg(long, env = "STRATA_BOOKIE_ENTRY_LOG_FILE_BYTES")]
    pub entry_log_file_bytes: Option<u64>,
    /// Largest entry payload accepted, in bytes.
    #[arg(long, env = "STRATA_BOOKIE_MAX_ENTRY_BYTES")]
    pub max_entry_bytes: Option<u64>,
    /// Most payload bytes one read returns (at least one entry).
    #[arg(long, env = "STRATA_BOOKIE_MAX_READ_BYTES")]
    pub max_read_bytes: Option<u64>,
    /// Most bytes of adds accepted but not yet durable; further adds wait.
    #[arg(long, env = "STRATA_BOOKIE_MAX_PENDING_ADD_BYTES")]
    pub max_pending_add_bytes: Option<u64>,
    /// How often (ms) entry logs and the index are synced and the journal trimmed.
    #[arg(long, env = "STRATA_BOOKIE_CHECKPOINT_INTERVAL_MS")]
    pub checkpoint_interval_ms: Option<u64>,
    /// How often (ms) garbage collection and compaction run.
    #[arg(long, env = "STRATA_BOOKIE_GC_INTERVAL_MS")]
    pub gc_interval_ms: Option<u64>,
    /// How long (ms) an offloaded segment is kept after this bookie first sees it offloaded.
    #[arg(long, env = "STRATA_BOOKIE_GC_OFFLOADED_GRACE_MS")]
    pub gc_offloaded_grace_ms: Option<u64>,
    /// Entry logs with a smaller live fraction than this are compacted.
    #[arg(long, env = "STRATA_BOOKIE_COMPACTION_LIVE_RATIO")]
    pub compaction_live_ratio: Option<f64>,
    /// Below this many free bytes on the data disk, adds are refused.
    #[arg(long, env = "STRATA_BOOKIE_MIN_FREE_BYTES")]
    pub min_free_bytes: Option<u64>,
    /// How often (ms) the data disk's free space is measured.
    #[arg(long, env = "STRATA_BOOKIE_DISK_CHECK_INTERVAL_MS")]
    pub disk_check_interval_ms: Option<u64>,
    /// Whether this bookie re-replicates sealed segments that lost a replica
    /// with a dead bookie.
    #[arg(long, env = "STRATA_BOOKIE_AUTO_RECOVERY")]
    pub auto_recovery: Option<bool>,
    /// How long (ms) a bookie's lease must have lapsed before its segments are re-replicated.
    #[arg(long, env = "STRATA_BOOKIE_AUTO_RECOVERY_DELAY_MS")]
    pub auto_recovery_delay_ms: Option<u64>,
    /// How often (ms) this bookie looks for under-replicated segments.
    #[arg(long, env = "STRATA_BOOKIE_AUTO_RECOVERY_INTERVAL_MS")]
    pub auto_recovery_interval_ms: Option<u64>,
}

impl BookieArgs {
    /// The bookie's config: file, then environment, then flags.
    pub fn resolve(self) -> anyhow::Result<BookieConfig> {
        let mut config: BookieConfig = load(self.config.as_deref())?;
        set(&mut config.node_id, self.node_id);
        set(&mut config.listen_addr, self.listen_addr);
        set(&mut config.advertised_addr, self.advertised_addr.map(Some));
        set(&mut config.zone, self.zone);
        set(&mut config.data_dir, self.data_dir);
        set(&mut config.metadata_addrs, self.metadata_addrs);
        set(&mut config.journal_sync, self.journal_sync);
        set(
            &mut config.journal_max_batch_bytes,
            self.journal_max_batch_bytes,
        );
        set(&mut config.journal_max_wait_us, self.journal_max_wait_us);
        set(&mut config.journal_file_bytes, self.journal_file_bytes);
        set(&mut config.entry_log_file_bytes, self.entry_log_file_bytes);
        set(&mut config.max_entry_bytes, self.max_entry_bytes);
        set(&mut config.max_read_bytes, self.max_read_bytes);
        set(
            &mut config.max_pending_add_bytes,
            self.max_pending_add_bytes,
        );
        set(
            &mut config.checkpoint_interval_ms,
            self.checkpoint_interval_ms,
        );
        set(&mut config.gc_interval_ms, self.gc_interval_ms);
        set(
            &mut config.gc_offloaded_grace_ms,
            self.gc_offloaded_grace_ms,
        );
        set(
            &mut config.compaction_live_ratio,
            self.compaction_live_ratio,
        );
        set(&mut config.min_free_bytes, self.min_free_bytes);
        set(
            &mut config.disk_check_interval_ms,
            self.disk_check_interval_ms,
        );
        set(&mut config.auto_recovery, self.auto_recovery);
        set(
            &mut config.auto_recovery_delay_ms,
            self.auto_recovery_delay_ms,
        );
        set(
            &mut config.auto_recovery_interval_ms,
            self.auto_recovery_interval_ms,
        );
        Ok(config)
    }
}

/// Flags of `strata gateway`; each overrides the config file's key of the same name.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Print the resolved configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// TOML file with the gateway's settings.
    #[arg(long, env = "STRATA_GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// This gateway's Kafka broker id.
    #[arg(long, env = "STRATA_GATEWAY_NODE_ID")]
    pub node_id: Option<i32>,
    /// Address the Kafka listener binds.
    #[arg(long, env = "STRATA_GATEWAY_KAFKA_LISTEN_ADDR")]
    pub kafka_listen_addr: Option<SocketAddr>,
    /// Host clients are told to connect to (default: the listener's IP).
    #[arg(long, env = "STRATA_GATEWAY_ADVERTISED_HOST")]
    pub advertised_host: Option<String>,
    /// Port clients are told to connect to (default: the listener's port).
    #[arg(long, env = "STRATA_GATEWAY_ADVERTISED_PORT")]
    pub advertised_port: Option<u16>,
    /// Availability zone (Kafka's rack).
    #[arg(long, env = "STRATA_GATEWAY_ZONE")]
    pub zone: Option<String>,
    /// Metadata node addresses, comma-separated `host:port`.
    #[arg(long, env = "STRATA_GATEWAY_METADATA_ADDRS", value_delimiter = ',')]
    pub metadata_addrs: Option<Vec<String>>,
    /// Largest Kafka request frame accepted, in bytes.
    #[arg(long, env = "STRATA_GATEWAY_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Requests of one connection handled at once (pipelining).
    #[arg(long, env = "STRATA_GATEWAY_MAX_INFLIGHT_REQUESTS_PER_CONNECTION")]
    pub max_inflight_requests_per_connection: Option<usize>,
    /// Request bytes of one connection in flight past which no frame is read.
    #[arg(long, env = "STRATA_GATEWAY_MAX_INFLIGHT_BYTES_PER_CONNECTION")]
    pub max_inflight_bytes_per_connection: Option<usize>,
    /// Request bytes in flight over all connections of the gateway.
    #[arg(long, env = "STRATA_GATEWAY_MAX_INFLIGHT_BYTES")]
    pub max_inflight_bytes: Option<usize>,
    /// Create unknown topics named in Metadata requests, with the default partition count.
    #[arg(long, env = "STRATA_GATEWAY_AUTO_CREATE_TOPICS")]
    pub auto_create_topics: Option<bool>,
    /// Directory of the local object store that offloaded segments go to
    /// (every gateway of a cluster must share one store).
    #[arg(long, env = "STRATA_GATEWAY_OBJECTS_DIR")]
    pub objects_dir: Option<PathBuf>,
    /// Bookies per segment the gateway opens (E).
    #[arg(long, env = "STRATA_GATEWAY_ENSEMBLE_SIZE")]
    pub ensemble_size: Option<usize>,
    /// Bookies that store each entry (Qw).
    #[arg(long, env = "STRATA_GATEWAY_WRITE_QUORUM")]
    pub write_quorum: Option<usize>,
    /// Bookie acks that confirm an entry (Qa).
    #[arg(long, env = "STRATA_GATEWAY_ACK_QUORUM")]
    pub ack_quorum: Option<usize>,
    /// Bytes of recently appended batches kept in memory for tailing consumers.
    #[arg(long, env = "STRATA_GATEWAY_BATCH_CACHE_BYTES")]
    pub batch_cache_bytes: Option<u64>,
}

impl GatewayArgs {
    /// The gateway's config: file, then environment, then flags.
    pub fn resolve(self) -> anyhow::Result<GatewayConfig> {
        let mut config: GatewayConfig = load(self.config.as_deref())?;
        set(&mut config.node_id, self.node_id);
        set(&mut config.kafka_listen_addr, self.kafka_listen_addr);
        set(&mut config.advertised_host, self.advertised_host.map(Some));
        set(&mut config.advertised_port, self.advertised_port.map(Some));
        set(&mut config.zone, self.zone);
        set(&mut config.metadata_addrs, self.metadata_addrs);
        set(&mut config.max_frame_bytes, self.max_frame_bytes);
        set(
            &mut config.max_inflight_requests_per_connection,
            self.max_inflight_requests_per_connection,
        );
        set(
            &mut config.max_inflight_bytes_per_connection,
            self.max_inflight_bytes_per_connection,
        );
        set(&mut config.max_inflight_bytes, self.max_inflight_bytes);
        set(&mut config.auto_create_topics, self.auto_create_topics);
        set(
            &mut config.object_store.local_path,
            self.objects_dir.clone(),
        );
        set(&mut config.ensemble_size, self.ensemble_size);
        set(&mut config.write_quorum, self.write_quorum);
        set(&mut config.ack_quorum, self.ack_quorum);
        set(&mut config.batch_cache_bytes, self.batch_cache_bytes);
        Ok(config)
    }
}

/// Runs one metadata node until Ctrl-C or SIGTERM.
pub async fn run_metadata(args: MetadataArgs) -> anyhow::Result<()> {
    let print_config = args.print_config;
    let config = args.resolve()?;
    if print_config {
        return print_toml(&config);
    }
    let shutdown = shutdown::on_signal();
    config.validate()?;
    let server = MetadataServer::start(config, shutdown).await?;
    println!("metadata  grpc://{}", server.grpc_addr());
    server.wait().await;
    Ok(())
}

/// Runs one bookie until Ctrl-C or SIGTERM.
pub async fn run_bookie(args: BookieArgs) -> anyhow::Result<()> {
    let print_config = args.print_config;
    let config = args.resolve()?;
    if print_config {
        return print_toml(&config);
    }
    let shutdown = shutdown::on_signal();
    let bookie = Bookie::start(config, shutdown).await?;
    println!("bookie    grpc://{}", bookie.grpc_addr());
    bookie.wait().await;
    Ok(())
}

/// Runs one gateway until Ctrl-C or SIGTERM.
pub async fn run_gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let print_config = args.print_config;
    let config = args.resolve()?;
    if print_config {
        return print_toml(&config);
    }
    let shutdown = shutdown::on_signal();
    let gateway = Gateway::start(config, shutdown).await?;
    println!("kafka     {}", gateway.kafka_addr());
    gateway.wait().await;
    Ok(())
}

/// Prints a resolved configuration as TOML.
fn print_toml(config: &impl serde::Serialize) -> anyhow::Result<()> {
    print!("{}", toml::to_string(config)?);
    Ok(())
}
