//! Re-creates one lost replica of a sealed segment on a replacement bookie:
//! exactly the entries the lost bookie's ensemble position held (all of them
//! when `E == Qw`, its stripes otherwise), read from the surviving replicas,
//! written with recovery adds, then sealed at the segment's last entry.
//!
//! Everything here is idempotent: an add of an entry the replacement already
//! holds is acknowledged without writing, and sealing again at the same entry
//! is OK, so a copy that was interrupted is simply done again.

use super::plan::Task;
use crate::ledger::pool::{describe, status_of};
use crate::ledger::{BookiePool, LedgerError, LedgerReader, LedgerSpec, NO_ENTRY};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use strata_proto::bookie::bookie_service_client::BookieServiceClient;
use strata_proto::bookie::{
    AddRequest, AddResponse, BookieStatus, Entry, FenceRequest, ReadLacRequest, SealRequest,
};
use strata_proto::metadata::segment_info::State;
use strata_proto::metadata::BookieInfo;
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// Most payload bytes one read of the surviving replicas returns, which
/// bounds the memory one copy holds.
const COPY_READ_BYTES: u32 = 4 * 1024 * 1024;

/// Why a copy failed; nothing in metadata changed, and the copy may be retried.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Reading the surviving replicas failed, or the segment's layout is bad.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A bookie refused or failed a request.
    #[error("bookie {addr}: {reason}")]
    Bookie {
        /// The bookie's address.
        addr: String,
        /// What it answered, or why there was no answer.
        reason: String,
    },
    /// The surviving replicas do not tell a consistent story, so nothing is copied.
    #[error("segment {segment_id}: {reason}")]
    Inconsistent {
        /// The segment.
        segment_id: u64,
        /// What does not fit.
        reason: String,
    },
}

/// What a finished copy wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    /// Entries written to the replacement.
    pub entries: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// The segment's last entry, where the copy is sealed ([`NO_ENTRY`] if empty).
    pub last_entry_id: i64,
}

/// Copies what `task.lost` held of `task.segment` to `task.replacement` and
/// seals it there. `bookies` resolves the ensemble's addresses; `now_ms`
/// (metadata's clock) tells which members are live.
pub async fn copy_replica(
    task: &Task,
    bookies: &BTreeMap<i32, BookieInfo>,
    now_ms: u64,
    pool: &BookiePool,
) -> Result<Copied, CopyError> {
    let segment = &task.segment;
    let segment_id = segment.segment_id;
    let inconsistent = |reason: String| CopyError::Inconsistent { segment_id, reason };
    let Some(State::Sealed(sealed)) = &segment.state else {
        return Err(inconsistent("is not sealed".into()));
    };
    let spec = LedgerSpec::from_segment(segment, bookies)?;
    let lost_at = segment
        .ensemble
        .iter()
        .position(|&b| b == task.lost)
        .ok_or_else(|| inconsistent(format!("bookie {} is not in its ensemble", task.lost)))?;
    let survivors: Vec<usize> = segment
        .ensemble
        .iter()
        .enumerate()
        .filter(|&(at, id)| {
            at != lost_at && bookies.get(id).is_some_and(|b| b.lease_expires_ms > now_ms)
        })
        .map(|(at, _)| at)
        .collect();
    let timeout = pool.options().request_timeout();
    let end = sealed_end(&spec, &survivors, pool, timeout).await?;
    let epoch = end.epoch.max(segment.writer_epoch);
    let target = Target {
        addr: task.replacement.grpc_addr.clone(),
        client: pool.client(&task.replacement.grpc_addr)?,
        segment_id,
        epoch,
        timeout,
    };
    target.fence().await?;
    let mut copied = Copied {
        last_entry_id: end.last_entry_id,
        ..Copied::default()
    };
    if end.last_entry_id != NO_ENTRY {
        let reader = LedgerReader::new(spec.clone(), pool)?.prefer(survivors);
        let mut adds = target.add_stream().await?;
        let mut next = 0;
        while next <= end.last_entry_id {
            let batch = with_timeout(
                &spec.ensemble().join(","),
                timeout,
                reader.read(next, end.last_entry_id, COPY_READ_BYTES),
            )
            .await??;
            let Some(after) = batch.next_entry_id() else {
                return Err(inconsistent(format!(
                    "no surviving replica serves entry {next}, though the segment is sealed at entry {}",
                    end.last_entry_id
                )));
            };
            if let Some(past) = batch
                .entries
                .iter()
                .find(|e| e.base_offset >= sealed.end_offset)
            {
                return Err(inconsistent(format!(
                    "entry {} starts at offset {}, at or past the sealed end offset {}",
                    past.entry_id, past.base_offset, sealed.end_offset
                )));
            }
            let held: Vec<Entry> = batch
                .entries
                .into_iter()
                .filter(|e| spec.write_set(e.entry_id).contains(lost_at))
                .collect();
            copied.entries += held.len() as u64;
            copied.bytes += held.iter().map(|e| e.payload.len() as u64).sum::<u64>();
            adds.write_all(held, &target).await?;
            next = after;
        }
    }
    target.seal(end.last_entry_id).await?;
    target.check_sealed(end.last_entry_id).await?;
    Ok(copied)
}

/// Where the surviving replicas say the segment ends, and their fence.
struct SealedEnd {
    last_entry_id: i64,
    epoch: u32,
}

/// Asks the surviving replicas for their state: at least one must be sealed,
/// and all sealed ones at the same entry (sealing happens once per segment).
async fn sealed_end(
    spec: &LedgerSpec,
    survivors: &[usize],
    pool: &BookiePool,
    timeout: Duration,
) -> Result<SealedEnd, CopyError> {
    let segment_id = spec.segment_id();
    let asks = survivors.iter().map(|&at| {
        let addr = spec.ensemble()[at].clone();
        async move {
            let mut client = pool.client(&addr)?;
            let answer = with_timeout(
                &addr,
                timeout,
                client.read_lac(ReadLacRequest { segment_id }),
            )
            .await?
            .map_err(|status| CopyError::Bookie {
                addr: addr.clone(),
                reason: status.to_string(),
            })?
            .into_inner();
            Ok::<_, CopyError>((addr, answer))
        }
    });
    let mut ends = Vec::new();
    let mut epoch = 0;
    let mut reasons = Vec::new();
    for answer in futures::future::join_all(asks).await {
        match answer {
            Ok((_, lac)) if status_of(lac.status) == Some(BookieStatus::BookieOk) => {
                epoch = epoch.max(lac.fenced_epoch);
                if lac.sealed {
                    ends.push(lac.last_add_confirmed);
                }
            }
            Ok((addr, lac)) => {
                reasons.push(format!("{addr}: {}", describe(lac.status, &lac.message)))
            }
            Err(error) => reasons.push(error.to_string()),
        }
    }
    ends.sort_unstable();
    ends.dedup();
    match ends.as_slice() {
        [last_entry_id] => Ok(SealedEnd {
            last_entry_id: *last_entry_id,
            epoch,
        }),
        [] => Err(CopyError::Inconsistent {
            segment_id,
            reason: format!(
                "no surviving replica reports it sealed; {}",
                reasons.join("; ")
            ),
        }),
        several => Err(CopyError::Inconsistent {
            segment_id,
            reason: format!("surviving replicas are sealed at different entries {several:?}"),
        }),
    }
}

/// Awaits `call` for at most `timeout`; running out is the bookie's failure.
async fn with_timeout<T>(
    addr: &str,
    timeout: Duration,
    call: impl Future<Output = T>,
) -> Result<T, CopyError> {
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| CopyError::Bookie {
            addr: addr.to_string(),
            reason: format!("no answer within {timeout:?}"),
        })
}

/// The replacement bookie, and the requests a copy sends it.
struct Target {
    addr: String,
    client: BookieServiceClient<Channel>,
    segment_id: u64,
    epoch: u32,
    timeout: Duration,
}

impl Target {
    fn refused(&self, status: i32, message: &str) -> CopyError {
        CopyError::Bookie {
            addr: self.addr.clone(),
            reason: describe(status, message),
        }
    }

    fn failed(&self, status: tonic::Status) -> CopyError {
        CopyError::Bookie {
            addr: self.addr.clone(),
            reason: status.to_string(),
        }
    }

    /// Fences the copy at the survivors' epoch, so that it refuses what they refuse.
    async fn fence(&self) -> Result<(), CopyError> {
        if self.epoch == 0 {
            return Ok(());
        }
        let request = FenceRequest {
            segment_id: self.segment_id,
            epoch: self.epoch,
        };
        let mut client = self.client.clone();
        let answer = with_timeout(&self.addr, self.timeout, client.fence(request))
            .await?
            .map_err(|status| self.failed(status))?
            .into_inner();
        match status_of(answer.status) {
            // Sealed: an earlier attempt got that far; the seal below checks where.
            Some(BookieStatus::BookieOk | BookieStatus::BookieSealed) => Ok(()),
            _ => Err(self.refused(answer.status, &answer.message)),
        }
    }

    /// Opens a stream of adds to the replacement.
    async fn add_stream(&self) -> Result<AddStream, CopyError> {
        // One read batch is in flight at a time; this only smooths the sends.
        let (requests, outbound) = mpsc::channel(64);
        let mut client = self.client.clone();
        let stream = tokio_stream::wrappers::ReceiverStream::new(outbound);
        let responses = with_timeout(&self.addr, self.timeout, client.add_entries(stream))
            .await?
            .map_err(|status| self.failed(status))?
            .into_inner();
        Ok(AddStream {
            requests,
            responses,
        })
    }

    async fn seal(&self, last_entry_id: i64) -> Result<(), CopyError> {
        let request = SealRequest {
            segment_id: self.segment_id,
            epoch: self.epoch,
            last_entry_id,
        };
        let mut client = self.client.clone();
        let answer = with_timeout(&self.addr, self.timeout, client.seal(request))
            .await?
            .map_err(|status| self.failed(status))?
            .into_inner();
        match status_of(answer.status) {
            Some(BookieStatus::BookieOk) => Ok(()),
            _ => Err(self.refused(answer.status, &answer.message)),
        }
    }

    /// Reads the copy's state back: sealed at `last_entry_id`.
    async fn check_sealed(&self, last_entry_id: i64) -> Result<(), CopyError> {
        let request = ReadLacRequest {
            segment_id: self.segment_id,
        };
        let mut client = self.client.clone();
        let answer = with_timeout(&self.addr, self.timeout, client.read_lac(request))
            .await?
            .map_err(|status| self.failed(status))?
            .into_inner();
        if status_of(answer.status) != Some(BookieStatus::BookieOk) {
            return Err(self.refused(answer.status, &answer.message));
        }
        if !answer.sealed || answer.last_add_confirmed != last_entry_id {
            return Err(CopyError::Inconsistent {
                segment_id: self.segment_id,
                reason: format!(
                    "the copy on {} reads back as sealed: {}, at entry {}; expected sealed at {last_entry_id}",
                    self.addr, answer.sealed, answer.last_add_confirmed
                ),
            });
        }
        Ok(())
    }
}

/// A pipelined stream of recovery adds to the replacement.
struct AddStream {
    requests: mpsc::Sender<AddRequest>,
    responses: tonic::Streaming<AddResponse>,
}

impl AddStream {
    /// Writes `entries` and waits until the replacement acknowledged each,
    /// sending and receiving at once so that neither side's buffers fill up.
    async fn write_all(&mut self, entries: Vec<Entry>, target: &Target) -> Result<(), CopyError> {
        let count = entries.len();
        if count == 0 {
            return Ok(());
        }
        let requests = &self.requests;
        let send = async {
            for entry in entries {
                let add = AddRequest {
                    segment_id: target.segment_id,
                    entry_id: entry.entry_id,
                    writer_epoch: target.epoch,
                    // Every earlier entry is confirmed: the segment is sealed past it.
                    last_add_confirmed: entry.entry_id - 1,
                    base_offset: entry.base_offset,
                    payload: entry.payload,
                    recovery: true,
                };
                if requests.send(add).await.is_err() {
                    return Err(CopyError::Bookie {
                        addr: target.addr.clone(),
                        reason: "the add stream closed".into(),
                    });
                }
            }
            Ok(())
        };
        let responses = &mut self.responses;
        let receive = async {
            for _ in 0..count {
                let answer = responses
                    .message()
                    .await
                    .map_err(|status| target.failed(status))?;
                let Some(answer) = answer else {
                    return Err(CopyError::Bookie {
                        addr: target.addr.clone(),
                        reason: "the add stream ended before every add was answered".into(),
                    });
                };
                if status_of(answer.status) != Some(BookieStatus::BookieOk) {
                    return Err(target.refused(answer.status, &answer.message));
                }
            }
            Ok(())
        };
        // A bookie silent for the whole timeout fails the copy rather than hanging it.
        with_timeout(&target.addr, target.timeout, async {
            futures::try_join!(send, receive).map(|_| ())
        })
        .await?
    }
}
