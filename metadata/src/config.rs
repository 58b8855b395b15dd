//! Configuration of one metadata node.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything a metadata node needs to start, with defaults for a single node.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetadataConfig {
    /// This node's id within the metadata group.
    pub node_id: u64,
    /// Address the gRPC server (metadata, admin) listens on.
    pub listen_addr: SocketAddr,
    /// Directory of the RocksDB database holding the state machine.
    pub data_dir: PathBuf,
    /// How long a gateway or bookie stays live after its last heartbeat.
    pub lease_ms: u64,
    /// How often gateways and bookies are told to heartbeat.
    pub heartbeat_interval_ms: u64,
    /// Partition count of a topic created without one.
    pub default_partitions: u32,
    /// Capacity of the in-memory queue of watch events per subscriber before it
    /// is sent a fresh snapshot instead.
    pub watch_buffer: usize,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 7600)),
            data_dir: PathBuf::from("./strata-data/metadata"),
            lease_ms: 10_000,
            heartbeat_interval_ms: 1_000,
            default_partitions: 1,
            watch_buffer: 4096,
        }
    }
}
