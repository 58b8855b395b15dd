//! Segments: the table that holds them, and the commands that open, seal,
//! offload and delete them.
//!
//! A partition's log is its live segments in id order: ids grow with every
//! open, and a partition's next segment may only be opened once the previous
//! one is sealed, at exactly the previous end offset. Only the partition's
//! current owner at its current leader epoch opens and seals, so a fenced
//! writer can never extend the log; the new owner seals the previous owner's
//! open segment after recovering it, which is the normal failover path.

use super::{ok_reply, Change, Checked, ClusterState};
use std::collections::{BTreeMap, BTreeSet};
use strata_proto::error_code;
use strata_proto::metadata::segment_info::State;
use strata_proto::metadata::{
    AdvanceLogStartRequest, CommandReply, MarkOffloadedRequest, OpenSegmentRequest, Outcome,
    PartitionInfo, SealSegmentRequest, SegmentDeleted, SegmentInfo, SegmentOffloaded, SegmentOpen,
    SegmentSealed,
};

/// Every segment by id, with each partition's live (not deleted) segments in
/// log order.
///
/// Deleted segments stay, as tombstones, so that a bookie that was down when a
/// segment was deleted still learns of it from a watch snapshot; purging old
/// tombstones is left to a later command.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SegmentTable {
    by_id: BTreeMap<u64, SegmentInfo>,
    /// Live segment ids by topic and partition, ascending (= log order).
    live: BTreeMap<String, BTreeMap<u32, Vec<u64>>>,
}

impl SegmentTable {
    /// The segment with this id, in any state.
    pub fn get(&self, segment_id: u64) -> Option<&SegmentInfo> {
        self.by_id.get(&segment_id)
    }

    /// Every segment, deleted ones included, by id.
    pub fn iter(&self) -> impl Iterator<Item = &SegmentInfo> {
        self.by_id.values()
    }

    /// How many segments the table holds, deleted ones included.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the table holds no segment at all.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// A partition's live segments in log order: sealed or offloaded ones, then
    /// at most one open segment at the end.
    pub fn live(&self, topic: &str, partition: u32) -> impl Iterator<Item = &SegmentInfo> {
        self.live_ids(topic, partition)
            .iter()
            .filter_map(|id| self.by_id.get(id))
    }

    /// Every live (not deleted) segment of every partition, by topic,
    /// partition and log order.
    pub fn iter_live(&self) -> impl Iterator<Item = &SegmentInfo> {
        self.live
            .values()
            .flat_map(|partitions| partitions.values())
            .flatten()
            .filter_map(|id| self.by_id.get(id))
    }

    /// A partition's newest live segment, where its log ends.
    pub fn last_live(&self, topic: &str, partition: u32) -> Option<&SegmentInfo> {
        self.live_ids(topic, partition)
            .last()
            .and_then(|id| self.by_id.get(id))
    }

    fn live_ids(&self, topic: &str, partition: u32) -> &[u64] {
        self.live
            .get(topic)
            .and_then(|partitions| partitions.get(&partition))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Inserts or replaces a segment and keeps the partition index in step.
    pub(crate) fn upsert(&mut self, segment: SegmentInfo) {
        let id = segment.segment_id;
        let partition = segment.partition;
        let live = !is_deleted(&segment);
        let topic = segment.topic.clone();
        if let Some(old) = self.by_id.insert(id, segment) {
            debug_assert!(
                old.topic == topic && old.partition == partition,
                "segment {id} never changes partition"
            );
        }
        if live {
            let ids = self
                .live
                .entry(topic)
                .or_default()
                .entry(partition)
                .or_default();
            if let Err(at) = ids.binary_search(&id) {
                ids.insert(at, id);
            }
        } else {
            self.unindex(&topic, partition, id);
        }
    }

    fn unindex(&mut self, topic: &str, partition: u32, id: u64) {
        let Some(partitions) = self.live.get_mut(topic) else {
            return;
        };
        if let Some(ids) = partitions.get_mut(&partition) {
            if let Ok(at) = ids.binary_search(&id) {
                ids.remove(at);
            }
            if ids.is_empty() {
                partitions.remove(&partition);
            }
        }
        if partitions.is_empty() {
            self.live.remove(topic);
        }
    }

    /// Marks every live segment of a partition deleted; returns them as changed.
    pub(crate) fn delete_partition(&mut self, topic: &str, partition: u32) -> Vec<SegmentInfo> {
        let ids = self.live_ids(topic, partition).to_vec();
        ids.into_iter()
            .filter_map(|id| self.mark_deleted(id))
            .collect()
    }

    fn mark_deleted(&mut self, id: u64) -> Option<SegmentInfo> {
        let mut segment = self.by_id.get(&id)?.clone();
        let object_key = match &segment.state {
            Some(State::Offloaded(offloaded)) => offloaded.object_key.clone(),
            Some(State::Deleted(deleted)) => deleted.object_key.clone(),
            _ => String::new(),
        };
        segment.state = Some(State::Deleted(SegmentDeleted { object_key }));
        self.upsert(segment.clone());
        Some(segment)
    }
}

/// Whether a segment is deleted.
fn is_deleted(segment: &SegmentInfo) -> bool {
    matches!(segment.state, Some(State::Deleted(_)))
}

/// Where a sealed or offloaded segment ends (exclusive); `None` while open.
fn end_offset(segment: &SegmentInfo) -> Option<i64> {
    match &segment.state {
        Some(State::Sealed(sealed)) => Some(sealed.end_offset),
        Some(State::Offloaded(offloaded)) => Some(offloaded.end_offset),
        _ => None,
    }
}

fn invalid(message: String) -> Outcome {
    Outcome::error(error_code::INVALID_REQUEST, message)
}

/// Checks that `owner` at `leader_epoch` is the partition's current owner, with
/// the codes Kafka uses: an older epoch is FENCED_LEADER_EPOCH, a newer one
/// UNKNOWN_LEADER_EPOCH, another gateway at the current epoch NOT_LEADER_OR_FOLLOWER.
pub(super) fn check_owner(
    partition: &PartitionInfo,
    owner: i32,
    leader_epoch: u32,
) -> Result<(), Outcome> {
    let name = format!("{}-{}", partition.topic, partition.partition);
    let current = partition.leader_epoch;
    match leader_epoch.cmp(&current) {
        std::cmp::Ordering::Less => Err(Outcome::error(
            error_code::FENCED_LEADER_EPOCH,
            format!(
                "leader epoch {leader_epoch} of {name} is fenced; the current one is {current}"
            ),
        )),
        std::cmp::Ordering::Greater => Err(Outcome::error(
            error_code::UNKNOWN_LEADER_EPOCH,
            format!("leader epoch {leader_epoch} of {name} is newer than the current {current}"),
        )),
        std::cmp::Ordering::Equal if owner < 0 || owner != partition.owner => Err(Outcome::error(
            error_code::NOT_LEADER_OR_FOLLOWER,
            format!(
                "gateway {owner} does not own {name} (owner {} at epoch {current})",
                partition.owner
            ),
        )),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

/// Checks where a partition's next segment starts: at or after 0 for the first
/// one, exactly at the previous segment's end after that, and never while the
/// previous segment is still open.
fn check_next_base(
    previous: Option<&SegmentInfo>,
    req: &OpenSegmentRequest,
) -> Result<(), Outcome> {
    let name = format!("{}-{}", req.topic, req.partition);
    if req.base_offset < 0 {
        return Err(invalid(format!(
            "base offset {} of a segment of {name} is negative",
            req.base_offset
        )));
    }
    let Some(previous) = previous else {
        return Ok(());
    };
    match end_offset(previous) {
        None => Err(invalid(format!(
            "segment {} of {name} is still open: seal it before opening the next one",
            previous.segment_id
        ))),
        Some(end) if end != req.base_offset => Err(invalid(format!(
            "the next segment of {name} must start at {end}, where segment {} ends; got {}",
            previous.segment_id, req.base_offset
        ))),
        Some(_) => Ok(()),
    }
}

/// Whether `segment` is the open segment that `req` would create, so that
/// applying the same open twice does not fail the second time.
fn is_same_open_segment(
    segment: &SegmentInfo,
    req: &OpenSegmentRequest,
    writer_epoch: u32,
) -> bool {
    matches!(segment.state, Some(State::Open(_)))
        && segment.writer_epoch == writer_epoch
        && segment.base_offset == req.base_offset
        && segment.ensemble == req.ensemble
        && segment.write_quorum == req.write_quorum
        && segment.ack_quorum == req.ack_quorum
}

impl ClusterState {
    /// Opens a partition's next segment for its owner; the reply carries it.
    pub(super) fn open_segment(&mut self, req: &OpenSegmentRequest) -> Checked {
        let partition = self.existing_partition(&req.topic, req.partition)?;
        check_owner(partition, req.owner, req.leader_epoch)?;
        let writer_epoch = partition.leader_epoch;
        self.check_ensemble(&req.ensemble, req.write_quorum, req.ack_quorum)?;
        let last = self.segments.last_live(&req.topic, req.partition);
        if let Some(open) = last.filter(|last| is_same_open_segment(last, req, writer_epoch)) {
            // The same request applied again (a retried proposal): the same answer.
            let reply = CommandReply {
                segment: Some(open.clone()),
                ..ok_reply()
            };
            return Ok((reply, Vec::new()));
        }
        check_next_base(last, req)?;
        // Ids start at 1, so that 0 never names a segment.
        let segment_id = self.meta.next_segment_id.max(1);
        self.meta.next_segment_id = segment_id + 1;
        let segment = SegmentInfo {
            segment_id,
            topic: req.topic.clone(),
            partition: req.partition,
            ensemble: req.ensemble.clone(),
            write_quorum: req.write_quorum,
            ack_quorum: req.ack_quorum,
            base_offset: req.base_offset,
            writer_epoch,
            replaced_bookies: Vec::new(),
            state: Some(State::Open(SegmentOpen {})),
        };
        self.segments.upsert(segment.clone());
        let reply = CommandReply {
            segment: Some(segment.clone()),
            ..ok_reply()
        };
        let changes = vec![Change::Segment(segment), Change::Meta(self.meta.clone())];
        Ok((reply, changes))
    }

    /// Checks an ensemble: distinct registered bookies, and
    /// `1 <= ack_quorum <= write_quorum <= ensemble size`.
    fn check_ensemble(
        &self,
        ensemble: &[i32],
        write_quorum: u32,
        ack_quorum: u32,
    ) -> Result<(), Outcome> {
        if ensemble.is_empty() {
            return Err(invalid("a segment needs at least one bookie".into()));
        }
        let distinct: BTreeSet<i32> = ensemble.iter().copied().collect();
        if distinct.len() != ensemble.len() {
            return Err(invalid(format!(
                "ensemble {ensemble:?} names a bookie more than once"
            )));
        }
        if let Some(unknown) = ensemble.iter().find(|b| !self.bookies.contains_key(b)) {
            return Err(invalid(format!("bookie {unknown} is not registered")));
        }
        let size = ensemble.len();
        if ack_quorum < 1 || ack_quorum > write_quorum || write_quorum as usize > size {
            return Err(invalid(format!(
                "need 1 <= ack quorum ({ack_quorum}) <= write quorum ({write_quorum}) <= ensemble size ({size})"
            )));
        }
        Ok(())
    }

    /// Seals a segment at its end offset, for the partition's current owner
    /// (who need not be the segment's writer). Sealing again at the same end is
    /// a no-op; a sealed end never shrinks, and grows only on the partition's
    /// last segment (nothing starts after it yet).
    pub(super) fn seal_segment(&mut self, req: &SealSegmentRequest) -> Checked {
        let segment = self.live_segment(req.segment_id)?;
        let partition = self.existing_partition(&segment.topic, segment.partition)?;
        check_owner(partition, req.owner, req.leader_epoch)?;
        let id = segment.segment_id;
        if req.end_offset < segment.base_offset {
            return Err(invalid(format!(
                "end offset {} of segment {id} is before its base offset {}",
                req.end_offset, segment.base_offset
            )));
        }
        if let Some(end) = end_offset(segment) {
            if req.end_offset == end {
                return Ok((ok_reply(), Vec::new()));
            }
            self.check_sealed_growth(segment, end, req.end_offset)?;
        }
        let mut sealed = segment.clone();
        sealed.state = Some(State::Sealed(SegmentSealed {
            end_offset: req.end_offset,
            bytes: req.bytes,
            max_timestamp: req.max_timestamp,
        }));
        self.segments.upsert(sealed.clone());
        Ok((ok_reply(), vec![Change::Segment(sealed)]))
    }

    /// Whether a sealed segment ending at `end` may be sealed again at `new_end`.
    fn check_sealed_growth(
        &self,
        segment: &SegmentInfo,
        end: i64,
        new_end: i64,
    ) -> Result<(), Outcome> {
        let id = segment.segment_id;
        if matches!(segment.state, Some(State::Offloaded(_))) {
            return Err(invalid(format!(
                "segment {id} is offloaded at end offset {end}; it cannot be sealed at {new_end}"
            )));
        }
        if new_end < end {
            return Err(invalid(format!(
                "segment {id} is sealed at end offset {end}; acknowledged records are never dropped, so it cannot shrink to {new_end}"
            )));
        }
        let last = self.segments.last_live(&segment.topic, segment.partition);
        if last.map(|s| s.segment_id) != Some(id) {
            return Err(invalid(format!(
                "segment {id} cannot grow past {end}: the next segment starts there"
            )));
        }
        Ok(())
    }

    /// Records that a sealed segment was uploaded to object storage under
    /// `object_key`; marking it again with the same key is a no-op.
    pub(super) fn mark_offloaded(&mut self, req: &MarkOffloadedRequest) -> Checked {
        if req.object_key.is_empty() {
            return Err(invalid("object key is empty".into()));
        }
        let segment = self.live_segment(req.segment_id)?;
        let id = segment.segment_id;
        let (end_offset, bytes, max_timestamp) = match &segment.state {
            Some(State::Sealed(sealed)) => (sealed.end_offset, sealed.bytes, sealed.max_timestamp),
            Some(State::Offloaded(done)) if done.object_key == req.object_key => {
                return Ok((ok_reply(), Vec::new()))
            }
            Some(State::Offloaded(done)) => {
                return Err(invalid(format!(
                    "segment {id} is already offloaded as {:?}",
                    done.object_key
                )))
            }
            _ => {
                return Err(invalid(format!(
                    "segment {id} is still open; only sealed segments are offloaded"
                )))
            }
        };
        let mut offloaded = segment.clone();
        offloaded.state = Some(State::Offloaded(SegmentOffloaded {
            end_offset,
            bytes,
            max_timestamp,
            object_key: req.object_key.clone(),
            object_size: req.object_size,
        }));
        self.segments.upsert(offloaded.clone());
        Ok((ok_reply(), vec![Change::Segment(offloaded)]))
    }

    /// Deletes segments for retention: all of them or none. Per partition they
    /// must be the oldest live segments (retention deletes from the start of
    /// the log only), sealed or offloaded, and never the partition's last
    /// segment (it holds the log end offset that the next segment starts at).
    /// Ids already deleted are skipped, so a retried request succeeds.
    pub(super) fn delete_segments(&mut self, segment_ids: &[u64]) -> Checked {
        let mut wanted: BTreeMap<(&str, u32), BTreeSet<u64>> = BTreeMap::new();
        for &id in segment_ids {
            let segment = self.segments.get(id).ok_or_else(|| unknown_segment(id))?;
            if is_deleted(segment) {
                continue;
            }
            if end_offset(segment).is_none() {
                return Err(invalid(format!(
                    "segment {id} is open; only sealed or offloaded segments are deleted"
                )));
            }
            wanted
                .entry((segment.topic.as_str(), segment.partition))
                .or_default()
                .insert(id);
        }
        for ((topic, partition), ids) in &wanted {
            self.check_log_prefix(topic, *partition, ids)?;
        }
        let ids: Vec<u64> = wanted.into_values().flatten().collect();
        let changes = ids
            .into_iter()
            .filter_map(|id| self.segments.mark_deleted(id))
            .map(Change::Segment)
            .collect();
        Ok((ok_reply(), changes))
    }

    /// Moves a partition's log start offset forward for its owner.
    pub(super) fn advance_log_start(&mut self, req: &AdvanceLogStartRequest) -> Checked {
        let partition = self.existing_partition(&req.topic, req.partition)?;
        check_owner(partition, req.owner, req.leader_epoch)?;
        if req.log_start_offset <= partition.log_start_offset {
            return Ok((ok_reply(), Vec::new()));
        }
        let mut advanced = partition.clone();
        advanced.log_start_offset = req.log_start_offset;
        self.partitions.insert(
            (advanced.topic.clone(), advanced.partition),
            advanced.clone(),
        );
        Ok((ok_reply(), vec![Change::Partition(advanced)]))
    }

    /// Checks that `ids` are the oldest live segments of a partition, not all of them.
    fn check_log_prefix(
        &self,
        topic: &str,
        partition: u32,
        ids: &BTreeSet<u64>,
    ) -> Result<(), Outcome> {
        let live = self.segments.live_ids(topic, partition);
        if ids.len() >= live.len() {
            return Err(invalid(format!(
                "the last segment of {topic}-{partition} holds its log end offset and is never deleted"
            )));
        }
        if let Some(skipped) = live[..ids.len()].iter().find(|id| !ids.contains(id)) {
            return Err(invalid(format!(
                "retention deletes {topic}-{partition} from its start; segment {skipped} is older than those named"
            )));
        }
        Ok(())
    }

    /// A segment that exists and is not deleted.
    fn live_segment(&self, segment_id: u64) -> Result<&SegmentInfo, Outcome> {
        let segment = self
            .segments
            .get(segment_id)
            .ok_or_else(|| unknown_segment(segment_id))?;
        if is_deleted(segment) {
            return Err(invalid(format!("segment {segment_id} is deleted")));
        }
        Ok(segment)
    }
}

fn unknown_segment(segment_id: u64) -> Outcome {
    invalid(format!("segment {segment_id} does not exist"))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cluster, code, create, refused, run};
    use super::super::{outcome, NO_OWNER};
    use super::*;
    use strata_proto::metadata::metadata_command::Op;
    use strata_proto::metadata::{
        ControllerTick, DeleteSegmentsRequest, DeleteTopicRequest, GatewayHeartbeatRequest,
    };

    /// A cluster with gateways 1 and 2 and topic "t" of one partition, owned by
    /// gateway 1 at epoch 1 after the first tick, at time 100.
    fn owned() -> ClusterState {
        let mut state = cluster(&[1, 2], 100);
        create(&mut state, "t", 1);
        tick(&mut state, 100);
        let partition = state.partition("t", 0).unwrap();
        assert_eq!((partition.owner, partition.leader_epoch), (1, 1));
        state
    }

    fn tick(state: &mut ClusterState, now_ms: u64) -> Vec<Change> {
        let (reply, changes) = run(state, now_ms, Op::ControllerTick(ControllerTick {}));
        assert!(outcome(&reply).is_ok());
        changes
    }

    fn open_req(owner: i32, leader_epoch: u32, base_offset: i64) -> OpenSegmentRequest {
        OpenSegmentRequest {
            topic: "t".into(),
            partition: 0,
            owner,
            leader_epoch,
            base_offset,
            ensemble: vec![1, 2, 3],
            write_quorum: 3,
            ack_quorum: 2,
        }
    }

    fn open(owner: i32, leader_epoch: u32, base_offset: i64) -> Op {
        Op::OpenSegment(open_req(owner, leader_epoch, base_offset))
    }

    /// Opens a segment and returns its id.
    fn opened(state: &mut ClusterState, owner: i32, leader_epoch: u32, base_offset: i64) -> u64 {
        let (reply, _) = run(state, 100, open(owner, leader_epoch, base_offset));
        assert!(outcome(&reply).is_ok(), "{reply:?}");
        reply
            .segment
            .expect("open replies with the segment")
            .segment_id
    }

    fn seal(segment_id: u64, owner: i32, leader_epoch: u32, end_offset: i64) -> Op {
        Op::SealSegment(SealSegmentRequest {
            segment_id,
            owner,
            leader_epoch,
            end_offset,
            bytes: 10 * end_offset.max(0) as u64,
            max_timestamp: None,
        })
    }

    fn offload(segment_id: u64, key: &str) -> Op {
        Op::MarkOffloaded(MarkOffloadedRequest {
            segment_id,
            object_key: key.into(),
            object_size: 1234,
        })
    }

    fn delete(ids: &[u64]) -> Op {
        Op::DeleteSegments(DeleteSegmentsRequest {
            segment_ids: ids.to_vec(),
        })
    }

    fn live_ids(state: &ClusterState) -> Vec<u64> {
        state.segments.live("t", 0).map(|s| s.segment_id).collect()
    }

    #[test]
    fn owner_opens_a_segment_at_its_epoch() {
        let mut state = owned();
        let (reply, changes) = run(&mut state, 100, open(1, 1, 0));
        let segment = reply.segment.clone().unwrap();
        assert!(outcome(&reply).is_ok());
        assert_eq!(segment.segment_id, 1);
        assert_eq!(segment.writer_epoch, 1);
        assert_eq!(segment.state, Some(State::Open(SegmentOpen {})));
        assert_eq!(state.meta.next_segment_id, 2);
        assert_eq!(
            changes,
            vec![
                Change::Segment(segment.clone()),
                Change::Meta(state.meta.clone())
            ]
        );
        assert_eq!(state.segments.last_live("t", 0), Some(&segment));
    }

    #[test]
    fn the_same_open_applied_twice_answers_the_same_segment() {
        let mut state = owned();
        let first = opened(&mut state, 1, 1, 0);
        let (reply, changes) = run(&mut state, 100, open(1, 1, 0));
        assert!(outcome(&reply).is_ok(), "{reply:?}");
        assert_eq!(reply.segment.unwrap().segment_id, first);
        assert!(changes.is_empty());
        // A different open while that one is open is still refused.
        let other = OpenSegmentRequest {
            ensemble: vec![1, 2],
            write_quorum: 2,
            ..open_req(1, 1, 0)
        };
        refused(
            &mut state,
            100,
            Op::OpenSegment(other),
            error_code::INVALID_REQUEST,
        );
    }

    #[test]
    fn only_the_owner_at_the_current_epoch_opens() {
        let mut state = owned();
        refused(
            &mut state,
            100,
            open(2, 1, 0),
            error_code::NOT_LEADER_OR_FOLLOWER,
        );
        refused(
            &mut state,
            100,
            open(NO_OWNER, 1, 0),
            error_code::NOT_LEADER_OR_FOLLOWER,
        );
        refused(
            &mut state,
            100,
            open(1, 0, 0),
            error_code::FENCED_LEADER_EPOCH,
        );
        refused(
            &mut state,
            100,
            open(1, 2, 0),
            error_code::UNKNOWN_LEADER_EPOCH,
        );
        let unknown = OpenSegmentRequest {
            partition: 1,
            ..open_req(1, 1, 0)
        };
        refused(
            &mut state,
            100,
            Op::OpenSegment(unknown),
            error_code::UNKNOWN_TOPIC_OR_PARTITION,
        );
    }

    #[test]
    fn ensemble_and_quorums_are_checked() {
        let mut state = owned();
        let cases = [
            (vec![], 0, 0),
            (vec![1, 1, 2], 3, 2),
            (vec![1, 2, 9], 3, 2),
            (vec![1, 2, 3], 3, 0),
            (vec![1, 2, 3], 2, 3),
            (vec![1, 2, 3], 4, 2),
        ];
        for (ensemble, write_quorum, ack_quorum) in cases {
            let req = OpenSegmentRequest {
                ensemble,
                write_quorum,
                ack_quorum,
                ..open_req(1, 1, 0)
            };
            refused(
                &mut state,
                100,
                Op::OpenSegment(req),
                error_code::INVALID_REQUEST,
            );
        }
        let single = OpenSegmentRequest {
            ensemble: vec![2],
            write_quorum: 1,
            ack_quorum: 1,
            ..open_req(1, 1, 0)
        };
        assert_eq!(code(&mut state, 100, Op::OpenSegment(single)), 0);
    }

    #[test]
    fn next_segment_needs_the_previous_sealed_and_starts_at_its_end() {
        let mut state = owned();
        refused(&mut state, 100, open(1, 1, -1), error_code::INVALID_REQUEST);
        let first = opened(&mut state, 1, 1, 42);
        let (reply, _) = run(&mut state, 100, open(1, 1, 43));
        assert_eq!(outcome(&reply).error_code, error_code::INVALID_REQUEST);
        assert!(outcome(&reply).error_message.contains("still open"));
        assert_eq!(code(&mut state, 100, seal(first, 1, 1, 50)), 0);
        refused(&mut state, 100, open(1, 1, 49), error_code::INVALID_REQUEST);
        refused(&mut state, 100, open(1, 1, 51), error_code::INVALID_REQUEST);
        let second = opened(&mut state, 1, 1, 50);
        assert!(second > first);
        assert_eq!(live_ids(&state), vec![first, second]);
    }

    #[test]
    fn stale_epoch_is_refused_after_a_tick_moved_ownership() {
        let mut state = owned();
        let first = opened(&mut state, 1, 1, 0);
        // Gateway 1's lease (until 1_100) lapses; gateway 2 renews.
        let renew = Op::GatewayHeartbeat(GatewayHeartbeatRequest { node_id: 2 });
        assert_eq!(code(&mut state, 1_000, renew), 0);
        tick(&mut state, 1_500);
        let partition = state.partition("t", 0).unwrap();
        assert_eq!((partition.owner, partition.leader_epoch), (2, 2));
        // The old owner can neither seal nor open any more.
        refused(
            &mut state,
            1_500,
            seal(first, 1, 1, 10),
            error_code::FENCED_LEADER_EPOCH,
        );
        refused(
            &mut state,
            1_500,
            open(1, 1, 10),
            error_code::FENCED_LEADER_EPOCH,
        );
        refused(
            &mut state,
            1_500,
            seal(first, 1, 2, 10),
            error_code::NOT_LEADER_OR_FOLLOWER,
        );
        // The new owner seals the previous owner's segment, then opens its own.
        assert_eq!(code(&mut state, 1_500, seal(first, 2, 2, 10)), 0);
        let (reply, _) = run(&mut state, 1_500, open(2, 2, 10));
        assert_eq!(reply.segment.map(|s| s.writer_epoch), Some(2));
    }

    #[test]
    fn sealed_end_offset_never_shrinks() {
        let mut state = owned();
        let first = opened(&mut state, 1, 1, 0);
        refused(
            &mut state,
            100,
            seal(first, 1, 1, -1),
            error_code::INVALID_REQUEST,
        );
        refused(
            &mut state,
            100,
            seal(99, 1, 1, 5),
            error_code::INVALID_REQUEST,
        );
        let (reply, changes) = run(&mut state, 100, seal(first, 1, 1, 10));
        assert!(outcome(&reply).is_ok());
        assert_eq!(changes.len(), 1);
        // Idempotent at the same end.
        let (reply, changes) = run(&mut state, 100, seal(first, 1, 1, 10));
        assert!(outcome(&reply).is_ok());
        assert!(changes.is_empty());
        refused(
            &mut state,
            100,
            seal(first, 1, 1, 9),
            error_code::INVALID_REQUEST,
        );
        // The last segment may grow...
        assert_eq!(code(&mut state, 100, seal(first, 1, 1, 12)), 0);
        assert_eq!(end_offset(state.segments.get(first).unwrap()), Some(12));
        // ...but not once the next one starts at its end.
        opened(&mut state, 1, 1, 12);
        refused(
            &mut state,
            100,
            seal(first, 1, 1, 15),
            error_code::INVALID_REQUEST,
        );
    }

    #[test]
    fn a_deleted_offloaded_segment_keeps_its_object_key() {
        let mut state = owned();
        let first = opened(&mut state, 1, 1, 0);
        assert_eq!(code(&mut state, 100, seal(first, 1, 1, 10)), 0);
        let second = opened(&mut state, 1, 1, 10);
        assert_eq!(code(&mut state, 100, offload(first, "k/1.seg")), 0);
        assert_eq!(code(&mut state, 100, delete(&[first])), 0);
        let expected = State::Deleted(SegmentDeleted {
            object_key: "k/1.seg".into(),
        });
        assert_eq!(state.segments.get(first).unwrap().state, Some(expected));
        assert_eq!(live_ids(&state), vec![second]);
    }

    #[test]
    fn only_the_owner_advances_the_log_start_and_never_back() {
        let mut state = owned();
        let advance = |owner, leader_epoch, log_start_offset| {
            Op::AdvanceLogStart(AdvanceLogStartRequest {
                topic: "t".into(),
                partition: 0,
                owner,
                leader_epoch,
                log_start_offset,
            })
        };
        refused(
            &mut state,
            100,
            advance(2, 1, 5),
            error_code::NOT_LEADER_OR_FOLLOWER,
        );
        refused(
            &mut state,
            100,
            advance(1, 0, 5),
            error_code::FENCED_LEADER_EPOCH,
        );
        let (reply, changes) = run(&mut state, 100, advance(1, 1, 5));
        assert!(outcome(&reply).is_ok());
        assert_eq!(changes.len(), 1);
        let (reply, changes) = run(&mut state, 100, advance(1, 1, 3));
        assert!(outcome(&reply).is_ok() && changes.is_empty());
        assert_eq!(state.partition("t", 0).unwrap().log_start_offset, 5);
        // A move of ownership keeps it.
        let heartbeat = Op::GatewayHeartbeat(GatewayHeartbeatRequest { node_id: 2 });
        assert_eq!(code(&mut state, 20_000, heartbeat), 0);
        tick(&mut state, 20_000);
        let partition = state.partition("t", 0).unwrap();
        assert_eq!((partition.owner, partition.log_start_offset), (2, 5));
    }

    #[test]
    fn only_sealed_segments_are_offloaded() {
        let mut state = owned();
        let first = opened(&mut state, 1, 1, 0);
        let key = "topics/x/0/00000000000000000000-1.seg";
        refused(
            &mut state,
            100,
            offload(first, key),
            error_code::INVALID_REQUEST,
        );
        assert_eq!(code(&mut state, 100, seal(first, 1, 1, 10)), 0);
        refused(
            &mut state,
            100,
            offload(first, ""),
            error_code::INVALID_REQUEST,
        );
        refused(
            &mut state,
            100,
            offload(77, key),
            error_code::INVALID_REQUEST,
        );
        let (reply, changes) = run(&mut state, 100, offload(first, key));
        assert!(outcome(&reply).is_ok());
        let expected = State::Offloaded(SegmentOffloaded {
            end_offset: 10,
            bytes: 100,
            object_key: key.into(),
            max_timestamp: None,
            object_size: 1234,
        });
        assert_eq!(state.segments.get(first).unwrap().state, Some(expected));
        assert_eq!(changes.len(), 1);
        // Again with the same key: a no-op; with another key: refused.
        let (reply, changes) = run(&mut state, 100, offload(first, key));
        assert!(outcome(&reply).is_ok() && changes.is_empty());
        refused(
            &mut state,
            100,
            offload(first, "other"),
            error_code::INVALID_REQUEST,
        );
        // An offloaded segment is immutable: same end is fine, any other refused.
        assert_eq!(code(&mut state, 100, seal(first, 1, 1, 10)), 0);
        refused(
            &mut state,
            100,
            seal(first, 1, 1, 11),
            error_code::INVALID_REQUEST,
        );
    }

    #[test]
    fn retention_deletes_from_the_start_and_keeps_the_last_segment() {
        let mut state = owned();
        let s1 = opened(&mut state, 1, 1, 0);
        assert_eq!(code(&mut state, 100, seal(s1, 1, 1, 10)), 0);
        let s2 = opened(&mut state, 1, 1, 10);
        assert_eq!(code(&mut state, 100, seal(s2, 1, 1, 20)), 0);
        let s3 = opened(&mut state, 1, 1, 20);
        refused(&mut state, 100, delete(&[s2]), error_code::INVALID_REQUEST);
        refused(&mut state, 100, delete(&[s3]), error_code::INVALID_REQUEST);
        refused(
            &mut state,
            100,
            delete(&[s1, 999]),
            error_code::INVALID_REQUEST,
        );
        let (reply, changes) = run(&mut state, 100, delete(&[s1, s1]));
        assert!(outcome(&reply).is_ok());
        assert_eq!(changes.len(), 1);
        assert!(is_deleted(state.segments.get(s1).unwrap()));
        assert_eq!(live_ids(&state), vec![s2, s3]);
        // Retried: a no-op.
        let (reply, changes) = run(&mut state, 100, delete(&[s1]));
        assert!(outcome(&reply).is_ok() && changes.is_empty());
        refused(
            &mut state,
            100,
            seal(s1, 1, 1, 10),
            error_code::INVALID_REQUEST,
        );
        // With s3 sealed, s2 may go but s3 (the last one) may not.
        assert_eq!(code(&mut state, 100, seal(s3, 1, 1, 30)), 0);
        refused(
            &mut state,
            100,
            delete(&[s2, s3]),
            error_code::INVALID_REQUEST,
        );
        assert_eq!(code(&mut state, 100, delete(&[s2])), 0);
        assert_eq!(live_ids(&state), vec![s3]);
        // The log end offset survives: the next segment still starts at 30.
        refused(&mut state, 100, open(1, 1, 0), error_code::INVALID_REQUEST);
        opened(&mut state, 1, 1, 30);
    }

    #[test]
    fn deleting_segments_of_several_partitions_is_all_or_nothing() {
        let mut state = cluster(&[1], 100);
        create(&mut state, "t", 2);
        tick(&mut state, 100);
        let mut ids = Vec::new();
        for partition in 0..2 {
            let req = |base_offset| OpenSegmentRequest {
                partition,
                base_offset,
                ..open_req(1, 1, 0)
            };
            let (reply, _) = run(&mut state, 100, Op::OpenSegment(req(0)));
            let first = reply.segment.unwrap().segment_id;
            assert_eq!(code(&mut state, 100, seal(first, 1, 1, 5)), 0);
            assert_eq!(code(&mut state, 100, Op::OpenSegment(req(5))), 0);
            ids.push(first);
        }
        let open_one = state.segments.last_live("t", 1).unwrap().segment_id;
        refused(
            &mut state,
            100,
            delete(&[ids[0], open_one]),
            error_code::INVALID_REQUEST,
        );
        assert_eq!(code(&mut state, 100, delete(&ids)), 0);
        assert_eq!(state.segments.live("t", 0).count(), 1);
        assert_eq!(state.segments.live("t", 1).count(), 1);
    }

    #[test]
    fn deleting_a_topic_marks_its_segments_deleted() {
        let mut state = owned();
        let s1 = opened(&mut state, 1, 1, 0);
        assert_eq!(code(&mut state, 100, seal(s1, 1, 1, 10)), 0);
        let s2 = opened(&mut state, 1, 1, 10);
        let (_, changes) = run(
            &mut state,
            100,
            Op::DeleteTopic(DeleteTopicRequest { name: "t".into() }),
        );
        let deleted: Vec<u64> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Segment(s) if is_deleted(s) => Some(s.segment_id),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, vec![s1, s2]);
        assert_eq!(
            state.segments.len(),
            2,
            "deleted segments stay as tombstones"
        );
        assert_eq!(state.snapshot().segments.len(), 2);
        assert_eq!(live_ids(&state), Vec::<u64>::new());
        // A topic re-created under the same name starts a fresh log.
        create(&mut state, "t", 1);
        tick(&mut state, 100);
        let epoch = state.partition("t", 0).unwrap().leader_epoch;
        let owner = state.partition("t", 0).unwrap().owner;
        let s3 = opened(&mut state, owner, epoch, 0);
        assert_eq!(live_ids(&state), vec![s3]);
    }

    #[test]
    fn table_restores_the_same_index_in_any_order() {
        let mut state = owned();
        let s1 = opened(&mut state, 1, 1, 0);
        assert_eq!(code(&mut state, 100, seal(s1, 1, 1, 10)), 0);
        let s2 = opened(&mut state, 1, 1, 10);
        assert_eq!(code(&mut state, 100, seal(s2, 1, 1, 20)), 0);
        opened(&mut state, 1, 1, 20);
        assert_eq!(code(&mut state, 100, delete(&[s1])), 0);
        let mut reversed = SegmentTable::default();
        let segments: Vec<&SegmentInfo> = state.segments.iter().collect();
        for segment in segments.into_iter().rev() {
            reversed.upsert(segment.clone());
        }
        assert_eq!(reversed, state.segments);
    }
}
