//! What the ledger client must know about one segment: its ensemble, its
//! quorums, and which bookies hold which entry (striping).

use super::error::LedgerError;
use std::collections::BTreeMap;
use strata_proto::metadata::{BookieInfo, SegmentInfo};

/// Entry id meaning "no entry": the LAC of a segment with nothing confirmed.
pub const NO_ENTRY: i64 = -1;

/// Largest ensemble the client supports (write sets are 64-bit masks).
pub const MAX_ENSEMBLE_SIZE: usize = 64;

/// A segment's layout: its id, its ensemble's addresses in ensemble order,
/// and its write and ack quorums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerSpec {
    segment_id: u64,
    ensemble: Vec<String>,
    write_quorum: usize,
    ack_quorum: usize,
}

impl LedgerSpec {
    /// A layout, checked: `1 <= ack_quorum <= write_quorum <= ensemble.len() <= 64`
    /// and no bookie twice.
    pub fn new(
        segment_id: u64,
        ensemble: Vec<String>,
        write_quorum: usize,
        ack_quorum: usize,
    ) -> Result<Self, LedgerError> {
        let size = ensemble.len();
        if !(1 <= ack_quorum
            && ack_quorum <= write_quorum
            && write_quorum <= size
            && size <= MAX_ENSEMBLE_SIZE)
        {
            return Err(LedgerError::InvalidLayout(format!(
                "segment {segment_id}: need 1 <= Qa ({ack_quorum}) <= Qw ({write_quorum}) \
                 <= E ({size}) <= {MAX_ENSEMBLE_SIZE}"
            )));
        }
        for (i, addr) in ensemble.iter().enumerate() {
            if ensemble[..i].contains(addr) {
                return Err(LedgerError::InvalidLayout(format!(
                    "segment {segment_id}: bookie {addr} appears twice in the ensemble"
                )));
            }
        }
        Ok(Self {
            segment_id,
            ensemble,
            write_quorum,
            ack_quorum,
        })
    }

    /// The layout of a segment recorded in metadata, with each ensemble node id
    /// resolved to its address through `bookies` (e.g. `CachedState::bookies`).
    pub fn from_segment(
        segment: &SegmentInfo,
        bookies: &BTreeMap<i32, BookieInfo>,
    ) -> Result<Self, LedgerError> {
        let ensemble = segment
            .ensemble
            .iter()
            .map(|node_id| {
                bookies.get(node_id).map(|b| b.grpc_addr.clone()).ok_or(
                    LedgerError::UnknownBookie {
                        segment_id: segment.segment_id,
                        node_id: *node_id,
                    },
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(
            segment.segment_id,
            ensemble,
            segment.write_quorum as usize,
            segment.ack_quorum as usize,
        )
    }

    /// The segment id.
    pub fn segment_id(&self) -> u64 {
        self.segment_id
    }

    /// The ensemble's addresses, in ensemble order.
    pub fn ensemble(&self) -> &[String] {
        &self.ensemble
    }

    /// E: the ensemble size.
    pub fn ensemble_size(&self) -> usize {
        self.ensemble.len()
    }

    /// Qw: how many bookies store each entry.
    pub fn write_quorum(&self) -> usize {
        self.write_quorum
    }

    /// Qa: how many acks confirm an entry.
    pub fn ack_quorum(&self) -> usize {
        self.ack_quorum
    }

    /// The bookies (ensemble indexes) that store entry `entry_id`:
    /// `(entry_id + k) % E` for `k` in `0..Qw`.
    pub fn write_set(&self, entry_id: i64) -> WriteSet {
        WriteSet::striped(entry_id, self.ensemble.len(), self.write_quorum)
    }

    /// Every distinct write set of the segment: E of them when striping
    /// (`E > Qw`), the whole ensemble once when `E == Qw`.
    pub fn write_sets(&self) -> Vec<WriteSet> {
        let distinct = if self.write_quorum == self.ensemble.len() {
            1
        } else {
            self.ensemble.len()
        };
        (0..distinct as i64).map(|i| self.write_set(i)).collect()
    }

    /// Whether every write set has at most `max_missing` of its bookies outside
    /// `answered`: the quorum-coverage test of fencing and sealing.
    pub fn covers(&self, answered: WriteSet, max_missing: usize) -> bool {
        self.write_sets()
            .into_iter()
            .all(|set| set.without(answered).len() <= max_missing)
    }
}

/// A set of bookies, by index in the ensemble (a 64-bit mask).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct WriteSet(u64);

impl WriteSet {
    /// The empty set.
    pub const EMPTY: WriteSet = WriteSet(0);

    /// The write set of `entry_id` in an ensemble of `ensemble_size` with write
    /// quorum `write_quorum`: `(entry_id + k) % E` for `k` in `0..Qw`.
    pub fn striped(entry_id: i64, ensemble_size: usize, write_quorum: usize) -> Self {
        debug_assert!(write_quorum <= ensemble_size && ensemble_size <= MAX_ENSEMBLE_SIZE);
        // `rem_euclid` keeps a (meaningless) negative id from a caller in range.
        let start = entry_id.rem_euclid(ensemble_size.max(1) as i64) as usize;
        (0..write_quorum)
            .map(|k| (start + k) % ensemble_size)
            .collect()
    }

    /// The set holding `bookie` only.
    pub fn single(bookie: usize) -> Self {
        debug_assert!(bookie < MAX_ENSEMBLE_SIZE);
        WriteSet(1 << bookie)
    }

    /// Whether `bookie` is in the set.
    pub fn contains(self, bookie: usize) -> bool {
        bookie < MAX_ENSEMBLE_SIZE && self.0 & (1 << bookie) != 0
    }

    /// The set with `bookie` added.
    pub fn with(self, bookie: usize) -> Self {
        WriteSet(self.0 | WriteSet::single(bookie).0)
    }

    /// The bookies of `self` that are not in `other`.
    pub fn without(self, other: WriteSet) -> Self {
        WriteSet(self.0 & !other.0)
    }

    /// The bookies in either set.
    pub fn union(self, other: WriteSet) -> Self {
        WriteSet(self.0 | other.0)
    }

    /// The bookies in both sets.
    pub fn intersect(self, other: WriteSet) -> Self {
        WriteSet(self.0 & other.0)
    }

    /// How many bookies the set holds.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The bookies in index order.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..MAX_ENSEMBLE_SIZE).filter(move |&i| self.contains(i))
    }
}

impl FromIterator<usize> for WriteSet {
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> Self {
        iter.into_iter().fold(WriteSet::EMPTY, WriteSet::with)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(e: usize, qw: usize, qa: usize) -> LedgerSpec {
        let ensemble = (0..e).map(|i| format!("b{i}:1")).collect();
        LedgerSpec::new(1, ensemble, qw, qa).unwrap()
    }

    #[test]
    fn striping_rotates_write_sets_over_the_ensemble() {
        let s = spec(5, 3, 2);
        assert_eq!(s.write_set(0).iter().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(s.write_set(3).iter().collect::<Vec<_>>(), vec![0, 3, 4]);
        assert_eq!(s.write_set(7), s.write_set(2));
        assert_eq!(s.write_sets().len(), 5);
        let full = spec(3, 3, 2);
        assert_eq!(full.write_set(4).len(), 3);
        assert_eq!(full.write_sets().len(), 1);
    }

    #[test]
    fn bad_layouts_are_refused() {
        let two = vec!["a:1".to_string(), "b:1".to_string()];
        assert!(LedgerSpec::new(1, two.clone(), 3, 2).is_err());
        assert!(LedgerSpec::new(1, two.clone(), 2, 0).is_err());
        assert!(LedgerSpec::new(1, two.clone(), 1, 2).is_err());
        assert!(LedgerSpec::new(1, vec!["a:1".into(), "a:1".into()], 2, 1).is_err());
        assert!(LedgerSpec::new(1, two, 2, 2).is_ok());
    }

    #[test]
    fn coverage_checks_every_write_set() {
        // E = Qw = 3, Qa = 2: fencing needs E - Qa + 1 = 2 answers.
        let s = spec(3, 3, 2);
        assert!(s.covers([0, 2].into_iter().collect(), 1));
        assert!(!s.covers(WriteSet::single(1), 1));
        // E = 4, Qw = 3, Qa = 2: without bookies 0 and 2, the write sets
        // {0,1,2} and {2,3,0} each miss two; without bookie 0 only, each misses one.
        let s = spec(4, 3, 2);
        assert!(!s.covers([1, 3].into_iter().collect(), 1));
        assert!(s.covers([1, 2, 3].into_iter().collect(), 1));
    }
}
