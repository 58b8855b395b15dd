//! Internal gRPC APIs of Strata, generated from `proto/*.proto` by tonic and prost.
//!
//! This crate owns the wire types shared by every role: the metadata service
//! (topics, partitions, ownership and leader epochs, segments, committed offsets,
//! producer-id blocks, node registration and the watch stream), the bookie service
//! (pipelined adds, reads, LAC, fencing, sealing) and the admin service. Domain
//! types such as [`metadata::SegmentInfo`] are defined here once and used by the
//! metadata state machine, the gateways and the bookies alike.

/// Metadata service: cluster state, ownership, segments, offsets and the watch stream.
pub mod metadata {
    tonic::include_proto!("strata.metadata.v1");
}

/// Bookie service: segment storage with quorum writes.
pub mod bookie {
    tonic::include_proto!("strata.bookie.v1");
}

/// Raft transport between metadata nodes.
pub mod raft {
    tonic::include_proto!("strata.raft.v1");
}

/// Admin service: operator calls served by metadata nodes.
pub mod admin {
    include!(concat!(env!("OUT_DIR"), "/admin/strata.admin.v1.rs"));
}

pub mod serving;

/// Kafka error codes that the metadata service returns in an [`metadata::Outcome`].
///
/// Gateways pass them to Kafka clients unchanged.
pub mod error_code {
    /// No error.
    pub const NONE: i32 = 0;
    /// The server hit an unexpected error.
    pub const UNKNOWN_SERVER_ERROR: i32 = -1;
    /// The requested offset is outside the partition's log.
    pub const OFFSET_OUT_OF_RANGE: i32 = 1;
    /// A record batch failed its CRC or its framing is broken.
    pub const CORRUPT_MESSAGE: i32 = 2;
    /// The producer used a compression codec the broker does not know.
    pub const UNSUPPORTED_COMPRESSION_TYPE: i32 = 76;
    /// A record batch is well formed but not acceptable (format, count).
    pub const INVALID_RECORD: i32 = 87;
    /// The request could not be completed in time; the client may retry.
    pub const REQUEST_TIMED_OUT: i32 = 7;
    /// A topic's replication factor is out of range.
    pub const INVALID_REPLICATION_FACTOR: i32 = 38;
    /// No topic has the given topic id.
    pub const UNKNOWN_TOPIC_ID: i32 = 100;
    /// Too few replicas are available to confirm the write; the producer retries.
    pub const NOT_ENOUGH_REPLICAS: i32 = 19;
    /// The write may have reached the log but could not be confirmed; the
    /// producer retries, and an idempotent producer's retry is answered with
    /// the original offsets if it did.
    pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i32 = 20;
    /// The request (or a part of it, such as transactions) is not supported.
    pub const UNSUPPORTED_VERSION: i32 = 35;
    /// A produce request's `acks` is not -1, 0 or 1.
    pub const INVALID_REQUIRED_ACKS: i32 = 21;
    /// The topic or partition does not exist.
    pub const UNKNOWN_TOPIC_OR_PARTITION: i32 = 3;
    /// The caller is not the partition's current owner.
    pub const NOT_LEADER_OR_FOLLOWER: i32 = 6;
    /// A committed offset's metadata string is longer than allowed.
    pub const OFFSET_METADATA_TOO_LARGE: i32 = 12;
    /// No gateway currently coordinates the group.
    pub const COORDINATOR_NOT_AVAILABLE: i32 = 15;
    /// The group id is empty or otherwise not legal.
    pub const INVALID_GROUP_ID: i32 = 24;
    /// A request field is out of range or malformed.
    pub const INVALID_REQUEST: i32 = 42;
    /// The topic name is not legal.
    pub const INVALID_TOPIC_EXCEPTION: i32 = 17;
    /// A topic of that name already exists.
    pub const TOPIC_ALREADY_EXISTS: i32 = 36;
    /// The partition count is not legal.
    pub const INVALID_PARTITIONS: i32 = 37;
    /// A topic config is unknown or its value is not legal.
    pub const INVALID_CONFIG: i32 = 40;
    /// A storage node failed to read or write.
    pub const KAFKA_STORAGE_ERROR: i32 = 56;
    /// The group is not known.
    pub const GROUP_ID_NOT_FOUND: i32 = 69;
    /// This gateway does not coordinate the group (its slot moved away).
    pub const NOT_COORDINATOR: i32 = 16;
    /// The caller's leader epoch is older than the current one.
    pub const FENCED_LEADER_EPOCH: i32 = 74;
    /// The caller's leader epoch is newer than the current one.
    pub const UNKNOWN_LEADER_EPOCH: i32 = 75;
}

impl metadata::Outcome {
    /// A successful outcome.
    pub fn ok() -> Self {
        Self::default()
    }

    /// A failed outcome with a Kafka error code and a message for humans.
    pub fn error(error_code: i32, message: impl Into<String>) -> Self {
        Self {
            error_code,
            error_message: message.into(),
        }
    }

    /// Whether the outcome is a success.
    pub fn is_ok(&self) -> bool {
        self.error_code == error_code::NONE
    }
}
