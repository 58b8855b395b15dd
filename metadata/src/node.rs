//! One metadata node: the state machine in memory, its RocksDB store, and the
//! broadcast of changes to watchers.

use crate::config::MetadataConfig;
use crate::state::{Change, ClusterState, Reply, StateRules};
use crate::store::{MetadataStore, StoreError};
use base64::Engine;
use std::sync::Arc;
use strata_proto::metadata::metadata_command::Op;
use strata_proto::metadata::watch_event::Change as WatchChange;
use strata_proto::metadata::{InitCluster, MetadataCommand, WatchEvent};
use tokio::sync::{broadcast, RwLock};

/// Errors of a metadata node that are not domain errors (those are Kafka codes in a reply).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data directory could not be created.
    #[error("cannot create metadata data dir {path}: {source}")]
    DataDir {
        /// The directory that could not be created.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The applied state and the revision (count of applied commands) it is at.
pub struct Applied {
    /// The cluster state.
    pub state: ClusterState,
    /// How many commands have been applied.
    pub revision: u64,
}

/// A metadata node: applies commands, persists them, and tells watchers.
pub struct MetadataNode {
    config: MetadataConfig,
    rules: StateRules,
    store: MetadataStore,
    applied: RwLock<Applied>,
    events: broadcast::Sender<WatchEvent>,
}

impl MetadataNode {
    /// Opens the node's store, loads the state, and gives a new cluster its id.
    pub async fn open(config: MetadataConfig) -> Result<Arc<Self>, NodeError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let store = MetadataStore::open(&config.data_dir)?;
        let (state, revision) = store.load()?;
        let rules = StateRules {
            lease_ms: config.lease_ms,
            default_partitions: config.default_partitions,
        };
        let (events, _) = broadcast::channel(config.watch_buffer.max(1));
        let node = Arc::new(Self {
            config,
            rules,
            store,
            applied: RwLock::new(Applied { state, revision }),
            events,
        });
        if node.applied.read().await.state.meta.cluster_id.is_empty() {
            let cluster_id = new_cluster_id();
            tracing::info!(%cluster_id, "initialising a new cluster");
            node.propose(Op::InitCluster(InitCluster { cluster_id }))
                .await?;
        }
        Ok(node)
    }

    /// The node's configuration.
    pub fn config(&self) -> &MetadataConfig {
        &self.config
    }

    /// Applies one command: checks it against the state, persists what changed,
    /// and publishes the changes to watchers, in that order.
    pub async fn propose(&self, op: Op) -> Result<Reply, NodeError> {
        let command = MetadataCommand {
            now_ms: crate::now_ms(),
            op: Some(op),
        };
        let mut applied = self.applied.write().await;
        let (reply, changes) = applied.state.apply(&self.rules, &command);
        if changes.is_empty() {
            return Ok(reply);
        }
        let revision = applied.revision + 1;
        if let Err(error) = self.store.write(revision, &changes) {
            // Nothing was persisted: go back to what the store holds, so memory
            // never runs ahead of disk.
            let (state, revision) = self.store.load()?;
            *applied = Applied { state, revision };
            return Err(error.into());
        }
        applied.revision = revision;
        for change in changes {
            if let Some(change) = watch_change(change) {
                // No receivers is fine: nobody is watching yet.
                let _ = self.events.send(WatchEvent {
                    revision,
                    change: Some(change),
                });
            }
        }
        Ok(reply)
    }

    /// Reads the applied state.
    pub async fn read(&self) -> tokio::sync::RwLockReadGuard<'_, Applied> {
        self.applied.read().await
    }

    /// A snapshot event and a receiver of every later change, taken together so
    /// that no change falls between them.
    pub async fn subscribe(&self) -> (WatchEvent, broadcast::Receiver<WatchEvent>) {
        let applied = self.applied.read().await;
        let receiver = self.events.subscribe();
        let snapshot = WatchEvent {
            revision: applied.revision,
            change: Some(WatchChange::Snapshot(applied.state.snapshot())),
        };
        (snapshot, receiver)
    }
}

/// The watch-stream form of a change; cluster counters are not published.
fn watch_change(change: Change) -> Option<WatchChange> {
    Some(match change {
        Change::Meta(_) => return None,
        Change::Gateway(g) => WatchChange::GatewayUpserted(g),
        Change::Bookie(b) => WatchChange::BookieUpserted(b),
        Change::Topic(t) => WatchChange::TopicUpserted(t),
        Change::TopicDeleted { name, .. } => WatchChange::TopicDeleted(name),
        Change::Partition(p) => WatchChange::PartitionUpserted(p),
    })
}

/// A new cluster id in Kafka's form: a random UUID in URL-safe base64 without padding.
fn new_cluster_id() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
}
