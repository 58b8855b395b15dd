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
async fn recovery_ends_where_every_bookie_has_a_gap() {
    let cluster = cluster(3, options()).await;
    let spec = cluster.spec(3, 2);
    for bookie in &cluster.bookies {
        for id in (0..5).chain([6]) {
            bookie.plant(SEGMENT, id, id, b"x");
        }
    }
    // Every bookie answers entry 5 with NO_SUCH_ENTRY (it holds entry 6).
    let outcome = recover(&spec, 2, &cluster.pool).await.unwrap();
    assert_eq!(outcome.last_entry_id, 4);
    assert_eq!(outcome.recovered_entries, 5);
    assert_eq!(outcome.last_entry.unwrap().entry_id, 4);
    for bookie in &cluster.bookies {
        assert_eq!(bookie.segment(SEGMENT).unwrap().sealed, Some(4));
    }
}

#[tokio::test]
async fn recovery_ends_where_every_bookie_answers_without_the_entry() {
    let cluster = cluster(3, options()).await;
    let spec = cluster.spec(3, 2);
    for bookie in &cluster.bookies {
        for id in 0..5 {
            bookie.plant(SEGMENT, id, id, b"x");
        }
        bookie.set_last_add_confirmed(SEGMENT, 2);
    }
    // Entry 5 is past the last entry every bookie holds: OK with no entries.
    let outcome = recover(&spec, 2, &cluster.pool).await.unwrap();
    assert_eq!(outcome.fenced_last_add_confirmed, 2);
    assert_eq!(outcome.last_entry_id, 4);
    assert_eq!(outcome.recovered_entries, 2);
    assert_eq!(outcome.copies_written, 0);
}

#[tokio::test]
async fn recovery_counts_gaps_and_empty_answers_alike() {
    let cluster = cluster(3, options()).await;
    let spec = cluster.spec(3, 2);
    for bookie in &cluster.bookies {
        for id in 0..5 {
            bookie.plant(SEGMENT, id, id, b"x");
        }
    }
    // Of entry 5's write set, bookie 0 has a gap there (NO_SUCH_ENTRY),
    // bookie 1 ends before it (OK, no entries), bookie 2 is down: two of
    // three lack it, so it was never confirmed.
    cluster.bookies[0].plant(SEGMENT, 6, 6, b"x");
    cluster.bookies[2].kill();
    let outcome = recover(&spec, 2, &cluster.pool).await.unwrap();
    assert_eq!(outcome.last_entry_id, 4);
    assert_eq!(cluster.bookies[1].segment(SEGMENT).unwrap().sealed, Some(4));
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
    // 0 bytes reads one entry (not the bookie's maximum).
    let batch = reader.read(4, -1, 0).await.unwrap();
    let ids: Vec<i64> = batch.entries.iter().map(|e| e.entry_id).collect();
    assert_eq!(ids, vec![4]);
    // Past the sealed end every bookie answers OK with no entries.
    let past = reader.read(10, -1, u32::MAX).await.unwrap();
    assert_eq!(
        past,
        ReadBatch {
            entries: Vec::new(),
            last_add_confirmed: 9
        }
    );
}

#[tokio::test]
async fn reads_of_an_entry_no_replica_has_fail_and_reads_past_the_lac_are_empty() {
    let cluster = cluster(3, options()).await;
    let spec = cluster.spec(3, 2);
    for bookie in &cluster.bookies {
        for id in 0..4 {
            bookie.plant(SEGMENT, id, id * 10, b"x");
        }
        // Entries 4 and 5 are confirmed, but no bookie has entry 4.
        bookie.plant(SEGMENT, 5, 50, b"x");
        bookie.set_last_add_confirmed(SEGMENT, 5);
    }
    let reader = LedgerReader::new(spec, &cluster.pool).unwrap();
    let batch = reader.read(0, -1, u32::MAX).await.unwrap();
    let ids: Vec<i64> = batch.entries.iter().map(|e| e.entry_id).collect();
    assert_eq!(ids, (0..4).collect::<Vec<_>>(), "the run stops at the gap");
    let error = reader.read(4, -1, u32::MAX).await.unwrap_err();
    assert!(
        matches!(error, LedgerError::NoSuchEntry { entry_id: 4, .. }),
        "{error}"
    );
    let tail = reader.read(6, -1, u32::MAX).await.unwrap();
    assert!(tail.entries.is_empty());
    assert_eq!(tail.last_add_confirmed, 5);
    // A segment no bookie holds: every one answers NO_SUCH_SEGMENT.
    let ensemble = cluster.bookies.iter().map(FakeBookie::addr).collect();
    let unknown = LedgerSpec::new(SEGMENT + 1, ensemble, 3, 2).unwrap();
    let error = LedgerReader::new(unknown, &cluster.pool)
        .unwrap()
        .read(0, -1, u32::MAX)
        .await
        .unwrap_err();
    assert!(matches!(error, LedgerError::NoSuchEntry { .. }), "{error}");
}

#[tokio::test]
async fn reads_go_past_a_replica_whose_lac_lags() {
    let cluster = cluster(3, options()).await;
    let spec = cluster.spec(3, 2);
    for (index, bookie) in cluster.bookies.iter().enumerate() {
        for id in 0..10 {
            bookie.plant(SEGMENT, id, id * 10, b"x");
        }
        // Bookie 0 missed the adds that carried the newer LACs.
        bookie.set_last_add_confirmed(SEGMENT, if index == 0 { 4 } else { 9 });
    }
    let reader = LedgerReader::new(spec, &cluster.pool).unwrap().prefer([0]);
    let batch = reader.read(0, -1, u32::MAX).await.unwrap();
    let ids: Vec<i64> = batch.entries.iter().map(|e| e.entry_id).collect();
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
    assert_eq!(batch.last_add_confirmed, 9);
    let from_offset = reader.read_from_offset(75, -1, u32::MAX).await.unwrap();
    let ids: Vec<i64> = from_offset.entries.iter().map(|e| e.entry_id).collect();
    assert_eq!(ids, vec![7, 8, 9]);
    let tail = reader.read(10, -1, u32::MAX).await.unwrap();
    assert!(tail.entries.is_empty());
    assert_eq!(
        tail.last_add_confirmed, 9,
        "the highest LAC of the replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_past_a_bookie_the_writer_dropped() {
    let cluster = cluster(3, options()).await;
    let mut writer = cluster.writer(3, 2);
    for id in 0..3 {
        assert_eq!(writer.append(payload(id), id * 10).await.unwrap(), id);
    }
    cluster.bookies[0].set_add_failure(Some(BookieStatus::BookieIoError));
    assert!(append_pipelined(&mut writer, 3, 7)
        .await
        .iter()
        .all(Result::is_ok));
    eventually("the refusing bookie is dropped", || {
        failed_indexes(&writer) == vec![0]
    })
    .await;
    let spec = writer.spec().clone();
    // Sealed on the two live bookies only: bookie 0 keeps its old LAC.
    assert_eq!(writer.seal().await.unwrap(), 9);
    let stale = cluster.bookies[0].segment(SEGMENT).unwrap();
    assert_eq!(stale.sealed, None);
    assert!(stale.last_add_confirmed < 9);
    let reader = LedgerReader::new(spec, &cluster.pool).unwrap().prefer([0]);
    let batch = reader.read(0, -1, u32::MAX).await.unwrap();
    let ids: Vec<i64> = batch.entries.iter().map(|e| e.entry_id).collect();
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
    assert_eq!(batch.last_add_confirmed, 9);
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

// ---- the fake answers as the real bookie does ----

/// The same requests, and the answers `bookie.proto` documents, against the
/// fake and against a real bookie (`crate::service` over `crate::storage`).
mod bookie_rules {
    use super::*;
    use crate::service::BookieGrpc;
    use crate::storage::Storage;
    use crate::BookieConfig;
    use std::sync::Arc;
    use strata_proto::bookie::bookie_service_client::BookieServiceClient;
    use strata_proto::bookie::bookie_service_server::BookieServiceServer;
    use strata_proto::bookie::read_entries_request::Start;
    use strata_proto::bookie::{
        AddRequest, DeleteSegmentRequest, FenceRequest, ListSegmentsRequest, ReadEntriesRequest,
        ReadLacRequest, ReadLacResponse,
    };
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;
    use tonic::transport::Channel;

    type Client = BookieServiceClient<Channel>;

    const SEG: u64 = 7;
    /// Two entries' payload: what one read returns at most.
    const MAX_READ_BYTES: u64 = 14;

    /// 7 bytes each for ids below 10.
    fn body(entry_id: i64) -> Bytes {
        Bytes::from(format!("entry-{entry_id}"))
    }

    fn add(entry_id: i64, epoch: u32, lac: i64, recovery: bool) -> AddRequest {
        AddRequest {
            segment_id: SEG,
            entry_id,
            writer_epoch: epoch,
            last_add_confirmed: lac,
            // Entry i holds offsets 10 * i + 10 ..= 10 * i + 19.
            base_offset: 10 * entry_id + 10,
            payload: body(entry_id),
            recovery,
        }
    }

    fn status(code: i32) -> BookieStatus {
        BookieStatus::try_from(code).unwrap()
    }

    async fn add_one(client: &mut Client, request: AddRequest) -> BookieStatus {
        let (requests, outbound) = tokio::sync::mpsc::channel(1);
        requests.send(request).await.unwrap();
        let mut answers = client
            .add_entries(tokio_stream::wrappers::ReceiverStream::new(outbound))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.message().await.unwrap().expect("an answer");
        drop(requests);
        status(answer.status)
    }

    /// `(status, entry ids, LAC)` of a read.
    async fn read(
        client: &mut Client,
        segment_id: u64,
        start: Option<Start>,
        last_entry_id: i64,
        max_bytes: u32,
        recovery: bool,
    ) -> (BookieStatus, Vec<i64>, i64) {
        let answer = client
            .read_entries(ReadEntriesRequest {
                segment_id,
                start,
                last_entry_id,
                max_bytes,
                recovery,
                known_lac: None,
            })
            .await
            .unwrap()
            .into_inner();
        for entry in &answer.entries {
            assert_eq!(entry.payload, body(entry.entry_id));
            assert_eq!(entry.base_offset, 10 * entry.entry_id + 10);
        }
        let ids = answer.entries.iter().map(|e| e.entry_id).collect();
        (status(answer.status), ids, answer.last_add_confirmed)
    }

    async fn from(
        client: &mut Client,
        first: i64,
        max_bytes: u32,
    ) -> (BookieStatus, Vec<i64>, i64) {
        read(
            client,
            SEG,
            Some(Start::FirstEntryId(first)),
            -1,
            max_bytes,
            false,
        )
        .await
    }

    async fn recovery_read(client: &mut Client, first: i64) -> (BookieStatus, Vec<i64>, i64) {
        read(client, SEG, Some(Start::FirstEntryId(first)), -1, 0, true).await
    }

    async fn at_offset(client: &mut Client, offset: i64) -> (BookieStatus, Vec<i64>, i64) {
        read(client, SEG, Some(Start::KafkaOffset(offset)), -1, 0, false).await
    }

    async fn lac(client: &mut Client, segment_id: u64) -> ReadLacResponse {
        client
            .read_lac(ReadLacRequest { segment_id })
            .await
            .unwrap()
            .into_inner()
    }

    /// `(status, LAC, last entry)` of a fence.
    async fn fence(client: &mut Client, segment_id: u64, epoch: u32) -> (BookieStatus, i64, i64) {
        let answer = client
            .fence(FenceRequest { segment_id, epoch })
            .await
            .unwrap()
            .into_inner();
        (
            status(answer.status),
            answer.last_add_confirmed,
            answer.last_entry_id,
        )
    }

    async fn seal(client: &mut Client, segment_id: u64, epoch: u32, last: i64) -> BookieStatus {
        let answer = client
            .seal(SealRequest {
                segment_id,
                epoch,
                last_entry_id: last,
            })
            .await
            .unwrap()
            .into_inner();
        status(answer.status)
    }

    async fn check_rules(mut client: Client) {
        use BookieStatus::*;
        let client = &mut client;
        let none: Vec<i64> = Vec::new();

        // Unknown segment.
        assert_eq!(
            from(client, 0, 0).await,
            (BookieNoSuchSegment, none.clone(), -1)
        );
        let unknown = lac(client, SEG).await;
        assert_eq!(status(unknown.status), BookieNoSuchSegment);
        assert_eq!(
            (unknown.last_add_confirmed, unknown.last_entry_id),
            (-1, -1)
        );

        // Entries 0..=3 and 5 (a gap at 4); LAC 3; malformed adds refused.
        for id in [0, 1, 2, 3, 5] {
            assert_eq!(
                add_one(client, add(id, 1, (id - 1).min(3), false)).await,
                BookieOk
            );
        }
        assert_eq!(
            add_one(client, add(-1, 1, -1, false)).await,
            BookieInvalidRequest
        );
        let negative_offset = AddRequest {
            base_offset: -1,
            ..add(6, 1, 3, false)
        };
        assert_eq!(add_one(client, negative_offset).await, BookieInvalidRequest);
        assert_eq!(
            add_one(client, add(6, 1, -2, false)).await,
            BookieInvalidRequest
        );
        // An entry already held is acked without writing, nor taking its LAC.
        assert_eq!(add_one(client, add(3, 1, 5, false)).await, BookieOk);
        let open = lac(client, SEG).await;
        assert_eq!(
            (
                open.last_add_confirmed,
                open.last_entry_id,
                open.sealed,
                open.fenced_epoch
            ),
            (3, 5, false, 0)
        );

        // Reads: max_bytes 0 is the bookie's maximum, which also caps.
        assert_eq!(from(client, 0, 0).await, (BookieOk, vec![0, 1], 3));
        assert_eq!(from(client, 0, 1).await, (BookieOk, vec![0], 3));
        assert_eq!(from(client, 0, 1000).await, (BookieOk, vec![0, 1], 3));
        assert_eq!(from(client, 2, 0).await, (BookieOk, vec![2, 3], 3));
        // Past the LAC: OK with no entries and the LAC, held or not.
        assert_eq!(from(client, 4, 0).await, (BookieOk, none.clone(), 3));
        assert_eq!(from(client, 5, 0).await, (BookieOk, none.clone(), 3));
        assert_eq!(from(client, 9, 0).await, (BookieOk, none.clone(), 3));
        let short = read(client, SEG, Some(Start::FirstEntryId(3)), 2, 0, false).await;
        assert_eq!(short, (BookieOk, none.clone(), 3));
        // Malformed reads; refusals carry the LAC too.
        let below = read(client, SEG, Some(Start::FirstEntryId(0)), -2, 0, false).await;
        assert_eq!(below, (BookieInvalidRequest, none.clone(), 3));
        let negative = read(client, SEG, Some(Start::FirstEntryId(-1)), -1, 0, false).await;
        assert_eq!(negative, (BookieInvalidRequest, none.clone(), 3));
        let startless = read(client, SEG, None, -1, 0, false).await;
        assert_eq!(startless, (BookieInvalidRequest, none.clone(), 3));
        // By Kafka offset: the entry with the greatest base offset at or below it.
        assert_eq!(at_offset(client, 35).await, (BookieOk, vec![2, 3], 3));
        assert_eq!(at_offset(client, 10).await, (BookieOk, vec![0, 1], 3));
        assert_eq!(at_offset(client, 55).await, (BookieOk, vec![3], 3));
        assert_eq!(at_offset(client, 65).await, (BookieOk, none.clone(), 3));
        assert_eq!(
            at_offset(client, 5).await,
            (BookieNoSuchEntry, none.clone(), 3)
        );
        // Recovery reads go up to the last entry held, and stop before a gap.
        assert_eq!(recovery_read(client, 3).await, (BookieOk, vec![3], 3));
        assert_eq!(
            recovery_read(client, 4).await,
            (BookieNoSuchEntry, none.clone(), 3)
        );
        assert_eq!(recovery_read(client, 5).await, (BookieOk, vec![5], 3));
        assert_eq!(recovery_read(client, 6).await, (BookieOk, none.clone(), 3));

        // Fencing.
        assert_eq!(fence(client, SEG, 0).await, (BookieInvalidRequest, -1, -1));
        assert_eq!(fence(client, SEG, 2).await, (BookieOk, 3, 5));
        assert_eq!(fence(client, SEG, 2).await, (BookieOk, 3, 5));
        assert_eq!(fence(client, SEG, 1).await, (BookieFenced, -1, -1));
        assert_eq!(add_one(client, add(6, 1, 3, false)).await, BookieFenced);
        assert_eq!(add_one(client, add(6, 1, 3, true)).await, BookieFenced);
        assert_eq!(add_one(client, add(4, 2, 3, true)).await, BookieOk);
        assert_eq!(add_one(client, add(2, 2, 3, true)).await, BookieOk);
        // A segment the bookie never saw is created, fenced and empty.
        assert_eq!(fence(client, 8, 1).await, (BookieOk, -1, -1));
        let fenced = lac(client, 8).await;
        assert_eq!(status(fenced.status), BookieOk);
        assert_eq!(
            (
                fenced.last_add_confirmed,
                fenced.last_entry_id,
                fenced.sealed,
                fenced.fenced_epoch
            ),
            (-1, -1, false, 1)
        );
        let empty = read(client, 8, Some(Start::FirstEntryId(0)), -1, 0, true).await;
        assert_eq!(empty, (BookieOk, none.clone(), -1));

        // Sealing.
        assert_eq!(seal(client, SEG, 1, 5).await, BookieFenced);
        assert_eq!(seal(client, SEG, 2, -2).await, BookieInvalidRequest);
        assert_eq!(seal(client, SEG, 2, 5).await, BookieOk);
        assert_eq!(seal(client, SEG, 2, 5).await, BookieOk);
        assert_eq!(seal(client, SEG, 3, 4).await, BookieSealed);
        let sealed = lac(client, SEG).await;
        assert_eq!(
            (
                sealed.last_add_confirmed,
                sealed.last_entry_id,
                sealed.sealed,
                sealed.fenced_epoch
            ),
            (5, 5, true, 2)
        );
        assert_eq!(from(client, 4, 0).await, (BookieOk, vec![4, 5], 5));
        assert_eq!(from(client, 6, 0).await, (BookieOk, none.clone(), 5));
        assert_eq!(recovery_read(client, 6).await, (BookieOk, none.clone(), 5));
        assert_eq!(fence(client, SEG, 3).await, (BookieOk, 5, 5));
        // Only recovery re-adds of entries already held get in.
        assert_eq!(add_one(client, add(2, 3, 5, false)).await, BookieSealed);
        assert_eq!(add_one(client, add(2, 3, 5, true)).await, BookieOk);
        assert_eq!(add_one(client, add(6, 3, 5, true)).await, BookieSealed);
        // A segment the bookie never saw is created, sealed.
        assert_eq!(seal(client, 9, 1, -1).await, BookieOk);
        let created = lac(client, 9).await;
        assert_eq!((created.last_add_confirmed, created.sealed), (-1, true));

        let listed = client
            .list_segments(ListSegmentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .segments;
        let ids: Vec<u64> = listed.iter().map(|s| s.segment_id).collect();
        assert_eq!(ids, vec![SEG, 8, 9]);
        let seg = &listed[0];
        assert_eq!(
            (
                seg.last_add_confirmed,
                seg.last_entry_id,
                seg.sealed,
                seg.fenced_epoch,
                seg.bytes
            ),
            (5, 5, true, 3, 42)
        );

        // Deleting: OK whether held or not.
        for segment_id in [SEG, 100] {
            let deleted = client
                .delete_segment(DeleteSegmentRequest { segment_id })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(status(deleted.status), BookieOk);
        }
        assert_eq!(status(lac(client, SEG).await.status), BookieNoSuchSegment);
    }

    #[tokio::test]
    async fn the_fake_keeps_the_rules() {
        let bookie = FakeBookie::start().await;
        bookie.set_max_read_bytes(MAX_READ_BYTES);
        let client = BookiePool::new(options()).client(&bookie.addr()).unwrap();
        check_rules(client).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_real_bookie_keeps_the_same_rules() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&BookieConfig {
            data_dir: dir.path().to_path_buf(),
            max_read_bytes: MAX_READ_BYTES,
            min_free_bytes: 0,
            ..Default::default()
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let service = BookieGrpc::new(Arc::new(storage), tasks.clone(), shutdown.clone());
        tasks.spawn(
            tonic::transport::Server::builder()
                .add_service(BookieServiceServer::new(service))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    shutdown.clone().cancelled_owned(),
                ),
        );
        let client = BookiePool::new(options()).client(&addr).unwrap();
        check_rules(client).await;
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
    }
}
