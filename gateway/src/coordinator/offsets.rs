//! Committed offsets: OffsetCommit requests of every group this gateway
//! coordinates are gathered into one metadata proposal at a time, and
//! offsets of empty groups expire after `offsets.retention.minutes`.

use kafka_protocol::ResponseError;
use std::time::Duration;
use strata_metadata::client::{ClientError, MetadataClient};
use strata_proto::metadata::{CommitOffsetsRequest, CommittedOffset, Outcome};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Most offsets in one metadata proposal.
const MAX_OFFSETS_PER_PROPOSAL: usize = 5_000;
/// Commits waiting for a proposal; senders wait when it is full.
const COMMIT_QUEUE: usize = 1_024;

/// Why a commit was not recorded, as the Kafka error code each of its
/// partitions gets.
pub type CommitError = i16;

struct PendingCommit {
    offsets: Vec<CommittedOffset>,
    done: oneshot::Sender<Result<(), CommitError>>,
}

/// Hands commits to the task that proposes them in batches.
#[derive(Clone)]
pub struct OffsetCommitter {
    queue: mpsc::Sender<PendingCommit>,
}

impl OffsetCommitter {
    /// A committer for coordinator `node_id`, and the task that proposes its
    /// batches until `shutdown`.
    pub fn new(
        node_id: i32,
        client: MetadataClient,
        shutdown: CancellationToken,
    ) -> (Self, impl std::future::Future<Output = ()>) {
        let (queue, pending) = mpsc::channel(COMMIT_QUEUE);
        let task = propose_batches(node_id, client, pending, shutdown);
        (Self { queue }, task)
    }

    /// Records `offsets` in metadata (together with whatever other commits
    /// are waiting), fenced by this gateway's ownership of their groups' slots.
    pub async fn commit(&self, offsets: Vec<CommittedOffset>) -> Result<(), CommitError> {
        let (done, outcome) = oneshot::channel();
        let shutting_down = ResponseError::CoordinatorNotAvailable.code();
        self.queue
            .send(PendingCommit { offsets, done })
            .await
            .map_err(|_| shutting_down)?;
        outcome.await.unwrap_or(Err(shutting_down))
    }
}

async fn propose_batches(
    node_id: i32,
    client: MetadataClient,
    mut pending: mpsc::Receiver<PendingCommit>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            first = pending.recv() => match first {
                Some(first) => first,
                None => return,
            },
        };
        let mut batch = vec![first];
        let mut offsets = batch[0].offsets.len();
        while offsets < MAX_OFFSETS_PER_PROPOSAL {
            match pending.try_recv() {
                Ok(next) => {
                    offsets += next.offsets.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let all: Vec<CommittedOffset> = batch
            .iter()
            .flat_map(|c| c.offsets.iter().cloned())
            .collect();
        let result = propose(&client, node_id, all).await;
        if result.is_ok() || batch.len() == 1 {
            for commit in batch {
                let _ = commit.done.send(result);
            }
            continue;
        }
        // One refused commit must not fail the others it was batched with:
        // propose each on its own to find out whose it was.
        for commit in batch {
            let result = propose(&client, node_id, commit.offsets).await;
            let _ = commit.done.send(result);
        }
    }
}

async fn propose(
    client: &MetadataClient,
    node_id: i32,
    offsets: Vec<CommittedOffset>,
) -> Result<(), CommitError> {
    let request = CommitOffsetsRequest {
        offsets,
        coordinator: Some(node_id),
    };
    let response = client
        .send(request, |mut metadata, request| async move {
            metadata.commit_offsets(request).await
        })
        .await;
    match response {
        Ok(response) => outcome_result(response.outcome),
        Err(error) => Err(unavailable(&error)),
    }
}

/// A metadata outcome as a commit result.
pub fn outcome_result(outcome: Option<Outcome>) -> Result<(), CommitError> {
    match outcome {
        Some(outcome) if outcome.error_code == 0 => Ok(()),
        Some(outcome) => {
            tracing::debug!(code = outcome.error_code, message = %outcome.error_message, "offset change refused");
            Err(i16::try_from(outcome.error_code)
                .unwrap_or(ResponseError::UnknownServerError.code()))
        }
        None => Err(ResponseError::UnknownServerError.code()),
    }
}

/// The Kafka error for a metadata call that failed: retriable, so the client
/// tries again (a write whose outcome is unknown is reported as timed out).
pub fn unavailable(error: &ClientError) -> CommitError {
    tracing::warn!(%error, "metadata call for committed offsets failed");
    match error {
        ClientError::Call(status) if status.code() == tonic::Code::DeadlineExceeded => {
            ResponseError::RequestTimedOut.code()
        }
        _ => ResponseError::CoordinatorNotAvailable.code(),
    }
}

/// Whether a committed offset of an empty group has expired: both its
/// commit and the group's emptiness are older than the retention.
pub fn offset_expired(
    offset: &CommittedOffset,
    now_ms: u64,
    empty_for: Duration,
    retention: Duration,
) -> bool {
    let committed_ago =
        now_ms.saturating_sub(u64::try_from(offset.commit_timestamp_ms).unwrap_or(0));
    empty_for >= retention && Duration::from_millis(committed_ago) >= retention
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed_at(commit_timestamp_ms: i64) -> CommittedOffset {
        CommittedOffset {
            commit_timestamp_ms,
            ..Default::default()
        }
    }

    #[test]
    fn offsets_expire_only_when_old_and_the_group_has_been_empty_as_long() {
        let retention = Duration::from_secs(60);
        let now_ms = 1_000_000;
        let old = committed_at(now_ms as i64 - 61_000);
        let fresh = committed_at(now_ms as i64 - 59_000);
        assert!(offset_expired(
            &old,
            now_ms,
            Duration::from_secs(61),
            retention
        ));
        assert!(!offset_expired(
            &fresh,
            now_ms,
            Duration::from_secs(61),
            retention
        ));
        assert!(
            !offset_expired(&old, now_ms, Duration::from_secs(59), retention),
            "a group that only just became empty keeps its offsets"
        );
    }
}
