//! Configuration of one gateway.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

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
        }
    }
}
