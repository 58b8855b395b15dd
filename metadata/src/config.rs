//! Configuration of one metadata node.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything a metadata node needs to start, with defaults for a single node.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetadataConfig {
    /// This node's id within the metadata group (>= 1).
    pub node_id: u64,
    /// Address the gRPC server (metadata, admin, raft) listens on.
    pub listen_addr: SocketAddr,
    /// Address other nodes and clients use to reach this node; defaults to the
    /// bound listen address.
    pub advertised_addr: Option<String>,
    /// The voters of a new group as `ID=HOST:PORT`, this node included. Every
    /// node of the group is started with the same list; the group forms once a
    /// majority is up. Empty: this node forms a group of one (unless `join`).
    pub peers: Vec<String>,
    /// Start without forming a group and wait to be added to an existing one
    /// (`strata admin metadata add-learner`, then `promote`).
    pub join: bool,
    /// Directory of the RocksDB database holding the raft log and the state machine.
    pub data_dir: PathBuf,
    /// How long a gateway or bookie stays live after its last heartbeat.
    pub lease_ms: u64,
    /// How often gateways and bookies are told to heartbeat.
    pub heartbeat_interval_ms: u64,
    /// Partition count of a topic created without one.
    pub default_partitions: u32,
    /// Number of consumer-group coordinator slots spread over gateways.
    pub coordinator_slots: u32,
    /// Capacity of the in-memory queue of watch events per subscriber before it
    /// is sent a fresh snapshot instead.
    pub watch_buffer: usize,
    /// How often the raft leader sends heartbeats to followers.
    pub raft_heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max_ms: u64,
    /// A snapshot is built after this many log entries since the last one.
    pub snapshot_after_entries: u64,
    /// How often the controller (on the raft leader) checks leases and balance.
    pub controller_interval_ms: u64,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 7600)),
            advertised_addr: None,
            peers: Vec::new(),
            join: false,
            data_dir: PathBuf::from("./strata-data/metadata"),
            lease_ms: 10_000,
            heartbeat_interval_ms: 1_000,
            default_partitions: 1,
            coordinator_slots: 50,
            watch_buffer: 4096,
            raft_heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1_000,
            snapshot_after_entries: 5_000,
            controller_interval_ms: 500,
        }
    }
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid metadata configuration: {0}")]
pub struct ConfigError(pub String);

impl MetadataConfig {
    /// The voters named by `peers`, by node id.
    pub fn peer_map(&self) -> Result<BTreeMap<u64, String>, ConfigError> {
        let mut peers = BTreeMap::new();
        for peer in &self.peers {
            let (id, addr) = peer.split_once('=').ok_or_else(|| {
                ConfigError(format!("peer {peer:?} is not of the form ID=HOST:PORT"))
            })?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| ConfigError(format!("peer {peer:?} has no numeric node id")))?;
            let addr = addr.trim();
            if addr.is_empty() || !addr.contains(':') {
                return Err(ConfigError(format!("peer {peer:?} has no HOST:PORT")));
            }
            if peers.insert(id, addr.to_string()).is_some() {
                return Err(ConfigError(format!("node id {id} appears twice in peers")));
            }
        }
        if !peers.is_empty() && !peers.contains_key(&self.node_id) {
            return Err(ConfigError(format!(
                "peers must include this node (id {})",
                self.node_id
            )));
        }
        Ok(peers)
    }

    /// Checks values that would otherwise fail later and less clearly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(ConfigError("node_id must be at least 1".into()));
        }
        if self.election_timeout_min_ms <= self.raft_heartbeat_ms
            || self.election_timeout_max_ms <= self.election_timeout_min_ms
        {
            return Err(ConfigError(
                "need raft_heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms".into(),
            ));
        }
        if self.coordinator_slots == 0 {
            return Err(ConfigError("coordinator_slots must be at least 1".into()));
        }
        if self.join && !self.peers.is_empty() {
            return Err(ConfigError("join and peers exclude each other".into()));
        }
        self.peer_map().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_must_include_self() {
        let mut config = MetadataConfig {
            node_id: 2,
            peers: vec!["1=a:1".into(), "2=b:2".into()],
            ..Default::default()
        };
        assert_eq!(config.peer_map().unwrap()[&2], "b:2");
        config.node_id = 3;
        assert!(config.validate().is_err());
        config.node_id = 1;
        config.peers.push("1=c:3".into());
        assert!(config.validate().is_err());
        config.peers = vec!["x=a:1".into()];
        assert!(config.validate().is_err());
    }
}
