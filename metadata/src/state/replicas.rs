//! Auto-recovery's one command: a live bookie that now holds a complete copy
//! of a sealed segment takes a dead bookie's place in its ensemble.
//!
//! The swap keeps the ensemble position, so striping (which entries each
//! position holds) is unchanged and readers simply ask the new bookie for
//! what the old one held. Only sealed segments change: an open segment's
//! ensemble belongs to its writer, and an offloaded or deleted one no longer
//! needs bookie copies.

use super::{Change, Checked, ClusterState};
use strata_proto::error_code;
use strata_proto::metadata::segment_info::State;
use strata_proto::metadata::{CommandReply, Outcome, ReplaceSegmentReplicaRequest};

fn invalid(message: String) -> Outcome {
    Outcome::error(error_code::INVALID_REQUEST, message)
}

impl ClusterState {
    /// Replaces `old_bookie` with `new_bookie` in a sealed segment's ensemble,
    /// at the same position. Applied again after it succeeded (old gone, new
    /// in), it answers OK without a change, so a retried proposal is safe.
    pub(super) fn replace_segment_replica(
        &mut self,
        req: &ReplaceSegmentReplicaRequest,
        now_ms: u64,
    ) -> Checked {
        let id = req.segment_id;
        let (old, new) = (req.old_bookie, req.new_bookie);
        let segment = self
            .segments
            .get(id)
            .ok_or_else(|| invalid(format!("segment {id} does not exist")))?;
        match &segment.state {
            Some(State::Sealed(_)) => {}
            Some(State::Open(_)) => {
                return Err(invalid(format!(
                    "segment {id} is open: its writer owns its ensemble"
                )))
            }
            Some(State::Offloaded(_)) => {
                return Err(invalid(format!(
                    "segment {id} is offloaded: it needs no bookie replicas"
                )))
            }
            Some(State::Deleted(_)) | None => {
                return Err(invalid(format!("segment {id} is deleted")))
            }
        }
        let old_at = segment.ensemble.iter().position(|&b| b == old);
        let new_in = segment.ensemble.contains(&new);
        let reply = |segment| CommandReply {
            segment: Some(segment),
            ..super::ok_reply()
        };
        match (old_at, new_in) {
            (None, true) => return Ok((reply(segment.clone()), Vec::new())),
            (None, false) => {
                return Err(invalid(format!(
                    "bookie {old} is not in the ensemble {:?} of segment {id}",
                    segment.ensemble
                )))
            }
            (Some(_), true) => {
                return Err(invalid(format!(
                    "bookie {new} is already in the ensemble {:?} of segment {id}",
                    segment.ensemble
                )))
            }
            (Some(_), false) => {}
        }
        if segment.replaced_bookies.contains(&new) {
            return Err(invalid(format!(
                "bookie {new} was replaced out of segment {id} before; its copy is stale"
            )));
        }
        let live = self
            .bookies
            .get(&new)
            .is_some_and(|b| b.lease_expires_ms > now_ms);
        if !live {
            return Err(invalid(format!(
                "bookie {new} is not a live registered bookie"
            )));
        }
        let mut replaced = segment.clone();
        if let Some(at) = old_at {
            replaced.ensemble[at] = new;
        }
        replaced.replaced_bookies.push(old);
        self.segments.upsert(replaced.clone());
        Ok((reply(replaced.clone()), vec![Change::Segment(replaced)]))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cluster, code, create, refused, register_bookie, run};
    use super::super::{outcome, watch_change};
    use super::*;
    use strata_proto::metadata::metadata_command::Op;
    use strata_proto::metadata::watch_event::Change as WatchChange;
    use strata_proto::metadata::{
        ControllerTick, DeleteSegmentsRequest, MarkOffloadedRequest, OpenSegmentRequest,
        SealSegmentRequest,
    };

    /// Time of every command: bookies registered at 100 hold leases until 1_100.
    const NOW: u64 = 100;

    /// Bookies 1-4 and gateway 1 owning "t"-0 at epoch 1, with a sealed
    /// segment on bookies 1, 2, 3 (returned) followed by an open one.
    fn sealed_segment() -> (ClusterState, u64) {
        let mut state = cluster(&[1], NOW);
        register_bookie(&mut state, 4, NOW);
        create(&mut state, "t", 1);
        assert_eq!(
            code(&mut state, NOW, Op::ControllerTick(ControllerTick {})),
            0
        );
        let first = open(&mut state, 0);
        let seal = SealSegmentRequest {
            segment_id: first,
            owner: 1,
            leader_epoch: 1,
            end_offset: 10,
            bytes: 100,
            max_timestamp: None,
        };
        assert_eq!(code(&mut state, NOW, Op::SealSegment(seal)), 0);
        open(&mut state, 10);
        (state, first)
    }

    fn open(state: &mut ClusterState, base_offset: i64) -> u64 {
        let req = OpenSegmentRequest {
            topic: "t".into(),
            partition: 0,
            owner: 1,
            leader_epoch: 1,
            base_offset,
            ensemble: vec![1, 2, 3],
            write_quorum: 3,
            ack_quorum: 2,
        };
        let (reply, _) = run(state, NOW, Op::OpenSegment(req));
        reply.segment.expect("opened").segment_id
    }

    fn replace(segment_id: u64, old_bookie: i32, new_bookie: i32) -> Op {
        Op::ReplaceSegmentReplica(ReplaceSegmentReplicaRequest {
            segment_id,
            old_bookie,
            new_bookie,
        })
    }

    fn ensemble(state: &ClusterState, segment_id: u64) -> Vec<i32> {
        state.segments.get(segment_id).unwrap().ensemble.clone()
    }

    #[test]
    fn a_replica_is_replaced_in_place_and_published() {
        let (mut state, id) = sealed_segment();
        let (reply, changes) = run(&mut state, NOW, replace(id, 2, 4));
        assert!(outcome(&reply).is_ok(), "{reply:?}");
        assert_eq!(ensemble(&state, id), vec![1, 4, 3], "position kept");
        let segment = state.segments.get(id).unwrap().clone();
        assert_eq!(segment.replaced_bookies, vec![2], "the old copy is stale");
        assert_eq!(reply.segment.as_ref(), Some(&segment));
        assert_eq!(changes, vec![Change::Segment(segment.clone())]);
        assert!(matches!(
            watch_change(changes[0].clone()),
            Some(WatchChange::SegmentUpserted(s)) if s == segment
        ));
        // Still sealed, with the same end.
        assert!(matches!(segment.state, Some(State::Sealed(ref s)) if s.end_offset == 10));
    }

    #[test]
    fn replacing_again_is_a_no_op() {
        let (mut state, id) = sealed_segment();
        assert_eq!(code(&mut state, NOW, replace(id, 1, 4)), 0);
        let (reply, changes) = run(&mut state, NOW, replace(id, 1, 4));
        assert!(outcome(&reply).is_ok(), "{reply:?}");
        assert!(changes.is_empty());
        assert_eq!(ensemble(&state, id), vec![4, 2, 3]);
    }

    #[test]
    fn the_ensemble_must_hold_old_and_not_new() {
        let (mut state, id) = sealed_segment();
        let invalid = error_code::INVALID_REQUEST;
        // Old not in the ensemble (and new neither).
        refused(&mut state, NOW, replace(id, 4, 4), invalid);
        // New already in it.
        refused(&mut state, NOW, replace(id, 1, 2), invalid);
        refused(&mut state, NOW, replace(id, 1, 1), invalid);
        // Unknown segment, unregistered bookie.
        refused(&mut state, NOW, replace(999, 1, 4), invalid);
        refused(&mut state, NOW, replace(id, 1, 9), invalid);
        // Another replacement won: the loser's swap of the same bookie is refused.
        assert_eq!(code(&mut state, NOW, replace(id, 1, 4)), 0);
        register_bookie(&mut state, 5, NOW);
        refused(&mut state, NOW, replace(id, 1, 5), invalid);
        assert_eq!(ensemble(&state, id), vec![4, 2, 3]);
    }

    #[test]
    fn a_bookie_replaced_out_of_a_segment_cannot_come_back_into_it() {
        let (mut state, id) = sealed_segment();
        assert_eq!(code(&mut state, NOW, replace(id, 1, 4)), 0);
        // Bookie 1 returns (it still holds its stale copy) and bookie 2 dies.
        refused(
            &mut state,
            NOW,
            replace(id, 2, 1),
            error_code::INVALID_REQUEST,
        );
        assert_eq!(ensemble(&state, id), vec![4, 2, 3]);
        assert_eq!(state.segments.get(id).unwrap().replaced_bookies, vec![1]);
    }

    #[test]
    fn the_new_bookie_must_be_live() {
        let (mut state, id) = sealed_segment();
        // Bookie 4's lease (until 1_100) has lapsed at 1_100.
        refused(
            &mut state,
            1_100,
            replace(id, 1, 4),
            error_code::INVALID_REQUEST,
        );
        assert_eq!(code(&mut state, 1_099, replace(id, 1, 4)), 0);
    }

    #[test]
    fn only_sealed_segments_change() {
        let (mut state, sealed) = sealed_segment();
        let open_id = state.segments.last_live("t", 0).unwrap().segment_id;
        let invalid = error_code::INVALID_REQUEST;
        refused(&mut state, NOW, replace(open_id, 1, 4), invalid);
        let offload = Op::MarkOffloaded(MarkOffloadedRequest {
            segment_id: sealed,
            object_key: "k".into(),
            object_size: 1,
        });
        assert_eq!(code(&mut state, NOW, offload), 0);
        refused(&mut state, NOW, replace(sealed, 1, 4), invalid);
        let delete = Op::DeleteSegments(DeleteSegmentsRequest {
            segment_ids: vec![sealed],
        });
        assert_eq!(code(&mut state, NOW, delete), 0);
        refused(&mut state, NOW, replace(sealed, 1, 4), invalid);
    }
}
