//! Ledger recovery: how a new owner finds where an open segment of a
//! previous (possibly dead) writer ends, and closes it there, as BookKeeper does.
//!
//! 1. **Fence** the segment on every bookie of the ensemble at the new epoch;
//!    from then on they refuse adds of older epochs. Enough bookies must answer
//!    that no add of the old writer can still reach Qa acks: in **every write
//!    set**, at most `Qa - 1` bookies may be unfenced, i.e. at least
//!    `Qw - Qa + 1` of them fenced. With `E == Qw` that is `E - Qa + 1` bookies;
//!    with striping (`E > Qw`) it is checked for each of the E write sets.
//! 2. If a fenced bookie reports the segment already **sealed** (an earlier
//!    recovery got as far as sealing), its end is adopted: sealing only ever
//!    follows step 3, so that end is complete. This makes recovery idempotent.
//! 3. Otherwise take the **highest LAC** the fenced bookies report and read
//!    forward from `LAC + 1` with recovery reads, asking every bookie of each
//!    entry's write set. An entry found on any of them is **re-replicated**
//!    with `recovery = true` adds to those that answered that they lack it,
//!    until it has at least Qa copies. Reading stops at the first entry that
//!    `Qw - Qa + 1` bookies of its write set say they do not have: at most
//!    `Qa - 1` copies can exist, so it was never confirmed, nor was any later
//!    entry. A bookie says so either with `BOOKIE_NO_SUCH_ENTRY` (a gap below
//!    the last entry it holds) or with an OK answer without entries (the entry
//!    is past the last one it holds, or past the end it was sealed at). If too
//!    few bookies answer to decide, recovery fails and may be retried.
//! 4. **Seal** the segment at that end on the bookies, at the new epoch; the
//!    seal must reach at least Qa bookies of every write set, so that any
//!    later recovery's fence quorum meets a sealed bookie (step 2).
//!
//! The end is at least the last entry the old writer saw confirmed. Bookies
//! are expected to record a fence even for a segment they hold nothing of
//! (`BOOKIE_NO_SUCH_SEGMENT` counts as fenced), and to report a sealed segment's
//! end as its `last_add_confirmed` in `ReadLac`.

use super::error::LedgerError;
use super::pool::{describe, status_of, BookiePool};
use super::spec::{LedgerSpec, WriteSet, NO_ENTRY};
use std::future::Future;
use std::time::Duration;
use strata_proto::bookie::bookie_service_client::BookieServiceClient;
use strata_proto::bookie::read_entries_request::Start;
use strata_proto::bookie::{
    AddRequest, BookieStatus, Entry, FenceRequest, ReadEntriesRequest, ReadLacRequest, SealRequest,
};
use tonic::transport::Channel;

/// What recovery found and did.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveryOutcome {
    /// The segment's last entry, where it is now sealed ([`NO_ENTRY`] if empty).
    pub last_entry_id: i64,
    /// That entry (base offset and payload), so the owner can compute the
    /// segment's end offset; `None` when the segment is empty.
    pub last_entry: Option<Entry>,
    /// The highest last-add-confirmed the fenced bookies reported.
    pub fenced_last_add_confirmed: i64,
    /// Entries found past that LAC (kept in the segment).
    pub recovered_entries: u64,
    /// Copies written to bookies that lacked a recovered entry.
    pub copies_written: u64,
    /// Whether an earlier recovery had already sealed the segment, whose end
    /// was adopted.
    pub already_sealed: bool,
}

/// Fences segment `spec` at `new_epoch`, finds its end, re-replicates what is
/// past the last-add-confirmed, and seals it there. Safe to run again (at the
/// same or a higher epoch) after a failure or a success.
pub async fn recover(
    spec: &LedgerSpec,
    new_epoch: u32,
    pool: &BookiePool,
) -> Result<RecoveryOutcome, LedgerError> {
    let recovery = Recovery::new(spec, new_epoch, pool)?;
    let fenced = recovery.fence().await?;
    let sealed_end = recovery
        .sealed_end(fenced.answered)
        .await
        // An end below a confirmed entry cannot come from a finished recovery.
        .filter(|&end| end >= fenced.last_add_confirmed);
    let mut outcome = RecoveryOutcome {
        last_entry_id: fenced.last_add_confirmed,
        last_entry: None,
        fenced_last_add_confirmed: fenced.last_add_confirmed,
        recovered_entries: 0,
        copies_written: 0,
        already_sealed: sealed_end.is_some(),
    };
    if let Some(end) = sealed_end {
        outcome.last_entry_id = end;
    } else {
        recovery.read_forward(&mut outcome).await?;
    }
    if outcome.last_entry.is_none() && outcome.last_entry_id != NO_ENTRY {
        outcome.last_entry = Some(recovery.read_one(outcome.last_entry_id).await?);
    }
    recovery.seal(outcome.last_entry_id).await?;
    tracing::info!(
        segment_id = spec.segment_id(),
        new_epoch,
        last_entry_id = outcome.last_entry_id,
        fenced_lac = outcome.fenced_last_add_confirmed,
        recovered = outcome.recovered_entries,
        copies_written = outcome.copies_written,
        already_sealed = outcome.already_sealed,
        "segment recovered"
    );
    Ok(outcome)
}

/// The fence quorum's answers.
struct Fenced {
    answered: WriteSet,
    last_add_confirmed: i64,
}

/// What one bookie of a write set says about one entry.
enum Replica {
    Has(Entry),
    Lacks,
    Unknown(String),
}

struct Recovery<'a> {
    spec: &'a LedgerSpec,
    epoch: u32,
    clients: Vec<BookieServiceClient<Channel>>,
    timeout: Duration,
    max_read_bytes: u32,
}

impl<'a> Recovery<'a> {
    fn new(spec: &'a LedgerSpec, epoch: u32, pool: &BookiePool) -> Result<Self, LedgerError> {
        let clients = pool.ensemble_clients(spec)?;
        Ok(Self {
            spec,
            epoch,
            clients,
            timeout: pool.options().request_timeout(),
            max_read_bytes: u32::try_from(pool.options().max_message_bytes).unwrap_or(u32::MAX),
        })
    }

    fn segment_id(&self) -> u64 {
        self.spec.segment_id()
    }

    fn addr(&self, bookie: usize) -> &str {
        &self.spec.ensemble()[bookie]
    }

    fn fenced_error(&self, bookie: usize) -> LedgerError {
        LedgerError::Fenced {
            segment_id: self.segment_id(),
            bookie: self.addr(bookie).to_string(),
        }
    }

    fn incomplete(&self, reason: String) -> LedgerError {
        LedgerError::RecoveryIncomplete {
            segment_id: self.segment_id(),
            reason,
        }
    }

    /// Awaits one call with the request timeout; transport errors and
    /// timeouts become text.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(status.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// Runs `call` against every bookie in `bookies`, concurrently.
    async fn each<T, F, Fut>(&self, bookies: WriteSet, call: F) -> Vec<(usize, Result<T, String>)>
    where
        F: Fn(BookieServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let calls = bookies.iter().map(|bookie| {
            let call = call(self.clients[bookie].clone());
            async move { (bookie, self.call(call).await) }
        });
        futures::future::join_all(calls).await
    }

    fn ensemble(&self) -> WriteSet {
        (0..self.spec.ensemble_size()).collect()
    }

    async fn fence(&self) -> Result<Fenced, LedgerError> {
        let segment_id = self.segment_id();
        let epoch = self.epoch;
        let answers = self
            .each(self.ensemble(), |mut client| async move {
                client.fence(FenceRequest { segment_id, epoch }).await
            })
            .await;
        let mut fenced = Fenced {
            answered: WriteSet::EMPTY,
            last_add_confirmed: NO_ENTRY,
        };
        let mut reasons = Vec::new();
        for (bookie, answer) in answers {
            let response = match answer {
                Ok(response) => response,
                Err(reason) => {
                    reasons.push(format!("{}: {reason}", self.addr(bookie)));
                    continue;
                }
            };
            match status_of(response.status) {
                Some(BookieStatus::BookieOk) => {
                    fenced.answered = fenced.answered.with(bookie);
                    fenced.last_add_confirmed =
                        fenced.last_add_confirmed.max(response.last_add_confirmed);
                }
                // Nothing stored yet; the fence is recorded all the same.
                // Sealed: step 2 learns where.
                Some(BookieStatus::BookieNoSuchSegment | BookieStatus::BookieSealed) => {
                    fenced.answered = fenced.answered.with(bookie);
                }
                // A recovery at a higher epoch is under way or done.
                Some(BookieStatus::BookieFenced) => return Err(self.fenced_error(bookie)),
                _ => reasons.push(format!(
                    "{}: {}",
                    self.addr(bookie),
                    describe(response.status, &response.message)
                )),
            }
        }
        if !self
            .spec
            .covers(fenced.answered, self.spec.ack_quorum() - 1)
        {
            return Err(self.incomplete(format!(
                "fenced on {} of {} bookies, but every write set of {} needs {} fenced; {}",
                fenced.answered.len(),
                self.spec.ensemble_size(),
                self.spec.write_quorum(),
                self.spec.write_quorum() - self.spec.ack_quorum() + 1,
                reasons.join("; ")
            )));
        }
        Ok(fenced)
    }

    /// The end an earlier recovery sealed the segment at, if a fenced bookie
    /// says it is sealed (the highest such end, should they differ).
    async fn sealed_end(&self, answered: WriteSet) -> Option<i64> {
        let segment_id = self.segment_id();
        let answers = self
            .each(answered, |mut client| async move {
                client.read_lac(ReadLacRequest { segment_id }).await
            })
            .await;
        answers
            .into_iter()
            .filter_map(|(_, answer)| answer.ok())
            .filter(|response| {
                status_of(response.status) == Some(BookieStatus::BookieOk) && response.sealed
            })
            .map(|response| response.last_add_confirmed)
            .max()
    }

    /// Step 3: reads, and re-replicates, every entry past the fenced LAC.
    async fn read_forward(&self, outcome: &mut RecoveryOutcome) -> Result<(), LedgerError> {
        let qw = self.spec.write_quorum();
        let qa = self.spec.ack_quorum();
        let mut entry_id = outcome.fenced_last_add_confirmed.saturating_add(1);
        loop {
            let write_set = self.spec.write_set(entry_id);
            let mut found: Option<Entry> = None;
            let mut has = WriteSet::EMPTY;
            let mut lacks = WriteSet::EMPTY;
            let mut reasons = Vec::new();
            for (bookie, copy) in self.copies(entry_id, write_set).await {
                match copy {
                    Replica::Has(entry) => {
                        has = has.with(bookie);
                        found.get_or_insert(entry);
                    }
                    Replica::Lacks => lacks = lacks.with(bookie),
                    Replica::Unknown(reason) => {
                        reasons.push(format!("{}: {reason}", self.addr(bookie)))
                    }
                }
            }
            let Some(entry) = found else {
                if lacks.len() > qw - qa {
                    // At most Qa - 1 copies can exist: never confirmed.
                    return Ok(());
                }
                return Err(self.incomplete(format!(
                    "entry {entry_id}: {} of its {qw} bookies say they lack it, {} needed to end \
                     the segment there; {}",
                    lacks.len(),
                    qw - qa + 1,
                    reasons.join("; ")
                )));
            };
            let written = self.replicate(&entry, lacks).await?;
            outcome.copies_written += written.len() as u64;
            let copies = has.len() + written.len();
            if copies < qa {
                return Err(self.incomplete(format!(
                    "entry {entry_id} has {copies} copies after re-replication, needs {qa}; {}",
                    reasons.join("; ")
                )));
            }
            outcome.recovered_entries += 1;
            outcome.last_entry_id = entry_id;
            outcome.last_entry = Some(entry);
            entry_id = entry_id.saturating_add(1);
        }
    }

    fn read_request(&self, entry_id: i64) -> ReadEntriesRequest {
        ReadEntriesRequest {
            segment_id: self.segment_id(),
            start: Some(Start::FirstEntryId(entry_id)),
            last_entry_id: entry_id,
            max_bytes: self.max_read_bytes,
            recovery: true,
            known_lac: None,
        }
    }

    /// Asks every bookie of `write_set` for entry `entry_id` (recovery reads).
    async fn copies(&self, entry_id: i64, write_set: WriteSet) -> Vec<(usize, Replica)> {
        let request = self.read_request(entry_id);
        let answers = self
            .each(write_set, |mut client| async move {
                client.read_entries(request).await
            })
            .await;
        answers
            .into_iter()
            .map(|(bookie, answer)| {
                let copy = match answer {
                    Err(reason) => Replica::Unknown(reason),
                    Ok(response) => match status_of(response.status) {
                        Some(BookieStatus::BookieOk) => match response.entries.into_iter().next() {
                            Some(entry) if entry.entry_id == entry_id => Replica::Has(entry),
                            Some(entry) => Replica::Unknown(format!(
                                "answered entry {} for entry {entry_id}",
                                entry.entry_id
                            )),
                            // OK with no entries: the entry is past the last one
                            // this bookie holds (or past the end it was sealed at).
                            None => Replica::Lacks,
                        },
                        // The entry is below the last one held but missing (a gap),
                        // or the bookie holds nothing of the segment.
                        Some(
                            BookieStatus::BookieNoSuchEntry | BookieStatus::BookieNoSuchSegment,
                        ) => Replica::Lacks,
                        _ => Replica::Unknown(describe(response.status, &response.message)),
                    },
                };
                (bookie, copy)
            })
            .collect()
    }

    /// Writes `entry` to each bookie of `targets` with a recovery add; returns
    /// those that acked.
    async fn replicate(&self, entry: &Entry, targets: WriteSet) -> Result<WriteSet, LedgerError> {
        let request = AddRequest {
            segment_id: self.segment_id(),
            entry_id: entry.entry_id,
            writer_epoch: self.epoch,
            // Every earlier entry now has Qa copies and stays in the segment.
            last_add_confirmed: entry.entry_id - 1,
            base_offset: entry.base_offset,
            payload: entry.payload.clone(),
            recovery: true,
        };
        let answers = self
            .each(targets, |mut client| {
                let request = request.clone();
                async move {
                    // The request side stays open until the answer is in, so
                    // the bookie never sees the stream end before it acks.
                    let (requests, outbound) = tokio::sync::mpsc::channel(1);
                    let _ = requests.send(request).await;
                    let mut responses = client
                        .add_entries(tokio_stream::wrappers::ReceiverStream::new(outbound))
                        .await?
                        .into_inner();
                    let answer = responses.message().await?;
                    drop(requests);
                    match answer {
                        Some(response) => Ok(tonic::Response::new(response)),
                        None => Err(tonic::Status::unavailable(
                            "add stream closed without an answer",
                        )),
                    }
                }
            })
            .await;
        let mut written = WriteSet::EMPTY;
        for (bookie, answer) in answers {
            match answer {
                Ok(response) => match status_of(response.status) {
                    Some(BookieStatus::BookieOk) if response.entry_id == entry.entry_id => {
                        written = written.with(bookie)
                    }
                    Some(BookieStatus::BookieFenced) => return Err(self.fenced_error(bookie)),
                    _ => tracing::warn!(
                        segment_id = self.segment_id(),
                        entry_id = entry.entry_id,
                        bookie = self.addr(bookie),
                        answer = %describe(response.status, &response.message),
                        "recovery add refused"
                    ),
                },
                Err(reason) => tracing::warn!(
                    segment_id = self.segment_id(),
                    entry_id = entry.entry_id,
                    bookie = self.addr(bookie),
                    %reason,
                    "recovery add failed"
                ),
            }
        }
        Ok(written)
    }

    /// Reads entry `entry_id` from any bookie of its write set.
    async fn read_one(&self, entry_id: i64) -> Result<Entry, LedgerError> {
        let mut reasons = Vec::new();
        for bookie in self.spec.write_set(entry_id).iter() {
            let mut client = self.clients[bookie].clone();
            let reason = match self
                .call(client.read_entries(self.read_request(entry_id)))
                .await
            {
                Ok(response) => {
                    let ok = status_of(response.status) == Some(BookieStatus::BookieOk);
                    match response.entries.into_iter().next() {
                        Some(entry) if ok && entry.entry_id == entry_id => return Ok(entry),
                        Some(entry) if ok => {
                            format!("answered entry {} for entry {entry_id}", entry.entry_id)
                        }
                        _ if ok => "answered without the entry".to_string(),
                        _ => describe(response.status, &response.message),
                    }
                }
                Err(reason) => reason,
            };
            reasons.push(format!("{}: {reason}", self.addr(bookie)));
        }
        Err(LedgerError::ReadFailed {
            segment_id: self.segment_id(),
            entry_id,
            reasons: reasons.join("; "),
        })
    }

    /// Step 4: seals at `last_entry_id` on at least Qa bookies of every write set.
    async fn seal(&self, last_entry_id: i64) -> Result<(), LedgerError> {
        let segment_id = self.segment_id();
        let epoch = self.epoch;
        let answers = self
            .each(self.ensemble(), |mut client| async move {
                client
                    .seal(SealRequest {
                        segment_id,
                        epoch,
                        last_entry_id,
                    })
                    .await
            })
            .await;
        let mut sealed = WriteSet::EMPTY;
        let mut reasons = Vec::new();
        for (bookie, answer) in answers {
            match answer {
                Ok(response) => match status_of(response.status) {
                    // Sealing again at the same end is OK; BOOKIE_SEALED
                    // means sealed at another end, which does not count.
                    Some(BookieStatus::BookieOk) => sealed = sealed.with(bookie),
                    Some(BookieStatus::BookieFenced) => return Err(self.fenced_error(bookie)),
                    _ => reasons.push(format!(
                        "{}: {}",
                        self.addr(bookie),
                        describe(response.status, &response.message)
                    )),
                },
                Err(reason) => reasons.push(format!("{}: {reason}", self.addr(bookie))),
            }
        }
        let may_miss = self.spec.write_quorum() - self.spec.ack_quorum();
        if !self.spec.covers(sealed, may_miss) {
            return Err(self.incomplete(format!(
                "sealed at entry {last_entry_id} on {} of {} bookies, but every write set needs {} \
                 sealed; {}",
                sealed.len(),
                self.spec.ensemble_size(),
                self.spec.ack_quorum(),
                reasons.join("; ")
            )));
        }
        Ok(())
    }
}
