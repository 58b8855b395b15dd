//! Taking a partition over: when metadata grants this gateway a partition at a
//! new leader epoch, recover the partition's open segment (fence it at the new
//! epoch, find its last entry, seal it there in metadata), open the next segment
//! on a fresh ensemble, and only then serve. A log whose writer failed is taken
//! over again the same way (seal and roll). Before serving, idempotent
//! producers' state is rebuilt from the tail of the log (see [`super::rebuild`]).

use super::{PartitionLog, Partitions};
use crate::log::batch::RecordBatch;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use strata_bookie::ledger::{choose_ensemble_from_cache, recover, LedgerSpec, LedgerWriter};
use strata_metadata::client::ClientError;
use strata_proto::metadata::segment_info::State;
use strata_proto::metadata::{OpenSegmentRequest, SealSegmentRequest, SegmentInfo};
use tokio_util::sync::CancellationToken;

/// How often ownership is checked again without a change in the cache (to
/// retry takeovers that failed and replace logs whose writer failed).
const RECHECK: Duration = Duration::from_millis(250);

/// A partition and the epoch it is granted at.
type Grant = ((String, u32), u32);

/// Why a takeover did not finish; it is tried again.
#[derive(Debug, thiserror::Error)]
pub(super) enum TakeoverError {
    #[error(transparent)]
    Ledger(#[from] strata_bookie::ledger::LedgerError),
    #[error(transparent)]
    Metadata(#[from] ClientError),
    #[error("metadata refused: {0}")]
    Refused(String),
    #[error("the last entry of segment {0} is not a record batch: {1}")]
    BadEntry(u64, String),
    #[error("rebuilding producer state: {0}")]
    Rebuild(#[from] super::RebuildError),
    #[error("the grant at epoch {0} is no longer this gateway's")]
    Superseded(u32),
}

/// Keeps the set of served logs equal to what metadata grants this gateway.
pub(super) async fn follow_ownership(partitions: Arc<Partitions>, shutdown: CancellationToken) {
    let mut changes = partitions.cache.subscribe();
    let mut starting: HashSet<(String, u32)> = HashSet::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(String, u32)>();
    loop {
        let grants: HashMap<(String, u32), u32> = partitions.cache.read(|state| {
            state
                .partitions
                .values()
                .filter(|p| p.owner == partitions.node_id)
                .map(|p| ((p.topic.clone(), p.partition), p.leader_epoch))
                .collect()
        });
        drop_lost(&partitions, &grants);
        for (key, epoch) in grants {
            if starting.contains(&key) || partitions.is_served(&key) {
                continue;
            }
            starting.insert(key.clone());
            let partitions = partitions.clone();
            let done = done_tx.clone();
            tokio::spawn(async move {
                take_over(&partitions, (key.clone(), epoch)).await;
                let _ = done.send(key);
            });
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changes.changed() => {}
            Some(key) = done_rx.recv() => { starting.remove(&key); }
            _ = tokio::time::sleep(RECHECK) => {}
        }
        while let Ok(key) = done_rx.try_recv() {
            starting.remove(&key);
        }
    }
}

/// Stops serving partitions granted elsewhere or at another epoch, and logs
/// whose writer failed (they are taken over again).
fn drop_lost(partitions: &Partitions, grants: &HashMap<(String, u32), u32>) {
    let mut logs = partitions.logs.write().unwrap_or_else(|e| e.into_inner());
    logs.retain(|key, log| {
        let keep = grants.get(key) == Some(&(log.leader_epoch() as u32)) && !log.is_broken();
        if !keep {
            tracing::info!(topic = %key.0, partition = key.1, "no longer serving partition at this epoch");
        }
        keep
    });
}

async fn take_over(partitions: &Arc<Partitions>, ((topic, partition), epoch): Grant) {
    match try_take_over(partitions, &topic, partition, epoch).await {
        Ok(log) => {
            let granted = partitions.cache.read(|state| {
                state
                    .partition(&topic, partition)
                    .is_some_and(|p| p.owner == partitions.node_id && p.leader_epoch == epoch)
            });
            if granted {
                tracing::info!(%topic, partition, epoch, next_offset = log.high_watermark(), "serving partition");
                partitions
                    .logs
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((topic, partition), Arc::new(log));
            }
        }
        Err(error) => {
            tracing::warn!(%topic, partition, epoch, %error, "taking the partition over failed; will retry");
        }
    }
}

async fn try_take_over(
    partitions: &Arc<Partitions>,
    topic: &str,
    partition: u32,
    epoch: u32,
) -> Result<PartitionLog, TakeoverError> {
    // The grant and the segments are read from one snapshot: a grant read
    // earlier may have been superseded, and recovering a newer owner's open
    // segment at a stale epoch would seal it under that owner.
    let (granted, segments, bookies) = partitions.cache.read(|state| {
        let granted = state
            .partition(topic, partition)
            .is_some_and(|p| p.owner == partitions.node_id && p.leader_epoch == epoch);
        (
            granted,
            state.segments(topic, partition),
            state.bookies.clone(),
        )
    });
    if !granted {
        return Err(TakeoverError::Superseded(epoch));
    }
    if let Some(newer) = segments.last().filter(|s| s.writer_epoch > epoch) {
        return Err(TakeoverError::Refused(format!(
            "segment {} was opened at epoch {}, after this grant at {epoch}",
            newer.segment_id, newer.writer_epoch
        )));
    }
    let next_offset = match segments.last() {
        None => 0,
        Some(last) => match &last.state {
            Some(State::Sealed(sealed)) => sealed.end_offset,
            Some(State::Offloaded(offloaded)) => offloaded.end_offset,
            _ => seal_open_segment(partitions, last, &bookies, epoch).await?,
        },
    };
    // DeleteRecords may have moved the start past the first segment's base.
    let deleted_below = partitions.cache.read(|state| {
        state
            .partition(topic, partition)
            .map_or(0, |p| p.log_start_offset)
    });
    let log_start_offset = segments
        .first()
        .map(|s| s.base_offset)
        .unwrap_or(next_offset)
        .max(deleted_below.min(next_offset));
    let producers =
        super::rebuild::producer_states(&partitions.pool, &bookies, &segments, next_offset).await?;
    tracing::debug!(%topic, partition, producers = producers.len(), "rebuilt producer state");
    let (segment, writer) = open_segment(partitions, topic, partition, epoch, next_offset).await?;
    Ok(PartitionLog::new(
        topic.to_string(),
        partition,
        epoch,
        next_offset,
        log_start_offset,
        (segment.segment_id, writer),
        Arc::downgrade(partitions),
        producers,
        partitions.batches.clone(),
        partitions.cache.clone(),
        partitions.pool.clone(),
        partitions.tiered.clone(),
    ))
}

/// Opens the partition's next segment at `base_offset` on an ensemble chosen
/// by placement, and a writer for it.
pub(super) async fn open_segment(
    partitions: &Partitions,
    topic: &str,
    partition: u32,
    epoch: u32,
    base_offset: i64,
) -> Result<(SegmentInfo, LedgerWriter), TakeoverError> {
    let options = &partitions.options;
    let ensemble = partitions.cache.read(|state| {
        choose_ensemble_from_cache(state, strata_metadata::now_ms(), options.ensemble_size, &[])
    })?;
    let request = OpenSegmentRequest {
        topic: topic.to_string(),
        partition,
        owner: partitions.node_id,
        leader_epoch: epoch,
        base_offset,
        ensemble: ensemble.iter().map(|b| b.node_id).collect(),
        write_quorum: options.write_quorum as u32,
        ack_quorum: options.ack_quorum as u32,
    };
    let reply = partitions
        .client
        .send(request, |mut c, request| async move {
            c.open_segment(request).await
        })
        .await?;
    let outcome = reply.outcome.unwrap_or_default();
    let Some(segment) = reply.segment.filter(|_| outcome.is_ok()) else {
        return Err(TakeoverError::Refused(outcome.error_message));
    };
    let bookie_map = ensemble.into_iter().map(|b| (b.node_id, b)).collect();
    let spec = LedgerSpec::from_segment(&segment, &bookie_map)?;
    let writer = LedgerWriter::open(spec, epoch, &partitions.pool)?;
    Ok((segment, writer))
}

/// Recovers the open segment at `epoch` (fencing its old writer), seals it in
/// metadata at its recovered end, and returns that end offset.
async fn seal_open_segment(
    partitions: &Partitions,
    segment: &SegmentInfo,
    bookies: &std::collections::BTreeMap<i32, strata_proto::metadata::BookieInfo>,
    epoch: u32,
) -> Result<i64, TakeoverError> {
    let spec = LedgerSpec::from_segment(segment, bookies)?;
    let recovered = recover(&spec, epoch, &partitions.pool).await?;
    let end_offset = match &recovered.last_entry {
        None => segment.base_offset,
        Some(entry) => {
            let batch = RecordBatch::parse(&entry.payload)
                .map_err(|e| TakeoverError::BadEntry(segment.segment_id, e.to_string()))?;
            batch.last_offset() + 1
        }
    };
    let request = SealSegmentRequest {
        segment_id: segment.segment_id,
        owner: partitions.node_id,
        leader_epoch: epoch,
        end_offset,
        bytes: 0,
        // Recovery reads only the tail, so the segment's largest timestamp is unknown.
        max_timestamp: None,
    };
    let reply = partitions
        .client
        .call(|mut c| async move { c.seal_segment(request).await })
        .await?;
    let outcome = reply.outcome.unwrap_or_default();
    if !outcome.is_ok() {
        return Err(TakeoverError::Refused(outcome.error_message));
    }
    tracing::info!(
        segment = segment.segment_id,
        end_offset,
        recovered = recovered.recovered_entries,
        copies = recovered.copies_written,
        "sealed the previous open segment"
    );
    Ok(end_offset)
}
