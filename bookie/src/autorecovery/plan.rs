//! What one auto-recovery pass does, as pure functions of the under-replicated
//! segments metadata reported, the registered bookies and the time: which
//! segments this bookie handles, and which bookie receives each copy.
//!
//! Every live bookie plans the same way from the same facts, so exactly one of
//! them handles a segment: the live member of its ensemble with the lowest
//! node id (it also holds the data, so most reads stay on the machine). Should
//! two bookies still both act on different views, metadata accepts only the
//! first replacement and the other copy is discarded.

use std::collections::{BTreeMap, BTreeSet};
use strata_proto::metadata::{BookieInfo, SegmentInfo, UnderReplicatedSegment};

/// One re-replication: copy what `lost` held of `segment` to `replacement`.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// The segment, as metadata reported it.
    pub segment: SegmentInfo,
    /// The dead bookie whose replica is re-created.
    pub lost: i32,
    /// The live bookie that receives the copy and takes the dead one's place.
    pub replacement: BookieInfo,
}

/// What this bookie does in one pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Segments to re-replicate, by segment id.
    pub tasks: Vec<Task>,
    /// Segments this bookie handles but for which no bookie can take a copy.
    pub without_replacement: Vec<u64>,
}

/// Plans the pass of bookie `me`. `failed` names, per segment, bookies whose
/// copy failed earlier: they are not chosen again until no other is left.
pub fn plan(
    under_replicated: &[UnderReplicatedSegment],
    bookies: &BTreeMap<i32, BookieInfo>,
    now_ms: u64,
    me: i32,
    failed: &BTreeMap<u64, BTreeSet<i32>>,
) -> Plan {
    let mut plan = Plan::default();
    for reported in under_replicated {
        let Some(segment) = &reported.segment else {
            continue;
        };
        let Some(&lost) = reported.dead_bookies.first() else {
            continue;
        };
        if handler(segment, bookies, now_ms) != Some(me) {
            continue;
        }
        let no_retry = failed.get(&segment.segment_id);
        match choose_replacement(bookies, now_ms, segment, no_retry) {
            Some(replacement) => plan.tasks.push(Task {
                segment: segment.clone(),
                lost,
                replacement,
            }),
            None => plan.without_replacement.push(segment.segment_id),
        }
    }
    plan
}

/// Whether a bookie holds a lease at `now_ms`.
fn is_live(bookie: &BookieInfo, now_ms: u64) -> bool {
    bookie.lease_expires_ms > now_ms && !bookie.grpc_addr.is_empty()
}

/// The bookie that re-replicates `segment`: the live member of its ensemble
/// with the lowest node id; `None` if no member is live.
pub fn handler(
    segment: &SegmentInfo,
    bookies: &BTreeMap<i32, BookieInfo>,
    now_ms: u64,
) -> Option<i32> {
    segment
        .ensemble
        .iter()
        .copied()
        .filter(|id| bookies.get(id).is_some_and(|b| is_live(b, now_ms)))
        .min()
}

/// The bookie that takes a lost replica of `segment`: live, not in its
/// ensemble, never replaced out of it before (such a bookie deletes its stale
/// copy, so it must not receive a new one), not in `avoid`; in the zone that holds the fewest of the
/// ensemble's live bookies (so the copy keeps replicas spread over zones, as
/// placement spread them), then with the most free space, then the lowest id.
pub fn choose_replacement(
    bookies: &BTreeMap<i32, BookieInfo>,
    now_ms: u64,
    segment: &SegmentInfo,
    avoid: Option<&BTreeSet<i32>>,
) -> Option<BookieInfo> {
    let ensemble = &segment.ensemble;
    let mut per_zone: BTreeMap<&str, usize> = BTreeMap::new();
    for member in ensemble.iter().filter_map(|id| bookies.get(id)) {
        if is_live(member, now_ms) {
            *per_zone.entry(member.zone.as_str()).or_default() += 1;
        }
    }
    bookies
        .values()
        .filter(|b| is_live(b, now_ms))
        .filter(|b| !ensemble.contains(&b.node_id))
        .filter(|b| !segment.replaced_bookies.contains(&b.node_id))
        .filter(|b| avoid.is_none_or(|avoid| !avoid.contains(&b.node_id)))
        .min_by(|a, b| {
            let zone_load = |x: &BookieInfo| per_zone.get(x.zone.as_str()).copied().unwrap_or(0);
            zone_load(a)
                .cmp(&zone_load(b))
                .then(b.free_bytes.cmp(&a.free_bytes))
                .then(a.node_id.cmp(&b.node_id))
        })
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::metadata::segment_info::State;
    use strata_proto::metadata::SegmentSealed;

    const NOW: u64 = 1_000;

    fn bookie(node_id: i32, zone: &str, free_bytes: u64, live: bool) -> (i32, BookieInfo) {
        let info = BookieInfo {
            node_id,
            grpc_addr: format!("127.0.0.1:{}", 7700 + node_id),
            zone: zone.into(),
            free_bytes,
            lease_expires_ms: if live { NOW + 1 } else { NOW },
        };
        (node_id, info)
    }

    fn segment(segment_id: u64, ensemble: Vec<i32>) -> SegmentInfo {
        SegmentInfo {
            segment_id,
            topic: "t".into(),
            partition: 0,
            ensemble,
            write_quorum: 3,
            ack_quorum: 2,
            base_offset: 0,
            writer_epoch: 1,
            replaced_bookies: Vec::new(),
            state: Some(State::Sealed(SegmentSealed::default())),
        }
    }

    fn reported(segment_id: u64, ensemble: Vec<i32>, dead: Vec<i32>) -> UnderReplicatedSegment {
        UnderReplicatedSegment {
            segment: Some(segment(segment_id, ensemble)),
            dead_bookies: dead,
        }
    }

    fn cluster(bookies: Vec<(i32, BookieInfo)>) -> BTreeMap<i32, BookieInfo> {
        bookies.into_iter().collect()
    }

    #[test]
    fn the_lowest_live_member_handles_a_segment() {
        let bookies = cluster(vec![
            bookie(1, "", 10, false),
            bookie(2, "", 10, true),
            bookie(3, "", 10, true),
            bookie(4, "", 10, true),
        ]);
        let under = vec![
            reported(7, vec![3, 1, 2], vec![1]),
            reported(8, vec![4, 3, 1], vec![1]),
        ];
        let none = BTreeMap::new();
        let mine = |me| {
            plan(&under, &bookies, NOW, me, &none)
                .tasks
                .iter()
                .map(|t| t.segment.segment_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(mine(2), vec![7]);
        assert_eq!(mine(3), vec![8]);
        assert!(mine(4).is_empty());
        assert!(mine(1).is_empty(), "a dead bookie handles nothing");
        let task = &plan(&under, &bookies, NOW, 2, &none).tasks[0];
        assert_eq!((task.lost, task.replacement.node_id), (1, 4));
    }

    #[test]
    fn the_replacement_keeps_zones_spread() {
        // Ensemble 1 (a, dead), 2 (b), 3 (c): zone a holds no live member now.
        let bookies = cluster(vec![
            bookie(1, "a", 10, false),
            bookie(2, "b", 10, true),
            bookie(3, "c", 10, true),
            bookie(4, "b", 900, true),
            bookie(5, "a", 100, true),
            bookie(6, "a", 50, true),
        ]);
        let on_123 = segment(7, vec![1, 2, 3]);
        let chosen = choose_replacement(&bookies, NOW, &on_123, None).unwrap();
        assert_eq!(chosen.node_id, 5, "zone a, most free space");
        let avoid: BTreeSet<i32> = [5].into_iter().collect();
        let chosen = choose_replacement(&bookies, NOW, &on_123, Some(&avoid)).unwrap();
        assert_eq!(chosen.node_id, 6);
        let avoid: BTreeSet<i32> = [5, 6].into_iter().collect();
        let chosen = choose_replacement(&bookies, NOW, &on_123, Some(&avoid)).unwrap();
        assert_eq!(
            chosen.node_id, 4,
            "another zone when the emptiest has no one left"
        );
    }

    #[test]
    fn a_bookie_replaced_out_of_a_segment_never_takes_a_copy_of_it_again() {
        let bookies = cluster(vec![
            bookie(1, "", 10, true),
            bookie(2, "", 10, false),
            bookie(3, "", 10, true),
            bookie(4, "", 10, true),
        ]);
        // Bookie 1 was replaced by 4 earlier, came back, and now 2 is dead.
        let mut on_423 = segment(7, vec![4, 2, 3]);
        on_423.replaced_bookies = vec![1];
        assert_eq!(choose_replacement(&bookies, NOW, &on_423, None), None);
    }

    #[test]
    fn no_replacement_when_every_live_bookie_holds_the_segment() {
        let bookies = cluster(vec![
            bookie(1, "", 10, false),
            bookie(2, "", 10, true),
            bookie(3, "", 10, true),
        ]);
        let under = vec![reported(7, vec![1, 2, 3], vec![1])];
        let plan = plan(&under, &bookies, NOW, 2, &BTreeMap::new());
        assert!(plan.tasks.is_empty());
        assert_eq!(plan.without_replacement, vec![7]);
    }
}
