//! The writer, recovery and reader against fake bookies served over real
//! gRPC on loopback (see `fake.rs`), with faults injected.

use super::fake::{AckMode, FakeBookie};
use super::*;
use bytes::Bytes;
use futures::FutureExt;
use std::time::Duration;
use strata_proto::bookie::{BookieStatus, SealRequest};

const SEGMENT: u64 = 42;
const WRITER_EPOCH: u32 = 1;

struct Cluster {
    bookies: Vec<FakeBookie>,
    pool: BookiePool,
}

fn options() -> LedgerOptions {
    LedgerOptions {
        add_timeout_ms: 30_000,
        connect_timeout_ms: 500,
        request_timeout_ms: 2_000,
        ..LedgerOptions::default()
    }
}

async fn cluster(size: usize, options: LedgerOptions) -> Cluster {
    let mut bookies = Vec::new();
    for _ in 0..size {
        bookies.push(FakeBookie::start().await);
    }
    Cluster {
        bookies,
        pool: BookiePool::new(options),
    }
}

impl Cluster {
    fn spec(&self, write_quorum: usize, ack_quorum: usize) -> LedgerSpec {
        let ensemble = self.bookies.iter().map(FakeBookie::addr).collect();
        LedgerSpec::new(SEGMENT, ensemble, write_quorum, ack_quorum).unwrap()
    }

    fn writer(&self, write_quorum: usize, ack_quorum: usize) -> LedgerWriter {
        LedgerWriter::open(
            self.spec(write_quorum, ack_quorum),
            WRITER_EPOCH,
            &self.pool,
        )
        .unwrap()
    }
}

fn payload(entry_id: i64) -> Bytes {
    Bytes::from(format!("batch-{entry_id}"))
}

/// Polls `condition` until it holds or five seconds pass.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Appends entries `first..first + count` with base offset `10 * id`, all in
/// flight at once, and returns what each add resolved to.
async fn append_pipelined(
    writer: &mut LedgerWriter,
    first: i64,
    count: i64,
) -> Vec<Result<i64, LedgerError>> {
    let mut pending = Vec::new();
    for id in first..first + count {
        // `add` itself fails once the writer knows it has failed.
        pending.push(match writer.add(payload(id), id * 10).await {
            Ok(add) => add.boxed(),
            Err(error) => futures::future::ready(Err(error)).boxed(),
        });
    }
    futures::future::join_all(pending).await
}

fn failed_indexes(writer: &LedgerWriter) -> Vec<usize> {
    writer
        .failed_bookies()
        .into_iter()
        .map(|(i, _)| i)
        .collect()
}

// ---- writer ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_adds_confirm_in_entry_order() {
    let cluster = cluster(3, options()).await;
    let mut writer = cluster.writer(3, 2);
    let results = append_pipelined(&mut writer, 0, 200).await;
    let ids: Vec<i64> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(ids, (0..200).collect::<Vec<_>>());
    assert_eq!(writer.last_add_confirmed(), 199);
    for bookie in &cluster.bookies {
        eventually("every bookie holds every entry", || {
            bookie.held(SEGMENT).len() == 200
        })
        .await;
    }
    let entry = cluster.bookies[0].segment(SEGMENT).unwrap().entries[&7].clone();
    assert_eq!((entry.base_offset, entry.payload), (70, payload(7)));
}

#[tokio::test]
async fn the_lac_rides_on_later_adds() {
    let cluster = cluster(3, options()).await;
    let mut writer = cluster.writer(3, 3);
    let mut lac = writer.subscribe_lac();
    for id in 0..5 {
        assert_eq!(writer.append(payload(id), id).await.unwrap(), id);
    }
    assert_eq!(*lac.borrow_and_update(), 4);
    for bookie in &cluster.bookies {
        // Entry 4 was sent once entry 3 was confirmed.
        assert_eq!(bookie.segment(SEGMENT).unwrap().last_add_confirmed, 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_on_when_one_of_three_bookies_dies() {
    let cluster = cluster(3, options()).await;
    let mut writer = cluster.writer(3, 2);
    assert!(append_pipelined(&mut writer, 0, 10)
        .await
        .iter()
        .all(Result::is_ok));
    cluster.bookies[1].kill();
    let results = append_pipelined(&mut writer, 10, 50).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(writer.last_add_confirmed(), 59);
    eventually("the dead bookie is dropped", || {
        failed_indexes(&writer) == vec![1]
    })
    .await;
    assert!(writer.failure().is_none());
}

#[tokio::test]
async fn a_bookie_that_refuses_adds_is_dropped_and_writes_go_on() {
    for refusal in [BookieStatus::BookieIoError, BookieStatus::BookieDiskFull] {
        let cluster = cluster(3, options()).await;
        let mut writer = cluster.writer(3, 2);
        cluster.bookies[0].set_add_failure(Some(refusal));
        let results = append_pipelined(&mut writer, 0, 20).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        eventually("the refusing bookie is dropped", || {
            failed_indexes(&writer) == vec![0]
        })
        .await;
        let failed = writer.failed_bookies();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, 0);
        assert!(failed[0].1.contains(refusal.as_str_name()), "{failed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_fail_once_the_ack_quorum_cannot_be_reached() {
    let cluster = cluster(3, options()).await;
    let mut writer = cluster.writer(3, 2);
    assert!(append_pipelined(&mut writer, 0, 5)
        .await
        .iter()
        .all(Result::is_ok));
    cluster.bookies[0].kill();
    cluster.bookies[2].kill();
    // The add fails at once if both deaths were seen already, else once they are.
    let error = match writer.add(payload(5), 50).await {
        Ok(pending) => pending.await.unwrap_err(),
        Err(error) => error,
    };
    assert!(
        matches!(
            error,
            LedgerError::QuorumLost {
                entry_id: 5,
                ack_quorum: 2,
                ..
            }
        ),
        "{error}"
    );
    assert!(error
        .to_string()
        .contains("can no longer reach its ack quorum"));
    // The writer stays failed, and the confirmed entries stay confirmed.
    assert_eq!(writer.add(payload(6), 60).await.err(), Some(error));
    assert_eq!(writer.last_add_confirmed(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_fail_when_every_bookie_dies() {
    let cluster = cluster(3, options()).await;
    let mut writer = cluster.writer(3, 2);
    assert!(append_pipelined(&mut writer, 0, 5)
        .await
        .iter()
        .all(Result::is_ok));
    for bookie in &cluster.bookies {
        bookie.kill();
    }
    let results = append_pipelined(&mut writer, 5, 3).await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(LedgerError::QuorumLost { .. }))),
        "{results:?}"
    );
    assert!(writer.seal().await.is_err(), "a failed writer cannot seal");
}

#[tokio::test]
async fn a_silent_bookie_is_dropped_after_the_add_timeout() {
    let cluster = cluster(
        3,
        LedgerOptions {
            add_timeout_ms: 200,
            ..options()
        },
    )
    .await;
    cluster.bookies[2].set_ack_mode(AckMode::Swallow);
    let mut writer = cluster.writer(3, 2);
    assert!(append_pipelined(&mut writer, 0, 5)
        .await
        .iter()
        .all(Result::is_ok));
    eventually("the silent bookie is dropped", || {
        failed_indexes(&writer) == vec![2]
    })
    .await;
    let why = &writer.failed_bookies()[0].1;
    assert!(why.contains("no ack of entry 0"), "{why}");
    assert!(append_pipelined(&mut writer, 5, 5)
        .await
        .iter()
        .all(Result::is_ok));
}

#[tokio::test]
async fn add_waits_while_the_in_flight_window_is_full() {
    let entry_bytes = 100;
    let cluster = cluster(
        3,
        LedgerOptions {
            max_in_flight_bytes: 2 * (entry_bytes + ENTRY_OVERHEAD_BYTES) as u64,
            ..options()
        },
    )
    .await;
    // The third bookie never acks, so confirmed entries keep their window share.
    cluster.bookies[2].set_ack_mode(AckMode::Swallow);
    let mut writer = cluster.writer(3, 2);
    let data = Bytes::from(vec![7u8; entry_bytes]);
    for id in 0..2 {
        assert_eq!(writer.append(data.clone(), id).await.unwrap(), id);
    }
    let blocked =
        tokio::time::timeout(Duration::from_millis(300), writer.add(data.clone(), 2)).await;
    assert!(blocked.is_err(), "add must wait while the window is full");
    // Once the slow bookie is dropped, its share is released.
    cluster.bookies[2].kill();
    let pending = tokio::time::timeout(Duration::from_secs(5), writer.add(data, 2))
        .await
        .expect("the window reopens")
        .unwrap();
    assert_eq!(pending.entry_id(), 2);
    assert_eq!(pending.await.unwrap(), 2);
}

#[tokio::test]
async fn seal_closes_a_healthy_segment_at_its_last_entry() {
    let cluster = cluster(3, options()).await;
    let mut writer = cluster.writer(3, 2);
    let pending: Vec<_> = {
        let mut pending = Vec::new();
        for id in 0..3 {
            pending.push(writer.add(payload(id), id).await.unwrap());
        }
        pending
    };
    // Sealing waits for the adds still in flight.
    assert_eq!(writer.seal().await.unwrap(), 2);
    for add in pending {
        assert!(add.await.is_ok());
    }
    for bookie in &cluster.bookies {
        assert_eq!(bookie.segment(SEGMENT).unwrap().sealed, Some(2));
    }
}

#[tokio::test]
async fn dropping_the_writer_fails_its_pending_adds() {
    let cluster = cluster(3, options()).await;
    for bookie in &cluster.bookies {
        bookie.set_ack_mode(AckMode::Swallow);
    }
    let mut writer = cluster.writer(3, 2);
    let pending = writer.add(payload(0), 0).await.unwrap();
    drop(writer);
    assert_eq!(
        pending.await,
        Err(LedgerError::WriterClosed {
            segment_id: SEGMENT
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn striped_writes_store_each_entry_on_its_write_set_only() {
    let cluster = cluster(5, options()).await;
    let mut writer = cluster.writer(3, 2);
    assert!(append_pipelined(&mut writer, 0, 50)
        .await
        .iter()
        .all(Result::is_ok));
    let spec = writer.spec().clone();
    for (index, bookie) in cluster.bookies.iter().enumerate() {
        let expected: Vec<i64> = (0..50)
            .filter(|&id| spec.write_set(id).contains(index))
            .collect();
        eventually("each bookie holds its stripes", || {
            bookie.held(SEGMENT) == expected
        })
        .await;
    }
    // One dead bookie leaves every write set two live bookies: writes go on.
    cluster.bookies[3].kill();
    assert!(append_pipelined(&mut writer, 50, 30)
        .await
        .iter()
        .all(Result::is_ok));
}

// ---- recovery ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_the_writer_dies_seals_at_or_after_the_last_confirmed_entry() {
    let cluster = cluster(3, options()).await;
    let spec = cluster.spec(3, 2);
    let mut writer = cluster.writer(3, 2);
    assert!(append_pipelined(&mut writer, 0, 10)
        .await
        .iter()
        .all(Result::is_ok));
    let confirmed = writer.last_add_confirmed();
    assert_eq!(confirmed, 9);
    for bookie in &cluster.bookies {
        eventually("every bookie holds entries 0..10", || {
            bookie.held(SEGMENT).len() == 10
        })
        .await;
    }
    // Three more adds land on bookie 0 only: never confirmed.
    cluster.bookies[1].set_ack_mode(AckMode::Swallow);
    cluster.bookies[2].set_ack_mode(AckMode::Swallow);
    let unconfirmed: Vec<_> = {
        let mut pending = Vec::new();
        for id in 10..13 {
            pending.push(writer.add(payload(id), id * 10).await.unwrap());
        }
        pending
    };
    eventually("bookie 0 holds the unconfirmed adds", || {
        cluster.bookies[0].held(SEGMENT).len() == 13
    })
    .await;
    writer.abort().await;
    for add in unconfirmed {
        assert!(add.await.is_err());
    }
    cluster.bookies[1].set_ack_mode(AckMode::Normal);
    cluster.bookies[2].set_ack_mode(AckMode::Normal);

    let outcome = recover(&spec, WRITER_EPOCH + 1, &cluster.pool)
        .await
        .unwrap();
    assert!(outcome.last_entry_id >= confirmed);
    assert_eq!(outcome.last_entry_id, 12, "what bookie 0 holds is kept");
    assert_eq!(
        outcome.fenced_last_add_confirmed, 9,
        "entry 10 carried LAC 9"
    );
    assert_eq!(outcome.recovered_entries, 3);
    assert!(!outcome.already_sealed);
    let last = outcome.last_entry.unwrap();
    assert_eq!(
        (last.entry_id, last.base_offset, last.payload),
        (12, 120, payload(12))
    );
    for bookie in &cluster.bookies {
        let segment = bookie.segment(SEGMENT).unwrap();
        assert_eq!(segment.sealed, Some(12));
        assert_eq!(segment.fenced_epoch, WRITER_EPOCH + 1);
        assert_eq!(
            bookie.held(SEGMENT),
            (0..=12).collect::<Vec<_>>(),
            "re-replicated to every bookie"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_recovery_the_old_writers_adds_are_refused() {
    let cluster = cluster(3, options()).await;
    let spec = cluster.spec(3, 2);
    let mut writer = cluster.writer(3, 2);
    assert!(append_pipelined(&mut writer, 0, 5)
        .await
        .iter()
        .all(Result::is_ok));
    let outcome = recover(&spec, WRITER_EPOCH + 1, &cluster.pool)
        .await
        .unwrap();
    assert_eq!(outcome.last_entry_id, 4);
    let error = writer.append(payload(5), 50).await.unwrap_err();
    assert!(matches!(error, LedgerError::Fenced { .. }), "{error}");
    assert!(error.is_fenced());
    assert!(error.to_string().contains("fenced by a newer owner"));
    for bookie in &cluster.bookies {
        assert!(
            !bookie.held(SEGMENT).contains(&5),
            "nothing landed after the fence"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_is_idempotent() {
    let cluster = cluster(3, options()).await;
    let spec = cluster.spec(3, 2);
    let mut writer = cluster.writer(3, 2);
    assert!(append_pipelined(&mut writer, 0, 7)
        .await
        .iter()
        .all(Result::is_ok));
    drop(writer);
    let first = recover(&spec, 2, &cluster.pool).await.unwrap();
    let again = recover(&spec, 2, &cluster.pool).await.unwrap();
    let later = recover(&spec, 3, &cluster.pool).await.unwrap();
    assert_eq!(first.last_entry_id, 6);
    for outcome in [&again, &later] {
        assert_eq!(outcome.last_entry_id, first.last_entry_id);
        assert_eq!(outcome.last_entry, first.last_entry);
        assert!(outcome.already_sealed);
    }
    // An older epoch cannot recover any more.
    let error = recover(&spec, 2, &cluster.pool).await.unwrap_err();
    assert!(error.is_fenced(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_keeps_entries_whose_acks_were_lost() {
    let cluster = cluster(3, options()).await;
    let spec = cluster.spec(3, 2);
    let mut writer = cluster.writer(3, 2);
    assert!(append_pipelined(&mut writer, 0, 3)
        .await
        .iter()
        .all(Result::is_ok));
    for bookie in &cluster.bookies {
        bookie.set_ack_mode(AckMode::StoreSilently);
    }
    let mut lost = Vec::new();
    for id in 3..5 {
        lost.push(writer.add(payload(id), id * 10).await.unwrap());
    }
    for bookie in &cluster.bookies {
        eventually("every bookie stored the unacked adds", || {
            bookie.held(SEGMENT).len() == 5
        })
        .await;
    }
    writer.abort().await;
    // Never acknowledged, yet durable: they may survive, as in Kafka.
    let outcome = recover(&spec, 2, &cluster.pool).await.unwrap();
    assert_eq!(outcome.last_entry_id, 4);
    assert_eq!(outcome.copies_written, 0);
}

#[tokio::test]
async fn recovery_adopts_the_end_an_interrupted_recovery_sealed() {
    let cluster = cluster(3, options()).await;
    let spec = cluster.spec(3, 2);
    for id in 0..4 {
        for bookie in &cluster.bookies {
            bookie.plant(SEGMENT, id, id, b"x");
        }
    }
    // An unconfirmed leftover on bookie 2, and a recovery that sealed bookie 0
    // at entry 3 before it died.
    cluster.bookies[2].plant(SEGMENT, 4, 4, b"x");
    let mut client = cluster.pool.client(&cluster.bookies[0].addr()).unwrap();
    let sealed = client
        .seal(SealRequest {
            segment_id: SEGMENT,
            epoch: 2,
            last_entry_id: 3,
        })
        .await
        .unwrap();
    assert_eq!(sealed.into_inner().status, BookieStatus::BookieOk as i32);
    let outcome = recover(&spec, 3, &cluster.pool).await.unwrap();
    assert!(outcome.already_sealed);
    assert_eq!(outcome.last_entry_id, 3);
    for bookie in &cluster.bookies {
        assert_eq!(bookie.segment(SEGMENT).unwrap().sealed, Some(3));
    }
}

#[tokio::test]
async fn recovery_stops_at_the_first_entry_no_bookie_has() {
    let cluster = cluster(3, options()).await;
    let spec = cluster.spec(3, 2);
    for id in 0..5 {
        for bookie in &cluster.bookies {
            bookie.plant(SEGMENT, id, id, b"x");
        }
    }
    // A hole at 5; entry 6 reached one bookie only and was never confirmed.
    cluster.bookies[0].plant(SEGMENT, 6, 6, b"x");
    let outcome = recover(&spec, 2, &cluster.pool).await.unwrap();
    assert_eq!(outcome.last_entry_id, 4);
    assert_eq!(outcome.copies_written, 0);
    assert_eq!(cluster.bookies[1].held(SEGMENT), (0..5).collect::<Vec<_>>());
}

#[tokio::test]
async fn recovery_of_an_empty_segment_seals_it_empty() {
    let cluster = cluster(3, options()).await;
    let outcome = recover(&cluster.spec(3, 2), 2, &cluster.pool)
        .await
        .unwrap();
    assert_eq!(outcome.last_entry_id, NO_ENTRY);
    assert_eq!(outcome.last_entry, None);
    for bookie in &cluster.bookies {
        assert_eq!(bookie.segment(SEGMENT).unwrap().sealed, Some(NO_ENTRY));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_with_one_bookie_down_re_replicates_to_the_others() {
    let cluster = cluster(3, options()).await;
    let spec = cluster.spec(3, 2);
    let mut writer = cluster.writer(3, 2);
    assert!(append_pipelined(&mut writer, 0, 5)
        .await
        .iter()
        .all(Result::is_ok));
    for bookie in &cluster.bookies {
        eventually("every bookie holds entries 0..5", || {
            bookie.held(SEGMENT).len() == 5
        })
        .await;
    }
    cluster.bookies[1].set_ack_mode(AckMode::Swallow);
    cluster.bookies[2].set_ack_mode(AckMode::Swallow);
    let _unconfirmed = writer.add(payload(5), 50).await.unwrap();
    eventually("bookie 0 holds entry 5", || {
        cluster.bookies[0].held(SEGMENT).contains(&5)
    })
    .await;
    writer.abort().await;
    cluster.bookies[1].set_ack_mode(AckMode::Normal);
    cluster.bookies[2].kill();
    let outcome = recover(&spec, 2, &cluster.pool).await.unwrap();
    assert_eq!(outcome.last_entry_id, 5);
    assert_eq!(outcome.copies_written, 1);
    assert!(cluster.bookies[1].held(SEGMENT).contains(&5));
}

#[tokio::test]
async fn recovery_refuses_to_decide_without_a_fence_quorum() {
    let cluster = cluster(3, options()).await;
    cluster.bookies[0].kill();
    cluster.bookies[1].kill();
    let error = recover(&cluster.spec(3, 2), 2, &cluster.pool)
        .await
        .unwrap_err();
    assert!(
        matches!(error, LedgerError::RecoveryIncomplete { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("fenced on 1 of 3 bookies"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn striped_recovery_checks_every_write_set() {
    let cluster = cluster(4, options()).await;
    let spec = cluster.spec(3, 2);
    let mut writer = cluster.writer(3, 2);
    assert!(append_pipelined(&mut writer, 0, 20)
        .await
        .iter()
        .all(Result::is_ok));
    drop(writer);
    // Bookies 0 and 2 down: write set {0, 1, 2} has one fenced bookie, too few.
    cluster.bookies[0].kill();
    cluster.bookies[2].kill();
    let error = recover(&spec, 2, &cluster.pool).await.unwrap_err();
    assert!(
        matches!(error, LedgerError::RecoveryIncomplete { .. }),
        "{error}"
    );

    let cluster = self::cluster(4, options()).await;
    let spec = cluster.spec(3, 2);
    let mut writer = cluster.writer(3, 2);
    assert!(append_pipelined(&mut writer, 0, 20)
        .await
        .iter()
        .all(Result::is_ok));
    drop(writer);
    cluster.bookies[1].kill();
    let outcome = recover(&spec, 2, &cluster.pool).await.unwrap();
    assert_eq!(outcome.last_entry_id, 19);
}

// ---- reader ----

async fn sealed_segment(cluster: &Cluster, write_quorum: usize, entries: i64) -> LedgerSpec {
    let mut writer = cluster.writer(write_quorum, 2);
    assert!(append_pipelined(&mut writer, 0, entries)
        .await
        .iter()
        .all(Result::is_ok));
    let spec = writer.spec().clone();
    assert_eq!(writer.seal().await.unwrap(), entries - 1);
    spec
}

#[tokio::test]
async fn reads_fall_back_to_another_replica() {
    let cluster = cluster(3, options()).await;
    let spec = sealed_segment(&cluster, 3, 10).await;
    let reader = LedgerReader::new(spec, &cluster.pool).unwrap().prefer([0]);
    let batch = reader.read(0, -1, u32::MAX).await.unwrap();
    let ids: Vec<i64> = batch.entries.iter().map(|e| e.entry_id).collect();
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
    assert_eq!(batch.last_add_confirmed, 9);
    cluster.bookies[0].kill();
    let again = reader.read(3, 5, u32::MAX).await.unwrap();
    let ids: Vec<i64> = again.entries.iter().map(|e| e.entry_id).collect();
    assert_eq!(ids, vec![3, 4, 5]);
    assert_eq!(again.entries[0].payload, payload(3));
}

#[tokio::test]
async fn reads_stop_at_the_byte_budget_and_past_the_end() {
    let cluster = cluster(3, options()).await;
    let spec = sealed_segment(&cluster, 3, 10).await;
    let reader = LedgerReader::new(spec, &cluster.pool).unwrap();
    let one = payload(0).len() as u32;
    let batch = reader.read(0, -1, 3 * one).await.unwrap();
    assert_eq!(batch.entries.len(), 3);
    assert_eq!(batch.next_entry_id(), Some(3));
    let error = reader.read(10, -1, u32::MAX).await.unwrap_err();
    assert!(
        matches!(error, LedgerError::NoSuchEntry { entry_id: 10, .. }),
        "{error}"
    );
}

#[tokio::test]
async fn reads_from_a_kafka_offset_start_at_the_entry_that_holds_it() {
    let cluster = cluster(3, options()).await;
    let spec = sealed_segment(&cluster, 3, 10).await;
    let reader = LedgerReader::new(spec, &cluster.pool).unwrap();
    // Entry i holds offsets 10 * i ..= 10 * i + 9.
    let batch = reader.read_from_offset(25, 4, u32::MAX).await.unwrap();
    let ids: Vec<i64> = batch.entries.iter().map(|e| e.entry_id).collect();
    assert_eq!(ids, vec![2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn striped_reads_gather_entries_from_every_write_set() {
    let cluster = cluster(5, options()).await;
    let spec = sealed_segment(&cluster, 2, 20).await;
    let reader = LedgerReader::new(spec, &cluster.pool).unwrap();
    let batch = reader.read(0, -1, u32::MAX).await.unwrap();
    let ids: Vec<i64> = batch.entries.iter().map(|e| e.entry_id).collect();
    assert_eq!(ids, (0..20).collect::<Vec<_>>());
    let from_offset = reader.read_from_offset(55, -1, u32::MAX).await.unwrap();
    assert_eq!(from_offset.entries.first().map(|e| e.entry_id), Some(5));
    assert_eq!(from_offset.entries.len(), 15);
}
