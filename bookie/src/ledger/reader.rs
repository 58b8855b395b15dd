//! `LedgerReader`: reads a segment's entries from any replica, falling back
//! to the next replica of the entry's write set on error.
//!
//! Nothing is verified here beyond status codes: bookies check CRCs. A bookie
//! serves entries up to the LAC it knows (which rides on later adds, so the
//! newest confirmed entry becomes readable with the next add) or up to its
//! sealed end. Asked for a start past that, it answers OK with no entries and
//! its LAC; asked for one within it that it lacks, `BOOKIE_NO_SUCH_ENTRY`.
//! Replicas' LACs differ (a bookie the writer dropped keeps an old one for
//! good), so an empty answer sends the read on to the next replica too, and
//! the read is empty only if no replica of the write set can serve it.

use super::error::LedgerError;
use super::pool::{describe, status_of, BookiePool};
use super::spec::{LedgerSpec, WriteSet, NO_ENTRY};
use std::time::Duration;
use strata_proto::bookie::bookie_service_client::BookieServiceClient;
use strata_proto::bookie::read_entries_request::Start;
use strata_proto::bookie::{BookieStatus, Entry, ReadEntriesRequest};
use tonic::transport::Channel;

/// Entries read, in entry-id order and contiguous.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadBatch {
    /// The entries.
    pub entries: Vec<Entry>,
    /// The highest last-add-confirmed the answering bookies reported
    /// ([`NO_ENTRY`] if none did).
    pub last_add_confirmed: i64,
}

impl ReadBatch {
    /// The id after the last entry read, if any was.
    pub fn next_entry_id(&self) -> Option<i64> {
        self.entries.last().map(|e| e.entry_id.saturating_add(1))
    }
}

/// Reads one segment's entries from its replicas.
#[derive(Clone)]
pub struct LedgerReader {
    spec: LedgerSpec,
    clients: Vec<BookieServiceClient<Channel>>,
    preferred: WriteSet,
    timeout: Duration,
    known_lac: Option<i64>,
}

impl LedgerReader {
    /// A reader of segment `spec` over the pool's channels.
    pub fn new(spec: LedgerSpec, pool: &BookiePool) -> Result<Self, LedgerError> {
        let clients = pool.ensemble_clients(&spec)?;
        Ok(Self {
            spec,
            clients,
            preferred: WriteSet::EMPTY,
            timeout: pool.options().request_timeout(),
            known_lac: None,
        })
    }

    /// The same reader, reading up to the LAC its writer knows (the bookies
    /// learn it only with later adds): for the owner's reads of its open segment.
    pub fn with_known_lac(mut self, last_add_confirmed: i64) -> Self {
        self.known_lac = Some(last_add_confirmed);
        self
    }

    /// The same reader, trying the bookies at these ensemble indexes first
    /// (e.g. those in the reader's zone).
    pub fn prefer(mut self, bookies: impl IntoIterator<Item = usize>) -> Self {
        self.preferred = bookies.into_iter().collect();
        self
    }

    /// The segment read.
    pub fn spec(&self) -> &LedgerSpec {
        &self.spec
    }

    /// Reads entries `first_entry_id ..= last_entry_id` (`-1`: up to what the
    /// bookies may serve), stopping after about `max_bytes` (at least one
    /// entry is returned if any is readable, so 0 reads one entry). An empty
    /// batch means nothing from `first_entry_id` on is readable yet: it is past
    /// the LAC (or the sealed end) of every replica that answered, and the
    /// batch's `last_add_confirmed` is the highest of theirs.
    ///
    /// Fails with [`LedgerError::NoSuchEntry`] when every replica says it does
    /// not have `first_entry_id` although it is within what it may serve, and
    /// [`LedgerError::ReadFailed`] when they fail otherwise.
    pub async fn read(
        &self,
        first_entry_id: i64,
        last_entry_id: i64,
        max_bytes: u32,
    ) -> Result<ReadBatch, LedgerError> {
        let mut batch = ReadBatch {
            entries: Vec::new(),
            last_add_confirmed: NO_ENTRY,
        };
        self.fill(&mut batch, first_entry_id, last_entry_id, max_bytes)
            .await?;
        Ok(batch)
    }

    /// Reads from the entry that holds Kafka offset `kafka_offset` (its first
    /// entry may start before that offset: callers skip records below it), up
    /// to `last_entry_id` (`-1`: up to what may be read) and about `max_bytes`.
    pub async fn read_from_offset(
        &self,
        kafka_offset: i64,
        last_entry_id: i64,
        max_bytes: u32,
    ) -> Result<ReadBatch, LedgerError> {
        let replicas: Vec<usize> = self.order((0..self.spec.ensemble_size()).collect());
        let start = Start::KafkaOffset(kafka_offset);
        let mut batch = self
            .read_once(start, None, last_entry_id, max_bytes, &replicas)
            .await?;
        if let Some(next) = batch.next_entry_id() {
            let left = max_bytes.saturating_sub(bytes_of(&batch.entries));
            if left > 0 {
                self.fill(&mut batch, next, last_entry_id, left).await?;
            }
        }
        Ok(batch)
    }

    /// Appends to `batch` entries from `next`, replica by replica, until
    /// `last_entry_id`, the byte budget, or the readable end.
    async fn fill(
        &self,
        batch: &mut ReadBatch,
        mut next: i64,
        last_entry_id: i64,
        max_bytes: u32,
    ) -> Result<(), LedgerError> {
        let mut budget = max_bytes;
        while last_entry_id < 0 || next <= last_entry_id {
            let replicas = self.order(self.spec.write_set(next));
            let read = self
                .read_once(
                    Start::FirstEntryId(next),
                    Some(next),
                    last_entry_id,
                    budget,
                    &replicas,
                )
                .await;
            let part = match read {
                Ok(part) => part,
                // What was read so far stands; the caller reads on later.
                Err(_) if !batch.entries.is_empty() => break,
                Err(error) => return Err(error),
            };
            batch.last_add_confirmed = batch.last_add_confirmed.max(part.last_add_confirmed);
            let Some(after) = part.next_entry_id() else {
                break;
            };
            budget = budget.saturating_sub(bytes_of(&part.entries));
            batch.entries.extend(part.entries);
            next = after;
            if budget == 0 {
                break;
            }
        }
        Ok(())
    }

    /// `bookies` in the order to try them: preferred first, then ensemble order.
    fn order(&self, bookies: WriteSet) -> Vec<usize> {
        let preferred = bookies.intersect(self.preferred);
        preferred
            .iter()
            .chain(bookies.without(preferred).iter())
            .collect()
    }

    /// One read from the first replica that serves entries; keeps the
    /// contiguous run of entries starting at `first` (or at whatever the
    /// bookie returned first, when reading by offset). A replica that answers
    /// OK with no entries (the start is past its LAC, which may lag behind the
    /// others') or that lacks the start is passed over; if any answered OK
    /// and none served entries, the answer is an empty batch.
    async fn read_once(
        &self,
        start: Start,
        first: Option<i64>,
        last_entry_id: i64,
        max_bytes: u32,
        replicas: &[usize],
    ) -> Result<ReadBatch, LedgerError> {
        let segment_id = self.spec.segment_id();
        let request = ReadEntriesRequest {
            segment_id,
            start: Some(start),
            last_entry_id,
            // 0 would ask for the bookie's maximum; at least one entry is returned.
            max_bytes: max_bytes.max(1),
            recovery: false,
            known_lac: self.known_lac,
        };
        let mut reasons = Vec::new();
        let mut lacking = 0;
        // The highest LAC of the replicas that had nothing readable at the start.
        let mut nothing_yet: Option<i64> = None;
        for &bookie in replicas {
            let addr = &self.spec.ensemble()[bookie];
            let mut client = self.clients[bookie].clone();
            let answer = tokio::time::timeout(self.timeout, client.read_entries(request)).await;
            let response = match answer {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) => {
                    reasons.push(format!("{addr}: {status}"));
                    continue;
                }
                Err(_) => {
                    reasons.push(format!("{addr}: no answer within {:?}", self.timeout));
                    continue;
                }
            };
            match status_of(response.status) {
                Some(BookieStatus::BookieOk) if response.entries.is_empty() => {
                    // The start is past what this replica may serve: another
                    // replica may know a higher LAC.
                    let lac = response.last_add_confirmed;
                    nothing_yet = Some(nothing_yet.map_or(lac, |seen| seen.max(lac)));
                }
                Some(BookieStatus::BookieOk) => {
                    let returned = response.entries.first().map(|e| e.entry_id);
                    let mut expected = first.or(returned);
                    let entries: Vec<Entry> = response
                        .entries
                        .into_iter()
                        .take_while(|entry| {
                            let contiguous = Some(entry.entry_id) == expected
                                && (last_entry_id < 0 || entry.entry_id <= last_entry_id);
                            expected = expected.map(|id| id.saturating_add(1));
                            contiguous
                        })
                        .collect();
                    if entries.is_empty() {
                        reasons.push(format!(
                            "{addr}: answered entry {} for entry {}",
                            returned.unwrap_or(NO_ENTRY),
                            first.unwrap_or(NO_ENTRY)
                        ));
                        continue;
                    }
                    let lac = response.last_add_confirmed;
                    return Ok(ReadBatch {
                        entries,
                        last_add_confirmed: nothing_yet.map_or(lac, |seen| seen.max(lac)),
                    });
                }
                Some(BookieStatus::BookieNoSuchEntry | BookieStatus::BookieNoSuchSegment) => {
                    lacking += 1;
                    reasons.push(format!(
                        "{addr}: {}",
                        describe(response.status, &response.message)
                    ));
                }
                _ => reasons.push(format!(
                    "{addr}: {}",
                    describe(response.status, &response.message)
                )),
            }
        }
        if let Some(last_add_confirmed) = nothing_yet {
            return Ok(ReadBatch {
                entries: Vec::new(),
                last_add_confirmed,
            });
        }
        let entry_id = first.unwrap_or(NO_ENTRY);
        if lacking == replicas.len() {
            return Err(LedgerError::NoSuchEntry {
                segment_id,
                entry_id,
            });
        }
        Err(LedgerError::ReadFailed {
            segment_id,
            entry_id,
            reasons: reasons.join("; "),
        })
    }
}

fn bytes_of(entries: &[Entry]) -> u32 {
    let total: usize = entries.iter().map(|e| e.payload.len()).sum();
    u32::try_from(total).unwrap_or(u32::MAX)
}
