//! The log maintenance loop of a gateway: for each partition it serves, it
//! deletes segments that retention expired, uploads sealed segments that
//! `local.retention.*` sends to object storage (and only then marks them
//! offloaded in metadata), and — on one gateway of the cluster — deletes the
//! objects of segments that metadata deleted.

use super::object::SegmentMeta;
use super::store::segment_object_key;
use super::upload::Uploader;
use crate::partition::retention::{
    expired_segments, offload_due, LocalRetentionDefaults, RetentionPolicy,
};
use crate::partition::{PartitionLog, Partitions};
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use strata_bookie::ledger::{LedgerReader, LedgerSpec};
use strata_proto::metadata::segment_info::State;
use strata_proto::metadata::{DeleteSegmentsRequest, MarkOffloadedRequest, SegmentInfo};
use tokio_util::sync::CancellationToken;

/// Bytes read from bookies per step of an upload.
const UPLOAD_READ_BYTES: u32 = 4 << 20;

/// Why a segment was not offloaded this time (it is tried again next round).
#[derive(Debug, thiserror::Error)]
enum OffloadError {
    #[error("topic {0:?} is unknown")]
    UnknownTopic(String),
    #[error("reading the segment from bookies: {0}")]
    Bookies(String),
    #[error("uploading: {0}")]
    Upload(#[from] super::upload::UploadError),
    #[error("metadata: {0}")]
    Metadata(String),
}

/// Everything the loop needs.
pub struct Maintenance {
    /// The partitions this gateway serves.
    pub partitions: Arc<Partitions>,
    /// The object store segments are uploaded to.
    pub store: Arc<dyn ObjectStore>,
    /// Uploads segment objects.
    pub uploader: Uploader,
    /// This gateway's node id.
    pub node_id: i32,
    /// `local.retention.*` for topics that do not set them.
    pub local_defaults: LocalRetentionDefaults,
    /// Time between rounds.
    pub interval: Duration,
    /// Segments uploaded at once.
    pub concurrency: usize,
}

impl Maintenance {
    /// Runs rounds until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut removed_objects: HashSet<String> = HashSet::new();
        let mut tick = tokio::time::interval(self.interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let round = async {
                for log in self.partitions.served() {
                    if log.is_broken() {
                        continue;
                    }
                    let deleted = self.apply_retention(&log).await;
                    self.offload(&log, &deleted).await;
                }
                self.remove_deleted_objects(&mut removed_objects).await;
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = round => {}
            }
        }
    }

    fn policy(&self, topic: &str) -> Option<RetentionPolicy> {
        self.partitions.cache().read(|state| {
            state
                .topics
                .get(topic)
                .map(|t| RetentionPolicy::from_configs(&t.configs, self.local_defaults))
        })
    }

    fn live_segments(&self, log: &PartitionLog) -> Vec<SegmentInfo> {
        self.partitions
            .cache()
            .read(|state| state.segments(log.topic(), log.partition()))
    }

    /// Deletes the segments retention expired and moves the log start past
    /// them; returns the ids it deleted.
    async fn apply_retention(&self, log: &PartitionLog) -> Vec<u64> {
        let Some(policy) = self.policy(log.topic()) else {
            return Vec::new();
        };
        let segments = self.live_segments(log);
        let now_ms = strata_metadata::now_ms() as i64;
        let expired = expired_segments(
            &segments,
            log.log_start_offset(),
            log.open_segment_bytes(),
            &policy,
            now_ms,
        );
        if expired.is_empty() {
            return expired;
        }
        let request = DeleteSegmentsRequest {
            segment_ids: expired.clone(),
        };
        let outcome = self
            .partitions
            .client()
            .send(request, |mut metadata, request| async move {
                metadata.delete_segments(request).await
            })
            .await;
        match outcome {
            Ok(response) if response.outcome.as_ref().is_some_and(|o| o.error_code == 0) => {
                if let Some(next) = segments.get(expired.len()) {
                    log.advance_log_start(next.base_offset);
                }
                tracing::info!(
                    topic = log.topic(),
                    partition = log.partition(),
                    segments = expired.len(),
                    log_start_offset = log.log_start_offset(),
                    "retention deleted segments"
                );
                expired
            }
            Ok(response) => {
                tracing::warn!(outcome = ?response.outcome, "retention could not delete segments");
                Vec::new()
            }
            Err(error) => {
                tracing::warn!(%error, "retention could not delete segments");
                Vec::new()
            }
        }
    }

    /// Uploads the sealed segments due for object storage, a few at a time,
    /// except those retention just deleted (the cache may not show it yet).
    async fn offload(&self, log: &PartitionLog, deleted: &[u64]) {
        let Some(policy) = self.policy(log.topic()) else {
            return;
        };
        let segments = self.live_segments(log);
        let now_ms = strata_metadata::now_ms() as i64;
        let due = offload_due(&segments, log.open_segment_bytes(), &policy, now_ms);
        if due.is_empty() {
            return;
        }
        let due: Vec<&SegmentInfo> = segments
            .iter()
            .filter(|s| due.contains(&s.segment_id) && !deleted.contains(&s.segment_id))
            .collect();
        stream::iter(due)
            .for_each_concurrent(self.concurrency.max(1), |segment| async move {
                match self.offload_segment(segment).await {
                    Ok(key) => tracing::info!(
                        topic = %segment.topic,
                        partition = segment.partition,
                        segment_id = segment.segment_id,
                        %key,
                        "segment offloaded to object storage"
                    ),
                    Err(error) => tracing::warn!(
                        topic = %segment.topic,
                        partition = segment.partition,
                        segment_id = segment.segment_id,
                        %error,
                        "offloading a segment failed; it is tried again later"
                    ),
                }
            })
            .await;
    }

    /// Uploads one sealed segment, then marks it offloaded in metadata. A
    /// crash between the two leaves the segment on bookies, and the upload is
    /// simply done again (same key, same bytes).
    async fn offload_segment(&self, segment: &SegmentInfo) -> Result<String, OffloadError> {
        let Some(State::Sealed(sealed)) = &segment.state else {
            return Err(OffloadError::Bookies("the segment is not sealed".into()));
        };
        let (topic_id, spec) = self.partitions.cache().read(|state| {
            let topic_id = state.topics.get(&segment.topic).map(|t| hex(&t.topic_id));
            (topic_id, LedgerSpec::from_segment(segment, &state.bookies))
        });
        let topic_id = topic_id.ok_or_else(|| OffloadError::UnknownTopic(segment.topic.clone()))?;
        let spec = spec.map_err(|e| OffloadError::Bookies(e.to_string()))?;
        let reader = LedgerReader::new(spec, self.partitions.pool())
            .map_err(|e| OffloadError::Bookies(e.to_string()))?;
        let key = segment_object_key(
            &topic_id,
            segment.partition,
            segment.base_offset,
            segment.segment_id,
        );
        let meta = SegmentMeta {
            segment_id: segment.segment_id,
            base_offset: segment.base_offset,
            end_offset: sealed.end_offset,
        };
        let batches = segment_batches(reader, segment.base_offset, sealed.end_offset);
        let uploaded = self.uploader.upload_segment(&key, meta, batches).await?;
        let request = MarkOffloadedRequest {
            segment_id: segment.segment_id,
            object_key: key.clone(),
            object_size: uploaded.size,
        };
        let response = self
            .partitions
            .client()
            .send(request, |mut metadata, request| async move {
                metadata.mark_offloaded(request).await
            })
            .await
            .map_err(|e| OffloadError::Metadata(e.to_string()))?;
        match response.outcome {
            Some(outcome) if outcome.error_code == 0 => Ok(key),
            other => {
                // Refused (the segment was deleted meanwhile, say): nothing will
                // ever name the object, so it goes now rather than linger.
                if let Ok(path) = Path::parse(&key) {
                    let _ = self.store.delete(&path).await;
                }
                Err(OffloadError::Metadata(format!("{other:?}")))
            }
        }
    }

    /// Deletes the objects of segments metadata deleted (retention, deleted
    /// topics). One gateway does it: the live one with the lowest id.
    async fn remove_deleted_objects(&self, removed: &mut HashSet<String>) {
        let now_ms = strata_metadata::now_ms();
        let (lowest, doomed) = self.partitions.cache().read(|state| {
            let lowest = state.live_gateways(now_ms).map(|g| g.node_id).min();
            let doomed: Vec<String> = state
                .segments
                .iter()
                .filter_map(|s| match &s.state {
                    Some(State::Deleted(deleted)) if !deleted.object_key.is_empty() => {
                        Some(deleted.object_key.clone())
                    }
                    _ => None,
                })
                .filter(|key| !removed.contains(key))
                .collect();
            (lowest, doomed)
        });
        if lowest != Some(self.node_id) {
            return;
        }
        for key in doomed {
            let Ok(path) = Path::parse(&key) else {
                removed.insert(key);
                continue;
            };
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    tracing::info!(%key, "deleted the object of a deleted segment");
                    removed.insert(key);
                }
                Err(error) => {
                    tracing::warn!(%key, %error, "cannot delete an object; trying again later")
                }
            }
        }
    }
}

/// The batches of a sealed segment, read from its bookies in order.
fn segment_batches(
    reader: LedgerReader,
    base_offset: i64,
    end_offset: i64,
) -> impl futures::Stream<Item = Result<Bytes, OffloadError>> {
    stream::unfold(Some((reader, base_offset)), move |state| async move {
        let (reader, next) = state?;
        if next >= end_offset {
            return None;
        }
        let read = match reader.read_from_offset(next, -1, UPLOAD_READ_BYTES).await {
            Ok(read) => read,
            Err(error) => return Some((Err(OffloadError::Bookies(error.to_string())), None)),
        };
        let mut after = next;
        let mut batches = Vec::with_capacity(read.entries.len());
        for entry in read.entries {
            let Some(last) = last_offset(&entry.payload) else {
                return Some((
                    Err(OffloadError::Bookies(
                        "an entry is not a record batch".into(),
                    )),
                    None,
                ));
            };
            // The first entry may hold `next` in its middle only if the log
            // were inconsistent; skip what was already sent.
            if last < next {
                continue;
            }
            after = last + 1;
            batches.push(entry.payload);
        }
        if after == next {
            return Some((
                Err(OffloadError::Bookies(format!(
                    "bookies returned nothing at offset {next} before the segment's end {end_offset}"
                ))),
                None,
            ));
        }
        let joined = if batches.len() == 1 {
            batches.pop().unwrap_or_default()
        } else {
            Bytes::from(batches.concat())
        };
        Some((Ok(joined), Some((reader, after))))
    })
}

/// The last offset of a record batch: base offset plus last offset delta.
fn last_offset(batch: &[u8]) -> Option<i64> {
    let base = i64::from_be_bytes(batch.get(0..8)?.try_into().ok()?);
    let delta = i32::from_be_bytes(batch.get(23..27)?.try_into().ok()?);
    Some(base + i64::from(delta))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
