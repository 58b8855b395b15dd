//! Configuration of one bookie.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything a bookie needs to start.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BookieConfig {
    /// This bookie's id, unique among bookies.
    pub node_id: i32,
    /// Address the gRPC server binds.
    pub listen_addr: SocketAddr,
    /// Address other nodes are told to reach this bookie at; defaults to the bound address.
    pub advertised_addr: Option<String>,
    /// Availability zone, used to spread ensembles.
    pub zone: String,
    /// Directory of the journal, entry logs and index.
    pub data_dir: PathBuf,
    /// Addresses (`host:port`) of the metadata nodes.
    pub metadata_addrs: Vec<String>,
}

impl Default for BookieConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 7601)),
            advertised_addr: None,
            zone: String::new(),
            data_dir: PathBuf::from("./strata-data/bookie-1"),
            metadata_addrs: vec!["127.0.0.1:7600".into()],
        }
    }
}
