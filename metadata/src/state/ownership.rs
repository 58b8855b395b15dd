//! Ownership of partitions and coordinator slots, decided by the controller.
//!
//! The controller on the raft leader proposes a `ControllerTick` whenever
//! [`ClusterState::controller_work_pending`] says one would change something.
//! A tick, at the command's `now_ms`:
//! 1. creates missing coordinator slots (a cluster made before slots existed);
//! 2. takes everything owned by a gateway whose lease lapsed (or that is not
//!    registered) and gives it to the least loaded live gateway, or to nobody
//!    (-1) when no gateway is live;
//!    A draining gateway counts as not live here: everything moves off it;
//! 3. balances: moves from the most to the least loaded live gateway until every
//!    live gateway owns within one of every other, partitions and slots each on
//!    their own. That is the fewest moves that balance the cluster.
//!
//! Every owner change bumps the leader epoch once, which fences the previous
//! owner. Choices are deterministic: gateways are ranked by (count, node id),
//! items are taken in key order, so every replica applies the same tick alike.

use super::{Change, ClusterState, StateRules, MAX_COORDINATOR_SLOTS, NO_OWNER};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use strata_proto::metadata::CoordinatorSlot;

impl ClusterState {
    /// Whether a controller tick at `now_ms` would change anything: missing
    /// coordinator slots, something owned by a gateway that is not live,
    /// something unowned while a gateway is live, or live gateways whose counts
    /// differ by more than one. Cheap: one pass, nothing cloned.
    pub fn controller_work_pending(&self, now_ms: u64) -> bool {
        if self.slots_missing() {
            return true;
        }
        let live = self.live_gateway_ids(now_ms);
        needs_work(self.partitions.values().map(|p| p.owner), &live)
            || needs_work(self.slots.values().map(|s| s.owner), &live)
    }

    /// Applies a controller tick at `now_ms`; see the module documentation.
    pub(super) fn controller_tick(&mut self, rules: &StateRules, now_ms: u64) -> Vec<Change> {
        let mut changes = Vec::new();
        if self.fix_slot_count(rules) {
            changes.push(Change::Meta(self.meta.clone()));
        }
        changes.extend(self.create_missing_slots());
        let live = self.live_gateway_ids(now_ms);
        let owners: Vec<i32> = self.partitions.values().map(|p| p.owner).collect();
        let moves = plan_owners(&owners, &live);
        for (index, partition) in self.partitions.values_mut().enumerate() {
            if let Some(&owner) = moves.get(&index) {
                grant(&mut partition.owner, &mut partition.leader_epoch, owner);
                changes.push(Change::Partition(partition.clone()));
            }
        }
        let owners: Vec<i32> = self.slots.values().map(|s| s.owner).collect();
        let moves = plan_owners(&owners, &live);
        for (index, slot) in self.slots.values_mut().enumerate() {
            if let Some(&owner) = moves.get(&index) {
                grant(&mut slot.owner, &mut slot.leader_epoch, owner);
                changes.push(Change::Slot(*slot));
            }
        }
        changes
    }

    /// Fixes the cluster's slot count from `rules` if it has none yet (a new
    /// cluster, or one made before slots existed); returns whether it did.
    pub(super) fn fix_slot_count(&mut self, rules: &StateRules) -> bool {
        if self.meta.coordinator_slots != 0 {
            return false;
        }
        self.meta.coordinator_slots = rules.coordinator_slots.clamp(1, MAX_COORDINATOR_SLOTS);
        true
    }

    /// Creates the slots `0..count` that do not exist yet, unowned.
    pub(super) fn create_missing_slots(&mut self) -> Vec<Change> {
        let mut changes = Vec::new();
        for slot in 0..self.meta.coordinator_slots {
            if let Entry::Vacant(entry) = self.slots.entry(slot) {
                let created = *entry.insert(CoordinatorSlot {
                    slot,
                    owner: NO_OWNER,
                    leader_epoch: 0,
                });
                changes.push(Change::Slot(created));
            }
        }
        changes
    }

    /// Bumps the leader epoch of everything a (re-)registering gateway owns: a
    /// restarted gateway is a new writer and must fence whatever its previous
    /// process may still have in flight, as any new owner does.
    pub(super) fn fence_previous_incarnation(&mut self, node_id: i32) -> Vec<Change> {
        let mut changes = Vec::new();
        for partition in self.partitions.values_mut() {
            if partition.owner == node_id {
                grant(&mut partition.owner, &mut partition.leader_epoch, node_id);
                changes.push(Change::Partition(partition.clone()));
            }
        }
        for slot in self.slots.values_mut() {
            if slot.owner == node_id {
                grant(&mut slot.owner, &mut slot.leader_epoch, node_id);
                changes.push(Change::Slot(*slot));
            }
        }
        changes
    }

    /// Gateways that may own things: live and not being drained.
    fn live_gateway_ids(&self, now_ms: u64) -> BTreeSet<i32> {
        self.live_gateways(now_ms)
            .filter(|g| !g.draining)
            .map(|g| g.node_id)
            .collect()
    }

    fn slots_missing(&self) -> bool {
        let count = self.meta.coordinator_slots;
        count == 0 || self.slots.range(..count).count() != count as usize
    }
}

/// Gives an item to `owner` under a new leader epoch.
fn grant(owner: &mut i32, leader_epoch: &mut u32, new_owner: i32) {
    *owner = new_owner;
    // Four billion ownership changes of one item cannot happen; saturating
    // keeps the state machine from panicking if they ever did.
    *leader_epoch = leader_epoch.saturating_add(1);
}

/// Whether [`plan_owners`] would move anything, without building the plan.
fn needs_work(owners: impl Iterator<Item = i32>, live: &BTreeSet<i32>) -> bool {
    let mut counts: BTreeMap<i32, usize> = live.iter().map(|&g| (g, 0)).collect();
    for owner in owners {
        match counts.get_mut(&owner) {
            Some(count) => *count += 1,
            // Nobody to give it to, and nobody holds it: nothing to do.
            None if live.is_empty() && owner == NO_OWNER => {}
            None => return true,
        }
    }
    let min = counts.values().min().copied().unwrap_or(0);
    let max = counts.values().max().copied().unwrap_or(0);
    max - min > 1
}

/// The new owner of each item that must move, by the item's index in `owners`
/// (the items in key order), given the live gateways.
fn plan_owners(owners: &[i32], live: &BTreeSet<i32>) -> BTreeMap<usize, i32> {
    let mut held: BTreeMap<i32, Vec<usize>> = live.iter().map(|&g| (g, Vec::new())).collect();
    let mut orphans = Vec::new();
    for (index, owner) in owners.iter().enumerate() {
        match held.get_mut(owner) {
            Some(items) => items.push(index),
            None => orphans.push(index),
        }
    }
    let mut moves = BTreeMap::new();
    if held.is_empty() {
        for index in orphans {
            if owners[index] != NO_OWNER {
                moves.insert(index, NO_OWNER);
            }
        }
        return moves;
    }
    for index in orphans {
        let gateway = least_loaded(&held);
        held.entry(gateway).or_default().push(index);
        moves.insert(index, gateway);
    }
    loop {
        let (from, to) = (most_loaded(&held), least_loaded(&held));
        if held[&from].len() - held[&to].len() <= 1 {
            break;
        }
        // The donor's highest key. Donors never got orphans above: those went
        // to the least loaded, which end at most one above the minimum.
        let Some(index) = held.get_mut(&from).and_then(Vec::pop) else {
            break;
        };
        held.entry(to).or_default().push(index);
        moves.insert(index, to);
    }
    moves.retain(|&index, &mut owner| owners[index] != owner);
    moves
}

/// The live gateway owning the fewest items; ties go to the lowest node id.
fn least_loaded(held: &BTreeMap<i32, Vec<usize>>) -> i32 {
    held.iter()
        .min_by_key(|(&gateway, items)| (items.len(), gateway))
        .map(|(&gateway, _)| gateway)
        .unwrap_or(NO_OWNER)
}

/// The live gateway owning the most items; ties go to the lowest node id.
fn most_loaded(held: &BTreeMap<i32, Vec<usize>>) -> i32 {
    held.iter()
        .max_by_key(|(&gateway, items)| (items.len(), std::cmp::Reverse(gateway)))
        .map(|(&gateway, _)| gateway)
        .unwrap_or(NO_OWNER)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cluster, code, create, register_gateway, run};
    use super::super::{outcome, DEFAULT_COORDINATOR_SLOTS};
    use super::*;
    use strata_proto::error_code;
    use strata_proto::metadata::metadata_command::Op;
    use strata_proto::metadata::{
        ControllerTick, CreatePartitionsRequest, DeleteTopicRequest, DeregisterGatewayRequest,
        DrainGatewayRequest, GatewayHeartbeatRequest, PartitionInfo,
    };

    fn tick(state: &mut ClusterState, now_ms: u64) -> Vec<Change> {
        let (reply, changes) = run(state, now_ms, Op::ControllerTick(ControllerTick {}));
        assert!(outcome(&reply).is_ok());
        changes
    }

    fn heartbeat(state: &mut ClusterState, node_id: i32, now_ms: u64) {
        let op = Op::GatewayHeartbeat(GatewayHeartbeatRequest { node_id });
        assert_eq!(code(state, now_ms, op), 0);
    }

    /// How many partitions each gateway owns (-1 = unowned).
    fn partition_counts(state: &ClusterState) -> BTreeMap<i32, usize> {
        let mut counts = BTreeMap::new();
        for p in state.partitions.values() {
            *counts.entry(p.owner).or_default() += 1;
        }
        counts
    }

    fn slot_counts(state: &ClusterState) -> BTreeMap<i32, usize> {
        let mut counts = BTreeMap::new();
        for s in state.slots.values() {
            *counts.entry(s.owner).or_default() += 1;
        }
        counts
    }

    fn moved_partitions(changes: &[Change]) -> Vec<&PartitionInfo> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::Partition(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_draining_gateway_hands_everything_over_and_a_restart_ends_the_drain() {
        let mut state = cluster(&[1, 2], 100);
        create(&mut state, "t", 6);
        tick(&mut state, 100);
        assert_eq!(partition_counts(&state), BTreeMap::from([(1, 3), (2, 3)]));
        let drain = |node_id| Op::DrainGateway(DrainGatewayRequest { node_id });
        assert_eq!(code(&mut state, 100, drain(2)), 0);
        assert!(state.controller_work_pending(100));
        let changes = tick(&mut state, 100);
        assert_eq!(partition_counts(&state), BTreeMap::from([(1, 6)]));
        assert_eq!(slot_counts(&state).get(&2), None, "slots move too");
        assert!(moved_partitions(&changes)
            .iter()
            .all(|p| p.owner == 1 && p.leader_epoch == 2));
        // The last undrained gateway cannot be drained; unknown ones neither.
        assert_eq!(code(&mut state, 100, drain(1)), error_code::INVALID_REQUEST);
        assert_eq!(code(&mut state, 100, drain(9)), error_code::INVALID_REQUEST);
        // Registering again (a restart) makes it a full member once more.
        register_gateway(&mut state, 2, 200);
        tick(&mut state, 200);
        assert_eq!(partition_counts(&state), BTreeMap::from([(1, 3), (2, 3)]));
    }

    #[test]
    fn tick_assigns_unowned_partitions_evenly() {
        let mut state = cluster(&[1, 2, 3], 100);
        create(&mut state, "t", 10);
        assert!(state.controller_work_pending(100));
        let changes = tick(&mut state, 100);
        assert_eq!(moved_partitions(&changes).len(), 10);
        assert_eq!(
            partition_counts(&state),
            BTreeMap::from([(1, 4), (2, 3), (3, 3)])
        );
        assert!(state.partitions.values().all(|p| p.leader_epoch == 1));
        assert!(!state.controller_work_pending(100));
        assert!(tick(&mut state, 100).is_empty());
    }

    #[test]
    fn tick_reassigns_a_dead_gateways_partitions_with_higher_epochs() {
        let mut state = cluster(&[1, 2, 3], 100);
        create(&mut state, "t", 6);
        tick(&mut state, 100);
        let before = state.partitions.clone();
        // Only gateways 2 and 3 renew; gateway 1's lease lapses at 1_100.
        heartbeat(&mut state, 2, 1_000);
        heartbeat(&mut state, 3, 1_000);
        assert!(!state.controller_work_pending(1_099));
        assert!(state.controller_work_pending(1_100));
        tick(&mut state, 1_100);
        assert_eq!(partition_counts(&state), BTreeMap::from([(2, 3), (3, 3)]));
        for (key, old) in &before {
            let new = &state.partitions[key];
            if old.owner == 1 {
                assert_eq!(new.leader_epoch, old.leader_epoch + 1, "{key:?}");
            } else {
                assert_eq!(new, old, "partitions of live gateways stay put");
            }
        }
        assert!(state.slots.values().all(|s| s.owner == 2 || s.owner == 3));
    }

    #[test]
    fn without_live_gateways_ownership_is_dropped_under_a_new_epoch() {
        let mut state = cluster(&[1], 100);
        create(&mut state, "t", 2);
        tick(&mut state, 100);
        let deregister = Op::DeregisterGateway(DeregisterGatewayRequest { node_id: 1 });
        assert_eq!(code(&mut state, 200, deregister), 0);
        assert!(state.controller_work_pending(200));
        tick(&mut state, 200);
        assert!(state
            .partitions
            .values()
            .all(|p| p.owner == NO_OWNER && p.leader_epoch == 2));
        assert!(state.slots.values().all(|s| s.owner == NO_OWNER));
        assert!(!state.controller_work_pending(200));
        // A gateway comes back: everything is granted again, one epoch later.
        register_gateway(&mut state, 2, 300);
        assert!(state.controller_work_pending(300));
        tick(&mut state, 300);
        assert!(state
            .partitions
            .values()
            .all(|p| p.owner == 2 && p.leader_epoch == 3));
    }

    #[test]
    fn a_joining_gateway_takes_the_fewest_partitions_to_balance() {
        let mut state = cluster(&[1, 2, 3], 100);
        create(&mut state, "t", 10);
        tick(&mut state, 100);
        let before = state.partitions.clone();
        register_gateway(&mut state, 4, 200);
        assert!(state.controller_work_pending(200));
        let changes = tick(&mut state, 200);
        let counts = partition_counts(&state);
        assert_eq!(counts, BTreeMap::from([(1, 2), (2, 3), (3, 3), (4, 2)]));
        let moved = moved_partitions(&changes);
        assert_eq!(moved.len(), 2, "from 4/3/3/0, two moves balance");
        for p in moved {
            assert_eq!(p.owner, 4);
            let old = &before[&(p.topic.clone(), p.partition)];
            assert_eq!(p.leader_epoch, old.leader_epoch + 1);
        }
        assert!(!state.controller_work_pending(200));
    }

    #[test]
    fn coordinator_slots_are_balanced_on_their_own() {
        let mut state = cluster(&[1, 2, 3], 100);
        create(&mut state, "t", 1);
        tick(&mut state, 100);
        assert_eq!(
            slot_counts(&state),
            BTreeMap::from([(1, 17), (2, 17), (3, 16)])
        );
        // Partitions are balanced separately: the one partition went to the
        // least loaded by partitions, gateway 1.
        assert_eq!(state.partition("t", 0).unwrap().owner, 1);
        register_gateway(&mut state, 4, 200);
        tick(&mut state, 200);
        let counts: Vec<usize> = slot_counts(&state).into_values().collect();
        assert_eq!(counts.iter().sum::<usize>(), 50);
        assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1);
        assert!(state.slots.values().all(|s| s.owner != NO_OWNER));
    }

    #[test]
    fn a_state_without_slots_gets_them_from_the_first_tick() {
        let mut state = cluster(&[1], 100);
        state.slots.clear();
        state.meta.coordinator_slots = 0;
        assert!(state.controller_work_pending(100));
        let changes = tick(&mut state, 100);
        assert!(changes.contains(&Change::Meta(state.meta.clone())));
        assert_eq!(state.meta.coordinator_slots, DEFAULT_COORDINATOR_SLOTS);
        assert_eq!(state.slots.len(), DEFAULT_COORDINATOR_SLOTS as usize);
        assert!(state.slots.values().all(|s| s.owner == 1));
        assert!(!state.controller_work_pending(100));
        // One slot missing is noticed too.
        state.slots.remove(&7);
        assert!(state.controller_work_pending(100));
        tick(&mut state, 100);
        assert_eq!(state.slots[&7].owner, 1);
    }

    #[test]
    fn a_restarted_gateway_gets_new_epochs_for_what_it_owns() {
        let mut state = cluster(&[1, 2], 100);
        create(&mut state, "t", 4);
        tick(&mut state, 100);
        let before = state.partitions.clone();
        register_gateway(&mut state, 1, 150);
        for (key, old) in &before {
            let new = &state.partitions[key];
            assert_eq!(new.owner, old.owner);
            let bump = u32::from(old.owner == 1);
            assert_eq!(new.leader_epoch, old.leader_epoch + bump);
        }
    }

    #[test]
    fn work_is_pending_exactly_when_counts_differ_by_two() {
        let mut state = cluster(&[1], 100);
        create(&mut state, "t", 2);
        tick(&mut state, 100);
        assert!(!state.controller_work_pending(100));
        // 2 against 0: one move balances it.
        register_gateway(&mut state, 2, 100);
        assert!(state.controller_work_pending(100));
        let changes = tick(&mut state, 100);
        assert_eq!(moved_partitions(&changes).len(), 1);
        // 2 against 1 after one more partition: balanced enough.
        let grow = Op::CreatePartitions(CreatePartitionsRequest {
            topic: "t".into(),
            new_total: 3,
            validate_only: false,
        });
        assert_eq!(code(&mut state, 100, grow), 0);
        tick(&mut state, 100);
        assert_eq!(partition_counts(&state), BTreeMap::from([(1, 2), (2, 1)]));
        assert!(!state.controller_work_pending(100));
    }

    #[test]
    fn plan_moves_nothing_when_balanced() {
        let live = BTreeSet::from([1, 2]);
        assert!(plan_owners(&[1, 2, 1], &live).is_empty());
        assert!(!needs_work([1, 2, 1].into_iter(), &live));
        assert!(needs_work([1, 1].into_iter(), &live));
        assert_eq!(plan_owners(&[1, 1], &live), BTreeMap::from([(1, 2)]));
        assert!(plan_owners(&[NO_OWNER, NO_OWNER], &BTreeSet::new()).is_empty());
        assert!(!needs_work([NO_OWNER].into_iter(), &BTreeSet::new()));
        assert!(needs_work([7].into_iter(), &BTreeSet::new()));
        assert_eq!(
            plan_owners(&[7, NO_OWNER], &BTreeSet::new()),
            BTreeMap::from([(0, NO_OWNER)])
        );
    }

    /// A small deterministic pseudo-random generator (xorshift64*), so that
    /// the property test below needs no extra crate and always replays alike.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
        }
    }

    /// The fewest moves of items that live gateways already hold that can
    /// balance `counts` over `live` gateways with `total` items in all.
    fn fewest_moves(counts: &BTreeMap<i32, usize>, live: &BTreeSet<i32>, total: usize) -> usize {
        let mut held: Vec<usize> = live
            .iter()
            .map(|g| counts.get(g).copied().unwrap_or(0))
            .collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        let (even, extra) = (total / live.len(), total % live.len());
        held.iter()
            .enumerate()
            .map(|(i, &c)| c.saturating_sub(even + usize::from(i < extra)))
            .sum()
    }

    /// Checks one tick against its rules; `before` is the state it ran on.
    fn check_tick(before: &ClusterState, after: &ClusterState, changes: &[Change], now_ms: u64) {
        let live = before.live_gateway_ids(now_ms);
        assert_eq!(before.controller_work_pending(now_ms), !changes.is_empty());
        assert!(!after.controller_work_pending(now_ms));
        let items = |s: &ClusterState| -> Vec<(i32, u32)> {
            let partitions = s.partitions.values().map(|p| (p.owner, p.leader_epoch));
            partitions.collect()
        };
        let (old, new) = (items(before), items(after));
        let mut kept_moves = 0;
        for ((old_owner, old_epoch), (new_owner, new_epoch)) in old.iter().zip(&new) {
            if old_owner == new_owner {
                assert_eq!(old_epoch, new_epoch);
            } else {
                assert_eq!(*new_epoch, old_epoch + 1);
                kept_moves += usize::from(live.contains(old_owner));
            }
            if live.is_empty() {
                assert_eq!(*new_owner, NO_OWNER);
            } else {
                assert!(live.contains(new_owner));
            }
        }
        if !live.is_empty() {
            let counts = partition_counts(before);
            assert_eq!(kept_moves, fewest_moves(&counts, &live, new.len()));
            let counts = partition_counts(after);
            let per_live: Vec<usize> = live
                .iter()
                .map(|g| counts.get(g).copied().unwrap_or(0))
                .collect();
            assert!(per_live.iter().max().unwrap() - per_live.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn ticks_keep_ownership_live_balanced_and_minimal_under_random_histories() {
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut state = cluster(&[], 0);
            let mut now_ms = 0;
            for step in 0..60 {
                now_ms += rng.below(700);
                let gateway = rng.below(6) as i32;
                let topic = format!("t{}", rng.below(4));
                let op = match rng.below(7) {
                    0 | 1 => {
                        register_gateway(&mut state, gateway, now_ms);
                        None
                    }
                    2 => Some(Op::GatewayHeartbeat(GatewayHeartbeatRequest {
                        node_id: gateway,
                    })),
                    3 => Some(Op::DeregisterGateway(DeregisterGatewayRequest {
                        node_id: gateway,
                    })),
                    4 => {
                        create(&mut state, &topic, 1 + rng.below(9) as i32);
                        None
                    }
                    5 => Some(Op::CreatePartitions(CreatePartitionsRequest {
                        topic,
                        new_total: 1 + rng.below(12) as u32,
                        validate_only: false,
                    })),
                    _ => Some(Op::DeleteTopic(DeleteTopicRequest { name: topic })),
                };
                if let Some(op) = op {
                    // Refusals (unknown gateway, shrinking topic, ...) are fine here.
                    run(&mut state, now_ms, op);
                }
                if rng.below(3) == 0 {
                    continue; // let work pile up across several steps
                }
                let before = state.clone();
                let changes = tick(&mut state, now_ms);
                check_tick(&before, &state, &changes, now_ms);
                let slots_live = state.live_gateway_ids(now_ms);
                if !slots_live.is_empty() {
                    assert!(
                        state.slots.values().all(|s| slots_live.contains(&s.owner)),
                        "seed {seed} step {step}"
                    );
                }
            }
        }
    }
}
