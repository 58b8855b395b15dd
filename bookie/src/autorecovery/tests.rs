//! Copying a lost replica between fake bookies served over real gRPC.

use super::copy::{copy_replica, CopyError};
use super::plan::Task;
use crate::ledger::fake::FakeBookie;
use crate::ledger::{BookiePool, LedgerOptions, LedgerSpec, LedgerWriter, NO_ENTRY};
use bytes::Bytes;
use std::collections::BTreeMap;
use strata_proto::metadata::segment_info::State;
use strata_proto::metadata::{BookieInfo, SegmentInfo, SegmentSealed};

const SEGMENT: u64 = 7;
const NOW: u64 = 1_000_000;

/// Four fake bookies, node ids 1..=4; the segment's ensemble is 1, 2, 3.
struct Bookies {
    fakes: Vec<FakeBookie>,
    pool: BookiePool,
}

impl Bookies {
    async fn start() -> Self {
        let mut fakes = Vec::new();
        for _ in 0..4 {
            fakes.push(FakeBookie::start().await);
        }
        let pool = BookiePool::new(LedgerOptions {
            connect_timeout_ms: 500,
            request_timeout_ms: 2_000,
            ..LedgerOptions::default()
        });
        Self { fakes, pool }
    }

    fn fake(&self, node_id: i32) -> &FakeBookie {
        &self.fakes[node_id as usize - 1]
    }

    /// Registered bookies as metadata knows them; those in `dead` have lapsed leases.
    fn infos(&self, dead: &[i32]) -> BTreeMap<i32, BookieInfo> {
        (1..=4)
            .map(|node_id| {
                let info = BookieInfo {
                    node_id,
                    grpc_addr: self.fake(node_id).addr(),
                    zone: String::new(),
                    free_bytes: 0,
                    lease_expires_ms: if dead.contains(&node_id) {
                        NOW
                    } else {
                        NOW + 10_000
                    },
                };
                (node_id, info)
            })
            .collect()
    }

    /// Writes `count` entries (entry i at offset 10 * i) with E = 3 and the
    /// given write quorum, then seals the segment; returns its end offset.
    async fn write_sealed(&self, write_quorum: usize, count: i64) -> i64 {
        let ensemble = (1..=3).map(|id| self.fake(id).addr()).collect();
        let spec = LedgerSpec::new(SEGMENT, ensemble, write_quorum, 2).unwrap();
        let mut writer = LedgerWriter::open(spec, 1, &self.pool).unwrap();
        for id in 0..count {
            writer.append(payload(id), id * 10).await.unwrap();
        }
        assert_eq!(writer.seal().await.unwrap(), count - 1);
        count * 10
    }
}

fn payload(entry_id: i64) -> Bytes {
    Bytes::from(format!("batch-{entry_id}"))
}

fn task(bookies: &BTreeMap<i32, BookieInfo>, write_quorum: u32, end_offset: i64) -> Task {
    Task {
        segment: SegmentInfo {
            segment_id: SEGMENT,
            topic: "t".into(),
            partition: 0,
            ensemble: vec![1, 2, 3],
            write_quorum,
            ack_quorum: 2,
            base_offset: 0,
            writer_epoch: 1,
            replaced_bookies: Vec::new(),
            state: Some(State::Sealed(SegmentSealed {
                end_offset,
                bytes: 0,
                max_timestamp: None,
            })),
        },
        lost: 2,
        replacement: bookies[&4].clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_replica_is_copied_whole_and_sealed() {
    let bookies = Bookies::start().await;
    let end_offset = bookies.write_sealed(3, 25).await;
    bookies.fake(2).kill();
    let infos = bookies.infos(&[2]);
    let copied = copy_replica(&task(&infos, 3, end_offset), &infos, NOW, &bookies.pool)
        .await
        .unwrap();
    assert_eq!((copied.entries, copied.last_entry_id), (25, 24));
    let copy = bookies.fake(4).segment(SEGMENT).expect("the copy exists");
    assert_eq!(copy.sealed, Some(24));
    let original = bookies.fake(1).segment(SEGMENT).unwrap();
    assert_eq!(copy.entries, original.entries, "byte-identical entries");
    assert_eq!(
        copied.bytes,
        copy.entries
            .values()
            .map(|e| e.payload.len() as u64)
            .sum::<u64>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_striped_replica_gets_exactly_its_stripes() {
    let bookies = Bookies::start().await;
    // E = 3, Qw = 2: entry i is on ensemble positions i % 3 and (i + 1) % 3.
    let end_offset = bookies.write_sealed(2, 12).await;
    let lost_held = bookies.fake(2).held(SEGMENT);
    assert_eq!(lost_held, vec![0, 1, 3, 4, 6, 7, 9, 10]);
    bookies.fake(2).kill();
    let infos = bookies.infos(&[2]);
    let copied = copy_replica(&task(&infos, 2, end_offset), &infos, NOW, &bookies.pool)
        .await
        .unwrap();
    assert_eq!(copied.entries, lost_held.len() as u64);
    assert_eq!(bookies.fake(4).held(SEGMENT), lost_held);
    assert_eq!(bookies.fake(4).segment(SEGMENT).unwrap().sealed, Some(11));
    // Doing it again changes nothing and succeeds.
    copy_replica(&task(&infos, 2, end_offset), &infos, NOW, &bookies.pool)
        .await
        .unwrap();
    assert_eq!(bookies.fake(4).held(SEGMENT), lost_held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_segment_is_copied_as_sealed_and_empty() {
    let bookies = Bookies::start().await;
    let end_offset = bookies.write_sealed(3, 0).await;
    bookies.fake(2).kill();
    let infos = bookies.infos(&[2]);
    let copied = copy_replica(&task(&infos, 3, end_offset), &infos, NOW, &bookies.pool)
        .await
        .unwrap();
    assert_eq!((copied.entries, copied.last_entry_id), (0, NO_ENTRY));
    assert_eq!(
        bookies.fake(4).segment(SEGMENT).unwrap().sealed,
        Some(NO_ENTRY)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_copied_without_a_sealed_survivor_or_past_the_sealed_end() {
    let bookies = Bookies::start().await;
    let ensemble = (1..=3).map(|id| bookies.fake(id).addr()).collect();
    let spec = LedgerSpec::new(SEGMENT, ensemble, 3, 2).unwrap();
    let mut writer = LedgerWriter::open(spec, 1, &bookies.pool).unwrap();
    for id in 0..5 {
        writer.append(payload(id), id * 10).await.unwrap();
    }
    let infos = bookies.infos(&[2]);
    // Still open on the bookies: where it ends is unknown.
    let error = copy_replica(&task(&infos, 3, 50), &infos, NOW, &bookies.pool)
        .await
        .unwrap_err();
    assert!(matches!(error, CopyError::Inconsistent { .. }), "{error}");
    writer.seal().await.unwrap();
    // Metadata's end offset says the entries cannot all be in this segment.
    let error = copy_replica(&task(&infos, 3, 30), &infos, NOW, &bookies.pool)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("sealed end offset"), "{error}");
}
