//! The state of one segment on this bookie, and the rules that admit or
//! refuse requests against it (fencing, sealing).

use super::error::StorageError;
use bytes::{Buf, BufMut};
use strata_proto::bookie::SegmentSummary;

/// Version byte of the stored form of [`SegmentMeta`].
const META_VERSION: u8 = 1;
/// Length of the stored form of [`SegmentMeta`].
const META_LEN: usize = 1 + 4 + 8 + 8 + 1 + 8 + 8;

/// What the index records about one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentMeta {
    /// Highest epoch the segment was fenced at; 0 = never fenced (epochs start at 1).
    pub fenced_epoch: u32,
    /// Highest last-add-confirmed a writer told this bookie; -1 = none.
    pub last_add_confirmed: i64,
    /// Highest entry id this bookie holds; -1 = none.
    pub last_entry_id: i64,
    /// The segment's last entry, once sealed.
    pub sealed_last_entry: Option<i64>,
    /// Payload bytes this bookie holds of the segment.
    pub bytes: u64,
}

impl Default for SegmentMeta {
    fn default() -> Self {
        Self {
            fenced_epoch: 0,
            last_add_confirmed: -1,
            last_entry_id: -1,
            sealed_last_entry: None,
            bytes: 0,
        }
    }
}

impl SegmentMeta {
    /// The last-add-confirmed readers see: the sealed end once sealed.
    pub fn visible_lac(&self) -> i64 {
        self.sealed_last_entry.unwrap_or(self.last_add_confirmed)
    }

    /// Whether the segment is sealed.
    pub fn is_sealed(&self) -> bool {
        self.sealed_last_entry.is_some()
    }

    /// The last entry a read may return: the sealed end once sealed, else the
    /// LAC, or for recovery reads the last entry held.
    pub fn readable_end(&self, recovery: bool) -> i64 {
        match self.sealed_last_entry {
            Some(last) => last,
            None if recovery => self.last_entry_id,
            None => self.last_add_confirmed,
        }
    }

    /// The segment as `ListSegments` and `ReadLac` describe it.
    pub fn summary(&self, segment_id: u64) -> SegmentSummary {
        SegmentSummary {
            segment_id,
            last_add_confirmed: self.visible_lac(),
            last_entry_id: self.last_entry_id,
            sealed: self.sealed_last_entry.is_some(),
            fenced_epoch: self.fenced_epoch,
            bytes: self.bytes,
        }
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(META_LEN);
        out.put_u8(META_VERSION);
        out.put_u32_le(self.fenced_epoch);
        out.put_i64_le(self.last_add_confirmed);
        out.put_i64_le(self.last_entry_id);
        out.put_u8(u8::from(self.sealed_last_entry.is_some()));
        out.put_i64_le(self.sealed_last_entry.unwrap_or(-1));
        out.put_u64_le(self.bytes);
        out
    }

    /// Decodes the stored form.
    pub fn decode(mut stored: &[u8]) -> Result<Self, StorageError> {
        if stored.len() != META_LEN || stored[0] != META_VERSION {
            return Err(StorageError::Corrupt(format!(
                "segment record of {} bytes, version {:?}",
                stored.len(),
                stored.first()
            )));
        }
        stored.advance(1);
        let fenced_epoch = stored.get_u32_le();
        let last_add_confirmed = stored.get_i64_le();
        let last_entry_id = stored.get_i64_le();
        let sealed = stored.get_u8() != 0;
        let sealed_last = stored.get_i64_le();
        let bytes = stored.get_u64_le();
        Ok(Self {
            fenced_epoch,
            last_add_confirmed,
            last_entry_id,
            sealed_last_entry: sealed.then_some(sealed_last),
            bytes,
        })
    }
}

/// A segment in memory: its applied state, plus the fences and seals that
/// were admitted but are still on their way through the journal, so that
/// requests behind them are judged by them.
#[derive(Debug, Clone, Default)]
pub(crate) struct SegmentState {
    /// The state the index holds (or will, once the batch in flight lands).
    pub applied: SegmentMeta,
    /// Whether anything of the segment was applied, i.e. the index knows it.
    pub persisted: bool,
    /// Highest fence epoch admitted.
    pub admitted_fence: u32,
    /// Seal admitted, with its last entry.
    pub admitted_seal: Option<i64>,
    /// A delete was admitted: the segment is going away.
    pub deleting: bool,
    /// Highest writer epoch of an add admitted since this bookie started. A
    /// fence below it comes from a deposed owner and is refused, so a stale
    /// recovery cannot seal a newer writer's segment under it. Kept in memory
    /// only: metadata's epoch checks are the guard that survives restarts.
    pub writer_epoch: u32,
}

/// What to do with an admitted add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddDecision {
    /// Journal and apply it.
    Write,
    /// The bookie already holds the entry: acknowledge it without writing.
    AlreadyHeld,
}

/// An add, as far as admission cares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AddAdmission {
    pub segment_id: u64,
    pub entry_id: i64,
    pub writer_epoch: u32,
    pub recovery: bool,
}

impl SegmentState {
    /// The epoch the segment is fenced at, counting admitted fences.
    pub fn fenced_epoch(&self) -> u32 {
        self.applied.fenced_epoch.max(self.admitted_fence)
    }

    /// The sealed last entry, counting an admitted seal.
    pub fn sealed_at(&self) -> Option<i64> {
        self.admitted_seal.or(self.applied.sealed_last_entry)
    }

    /// Judges an add: refused if the writer is fenced, the segment sealed (a
    /// recovery re-add of an entry already held is fine) or the disk full.
    /// `is_held` asks the index whether the entry is already stored.
    pub fn admit_add(
        &mut self,
        add: AddAdmission,
        disk_full: Option<StorageError>,
        is_held: impl FnOnce() -> Result<bool, StorageError>,
    ) -> Result<AddDecision, StorageError> {
        let segment_id = add.segment_id;
        if self.deleting {
            return Err(StorageError::NoSuchSegment(segment_id));
        }
        let fenced_epoch = self.fenced_epoch();
        if add.writer_epoch < fenced_epoch {
            return Err(StorageError::Fenced {
                segment_id,
                fenced_epoch,
                epoch: add.writer_epoch,
            });
        }
        let sealed = self.sealed_at();
        let may_be_held = add.entry_id <= self.applied.last_entry_id;
        if (sealed.is_none() || add.recovery) && may_be_held && is_held()? {
            self.writer_epoch = self.writer_epoch.max(add.writer_epoch);
            return Ok(AddDecision::AlreadyHeld);
        }
        if let Some(last_entry_id) = sealed {
            return Err(StorageError::Sealed {
                segment_id,
                last_entry_id,
            });
        }
        if let Some(full) = disk_full {
            return Err(full);
        }
        self.writer_epoch = self.writer_epoch.max(add.writer_epoch);
        Ok(AddDecision::Write)
    }

    /// Admits a fence at `epoch` (idempotent at the same epoch); a fence of an
    /// older epoch than the current fence, or than a writer seen, is refused.
    pub fn admit_fence(&mut self, segment_id: u64, epoch: u32) -> Result<(), StorageError> {
        if self.deleting {
            return Err(StorageError::NoSuchSegment(segment_id));
        }
        let fenced_epoch = self.fenced_epoch().max(self.writer_epoch);
        if epoch < fenced_epoch {
            return Err(StorageError::Fenced {
                segment_id,
                fenced_epoch,
                epoch,
            });
        }
        self.admitted_fence = epoch;
        Ok(())
    }

    /// Admits a seal at `last_entry_id` by a writer of `epoch`; sealing again
    /// at the same entry is fine, at another one is refused.
    pub fn admit_seal(
        &mut self,
        segment_id: u64,
        epoch: u32,
        last_entry_id: i64,
    ) -> Result<(), StorageError> {
        if self.deleting {
            return Err(StorageError::NoSuchSegment(segment_id));
        }
        let fenced_epoch = self.fenced_epoch();
        if epoch < fenced_epoch {
            return Err(StorageError::Fenced {
                segment_id,
                fenced_epoch,
                epoch,
            });
        }
        match self.sealed_at() {
            Some(sealed) if sealed != last_entry_id => Err(StorageError::Sealed {
                segment_id,
                last_entry_id: sealed,
            }),
            _ => {
                self.admitted_seal = Some(last_entry_id);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(entry_id: i64, writer_epoch: u32, recovery: bool) -> AddAdmission {
        AddAdmission {
            segment_id: 1,
            entry_id,
            writer_epoch,
            recovery,
        }
    }

    fn held(answer: bool) -> impl FnOnce() -> Result<bool, StorageError> {
        move || Ok(answer)
    }

    #[test]
    fn meta_round_trips() {
        let meta = SegmentMeta {
            fenced_epoch: 4,
            last_add_confirmed: 10,
            last_entry_id: 12,
            sealed_last_entry: Some(11),
            bytes: 1234,
        };
        assert_eq!(SegmentMeta::decode(&meta.encode()).unwrap(), meta);
        let fresh = SegmentMeta::default();
        assert_eq!(SegmentMeta::decode(&fresh.encode()).unwrap(), fresh);
        assert!(SegmentMeta::decode(&[1, 2, 3]).is_err());
    }

    #[test]
    fn older_epochs_are_fenced_out_and_recovery_at_the_fence_epoch_gets_in() {
        let mut state = SegmentState::default();
        state.admit_fence(1, 5).unwrap();
        let refused = state.admit_add(add(0, 4, false), None, held(false));
        assert!(matches!(
            refused,
            Err(StorageError::Fenced {
                fenced_epoch: 5,
                epoch: 4,
                ..
            })
        ));
        assert!(matches!(
            state.admit_add(add(0, 4, true), None, held(false)),
            Err(StorageError::Fenced { .. })
        ));
        assert_eq!(
            state.admit_add(add(0, 5, true), None, held(false)).unwrap(),
            AddDecision::Write
        );
        // A stale fencer is told so; the same epoch again is fine.
        assert!(matches!(
            state.admit_fence(1, 4),
            Err(StorageError::Fenced { .. })
        ));
        state.admit_fence(1, 5).unwrap();
    }

    #[test]
    fn a_fence_below_a_writer_already_seen_is_refused() {
        let mut state = SegmentState::default();
        assert_eq!(
            state
                .admit_add(add(0, 6, false), None, held(false))
                .unwrap(),
            AddDecision::Write
        );
        // A deposed owner (epoch 5) must not fence and seal epoch 6's segment.
        assert!(matches!(
            state.admit_fence(1, 5),
            Err(StorageError::Fenced {
                fenced_epoch: 6,
                epoch: 5,
                ..
            })
        ));
        // The writer's own epoch (a retaken log) and newer owners get in.
        state.admit_fence(1, 6).unwrap();
        state.admit_fence(1, 7).unwrap();
    }

    #[test]
    fn sealed_segments_take_only_recovery_re_adds_of_held_entries() {
        let mut state = SegmentState::default();
        state.applied.last_entry_id = 3;
        state.admit_seal(1, 1, 3).unwrap();
        assert!(matches!(
            state.admit_add(add(4, 1, false), None, held(false)),
            Err(StorageError::Sealed {
                last_entry_id: 3,
                ..
            })
        ));
        assert!(matches!(
            state.admit_add(add(2, 1, false), None, held(true)),
            Err(StorageError::Sealed { .. })
        ));
        assert_eq!(
            state.admit_add(add(2, 1, true), None, held(true)).unwrap(),
            AddDecision::AlreadyHeld
        );
        assert!(matches!(
            state.admit_add(add(4, 1, true), None, held(false)),
            Err(StorageError::Sealed { .. })
        ));
        state.admit_seal(1, 1, 3).unwrap();
        assert!(matches!(
            state.admit_seal(1, 1, 2),
            Err(StorageError::Sealed { .. })
        ));
    }

    #[test]
    fn a_full_disk_refuses_new_entries_only() {
        let mut state = SegmentState::default();
        state.applied.last_entry_id = 0;
        let full = || {
            Some(StorageError::DiskFull {
                free_bytes: 1,
                min_free_bytes: 2,
            })
        };
        assert!(matches!(
            state.admit_add(add(1, 1, false), full(), held(false)),
            Err(StorageError::DiskFull { .. })
        ));
        assert_eq!(
            state
                .admit_add(add(0, 1, false), full(), held(true))
                .unwrap(),
            AddDecision::AlreadyHeld
        );
    }

    #[test]
    fn readers_see_the_lac_and_recovery_sees_everything_until_sealed() {
        let mut meta = SegmentMeta {
            last_add_confirmed: 3,
            last_entry_id: 5,
            ..Default::default()
        };
        assert_eq!(meta.readable_end(false), 3);
        assert_eq!(meta.readable_end(true), 5);
        meta.sealed_last_entry = Some(4);
        assert_eq!(meta.readable_end(false), 4);
        assert_eq!(meta.readable_end(true), 4);
        assert_eq!(meta.visible_lac(), 4);
    }
}
