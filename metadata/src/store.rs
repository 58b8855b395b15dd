//! Persistence of the cluster state machine in RocksDB: one key per entity in the
//! `state` column family, written atomically with the revision that produced it.

use crate::raft::log_store::{CF_LOG, CF_RAFT_META};
use crate::state::{Change, ClusterState};
use prost::Message;
use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};
use std::path::Path;
use std::sync::Arc;
use strata_proto::metadata::{
    BookieInfo, ClusterMeta, CommittedOffset, CoordinatorSlot, GatewayInfo, PartitionInfo,
    SegmentInfo, TopicInfo,
};

/// Column family of the state machine's entities.
const CF_STATE: &str = "state";

const KEY_META: &[u8] = b"meta";
const KEY_REVISION: &[u8] = b"revision";
const PREFIX_GATEWAY: &[u8] = b"gw/";
const PREFIX_BOOKIE: &[u8] = b"bk/";
const PREFIX_TOPIC: &[u8] = b"topic/";
const PREFIX_PARTITION: &[u8] = b"part/";
const PREFIX_SEGMENT: &[u8] = b"seg/";
/// Committed offsets, keyed topic first (`off/{topic}/{partition:010}/{group}`):
/// the group, which may hold any byte, comes last and needs no separator, and a
/// deleted topic's offsets are one key range.
const PREFIX_OFFSET: &[u8] = b"off/";
const PREFIX_SLOT: &[u8] = b"slot/";

/// Errors of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB refused an operation.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored value did not decode: the database is damaged.
    #[error("corrupt metadata record under key {key:?}: {source}")]
    Corrupt {
        /// The key whose value is damaged.
        key: String,
        /// Why it did not decode.
        source: prost::DecodeError,
    },
    /// The applied marker did not decode: the database is damaged.
    #[error("corrupt raft applied marker: {0}")]
    Marker(String),
    /// The stored revision is not an 8-byte counter: the database is damaged.
    #[error("corrupt metadata revision record")]
    BadRevision,
}

/// Every key and value of the state column family: the body of a snapshot.
pub type StatePairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Key of the applied marker: the last applied raft entry and membership,
/// written in the same batch as the changes they produced.
pub const KEY_APPLIED: &[u8] = b"raft/applied";

/// Key of the current snapshot in the raft meta column family.
const KEY_SNAPSHOT: &[u8] = b"snapshot";

/// Opens (or creates) the node's database in `dir` with every column family:
/// the state machine's and the raft log's.
pub fn open_db(dir: &Path) -> Result<Arc<DB>, StoreError> {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    let cfs = [CF_STATE, CF_LOG, CF_RAFT_META]
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    Ok(Arc::new(DB::open_cf_descriptors(&options, dir, cfs)?))
}

/// The state machine's part of the node's RocksDB database.
pub struct MetadataStore {
    db: Arc<DB>,
}

impl MetadataStore {
    /// The state machine's store in `db` (opened by [`open_db`]).
    pub fn new(db: Arc<DB>) -> Self {
        Self { db }
    }

    /// Reads the whole state and the revision it was written at.
    pub fn load(&self) -> Result<(ClusterState, u64), StoreError> {
        let cf = self.cf();
        let mut state = ClusterState::default();
        let mut revision = 0;
        for item in self.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (key, value) = item?;
            if *key == *KEY_REVISION {
                let bytes: [u8; 8] = value
                    .as_ref()
                    .try_into()
                    .map_err(|_| StoreError::BadRevision)?;
                revision = u64::from_be_bytes(bytes);
            } else if let Some(change) = decode_entity(&key, &value)? {
                state.restore(change);
            }
        }
        Ok((state, revision))
    }

    /// Writes the changes of one applied command and its revision in one
    /// synced batch, so a crash leaves either all of it or none.
    pub fn write(&self, revision: u64, changes: &[Change]) -> Result<(), StoreError> {
        self.write_with(revision, changes, None)
    }

    /// Like [`Self::write`], with the applied marker in the same batch.
    pub fn write_applied(
        &self,
        revision: u64,
        changes: &[Change],
        marker: &[u8],
    ) -> Result<(), StoreError> {
        self.write_with(revision, changes, Some(marker))
    }

    fn write_with(
        &self,
        revision: u64,
        changes: &[Change],
        marker: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let cf = self.cf();
        let mut batch = WriteBatch::default();
        for change in changes {
            stage_change(&mut batch, cf, change);
        }
        batch.put_cf(cf, KEY_REVISION, revision.to_be_bytes());
        if let Some(marker) = marker {
            batch.put_cf(cf, KEY_APPLIED, marker);
        }
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    /// The applied marker, if any entry was ever applied.
    pub fn applied_marker(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(), KEY_APPLIED)?)
    }

    /// Every key and value of the state, read at one point in time: the body
    /// of a snapshot.
    pub fn export(&self) -> Result<StatePairs, StoreError> {
        let snapshot = self.db.snapshot();
        let mut pairs = Vec::new();
        for item in snapshot.iterator_cf(self.cf(), rocksdb::IteratorMode::Start) {
            let (key, value) = item?;
            pairs.push((key.to_vec(), value.to_vec()));
        }
        Ok(pairs)
    }

    /// Replaces the whole state with `pairs` (from [`Self::export`]) and keeps
    /// `snapshot` as the current snapshot, in one synced batch.
    pub fn replace_all(&self, pairs: &StatePairs, snapshot: &[u8]) -> Result<(), StoreError> {
        let cf = self.cf();
        let mut batch = WriteBatch::default();
        let mut last = Vec::new();
        for item in self.db.iterator_cf(cf, rocksdb::IteratorMode::End).take(1) {
            last = item?.0.to_vec();
        }
        if !last.is_empty() {
            batch.delete_range_cf(cf, Vec::<u8>::new(), last.clone());
            batch.delete_cf(cf, &last);
        }
        for (key, value) in pairs {
            batch.put_cf(cf, key, value);
        }
        batch.put_cf(self.raft_meta_cf(), KEY_SNAPSHOT, snapshot);
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    /// Keeps `snapshot` as the node's current snapshot.
    pub fn save_snapshot(&self, snapshot: &[u8]) -> Result<(), StoreError> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .put_cf_opt(self.raft_meta_cf(), KEY_SNAPSHOT, snapshot, &options)?;
        Ok(())
    }

    /// The node's current snapshot, if one was built or installed.
    pub fn snapshot(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.raft_meta_cf(), KEY_SNAPSHOT)?)
    }

    fn raft_meta_cf(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(CF_RAFT_META)
            .expect("the raft meta column family is created on open")
    }

    fn cf(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(CF_STATE)
            .expect("the state column family is created on open")
    }
}

/// Adds the puts and deletes that persist one change to `batch`.
pub(crate) fn stage_change(batch: &mut WriteBatch, cf: &rocksdb::ColumnFamily, change: &Change) {
    match change {
        Change::Meta(meta) => batch.put_cf(cf, KEY_META, meta.encode_to_vec()),
        Change::Gateway(g) => {
            batch.put_cf(cf, node_key(PREFIX_GATEWAY, g.node_id), g.encode_to_vec())
        }
        Change::Bookie(b) => {
            batch.put_cf(cf, node_key(PREFIX_BOOKIE, b.node_id), b.encode_to_vec())
        }
        Change::Topic(t) => batch.put_cf(cf, topic_key(&t.name), t.encode_to_vec()),
        Change::TopicDeleted {
            name,
            partition_count,
        } => {
            batch.delete_cf(cf, topic_key(name));
            for partition in 0..*partition_count {
                batch.delete_cf(cf, partition_key(name, partition));
            }
            let (from, to) = topic_offsets_range(name);
            batch.delete_range_cf(cf, from, to);
        }
        Change::Partition(p) => {
            batch.put_cf(cf, partition_key(&p.topic, p.partition), p.encode_to_vec())
        }
        Change::Segment(s) => batch.put_cf(cf, segment_key(s.segment_id), s.encode_to_vec()),
        Change::Offset(o) => batch.put_cf(
            cf,
            offset_key(&o.topic, o.partition, &o.group),
            o.encode_to_vec(),
        ),
        Change::OffsetDeleted((group, topic, partition)) => {
            batch.delete_cf(cf, offset_key(topic, *partition, group))
        }
        Change::Slot(s) => batch.put_cf(cf, slot_key(s.slot), s.encode_to_vec()),
    }
}

/// The entity stored under `key`, or `None` for keys that hold no entity
/// (the revision and anything else that is not state).
pub(crate) fn decode_entity(key: &[u8], value: &[u8]) -> Result<Option<Change>, StoreError> {
    let corrupt = |source| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    };
    let change = if key == KEY_META {
        Change::Meta(ClusterMeta::decode(value).map_err(corrupt)?)
    } else if key.starts_with(PREFIX_GATEWAY) {
        Change::Gateway(GatewayInfo::decode(value).map_err(corrupt)?)
    } else if key.starts_with(PREFIX_BOOKIE) {
        Change::Bookie(BookieInfo::decode(value).map_err(corrupt)?)
    } else if key.starts_with(PREFIX_TOPIC) {
        Change::Topic(TopicInfo::decode(value).map_err(corrupt)?)
    } else if key.starts_with(PREFIX_PARTITION) {
        Change::Partition(PartitionInfo::decode(value).map_err(corrupt)?)
    } else if key.starts_with(PREFIX_SEGMENT) {
        Change::Segment(SegmentInfo::decode(value).map_err(corrupt)?)
    } else if key.starts_with(PREFIX_OFFSET) {
        Change::Offset(CommittedOffset::decode(value).map_err(corrupt)?)
    } else if key.starts_with(PREFIX_SLOT) {
        Change::Slot(CoordinatorSlot::decode(value).map_err(corrupt)?)
    } else {
        return Ok(None);
    };
    Ok(Some(change))
}

fn node_key(prefix: &[u8], node_id: i32) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{node_id:010}").as_bytes());
    key
}

fn topic_key(name: &str) -> Vec<u8> {
    let mut key = PREFIX_TOPIC.to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

fn partition_key(topic: &str, partition: u32) -> Vec<u8> {
    let mut key = PREFIX_PARTITION.to_vec();
    key.extend_from_slice(topic.as_bytes());
    // Topic names never hold '/', so it separates the name from the index.
    key.extend_from_slice(format!("/{partition:010}").as_bytes());
    key
}

fn segment_key(segment_id: u64) -> Vec<u8> {
    let mut key = PREFIX_SEGMENT.to_vec();
    key.extend_from_slice(format!("{segment_id:020}").as_bytes());
    key
}

fn slot_key(slot: u32) -> Vec<u8> {
    let mut key = PREFIX_SLOT.to_vec();
    key.extend_from_slice(format!("{slot:010}").as_bytes());
    key
}

/// `off/{topic}/`: topic names never hold '/', so this prefixes exactly that
/// topic's offsets.
fn topic_offsets_prefix(topic: &str) -> Vec<u8> {
    let mut key = PREFIX_OFFSET.to_vec();
    key.extend_from_slice(topic.as_bytes());
    key.push(b'/');
    key
}

/// The key range `[from, to)` holding every committed offset of `topic`.
fn topic_offsets_range(topic: &str) -> (Vec<u8>, Vec<u8>) {
    let from = topic_offsets_prefix(topic);
    // The prefix with its final '/' raised to '0': the first key after every
    // key that starts with `from`.
    let mut to = from[..from.len() - 1].to_vec();
    to.push(b'/' + 1);
    (from, to)
}

fn offset_key(topic: &str, partition: u32, group: &str) -> Vec<u8> {
    let mut key = topic_offsets_prefix(topic);
    key.extend_from_slice(format!("{partition:010}/").as_bytes());
    // Last, so any byte may appear in it.
    key.extend_from_slice(group.as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{outcome, StateRules, DEFAULT_COORDINATOR_SLOTS};
    use strata_proto::metadata::metadata_command::Op;
    use strata_proto::metadata::{
        AllocateProducerIdsRequest, CommitOffsetsRequest, ControllerTick, CreateTopicRequest,
        DeleteOffsetsRequest, DeleteSegmentsRequest, DeleteTopicRequest, InitCluster,
        MarkOffloadedRequest, MetadataCommand, OpenSegmentRequest, RegisterBookieRequest,
        RegisterGatewayRequest, SealSegmentRequest,
    };

    fn rules() -> StateRules {
        StateRules {
            lease_ms: 1_000,
            default_partitions: 1,
            coordinator_slots: DEFAULT_COORDINATOR_SLOTS,
        }
    }

    fn topic(name: &str, partition_count: i32) -> Op {
        Op::CreateTopic(CreateTopicRequest {
            name: name.into(),
            partition_count,
            ..Default::default()
        })
    }

    fn offset(group: &str, topic: &str, partition: u32, offset: i64) -> CommittedOffset {
        CommittedOffset {
            group: group.into(),
            topic: topic.into(),
            partition,
            offset,
            leader_epoch: 3,
            metadata: "m".into(),
            commit_timestamp_ms: 42,
        }
    }

    /// Applies `op` to `state`, expects success, and persists the changes.
    fn apply(store: &MetadataStore, state: &mut ClusterState, revision: &mut u64, op: Op) {
        let command = MetadataCommand {
            now_ms: 100,
            op: Some(op),
            rules: None,
        };
        let (reply, changes) = state.apply(&rules(), &command);
        assert!(outcome(&reply).is_ok(), "{reply:?}");
        *revision += 1;
        store.write(*revision, &changes).unwrap();
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = ClusterState::default();
        let mut revision = 0;
        {
            let store = MetadataStore::new(open_db(dir.path()).unwrap());
            for op in [topic("kept", 3), topic("dropped", 2)] {
                apply(&store, &mut state, &mut revision, op);
            }
            let drop = DeleteTopicRequest {
                name: "dropped".into(),
            };
            apply(&store, &mut state, &mut revision, Op::DeleteTopic(drop));
        }
        let store = MetadataStore::new(open_db(dir.path()).unwrap());
        let (loaded, loaded_revision) = store.load().unwrap();
        assert_eq!(loaded_revision, 3);
        assert_eq!(loaded, state);
        assert_eq!(loaded.partitions.len(), 3);
    }

    /// A cluster with one gateway owning topic "t" (and one partition of
    /// "gone"), three bookies, segments in every state, committed offsets of
    /// groups whose names hold separators, and a producer-id block.
    fn busy_cluster(store: &MetadataStore, state: &mut ClusterState, revision: &mut u64) {
        let init = InitCluster {
            cluster_id: "c".into(),
        };
        apply(store, state, revision, Op::InitCluster(init));
        for node_id in 1..=3 {
            let bookie = RegisterBookieRequest {
                node_id,
                grpc_addr: format!("b{node_id}:1"),
                ..Default::default()
            };
            apply(store, state, revision, Op::RegisterBookie(bookie));
        }
        let gateway = RegisterGatewayRequest {
            node_id: 1,
            kafka_host: "g".into(),
            kafka_port: 9092,
            zone: String::new(),
        };
        apply(store, state, revision, Op::RegisterGateway(gateway));
        apply(store, state, revision, topic("t", 2));
        apply(store, state, revision, topic("gone", 1));
        apply(
            store,
            state,
            revision,
            Op::ControllerTick(ControllerTick {}),
        );
        let open = |topic: &str, base_offset| {
            Op::OpenSegment(OpenSegmentRequest {
                topic: topic.into(),
                partition: 0,
                owner: 1,
                leader_epoch: 1,
                base_offset,
                ensemble: vec![1, 2, 3],
                write_quorum: 3,
                ack_quorum: 2,
            })
        };
        let seal = |segment_id, end_offset| {
            Op::SealSegment(SealSegmentRequest {
                segment_id,
                owner: 1,
                leader_epoch: 1,
                end_offset,
                bytes: 1_000,
                max_timestamp: None,
            })
        };
        for (id, base) in [(1, 0), (2, 10), (3, 20)] {
            apply(store, state, revision, open("t", base));
            apply(store, state, revision, seal(id, base + 10));
        }
        apply(store, state, revision, open("t", 30));
        apply(store, state, revision, open("gone", 0));
        let offloaded = MarkOffloadedRequest {
            segment_id: 2,
            object_key: "topics/t/0/2.seg".into(),
            object_size: 99,
        };
        apply(store, state, revision, Op::MarkOffloaded(offloaded));
        let retention = DeleteSegmentsRequest {
            segment_ids: vec![1],
        };
        apply(store, state, revision, Op::DeleteSegments(retention));
        let offsets = [
            offset("plain", "t", 0, 5),
            offset("with/slash", "t", 1, 6),
            offset("with\0nul", "t", 0, 7),
            offset("plain", "gone", 0, 8),
            offset("other", "tt", 0, 9),
        ];
        let batch = CommitOffsetsRequest {
            offsets: offsets[..4].to_vec(),
            coordinator: None,
        };
        apply(store, state, revision, Op::CommitOffsets(batch));
        apply(store, state, revision, topic("tt", 1));
        let batch = CommitOffsetsRequest {
            offsets: offsets[4..].to_vec(),
            coordinator: None,
        };
        apply(store, state, revision, Op::CommitOffsets(batch));
        let forget = DeleteOffsetsRequest {
            group: "with/slash".into(),
            partitions: Vec::new(),
            coordinator: None,
        };
        apply(store, state, revision, Op::DeleteOffsets(forget));
        let ids = AllocateProducerIdsRequest { count: 1_000 };
        apply(store, state, revision, Op::AllocateProducerIds(ids));
    }

    #[test]
    fn segments_offsets_slots_and_counters_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = ClusterState::default();
        let mut revision = 0;
        {
            let store = MetadataStore::new(open_db(dir.path()).unwrap());
            busy_cluster(&store, &mut state, &mut revision);
        }
        let store = MetadataStore::new(open_db(dir.path()).unwrap());
        let (loaded, loaded_revision) = store.load().unwrap();
        assert_eq!(loaded_revision, revision);
        assert_eq!(loaded, state);
        assert_eq!(loaded.segments.len(), 5);
        let live: Vec<u64> = loaded.segments.live("t", 0).map(|s| s.segment_id).collect();
        assert_eq!(live, vec![2, 3, 4]);
        assert_eq!(loaded.offsets.len(), 4, "a deleted offset stays deleted");
        assert_eq!(
            loaded
                .committed_offset("with\0nul", "t", 0)
                .map(|o| o.offset),
            Some(7)
        );
        assert_eq!(loaded.slots.len(), DEFAULT_COORDINATOR_SLOTS as usize);
        assert!(loaded.slots.values().all(|s| s.owner == 1));
        assert_eq!(loaded.meta.next_producer_id, 1_000);
        assert_eq!(loaded.meta.next_segment_id, 6);
    }

    #[test]
    fn deleting_a_topic_deletes_its_offsets_and_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = ClusterState::default();
        let mut revision = 0;
        {
            let store = MetadataStore::new(open_db(dir.path()).unwrap());
            busy_cluster(&store, &mut state, &mut revision);
            let drop = DeleteTopicRequest { name: "t".into() };
            apply(&store, &mut state, &mut revision, Op::DeleteTopic(drop));
        }
        let store = MetadataStore::new(open_db(dir.path()).unwrap());
        let (loaded, _) = store.load().unwrap();
        assert_eq!(loaded, state);
        // "gone" and "tt" share a prefix with "t" in the key space but keep their offsets.
        let mut topics: Vec<&str> = loaded.offsets.values().map(|o| o.topic.as_str()).collect();
        topics.sort_unstable();
        assert_eq!(topics, vec!["gone", "tt"]);
        assert_eq!(loaded.segments.live("t", 0).count(), 0);
        assert_eq!(
            loaded.segments.len(),
            5,
            "deleted segments stay as tombstones"
        );
    }

    #[test]
    fn offset_keys_of_a_topic_fall_in_its_range_only() {
        let (from, to) = topic_offsets_range("t");
        let inside = offset_key("t", 7, "any/group\0\u{ff}");
        assert!(from <= inside && inside < to);
        for other in ["t0", "t.x", "t-x", "tt", "s", "u"] {
            let outside = offset_key(other, 0, "g");
            assert!(outside < from || outside >= to, "{other}");
        }
    }
}
