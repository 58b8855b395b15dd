//! The metadata service: the only place where cluster state is decided.
//!
//! This crate owns the cluster state machine (cluster id, registered gateways and
//! bookies with their leases, topics and partitions with owners and leader epochs,
//! segments, committed offsets, producer-id blocks, coordinator slots), the openraft
//! group that replicates it (log and state machine in RocksDB, gRPC transport,
//! snapshots, membership changes), the controller that runs on the raft leader,
//! the gRPC `MetadataService` and `AdminService` servers, and the
//! [`client::MetadataClient`] with a local [`cache::ClusterCache`] fed by the watch
//! stream, which gateways, bookies and the
//! CLI use. Commands are checked inside the state machine, never by the caller.

pub mod cache;
pub mod client;
pub mod config;
pub mod lease;
pub mod node;
pub mod raft;
pub mod replication;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
pub mod topic_rules;

pub use config::MetadataConfig;
pub use node::MetadataNode;
pub use server::MetadataServer;

/// Milliseconds since the Unix epoch on this machine's wall clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
