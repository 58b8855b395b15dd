//! The last-add-confirmed rule, with no I/O: an entry is confirmed when Qa of
//! the Qw bookies of its write set acked it **and** every earlier entry is
//! confirmed. The LAC is the highest confirmed entry id.

use super::spec::{WriteSet, NO_ENTRY};
use std::collections::VecDeque;

/// The acks of one unconfirmed entry.
#[derive(Debug, Clone, Copy)]
struct EntryAcks {
    write_set: WriteSet,
    acked: WriteSet,
}

/// Tracks acks of a segment's entries and computes its last-add-confirmed.
///
/// Entries are registered in id order (0, 1, 2, …) with their write sets.
/// An ack counts once per (entry, bookie); acks from bookies outside the
/// entry's write set, from failed bookies, for confirmed entries or for
/// entries not registered yet are ignored.
#[derive(Debug, Clone)]
pub struct LacTracker {
    ack_quorum: usize,
    last_add_confirmed: i64,
    /// Entries `last_add_confirmed + 1 ..`, in id order.
    unconfirmed: VecDeque<EntryAcks>,
    failed: WriteSet,
}

impl LacTracker {
    /// A tracker of a segment with ack quorum `ack_quorum` (Qa), nothing
    /// registered and nothing confirmed.
    pub fn new(ack_quorum: usize) -> Self {
        debug_assert!(ack_quorum >= 1, "an entry needs at least one ack");
        Self {
            ack_quorum,
            last_add_confirmed: NO_ENTRY,
            unconfirmed: VecDeque::new(),
            failed: WriteSet::EMPTY,
        }
    }

    /// The last-add-confirmed: the highest entry id confirmed, or [`NO_ENTRY`].
    pub fn last_add_confirmed(&self) -> i64 {
        self.last_add_confirmed
    }

    /// The id the next registered entry gets.
    pub fn next_entry_id(&self) -> i64 {
        self.last_add_confirmed + 1 + self.unconfirmed.len() as i64
    }

    /// How many registered entries are not confirmed yet.
    pub fn unconfirmed(&self) -> usize {
        self.unconfirmed.len()
    }

    /// The bookies marked failed.
    pub fn failed(&self) -> WriteSet {
        self.failed
    }

    /// Registers the next entry, stored on `write_set`; returns its id.
    pub fn push_entry(&mut self, write_set: WriteSet) -> i64 {
        let entry_id = self.next_entry_id();
        self.unconfirmed.push_back(EntryAcks {
            write_set,
            acked: WriteSet::EMPTY,
        });
        entry_id
    }

    /// Records that `bookie` acked `entry_id`; returns whether the ack counted.
    /// The LAC may have advanced: see [`Self::last_add_confirmed`].
    pub fn ack(&mut self, entry_id: i64, bookie: usize) -> bool {
        if self.failed.contains(bookie) {
            return false;
        }
        let Some(index) = self.index_of(entry_id) else {
            return false;
        };
        let Some(entry) = self.unconfirmed.get_mut(index) else {
            return false;
        };
        if !entry.write_set.contains(bookie) || entry.acked.contains(bookie) {
            return false;
        }
        entry.acked = entry.acked.with(bookie);
        let before = self.last_add_confirmed;
        while let Some(front) = self.unconfirmed.front() {
            if front.acked.len() < self.ack_quorum {
                break;
            }
            self.unconfirmed.pop_front();
            self.last_add_confirmed += 1;
        }
        debug_assert!(
            self.last_add_confirmed >= before,
            "the LAC never moves backwards"
        );
        true
    }

    /// Marks `bookie` failed: its later acks are ignored. Returns the first
    /// unconfirmed entry that can no longer reach Qa acks, if any.
    pub fn fail_bookie(&mut self, bookie: usize) -> Option<i64> {
        self.failed = self.failed.with(bookie);
        self.first_unreachable()
    }

    /// Whether registered, unconfirmed `entry_id` can still be acked by Qa
    /// bookies: acks so far plus live bookies of its write set yet to ack.
    /// Confirmed entries can; unknown entries cannot.
    pub fn can_reach_quorum(&self, entry_id: i64) -> bool {
        if entry_id <= self.last_add_confirmed {
            return true;
        }
        self.index_of(entry_id)
            .and_then(|index| self.unconfirmed.get(index))
            .is_some_and(|entry| self.reachable(entry))
    }

    /// The first unconfirmed entry that can no longer reach Qa acks.
    pub fn first_unreachable(&self) -> Option<i64> {
        self.unconfirmed
            .iter()
            .position(|entry| !self.reachable(entry))
            .map(|index| self.last_add_confirmed + 1 + index as i64)
    }

    /// Position of unconfirmed `entry_id` in `unconfirmed`; `None` for
    /// confirmed ids (and any id a confused bookie may send).
    fn index_of(&self, entry_id: i64) -> Option<usize> {
        let index = entry_id
            .checked_sub(self.last_add_confirmed)?
            .checked_sub(1)?;
        usize::try_from(index).ok()
    }

    fn reachable(&self, entry: &EntryAcks) -> bool {
        let may_still_ack = entry.write_set.without(entry.acked).without(self.failed);
        entry.acked.len() + may_still_ack.len() >= self.ack_quorum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashSet};

    fn striped(entry_id: i64) -> WriteSet {
        WriteSet::striped(entry_id, 3, 3)
    }

    #[test]
    fn an_entry_is_confirmed_only_after_every_earlier_one() {
        let mut lac = LacTracker::new(2);
        for i in 0..3 {
            assert_eq!(lac.push_entry(striped(i)), i);
        }
        assert!(lac.ack(1, 0));
        assert!(lac.ack(1, 1));
        assert_eq!(
            lac.last_add_confirmed(),
            NO_ENTRY,
            "entry 0 is not confirmed"
        );
        assert!(lac.ack(0, 2));
        assert!(!lac.ack(0, 2), "a duplicate does not count");
        assert_eq!(lac.last_add_confirmed(), NO_ENTRY);
        assert!(lac.ack(0, 1));
        assert_eq!(lac.last_add_confirmed(), 1);
        assert!(!lac.ack(1, 2), "acks of confirmed entries are ignored");
        assert_eq!(lac.unconfirmed(), 1);
    }

    #[test]
    fn acks_from_outside_the_write_set_or_of_unknown_entries_are_ignored() {
        let mut lac = LacTracker::new(2);
        lac.push_entry(WriteSet::striped(0, 4, 2)); // bookies 0, 1
        assert!(!lac.ack(0, 2));
        assert!(!lac.ack(0, 3));
        assert!(!lac.ack(5, 0));
        assert!(lac.ack(0, 0));
        assert_eq!(lac.last_add_confirmed(), NO_ENTRY);
    }

    #[test]
    fn failing_bookies_reports_the_first_entry_that_cannot_be_confirmed() {
        let mut lac = LacTracker::new(2);
        lac.push_entry(striped(0));
        lac.push_entry(striped(1));
        lac.ack(1, 0);
        lac.ack(0, 0);
        assert_eq!(lac.fail_bookie(1), None, "two bookies left for each entry");
        assert!(!lac.ack(1, 1), "acks of failed bookies are ignored");
        lac.ack(1, 2);
        assert_eq!(lac.last_add_confirmed(), NO_ENTRY);
        assert_eq!(lac.fail_bookie(2), Some(0));
        assert!(!lac.can_reach_quorum(0));
        assert!(lac.can_reach_quorum(1), "entry 1 has its two acks");
    }

    #[test]
    fn absurd_entry_ids_from_a_confused_bookie_are_ignored() {
        let mut lac = LacTracker::new(1);
        lac.push_entry(striped(0));
        for entry_id in [i64::MIN, -2, NO_ENTRY, 1, i64::MAX] {
            assert!(!lac.ack(entry_id, 0));
            assert!(!lac.can_reach_quorum(entry_id) || entry_id <= NO_ENTRY);
        }
        assert!(lac.ack(0, 0));
        assert_eq!(lac.last_add_confirmed(), 0);
    }

    /// One step of a random schedule.
    #[derive(Debug, Clone)]
    enum Event {
        /// Bookie acks the entry (may be a duplicate, outside the write set,
        /// or of an entry not registered yet).
        Ack(i64, usize),
        /// The writer registers its next entry.
        Push,
        /// The writer drops a bookie.
        Fail(usize),
    }

    /// The LAC rule written the obvious way, from every ack seen so far.
    struct Model {
        ack_quorum: usize,
        write_sets: Vec<WriteSet>,
        acks: HashSet<(i64, usize)>,
        failed: BTreeSet<usize>,
        lac: i64,
    }

    impl Model {
        fn copies(&self, entry_id: i64) -> usize {
            self.acks.iter().filter(|(e, _)| *e == entry_id).count()
        }

        fn apply(&mut self, event: &Event) {
            match *event {
                Event::Push => {}
                Event::Fail(bookie) => {
                    self.failed.insert(bookie);
                }
                Event::Ack(entry_id, bookie) => {
                    let registered = (entry_id as usize) < self.write_sets.len();
                    if registered
                        && entry_id > self.lac
                        && self.write_sets[entry_id as usize].contains(bookie)
                        && !self.failed.contains(&bookie)
                    {
                        self.acks.insert((entry_id, bookie));
                    }
                }
            }
            // The longest prefix of entries that each have Qa acks.
            let mut lac = NO_ENTRY;
            while ((lac + 1) as usize) < self.write_sets.len()
                && self.copies(lac + 1) >= self.ack_quorum
            {
                lac += 1;
            }
            // Acks of confirmed entries are not recorded, so recount is stable.
            self.lac = self.lac.max(lac);
        }

        fn first_unreachable(&self) -> Option<i64> {
            ((self.lac + 1)..self.write_sets.len() as i64).find(|&entry_id| {
                let set = self.write_sets[entry_id as usize];
                let live_unacked = set
                    .iter()
                    .filter(|b| !self.failed.contains(b))
                    .filter(|b| !self.acks.contains(&(entry_id, *b)))
                    .count();
                self.copies(entry_id) + live_unacked < self.ack_quorum
            })
        }
    }

    /// A layout (E, Qw, Qa) and a schedule: every entry's write-set acks,
    /// duplicated at random, plus stray acks, pushes and failures, shuffled.
    fn schedule() -> impl Strategy<Value = (usize, usize, usize, Vec<Event>)> {
        (1usize..=5)
            .prop_flat_map(|e| (Just(e), 1..=e))
            .prop_flat_map(|(e, qw)| (Just(e), Just(qw), 1..=qw, 1i64..12))
            .prop_flat_map(|(e, qw, qa, entries)| {
                let mut acks = Vec::new();
                for entry_id in 0..entries {
                    for bookie in WriteSet::striped(entry_id, e, qw).iter() {
                        acks.push(Event::Ack(entry_id, bookie));
                    }
                }
                let duplicates = proptest::sample::subsequence(acks.clone(), 0..=acks.len());
                let strays = proptest::collection::vec(
                    (0..entries + 2, 0..e).prop_map(|(entry, bookie)| Event::Ack(entry, bookie)),
                    0..6,
                );
                let failures = proptest::collection::vec((0..e).prop_map(Event::Fail), 0..2);
                let dropped = proptest::bool::weighted(0.2);
                let pushes_first = proptest::bool::ANY;
                (
                    Just((e, qw, qa, entries)),
                    Just(acks),
                    duplicates,
                    strays,
                    failures,
                    (dropped, pushes_first),
                )
            })
            .prop_flat_map(
                |((e, qw, qa, entries), acks, duplicates, strays, failures, flags)| {
                    let (dropped, pushes_first) = flags;
                    let mut events = acks;
                    if dropped {
                        // Some acks never arrive.
                        events.truncate(events.len() / 2);
                    }
                    events.extend(duplicates);
                    events.extend(strays);
                    events.extend(failures);
                    if !pushes_first {
                        // Acks may then come before their entry is registered.
                        events.extend((0..entries).map(|_| Event::Push));
                    }
                    let pushes = if pushes_first { entries } else { 0 };
                    (Just((e, qw, qa, pushes)), Just(events).prop_shuffle())
                },
            )
            .prop_map(|((e, qw, qa, pushes), shuffled)| {
                let mut events: Vec<Event> = (0..pushes).map(|_| Event::Push).collect();
                events.extend(shuffled);
                (e, qw, qa, events)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Under any reordering and duplication of acks, the tracker's LAC equals
        /// the reference model's after every step, never moves backwards, and
        /// never passes an entry with fewer than Qa distinct acks; bookie
        /// failures report exactly the entries that can no longer be confirmed.
        #[test]
        fn lac_matches_the_reference_model_under_reordered_duplicated_acks(
            (e, qw, qa, events) in schedule()
        ) {
            let mut tracker = LacTracker::new(qa);
            let mut model = Model {
                ack_quorum: qa,
                write_sets: Vec::new(),
                acks: HashSet::new(),
                failed: BTreeSet::new(),
                lac: NO_ENTRY,
            };
            for event in &events {
                let before = tracker.last_add_confirmed();
                match *event {
                    Event::Push => {
                        let entry_id = tracker.next_entry_id();
                        let set = WriteSet::striped(entry_id, e, qw);
                        prop_assert_eq!(tracker.push_entry(set), entry_id);
                        model.write_sets.push(set);
                    }
                    Event::Ack(entry_id, bookie) => {
                        tracker.ack(entry_id, bookie);
                    }
                    Event::Fail(bookie) => {
                        let unreachable = tracker.fail_bookie(bookie);
                        model.apply(event);
                        prop_assert_eq!(unreachable, model.first_unreachable());
                        continue;
                    }
                }
                model.apply(event);
                let lac = tracker.last_add_confirmed();
                prop_assert!(lac >= before, "LAC went back from {} to {}", before, lac);
                prop_assert_eq!(lac, model.lac);
                for entry_id in 0..=lac {
                    prop_assert!(
                        model.copies(entry_id) >= qa,
                        "entry {} confirmed with {} acks < Qa {}",
                        entry_id, model.copies(entry_id), qa
                    );
                }
                prop_assert_eq!(tracker.first_unreachable(), model.first_unreachable());
            }
        }
    }
}
