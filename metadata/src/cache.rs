//! A local copy of cluster state, fed by the metadata watch stream, so that
//! gateways and bookies never call metadata on a produce or fetch.

use crate::client::MetadataClient;
use crate::state::{coordinator_slot_for, SegmentTable, NO_OWNER};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use strata_proto::metadata::watch_event::Change;
use strata_proto::metadata::{
    BookieInfo, CoordinatorSlot, GatewayInfo, PartitionInfo, SegmentInfo, TopicInfo, WatchEvent,
    WatchRequest,
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
    /// Every segment by id (deleted ones included, for bookies' garbage
    /// collection), with each partition's live segments in log order.
    pub segments: SegmentTable,
    /// Coordinator slots by index.
    pub slots: BTreeMap<u32, CoordinatorSlot>,
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
                    segments: snapshot.segments.into_iter().fold(
                        SegmentTable::default(),
                        |mut table, segment| {
                            table.upsert(segment);
                            table
                        },
                    ),
                    slots: snapshot
                        .coordinator_slots
                        .into_iter()
                        .map(|s| (s.slot, s))
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
                // Its segments arrive as deleted by their own events.
                self.topics.remove(&name);
                self.partitions.retain(|(topic, _), _| *topic != name);
            }
            Change::PartitionUpserted(p) => {
                self.partitions.insert((p.topic.clone(), p.partition), p);
            }
            Change::SegmentUpserted(segment) => self.segments.upsert(segment),
            Change::CoordinatorSlotUpserted(slot) => {
                self.slots.insert(slot.slot, slot);
            }
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

    /// A partition, with its owner and leader epoch.
    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionInfo> {
        self.partitions.get(&(topic.to_string(), partition))
    }

    /// A partition's live segments in log order (the open one, if any, last).
    pub fn segments(&self, topic: &str, partition: u32) -> Vec<SegmentInfo> {
        self.segments.live(topic, partition).cloned().collect()
    }

    /// A segment by id, in any state.
    pub fn segment(&self, segment_id: u64) -> Option<&SegmentInfo> {
        self.segments.get(segment_id)
    }

    /// The gateway that owns coordinator slot `slot`, if any does.
    pub fn slot_owner(&self, slot: u32) -> Option<i32> {
        self.slots
            .get(&slot)
            .map(|s| s.owner)
            .filter(|&owner| owner != NO_OWNER)
    }

    /// The coordinator slot of consumer group `group` (with its owner and
    /// epoch), once the cluster's slots are known.
    pub fn coordinator_slot(&self, group: &str) -> Option<&CoordinatorSlot> {
        let count = u32::try_from(self.slots.len()).ok()?;
        self.slots.get(&coordinator_slot_for(group, count))
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

    /// A receiver that sees every change of the cached state.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
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
            // The node may be down: follow another one.
            client.next_node();
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
    use crate::state::tests::{cluster, run};
    use crate::state::{self, DEFAULT_COORDINATOR_SLOTS};
    use strata_proto::metadata::metadata_command::Op;
    use strata_proto::metadata::{
        ClusterSnapshot, ControllerTick, CreateTopicRequest, DeleteSegmentsRequest,
        DeleteTopicRequest, OpenSegmentRequest, SealSegmentRequest,
    };

    fn gateway(node_id: i32, lease_expires_ms: u64) -> GatewayInfo {
        GatewayInfo {
            node_id,
            kafka_host: "h".into(),
            kafka_port: 1,
            zone: String::new(),
            lease_expires_ms,
            draining: false,
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

    /// Feeds the watch form of `changes` to the cache.
    fn publish(cache: &mut CachedState, revision: u64, changes: Vec<state::Change>) {
        for change in changes {
            if let Some(change) = state::watch_change(change) {
                cache.apply(WatchEvent {
                    revision,
                    change: Some(change),
                });
            }
        }
    }

    fn topic(name: &str, partition_count: i32) -> Op {
        Op::CreateTopic(CreateTopicRequest {
            name: name.into(),
            partition_count,
            ..Default::default()
        })
    }

    fn assert_mirrors(cache: &CachedState, state: &state::ClusterState) {
        assert_eq!(cache.gateways, state.gateways);
        assert_eq!(cache.topics, state.topics);
        assert_eq!(cache.partitions, state.partitions);
        assert_eq!(cache.segments, state.segments);
        assert_eq!(cache.slots, state.slots);
    }

    #[test]
    fn watch_events_keep_the_cache_equal_to_the_state() {
        let mut state = cluster(&[1, 2], 100);
        let mut cache = CachedState::default();
        cache.apply(WatchEvent {
            revision: 1,
            change: Some(Change::Snapshot(state.snapshot())),
        });
        let mut revision = 1;
        for op in [
            topic("t", 2),
            topic("u", 1),
            Op::ControllerTick(ControllerTick {}),
        ] {
            let (_, changes) = run(&mut state, 100, op);
            revision += 1;
            publish(&mut cache, revision, changes);
        }
        let owner = state.partition("t", 0).unwrap().owner;
        let open = |base_offset| {
            Op::OpenSegment(OpenSegmentRequest {
                topic: "t".into(),
                partition: 0,
                owner,
                leader_epoch: 1,
                base_offset,
                ensemble: vec![1, 2],
                write_quorum: 2,
                ack_quorum: 1,
            })
        };
        let seal = |segment_id, end_offset| {
            Op::SealSegment(SealSegmentRequest {
                segment_id,
                owner,
                leader_epoch: 1,
                end_offset,
                bytes: 1,
                max_timestamp: None,
            })
        };
        let ops = [
            open(0),
            seal(1, 5),
            open(5),
            Op::DeleteSegments(DeleteSegmentsRequest {
                segment_ids: vec![1],
            }),
            Op::DeleteTopic(DeleteTopicRequest { name: "u".into() }),
        ];
        for op in ops {
            let (reply, changes) = run(&mut state, 100, op);
            assert!(state::outcome(&reply).is_ok(), "{reply:?}");
            revision += 1;
            publish(&mut cache, revision, changes);
        }
        assert_mirrors(&cache, &state);
        let live: Vec<u64> = cache
            .segments("t", 0)
            .iter()
            .map(|s| s.segment_id)
            .collect();
        assert_eq!(live, vec![2]);
        assert!(cache.segment(1).is_some(), "deleted segments stay known");
        // A new snapshot rebuilds the same cache.
        let mut fresh = CachedState::default();
        fresh.apply(WatchEvent {
            revision,
            change: Some(Change::Snapshot(state.snapshot())),
        });
        assert_mirrors(&fresh, &state);
    }

    #[test]
    fn groups_map_to_owned_coordinator_slots() {
        let mut state = cluster(&[1, 2], 100);
        let (_, _) = run(&mut state, 100, Op::ControllerTick(ControllerTick {}));
        let mut cache = CachedState::default();
        assert!(cache.coordinator_slot("g").is_none());
        cache.apply(WatchEvent {
            revision: 1,
            change: Some(Change::Snapshot(state.snapshot())),
        });
        let slot = cache.coordinator_slot("my-group").unwrap();
        assert_eq!(
            slot.slot,
            state::coordinator_slot_for("my-group", DEFAULT_COORDINATOR_SLOTS)
        );
        let owner = cache.slot_owner(slot.slot).unwrap();
        assert!(owner == 1 || owner == 2);
        assert_eq!(cache.slot_owner(DEFAULT_COORDINATOR_SLOTS), None);
    }
}
