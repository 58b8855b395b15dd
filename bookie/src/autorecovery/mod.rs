//! Auto-recovery: sealed segments that lost a replica with a dead bookie are
//! copied to a live one, which then takes the dead bookie's place in the
//! segment's ensemble in metadata.
//!
//! Every bookie runs [`AutoRecovery::run`]. Each pass asks metadata for the
//! sealed segments whose ensemble holds a bookie whose lease lapsed at least
//! `auto_recovery_delay_ms` ago ([`plan`] then keeps those this bookie is the
//! lowest live member of, and picks a replacement for each), copies the lost
//! replica ([`copy`]), and proposes `ReplaceSegmentReplica`. Metadata accepts
//! the swap only while the segment is still sealed and the dead bookie still in
//! its ensemble; if it refuses (the segment was offloaded or deleted meanwhile,
//! or another copy won), the copy is deleted again unless metadata names the
//! replacement in the ensemble after all. The new ensemble reaches gateways and
//! bookies through the watch stream like any other segment change.

pub mod copy;
pub mod plan;
#[cfg(test)]
mod tests;

use crate::config::BookieConfig;
use crate::ledger::pool::{describe, status_of};
use crate::ledger::{BookiePool, LedgerOptions};
use copy::{copy_replica, CopyError};
use plan::{plan, Task};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use strata_metadata::cache::ClusterCache;
use strata_metadata::client::{ClientError, MetadataClient};
use strata_proto::bookie::{BookieStatus, DeleteSegmentRequest};
use strata_proto::metadata::{
    BookieInfo, ListSegmentsRequest, ListUnderReplicatedSegmentsRequest,
    ReplaceSegmentReplicaRequest,
};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Most under-replicated segments one pass asks metadata for (lowest ids
/// first; every bookie sees the same ones and handles its share, so the rest
/// come up in later passes). Bounds the size of the answer.
const SEGMENTS_PER_PASS: u32 = 1_000;

/// Why re-replicating one segment did not finish.
#[derive(Debug, thiserror::Error)]
enum RecoveryError {
    /// The copy failed; metadata was not asked.
    #[error(transparent)]
    Copy(#[from] CopyError),
    /// Metadata could not be reached (the swap may or may not have happened:
    /// the next pass finds out).
    #[error(transparent)]
    Metadata(#[from] ClientError),
}

/// One bookie's auto-recovery loop and what it remembers between passes.
pub struct AutoRecovery {
    node_id: i32,
    client: MetadataClient,
    cache: ClusterCache,
    pool: BookiePool,
    delay_ms: u64,
    interval: Duration,
    /// Per segment, replacements whose copy failed: tried again only once no
    /// other bookie is left.
    failed: BTreeMap<u64, BTreeSet<i32>>,
    /// Segments already reported as having no possible replacement, so the
    /// warning is logged once rather than every pass.
    stuck: BTreeSet<u64>,
}

impl AutoRecovery {
    /// The loop of the bookie configured by `config`, asking metadata through
    /// `client` and resolving bookies through `cache`.
    pub fn new(config: &BookieConfig, client: MetadataClient, cache: ClusterCache) -> Self {
        Self {
            node_id: config.node_id,
            client,
            cache,
            pool: BookiePool::new(LedgerOptions::default()),
            delay_ms: config.auto_recovery_delay_ms,
            interval: Duration::from_millis(config.auto_recovery_interval_ms.max(1)),
            failed: BTreeMap::new(),
            stuck: BTreeSet::new(),
        }
    }

    /// Runs a pass every interval until `shutdown`; a pass in progress is
    /// abandoned (a partial copy is harmless: the next attempt redoes it).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let start = tokio::time::Instant::now() + self.interval;
        let mut ticks = tokio::time::interval_at(start, self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.pass() => {}
            }
        }
    }

    /// One pass: re-replicates, one after another, the segments this bookie handles.
    async fn pass(&mut self) {
        let request = ListUnderReplicatedSegmentsRequest {
            dead_for_ms: self.delay_ms,
            limit: SEGMENTS_PER_PASS,
        };
        let reported = match self
            .client
            .call(|mut c| async move { c.list_under_replicated_segments(request).await })
            .await
        {
            Ok(reported) => reported,
            Err(error) => {
                tracing::debug!(%error, "cannot list under-replicated segments");
                return;
            }
        };
        let reported_ids: BTreeSet<u64> = reported
            .segments
            .iter()
            .filter_map(|s| s.segment.as_ref().map(|s| s.segment_id))
            .collect();
        self.failed.retain(|id, _| reported_ids.contains(id));
        self.stuck.retain(|id| reported_ids.contains(id));
        if reported.segments.is_empty() {
            return;
        }
        let (bookies, work) = self.cache.read(|state| {
            let work = (state.revision > 0).then(|| {
                plan(
                    &reported.segments,
                    &state.bookies,
                    reported.now_ms,
                    self.node_id,
                    &self.failed,
                )
            });
            (state.bookies.clone(), work)
        });
        let Some(work) = work else {
            return;
        };
        for segment_id in work.without_replacement {
            if self.failed.remove(&segment_id).is_some() {
                // Every candidate failed once: start over with all of them.
                continue;
            }
            if self.stuck.insert(segment_id) {
                tracing::warn!(
                    node_id = self.node_id,
                    segment_id,
                    "segment is under-replicated, but every live bookie already holds it"
                );
            }
        }
        for task in work.tasks {
            if let Err(error) = self.recover(&task, &bookies, reported.now_ms).await {
                tracing::warn!(
                    node_id = self.node_id,
                    segment_id = task.segment.segment_id,
                    lost = task.lost,
                    replacement = task.replacement.node_id,
                    %error,
                    "re-replicating a segment failed; will retry"
                );
            }
        }
    }

    /// Copies one lost replica and asks metadata to swap it in.
    async fn recover(
        &mut self,
        task: &Task,
        bookies: &BTreeMap<i32, BookieInfo>,
        now_ms: u64,
    ) -> Result<(), RecoveryError> {
        let segment_id = task.segment.segment_id;
        let new_bookie = task.replacement.node_id;
        let started = Instant::now();
        let copied = match copy_replica(task, bookies, now_ms, &self.pool).await {
            Ok(copied) => copied,
            Err(error) => {
                self.failed
                    .entry(segment_id)
                    .or_default()
                    .insert(new_bookie);
                self.discard_copy(task).await;
                return Err(error.into());
            }
        };
        let request = ReplaceSegmentReplicaRequest {
            segment_id,
            old_bookie: task.lost,
            new_bookie,
        };
        let reply = self
            .client
            .call(|mut c| async move { c.replace_segment_replica(request).await })
            .await?;
        match reply.outcome {
            Some(outcome) if !outcome.is_ok() => {
                tracing::info!(
                    node_id = self.node_id,
                    segment_id,
                    lost = task.lost,
                    replacement = new_bookie,
                    reason = %outcome.error_message,
                    "metadata refused the re-replicated copy; discarding it"
                );
                self.discard_copy(task).await;
            }
            _ => tracing::info!(
                node_id = self.node_id,
                segment_id,
                topic = %task.segment.topic,
                partition = task.segment.partition,
                lost = task.lost,
                replacement = new_bookie,
                entries = copied.entries,
                bytes = copied.bytes,
                last_entry_id = copied.last_entry_id,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "segment re-replicated"
            ),
        }
        Ok(())
    }

    /// Deletes the replacement's copy, unless metadata (asked afresh) names the
    /// replacement in the segment's ensemble: then the copy is a real replica.
    async fn discard_copy(&self, task: &Task) {
        let segment = &task.segment;
        let request = ListSegmentsRequest {
            topic: segment.topic.clone(),
            partition: segment.partition,
        };
        let listed = self
            .client
            .send(request, |mut c, request| async move {
                c.list_segments(request).await
            })
            .await;
        let in_ensemble = match listed {
            // A refused listing means the partition (and so the segment) is gone.
            Ok(listed) => listed.segments.iter().any(|s| {
                s.segment_id == segment.segment_id && s.ensemble.contains(&task.replacement.node_id)
            }),
            Err(error) => {
                tracing::warn!(segment_id = segment.segment_id, %error, "cannot check whether a copy is needed; keeping it");
                return;
            }
        };
        if in_ensemble {
            return;
        }
        let addr = &task.replacement.grpc_addr;
        let request = DeleteSegmentRequest {
            segment_id: segment.segment_id,
        };
        let deleted = match self.pool.client(addr) {
            Ok(mut client) => {
                let timeout = self.pool.options().request_timeout();
                match tokio::time::timeout(timeout, client.delete_segment(request)).await {
                    Ok(Ok(answer)) => {
                        let answer = answer.into_inner();
                        match status_of(answer.status) {
                            Some(BookieStatus::BookieOk) => Ok(()),
                            _ => Err(describe(answer.status, &answer.message)),
                        }
                    }
                    Ok(Err(status)) => Err(status.to_string()),
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                }
            }
            Err(error) => Err(error.to_string()),
        };
        if let Err(reason) = deleted {
            tracing::warn!(
                segment_id = segment.segment_id,
                bookie = %addr,
                %reason,
                "cannot delete an unneeded copy"
            );
        }
    }
}
