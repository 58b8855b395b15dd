//! The raft state machine: applies committed commands to [`ClusterState`],
//! persists each batch of changes in RocksDB together with the id of the last
//! applied entry, publishes the changes to watchers, and builds and installs
//! snapshots.

// Openraft's traits fix the error type; its size is theirs to choose.
#![allow(clippy::result_large_err)]

use super::wire::{decode, encode, Prost};
use super::{storage_error, LogEntry, LogId, StorageError, StoredMembership, TypeConfig};
use crate::state::{watch_change, ClusterState, StateRules};
use crate::store::MetadataStore;
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorVerb, RaftSnapshotBuilder, Snapshot, SnapshotMeta};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::Arc;
use strata_proto::metadata::watch_event::Change as WatchChange;
use strata_proto::metadata::{CommandReply, Outcome, WatchEvent};
use tokio::sync::{broadcast, RwLock};

/// The applied state and where in the log it is.
pub struct Applied {
    /// The cluster state.
    pub state: ClusterState,
    /// Index of the last applied log entry: the revision watchers see.
    pub revision: u64,
    /// Id of the last applied log entry.
    pub last_applied: Option<LogId>,
    /// The membership of the metadata group as last applied.
    pub membership: StoredMembership,
}

/// What the state machine shares with the node's services: the applied state
/// and the stream of changes.
pub struct SharedState {
    /// The applied state; the state machine holds the write lock while applying.
    pub applied: RwLock<Applied>,
    /// Every applied change, in order, for watch streams.
    pub events: broadcast::Sender<WatchEvent>,
}

impl SharedState {
    /// A snapshot event and a receiver of every later change, taken together so
    /// that no change falls between them.
    pub async fn subscribe(&self) -> (WatchEvent, broadcast::Receiver<WatchEvent>) {
        let applied = self.applied.read().await;
        let receiver = self.events.subscribe();
        (snapshot_event(&applied), receiver)
    }
}

fn snapshot_event(applied: &Applied) -> WatchEvent {
    WatchEvent {
        revision: applied.revision,
        change: Some(WatchChange::Snapshot(applied.state.snapshot())),
    }
}

/// The applied marker stored with the state: last applied entry and membership.
#[derive(Serialize, Deserialize, Default)]
struct AppliedMarker {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// A snapshot as stored and sent: its metadata and every key of the state.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, openraft::BasicNode>,
    data: Vec<u8>,
}

/// The state machine of one metadata node.
pub struct StateMachine {
    store: Arc<MetadataStore>,
    rules: StateRules,
    shared: Arc<SharedState>,
    /// Orders saving a built snapshot against installing one from the leader.
    snapshot_lock: Arc<tokio::sync::Mutex<()>>,
}

impl StateMachine {
    /// Loads the applied state from `store`.
    pub fn open(
        store: Arc<MetadataStore>,
        rules: StateRules,
        watch_buffer: usize,
    ) -> Result<Self, crate::store::StoreError> {
        let (state, revision) = store.load()?;
        let marker: AppliedMarker = match store.applied_marker()? {
            Some(bytes) => {
                decode(&bytes).map_err(|e| crate::store::StoreError::Marker(e.to_string()))?
            }
            None => AppliedMarker::default(),
        };
        let (events, _) = broadcast::channel(watch_buffer.max(1));
        let shared = Arc::new(SharedState {
            applied: RwLock::new(Applied {
                state,
                revision,
                last_applied: marker.last_applied,
                membership: marker.membership,
            }),
            events,
        });
        Ok(Self {
            store,
            rules,
            shared,
            snapshot_lock: Arc::default(),
        })
    }

    /// The state shared with the node's services.
    pub fn shared(&self) -> Arc<SharedState> {
        self.shared.clone()
    }

    fn reply_ok() -> Prost<CommandReply> {
        Prost(CommandReply {
            outcome: Some(Outcome::ok()),
            ..Default::default()
        })
    }
}

/// Builds snapshots from the store's current contents.
pub struct SnapshotBuilder {
    store: Arc<MetadataStore>,
    snapshot_lock: Arc<tokio::sync::Mutex<()>>,
}

impl StoredSnapshot {
    fn into_snapshot(self) -> Snapshot<TypeConfig> {
        Snapshot {
            meta: self.meta,
            snapshot: Box::new(Cursor::new(self.data)),
        }
    }
}

/// The node's current snapshot, decoded.
fn current_snapshot(store: &MetadataStore) -> Result<Option<StoredSnapshot>, StorageError> {
    let Some(bytes) = store
        .snapshot()
        .map_err(|e| storage_error(ErrorVerb::Read, &e))?
    else {
        return Ok(None);
    };
    decode(&bytes)
        .map(Some)
        .map_err(|e| storage_error(ErrorVerb::Read, &e))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let verb = ErrorVerb::Read;
        let pairs = self.store.export().map_err(|e| storage_error(verb, &e))?;
        let marker: AppliedMarker = pairs
            .iter()
            .find(|(key, _)| key.as_slice() == crate::store::KEY_APPLIED)
            .map(|(_, value)| decode(value))
            .transpose()
            .map_err(|e| storage_error(verb, &e))?
            .unwrap_or_default();
        let data = encode(&pairs).map_err(|e| storage_error(verb, &e))?;
        let snapshot_id = match marker.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, crate::now_ms()),
            None => format!("empty-{}", crate::now_ms()),
        };
        let meta = SnapshotMeta {
            last_log_id: marker.last_applied,
            last_membership: marker.membership,
            snapshot_id,
        };
        let stored = StoredSnapshot { meta, data };
        let bytes = encode(&stored).map_err(|e| storage_error(ErrorVerb::Write, &e))?;
        // A snapshot installed from the leader while this one was built may be
        // newer: keep that one.
        let _saving = self.snapshot_lock.lock().await;
        if let Some(current) = current_snapshot(&self.store)? {
            if current.meta.last_log_id > stored.meta.last_log_id {
                return Ok(current.into_snapshot());
            }
        }
        self.store
            .save_snapshot(&bytes)
            .map_err(|e| storage_error(ErrorVerb::Write, &e))?;
        tracing::info!(
            snapshot = %stored.meta.snapshot_id,
            bytes = stored.data.len(),
            "metadata snapshot built"
        );
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.shared.applied.read().await;
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Prost<CommandReply>>, StorageError>
    where
        I: IntoIterator<Item = LogEntry> + Send,
        I::IntoIter: Send,
    {
        let mut applied = self.shared.applied.write().await;
        let mut replies = Vec::new();
        let mut changes = Vec::new();
        let mut events = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => replies.push(Self::reply_ok()),
                EntryPayload::Normal(Prost(command)) => {
                    let rules = command
                        .rules
                        .as_ref()
                        .map(StateRules::from)
                        .unwrap_or_else(|| self.rules.clone());
                    let (reply, entry_changes) = applied.state.apply(&rules, &command);
                    events.extend(entry_changes.iter().cloned().filter_map(|change| {
                        watch_change(change).map(|change| WatchEvent {
                            revision: entry.log_id.index,
                            change: Some(change),
                        })
                    }));
                    changes.extend(entry_changes);
                    replies.push(Prost(reply));
                }
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    replies.push(Self::reply_ok());
                }
            }
        }
        let Some(last) = applied.last_applied else {
            return Ok(replies);
        };
        let marker = AppliedMarker {
            last_applied: applied.last_applied,
            membership: applied.membership.clone(),
        };
        let marker = encode(&marker).map_err(|e| storage_error(ErrorVerb::Write, &e))?;
        self.store
            .write_applied(last.index, &changes, &marker)
            .map_err(|e| storage_error(ErrorVerb::Write, &e))?;
        applied.revision = last.index;
        for event in events {
            // No receivers is fine: nobody is watching yet.
            let _ = self.shared.events.send(event);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            snapshot_lock: self.snapshot_lock.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let pairs: crate::store::StatePairs =
            decode(&data).map_err(|e| storage_error(ErrorVerb::Read, &e))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let bytes = encode(&stored).map_err(|e| storage_error(ErrorVerb::Write, &e))?;
        let _saving = self.snapshot_lock.lock().await;
        let mut applied = self.shared.applied.write().await;
        self.store
            .replace_all(&pairs, &bytes)
            .map_err(|e| storage_error(ErrorVerb::Write, &e))?;
        let (state, revision) = self
            .store
            .load()
            .map_err(|e| storage_error(ErrorVerb::Read, &e))?;
        *applied = Applied {
            state,
            revision,
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        tracing::info!(snapshot = %meta.snapshot_id, "installed metadata snapshot from the leader");
        // Watchers start over from the new state.
        let _ = self.shared.events.send(snapshot_event(&applied));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(current_snapshot(&self.store)?.map(StoredSnapshot::into_snapshot))
    }
}
