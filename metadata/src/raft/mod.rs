//! The metadata group's consensus: openraft's type configuration and the parts
//! Strata provides to it — the RocksDB log store, the state machine over
//! [`crate::state::ClusterState`], and the gRPC transport between nodes.

pub mod log_store;
pub mod network;
pub mod service;
pub mod state_machine;
pub mod wire;

use std::io::Cursor;
use strata_proto::metadata::{CommandReply, MetadataCommand};
pub use wire::Prost;

openraft::declare_raft_types!(
    /// Openraft's types for the metadata group: commands and replies are the
    /// protobuf messages of `metadata.proto`, nodes are known by their gRPC address.
    pub TypeConfig:
        D = Prost<MetadataCommand>,
        R = Prost<CommandReply>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A running raft node of the metadata group.
pub type MetadataRaft = openraft::Raft<TypeConfig>;
/// A raft log entry.
pub type LogEntry = openraft::Entry<TypeConfig>;
/// A log id (term, leader and index).
pub type LogId = openraft::LogId<u64>;
/// The membership as last applied, with the log id that carried it.
pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
/// Openraft's storage error for this group.
pub type StorageError = openraft::StorageError<u64>;

/// A storage error from any error value, for the verb that failed.
pub(crate) fn storage_error(
    verb: openraft::ErrorVerb,
    error: &(impl std::error::Error + 'static),
) -> StorageError {
    openraft::StorageIOError::new(
        openraft::ErrorSubject::Store,
        verb,
        openraft::AnyError::new(error),
    )
    .into()
}
