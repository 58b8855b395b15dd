//! Which segments lost a replica: pure functions over segments, bookies and a
//! time, shared by the metadata service (the under-replicated report) and the
//! bookies' auto-recovery, so that both judge a segment the same way.
//!
//! A bookie is **dead** once its lease has lapsed for at least a given time
//! (0: as soon as it lapses), or when it is not registered at all. A segment is
//! **under-replicated** when it is sealed and its ensemble holds a dead bookie.
//! Open segments are their writer's business (it seals and rolls when it can
//! no longer reach its ack quorum); offloaded ones no longer need bookie copies.

use crate::state::SegmentTable;
use std::collections::BTreeMap;
use strata_proto::metadata::segment_info::State;
use strata_proto::metadata::{BookieInfo, SegmentInfo, UnderReplicatedSegment};

/// Whether bookie `node_id` is dead at `now_ms`: unregistered, or its lease
/// lapsed at least `dead_for_ms` ago.
pub fn is_dead(
    bookies: &BTreeMap<i32, BookieInfo>,
    node_id: i32,
    now_ms: u64,
    dead_for_ms: u64,
) -> bool {
    bookies
        .get(&node_id)
        .is_none_or(|b| b.lease_expires_ms.saturating_add(dead_for_ms) <= now_ms)
}

/// The dead bookies of a sealed segment's ensemble, in ensemble order; empty
/// for a segment in any other state.
pub fn dead_replicas(
    segment: &SegmentInfo,
    bookies: &BTreeMap<i32, BookieInfo>,
    now_ms: u64,
    dead_for_ms: u64,
) -> Vec<i32> {
    if !matches!(segment.state, Some(State::Sealed(_))) {
        return Vec::new();
    }
    segment
        .ensemble
        .iter()
        .copied()
        .filter(|&node_id| is_dead(bookies, node_id, now_ms, dead_for_ms))
        .collect()
}

/// Every under-replicated segment of `segments`, by id, with its dead bookies.
pub fn under_replicated(
    segments: &SegmentTable,
    bookies: &BTreeMap<i32, BookieInfo>,
    now_ms: u64,
    dead_for_ms: u64,
) -> Vec<UnderReplicatedSegment> {
    // The common case, every bookie alive, costs no walk over the segments
    // (ensembles only ever name registered bookies, and bookies stay registered).
    let any_dead = bookies
        .keys()
        .any(|&node_id| is_dead(bookies, node_id, now_ms, dead_for_ms));
    if !any_dead {
        return Vec::new();
    }
    let mut found: Vec<UnderReplicatedSegment> = segments
        .iter_live()
        .filter_map(|segment| {
            let dead_bookies = dead_replicas(segment, bookies, now_ms, dead_for_ms);
            (!dead_bookies.is_empty()).then(|| UnderReplicatedSegment {
                segment: Some(segment.clone()),
                dead_bookies,
            })
        })
        .collect();
    found.sort_by_key(|s| s.segment.as_ref().map(|s| s.segment_id));
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::metadata::{SegmentOffloaded, SegmentOpen, SegmentSealed};

    fn bookie(node_id: i32, lease_expires_ms: u64) -> (i32, BookieInfo) {
        let info = BookieInfo {
            node_id,
            grpc_addr: format!("127.0.0.1:{}", 7700 + node_id),
            zone: String::new(),
            free_bytes: 0,
            lease_expires_ms,
        };
        (node_id, info)
    }

    fn segment(segment_id: u64, ensemble: Vec<i32>, state: State) -> SegmentInfo {
        SegmentInfo {
            segment_id,
            topic: "t".into(),
            partition: 0,
            ensemble,
            write_quorum: 3,
            ack_quorum: 2,
            base_offset: segment_id as i64 * 10,
            writer_epoch: 1,
            replaced_bookies: Vec::new(),
            state: Some(state),
        }
    }

    fn sealed() -> State {
        State::Sealed(SegmentSealed {
            end_offset: 0,
            bytes: 0,
            max_timestamp: None,
        })
    }

    fn ids(found: &[UnderReplicatedSegment]) -> Vec<(u64, Vec<i32>)> {
        found
            .iter()
            .map(|s| {
                let id = s.segment.as_ref().map_or(0, |s| s.segment_id);
                (id, s.dead_bookies.clone())
            })
            .collect()
    }

    #[test]
    fn a_bookie_is_dead_once_its_lease_lapsed_long_enough() {
        let bookies: BTreeMap<_, _> = [bookie(1, 1_000)].into_iter().collect();
        assert!(!is_dead(&bookies, 1, 999, 0));
        assert!(is_dead(&bookies, 1, 1_000, 0));
        assert!(!is_dead(&bookies, 1, 1_499, 500));
        assert!(is_dead(&bookies, 1, 1_500, 500));
        assert!(is_dead(&bookies, 9, 0, 0), "an unregistered bookie is dead");
        assert!(!is_dead(&bookies, 1, 10, u64::MAX), "no overflow");
    }

    #[test]
    fn only_sealed_segments_with_a_dead_bookie_are_under_replicated() {
        let bookies: BTreeMap<_, _> = [bookie(1, 100), bookie(2, 5_000), bookie(3, 5_000)]
            .into_iter()
            .collect();
        let mut table = SegmentTable::default();
        table.upsert(segment(1, vec![1, 2, 3], sealed()));
        table.upsert(segment(2, vec![3, 2, 1], State::Open(SegmentOpen {})));
        let offloaded = State::Offloaded(SegmentOffloaded::default());
        table.upsert(segment(3, vec![1, 2, 3], offloaded));
        table.upsert(segment(4, vec![2, 1, 3], sealed()));
        table.upsert(segment(5, vec![2, 3], sealed()));
        let found = under_replicated(&table, &bookies, 1_000, 0);
        assert_eq!(ids(&found), vec![(1, vec![1]), (4, vec![1])]);
        // Within the delay, bookie 1 does not count yet.
        assert!(under_replicated(&table, &bookies, 1_000, 5_000).is_empty());
        assert_eq!(under_replicated(&table, &bookies, 5_100, 5_000).len(), 2);
        // Once bookie 1 is back, nothing is left.
        let bookies: BTreeMap<_, _> = [bookie(1, 5_000), bookie(2, 5_000), bookie(3, 5_000)]
            .into_iter()
            .collect();
        assert!(under_replicated(&table, &bookies, 1_000, 0).is_empty());
    }
}
