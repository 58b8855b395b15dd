//! Persistence of the cluster state machine in RocksDB: one key per entity in the
//! `state` column family, written atomically with the revision that produced it.

use crate::state::{Change, ClusterState};
use prost::Message;
use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};
use std::path::Path;
use strata_proto::metadata::{BookieInfo, ClusterMeta, GatewayInfo, PartitionInfo, TopicInfo};

/// Column family of the state machine's entities.
const CF_STATE: &str = "state";

const KEY_META: &[u8] = b"meta";
const KEY_REVISION: &[u8] = b"revision";
const PREFIX_GATEWAY: &[u8] = b"gw/";
const PREFIX_BOOKIE: &[u8] = b"bk/";
const PREFIX_TOPIC: &[u8] = b"topic/";
const PREFIX_PARTITION: &[u8] = b"part/";

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
    /// The stored revision is not an 8-byte counter: the database is damaged.
    #[error("corrupt metadata revision record")]
    BadRevision,
}

/// The RocksDB database holding the state machine.
pub struct MetadataStore {
    db: DB,
}

impl MetadataStore {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let cfs = [ColumnFamilyDescriptor::new(CF_STATE, Options::default())];
        let db = DB::open_cf_descriptors(&options, dir, cfs)?;
        Ok(Self { db })
    }

    /// Reads the whole state and the revision it was written at.
    pub fn load(&self) -> Result<(ClusterState, u64), StoreError> {
        let cf = self.cf();
        let mut state = ClusterState::default();
        let mut revision = 0;
        for item in self.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (key, value) = item?;
            let corrupt = |source| StoreError::Corrupt {
                key: String::from_utf8_lossy(&key).into_owned(),
                source,
            };
            let change = if *key == *KEY_REVISION {
                let bytes: [u8; 8] = value
                    .as_ref()
                    .try_into()
                    .map_err(|_| StoreError::BadRevision)?;
                revision = u64::from_be_bytes(bytes);
                continue;
            } else if *key == *KEY_META {
                Change::Meta(ClusterMeta::decode(&*value).map_err(corrupt)?)
            } else if key.starts_with(PREFIX_GATEWAY) {
                Change::Gateway(GatewayInfo::decode(&*value).map_err(corrupt)?)
            } else if key.starts_with(PREFIX_BOOKIE) {
                Change::Bookie(BookieInfo::decode(&*value).map_err(corrupt)?)
            } else if key.starts_with(PREFIX_TOPIC) {
                Change::Topic(TopicInfo::decode(&*value).map_err(corrupt)?)
            } else if key.starts_with(PREFIX_PARTITION) {
                Change::Partition(PartitionInfo::decode(&*value).map_err(corrupt)?)
            } else {
                continue;
            };
            state.restore(change);
        }
        Ok((state, revision))
    }

    /// Writes the changes of one applied command and its revision in one
    /// synced batch, so a crash leaves either all of it or none.
    pub fn write(&self, revision: u64, changes: &[Change]) -> Result<(), StoreError> {
        let cf = self.cf();
        let mut batch = WriteBatch::default();
        for change in changes {
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
                }
                Change::Partition(p) => {
                    batch.put_cf(cf, partition_key(&p.topic, p.partition), p.encode_to_vec())
                }
            }
        }
        batch.put_cf(cf, KEY_REVISION, revision.to_be_bytes());
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    fn cf(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(CF_STATE)
            .expect("the state column family is created on open")
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateRules;
    use strata_proto::metadata::metadata_command::Op;
    use strata_proto::metadata::{CreateTopicRequest, DeleteTopicRequest, MetadataCommand};

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let rules = StateRules {
            lease_ms: 1_000,
            default_partitions: 1,
        };
        let mut state = ClusterState::default();
        let commands = [
            Op::CreateTopic(CreateTopicRequest {
                name: "kept".into(),
                partition_count: 3,
                ..Default::default()
            }),
            Op::CreateTopic(CreateTopicRequest {
                name: "dropped".into(),
                partition_count: 2,
                ..Default::default()
            }),
            Op::DeleteTopic(DeleteTopicRequest {
                name: "dropped".into(),
            }),
        ];
        {
            let store = MetadataStore::open(dir.path()).unwrap();
            for (revision, op) in commands.into_iter().enumerate() {
                let command = MetadataCommand {
                    now_ms: 1,
                    op: Some(op),
                };
                let (_, changes) = state.apply(&rules, &command);
                store.write(revision as u64 + 1, &changes).unwrap();
            }
        }
        let store = MetadataStore::open(dir.path()).unwrap();
        let (loaded, revision) = store.load().unwrap();
        assert_eq!(revision, 3);
        assert_eq!(loaded, state);
        assert_eq!(loaded.partitions.len(), 3);
    }
}
