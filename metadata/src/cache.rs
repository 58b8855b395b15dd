//! A local copy of cluster state, fed by the metadata watch stream, so that
//! gateways and bookies never call metadata on a produce or fetch.

use crate::client::MetadataClient;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use strata_proto::metadata::watch_event::Change;
use strata_proto::metadata::{
    BookieInfo, GatewayInfo, PartitionInfo, TopicInfo, WatchEvent, WatchRequest,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The cached cluster state.
#[derive(Debug, Clone, Default)]
pub struct CachedState {
    /// Revision of the last applied event; 0 before the first snapshot.
    pub revision: u64,
    /// The cluster id, empty before the first snapshot.
    pub cluster_id: String,
    /// Registered gateways by node id.
    pub gateways: BTreeMap<i32, GatewayInfo>,
    /// Registered bookies by node id.
    pub bookies: BTreeMap<i32, BookieInfo>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicInfo>,
    /// Partitions by (topic, index).
    pub partitions: BTreeMap<(String, u32), PartitionInfo>,
}

impl CachedState {
    /// Applies one watch event.
    pub fn apply(&mut self, event: WatchEvent) {
        let Some(change) = event.change else { return };
        match change {
            Change::Snapshot(snapshot) => {
                *self = CachedState {
                    revision: 0,
                    cluster_id: snapshot.cluster_id,
                    gateways: snapshot
                        .gateways
                        .into_iter()
                        .map(|g| (g.node_id, g))
                        .collect(),
                    bookies: snapshot
                        .bookies
                        .into_iter()
                        .map(|b| (b.node_id, b))
                        .collect(),
                    topics: snapshot
                        .topics
                        .into_iter()
                        .map(|t| (t.name.clone(), t))
                        .collect(),
                    partitions: snapshot
                        .partitions
                        .into_iter()
                        .map(|p| ((p.topic.clone(), p.partition), p))
                        .collect(),
                };
            }
            Change::GatewayUpserted(g) => {
                self.gateways.insert(g.node_id, g);
            }
            Change::BookieUpserted(b) => {
                self.bookies.insert(b.node_id, b);
            }
            Change::TopicUpserted(t) => {
                self.topics.insert(t.name.clone(), t);
            }
            Change::TopicDeleted(name) => {
                self.topics.remove(&name);
                self.partitions.retain(|(topic, _), _| *topic != name);
            }
            Change::PartitionUpserted(p) => {
                self.partitions.insert((p.topic.clone(), p.partition), p);
            }
            Change::SegmentUpserted(_) => {}
        }
        debug_assert!(
            event.revision >= self.revision,
            "watch revisions never go backwards"
        );
        self.revision = event.revision;
    }

    /// Gateways whose lease has not lapsed at `now_ms`, by node id.
    pub fn live_gateways(&self, now_ms: u64) -> impl Iterator<Item = &GatewayInfo> {
        self.gateways
            .values()
            .filter(move |g| g.lease_expires_ms > now_ms)
    }
}

/// A shared, watch-fed cache of cluster state.
#[derive(Clone)]
pub struct ClusterCache {
    state: Arc<RwLock<CachedState>>,
    revision: watch::Sender<u64>,
}

impl Default for ClusterCache {
    fn default() -> Self {
        Self::new()
    }
}

impl ClusterCache {
    /// An empty cache; [`ClusterCache::run`] fills it.
    pub fn new() -> Self {
        Self {
            state: Arc::new(RwLock::new(CachedState::default())),
            revision: watch::Sender::new(0),
        }
    }

    /// Runs `f` on the cached state.
    pub fn read<T>(&self, f: impl FnOnce(&CachedState) -> T) -> T {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        f(&state)
    }

    /// Waits until the cached state satisfies `ready`, or `timeout` passes.
    /// Returns whether it became ready.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut ready: impl FnMut(&CachedState) -> bool,
    ) -> bool {
        let mut changes = self.revision.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                if self.read(&mut ready) {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        waited.is_ok() && self.read(ready)
    }

    fn apply(&self, event: WatchEvent) {
        let revision = {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            state.apply(event);
            state.revision
        };
        // Bump even when the revision is unchanged (a snapshot), so waiters re-check.
        self.revision.send_modify(|r| *r = revision.max(*r + 1));
    }

    /// Follows the metadata watch stream until `shutdown`, reconnecting with
    /// backoff whenever the stream breaks.
    pub async fn run(self, client: MetadataClient, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let mut stub = client.metadata();
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = stub.watch(WatchRequest {}) => result,
            };
            match stream {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    loop {
                        let message = tokio::select! {
                            _ = shutdown.cancelled() => return,
                            message = stream.message() => message,
                        };
                        match message {
                            Ok(Some(event)) => {
                                backoff = Duration::from_millis(50);
                                self.apply(event);
                            }
                            Ok(None) => break,
                            Err(status) => {
                                tracing::debug!(%status, "metadata watch broke");
                                break;
                            }
                        }
                    }
                }
                Err(status) => tracing::debug!(%status, "metadata watch failed to start"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::metadata::ClusterSnapshot;

    fn gateway(node_id: i32, lease_expires_ms: u64) -> GatewayInfo {
        GatewayInfo {
            node_id,
            kafka_host: "h".into(),
            kafka_port: 1,
            zone: String::new(),
            lease_expires_ms,
        }
    }

    #[test]
    fn snapshot_then_deltas() {
        let mut state = CachedState::default();
        state.apply(WatchEvent {
            revision: 4,
            change: Some(Change::Snapshot(ClusterSnapshot {
                cluster_id: "c".into(),
                gateways: vec![gateway(1, 100)],
                ..Default::default()
            })),
        });
        assert_eq!(state.cluster_id, "c");
        assert_eq!(state.revision, 4);
        state.apply(WatchEvent {
            revision: 5,
            change: Some(Change::GatewayUpserted(gateway(2, 50))),
        });
        let live: Vec<i32> = state.live_gateways(60).map(|g| g.node_id).collect();
        assert_eq!(live, vec![1]);
    }
}
