//! Tests of the whole storage engine on real files in temporary directories.

use super::gc::{GarbageCollector, SegmentFate};
use super::*;
use bytes::Bytes;
use std::path::Path;
use std::time::Instant;
use strata_proto::bookie::read_entries_request::Start;
use strata_proto::bookie::BookieStatus;

fn config(dir: &Path) -> BookieConfig {
    BookieConfig {
        data_dir: dir.to_path_buf(),
        // Tests must not depend on how full the machine's disk is.
        min_free_bytes: 0,
        ..Default::default()
    }
}

fn payload(segment_id: u64, entry_id: i64) -> Bytes {
    Bytes::from(format!("segment {segment_id} entry {entry_id} ").repeat(4))
}

/// Entry `entry_id` of `segment_id`, written at epoch 1 with the LAC just
/// below it and ten Kafka offsets per entry.
fn add(segment_id: u64, entry_id: i64) -> AddRequest {
    AddRequest {
        segment_id,
        entry_id,
        writer_epoch: 1,
        last_add_confirmed: entry_id - 1,
        base_offset: entry_id * 10,
        payload: payload(segment_id, entry_id),
        recovery: false,
    }
}

fn read_from(segment_id: u64, first: i64, recovery: bool) -> ReadEntriesRequest {
    ReadEntriesRequest {
        segment_id,
        start: Some(Start::FirstEntryId(first)),
        last_entry_id: -1,
        max_bytes: 0,
        recovery,
        known_lac: None,
    }
}

fn entry_ids(result: &ReadResult) -> Vec<i64> {
    result.entries.iter().map(|e| e.entry_id).collect()
}

async fn add_all(storage: &Storage, segment_id: u64, entries: std::ops::Range<i64>) {
    for entry_id in entries {
        storage.add(add(segment_id, entry_id)).await.unwrap();
    }
}

/// Every entry of `segment_id` up to `last`, read with recovery so that the
/// LAC does not hide the tail, checked byte for byte.
fn assert_holds(storage: &Storage, segment_id: u64, last: i64) {
    let result = storage.read(&read_from(segment_id, 0, true)).unwrap();
    assert_eq!(entry_ids(&result), (0..=last).collect::<Vec<_>>());
    for entry in &result.entries {
        assert_eq!(entry.payload, payload(segment_id, entry.entry_id));
        assert_eq!(entry.base_offset, entry.entry_id * 10);
    }
}

/// What a power loss before any checkpoint leaves: only the journal.
fn lose_everything_but_the_journal(dir: &Path) {
    std::fs::remove_dir_all(dir.join("index")).unwrap();
    std::fs::remove_dir_all(dir.join("entry-logs")).unwrap();
}

fn only_journal_file(dir: &Path) -> std::path::PathBuf {
    let ids = list_journal_files(&dir.join("journal")).unwrap();
    assert_eq!(ids.len(), 1, "{ids:?}");
    journal_path(&dir.join("journal"), ids[0])
}

#[tokio::test]
async fn concurrent_adds_share_fsyncs() {
    const ADDS: i64 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&config(dir.path())).unwrap();
    let before = storage.stats();
    let adds = (0..ADDS).map(|entry_id| storage.add(add(7, entry_id)));
    for result in futures::future::join_all(adds).await {
        result.unwrap();
    }
    let stats = storage.stats();
    let fsyncs = stats.journal_fsyncs - before.journal_fsyncs;
    assert_eq!(stats.adds, ADDS as u64);
    assert!(fsyncs >= 1);
    assert!(
        fsyncs < ADDS as u64 / 4,
        "{fsyncs} fsyncs for {ADDS} concurrent adds: group commit is not grouping"
    );
    assert_holds(&storage, 7, ADDS - 1);
}

#[tokio::test]
async fn a_lone_add_does_not_wait_for_company() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&BookieConfig {
        // A wait this long would be obvious.
        journal_max_wait_us: 5_000_000,
        ..config(dir.path())
    })
    .unwrap();
    let started = Instant::now();
    storage.add(add(1, 0)).await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[tokio::test]
async fn never_unsafe_skips_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&BookieConfig {
        journal_sync: crate::config::JournalSync::NeverUnsafe,
        ..config(dir.path())
    })
    .unwrap();
    add_all(&storage, 1, 0..5).await;
    let stats = storage.stats();
    assert_eq!((stats.adds, stats.journal_fsyncs), (5, 0));
    assert!(stats.journal_writes >= 1);
}

#[tokio::test]
async fn acknowledged_entries_are_replayed_from_the_journal_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = Storage::open(&config(dir.path())).unwrap();
        add_all(&storage, 1, 0..20).await;
        add_all(&storage, 2, 0..5).await;
        storage.fence(2, 3).await.unwrap();
        // Dropped without a checkpoint: only the journal has it all.
    }
    lose_everything_but_the_journal(dir.path());
    let storage = Storage::open(&config(dir.path())).unwrap();
    assert_eq!(storage.stats().replayed_records, 26);
    assert_holds(&storage, 1, 19);
    assert_holds(&storage, 2, 4);
    assert_eq!(storage.segment(2).unwrap().fenced_epoch, 3);
    assert_eq!(storage.segment(1).unwrap().last_add_confirmed, 18);
}

#[tokio::test]
async fn replaying_over_a_surviving_index_changes_nothing_visible() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = Storage::open(&config(dir.path())).unwrap();
        add_all(&storage, 1, 0..10).await;
    }
    for _ in 0..2 {
        let storage = Storage::open(&config(dir.path())).unwrap();
        assert_holds(&storage, 1, 9);
        assert_eq!(
            storage.segment(1).unwrap().bytes,
            10 * payload(1, 0).len() as u64
        );
    }
    // A clean close checkpoints: nothing is left to replay.
    Storage::open(&config(dir.path())).unwrap().close().unwrap();
    let storage = Storage::open(&config(dir.path())).unwrap();
    assert_eq!(storage.stats().replayed_records, 0);
    assert_holds(&storage, 1, 9);
}

#[tokio::test]
async fn a_torn_journal_tail_is_dropped_and_the_bookie_starts() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = Storage::open(&config(dir.path())).unwrap();
        add_all(&storage, 1, 0..5).await;
    }
    lose_everything_but_the_journal(dir.path());
    // Cut the last record in half, as a crash in the middle of its write would.
    let path = only_journal_file(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    let last_frame = frame_len(&JournalRecord::Add(AddRecord {
        segment_id: 1,
        entry_id: 4,
        last_add_confirmed: 3,
        base_offset: 40,
        payload: payload(1, 4),
    })) as u64;
    truncate_journal(&path, len - last_frame / 2);

    let storage = Storage::open(&config(dir.path())).unwrap();
    assert_eq!(storage.stats().replayed_records, 4);
    assert_holds(&storage, 1, 3);
    // The torn entry is not there; reading forward from it finds the end.
    let beyond = storage.read(&read_from(1, 4, true)).unwrap();
    assert!(beyond.entries.is_empty());
    // And the bookie takes it again.
    storage.add(add(1, 4)).await.unwrap();
    assert_holds(&storage, 1, 4);
}

#[tokio::test]
async fn a_damaged_journal_record_ends_the_replay_there() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = Storage::open(&config(dir.path())).unwrap();
        add_all(&storage, 1, 0..6).await;
    }
    lose_everything_but_the_journal(dir.path());
    let path = only_journal_file(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    // Flip one payload byte of the third record (entry 2).
    let frame = frame_len(&JournalRecord::Add(AddRecord {
        segment_id: 1,
        entry_id: 0,
        last_add_confirmed: -1,
        base_offset: 0,
        payload: payload(1, 0),
    }));
    let third = journal::JOURNAL_HEADER_LEN as usize + 2 * frame;
    bytes[third + frame - 3] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();

    let storage = Storage::open(&config(dir.path())).unwrap();
    assert_eq!(storage.stats().replayed_records, 2);
    assert_holds(&storage, 1, 1);
    let damaged = storage.read(&read_from(1, 2, true)).unwrap();
    assert!(
        damaged.entries.is_empty(),
        "no entry with damaged bytes is served"
    );
}

fn truncate_journal(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[tokio::test]
async fn fencing_refuses_older_writers_but_not_recovery() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = Storage::open(&config(dir.path())).unwrap();
        add_all(&storage, 5, 0..3).await;
        let fenced = storage.fence(5, 2).await.unwrap();
        assert_eq!(
            fenced,
            FenceResult {
                last_add_confirmed: 1,
                last_entry_id: 2
            }
        );
        let refused = storage.add(add(5, 3)).await.unwrap_err();
        assert_eq!(refused.status(), BookieStatus::BookieFenced);
        assert!(
            refused.to_string().contains("fenced at epoch 2"),
            "{refused}"
        );
        // A stale fencer is refused too.
        assert_eq!(
            storage.fence(5, 1).await.unwrap_err().status(),
            BookieStatus::BookieFenced
        );
        // Recovery at the fencing epoch re-writes entries.
        let recovery = AddRequest {
            writer_epoch: 2,
            recovery: true,
            ..add(5, 3)
        };
        storage.add(recovery).await.unwrap();
        // Fencing a segment this bookie never saw creates it, fenced.
        let empty = storage.fence(6, 4).await.unwrap();
        assert_eq!((empty.last_add_confirmed, empty.last_entry_id), (-1, -1));
    }
    // The fence survives a crash.
    let storage = Storage::open(&config(dir.path())).unwrap();
    assert_eq!(
        storage.add(add(5, 4)).await.unwrap_err().status(),
        BookieStatus::BookieFenced
    );
    assert_eq!(
        storage.add(add(6, 0)).await.unwrap_err().status(),
        BookieStatus::BookieFenced
    );
    assert_eq!(storage.segment(5).unwrap().last_entry_id, 3);
}

#[tokio::test]
async fn sealed_segments_refuse_adds_except_recovery_re_adds() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&config(dir.path())).unwrap();
    add_all(&storage, 3, 0..4).await;
    storage.seal(3, 1, 2).await.unwrap();
    let refused = storage.add(add(3, 4)).await.unwrap_err();
    assert_eq!(refused.status(), BookieStatus::BookieSealed);
    let recovery = |entry_id| AddRequest {
        recovery: true,
        ..add(3, entry_id)
    };
    storage.add(recovery(1)).await.unwrap();
    assert_eq!(
        storage.add(recovery(5)).await.unwrap_err().status(),
        BookieStatus::BookieSealed
    );
    // Sealing again at the same end is fine; at another end it is not.
    storage.seal(3, 1, 2).await.unwrap();
    assert_eq!(
        storage.seal(3, 1, 3).await.unwrap_err().status(),
        BookieStatus::BookieSealed
    );
    let summary = storage.segment(3).unwrap();
    assert!(summary.sealed);
    assert_eq!(summary.last_add_confirmed, 2);
    // Readers stop at the sealed end, even with recovery.
    let read = storage.read(&read_from(3, 0, true)).unwrap();
    assert_eq!(entry_ids(&read), vec![0, 1, 2]);
    assert_eq!(read.last_add_confirmed, 2);
}

#[tokio::test]
async fn reads_stop_at_the_lac_unless_recovering() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&config(dir.path())).unwrap();
    add_all(&storage, 1, 0..10).await;
    // The last add carried LAC 8.
    let read = storage.read(&read_from(1, 0, false)).unwrap();
    assert_eq!(entry_ids(&read), (0..=8).collect::<Vec<_>>());
    assert_eq!(read.last_add_confirmed, 8);
    // Past the LAC: nothing yet, which is not an error.
    let tail = storage.read(&read_from(1, 9, false)).unwrap();
    assert!(tail.entries.is_empty());
    assert_eq!(tail.last_add_confirmed, 8);
    let recovery = storage.read(&read_from(1, 9, true)).unwrap();
    assert_eq!(entry_ids(&recovery), vec![9]);
    // Past the last entry held, recovery finds the end: empty and OK.
    assert!(storage
        .read(&read_from(1, 10, true))
        .unwrap()
        .entries
        .is_empty());
    // An explicit last entry bounds the range.
    let range = storage
        .read(&ReadEntriesRequest {
            last_entry_id: 4,
            ..read_from(1, 2, false)
        })
        .unwrap();
    assert_eq!(entry_ids(&range), vec![2, 3, 4]);
    // The writer's own LAC opens the tail to readers it tells, up to what
    // this bookie holds.
    let told = storage
        .read(&ReadEntriesRequest {
            known_lac: Some(12),
            ..read_from(1, 9, false)
        })
        .unwrap();
    assert_eq!(entry_ids(&told), vec![9]);
}

#[tokio::test]
async fn reads_find_the_entry_holding_a_kafka_offset() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&config(dir.path())).unwrap();
    add_all(&storage, 1, 0..6).await;
    let at = |offset| ReadEntriesRequest {
        start: Some(Start::KafkaOffset(offset)),
        last_entry_id: 3,
        ..read_from(1, 0, false)
    };
    // Entry n holds offsets 10n..10n+9.
    assert_eq!(entry_ids(&storage.read(&at(0)).unwrap()), vec![0, 1, 2, 3]);
    assert_eq!(entry_ids(&storage.read(&at(27)).unwrap()), vec![2, 3]);
    assert_eq!(entry_ids(&storage.read(&at(30)).unwrap()), vec![3]);
    // Offsets in entries past the LAC (4) are not readable yet.
    assert!(storage
        .read(&ReadEntriesRequest {
            last_entry_id: -1,
            ..at(55)
        })
        .unwrap()
        .entries
        .is_empty());
}

#[tokio::test]
async fn reads_fill_max_bytes_but_always_return_one_entry() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&config(dir.path())).unwrap();
    add_all(&storage, 1, 0..10).await;
    let size = payload(1, 0).len() as u32;
    let read = |max_bytes| {
        storage
            .read(&ReadEntriesRequest {
                max_bytes,
                ..read_from(1, 0, true)
            })
            .unwrap()
    };
    assert_eq!(read(3 * size).entries.len(), 3);
    assert_eq!(read(3 * size + 1).entries.len(), 3);
    assert_eq!(read(1).entries.len(), 1);
    assert_eq!(read(0).entries.len(), 10, "0 asks for the bookie's default");
}

#[tokio::test]
async fn bad_requests_are_refused_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&config(dir.path())).unwrap();
    add_all(&storage, 1, 0..2).await;
    let invalid = BookieStatus::BookieInvalidRequest;
    for bad in [
        AddRequest {
            entry_id: -1,
            ..add(1, 0)
        },
        AddRequest {
            base_offset: -5,
            ..add(1, 0)
        },
        AddRequest {
            last_add_confirmed: -2,
            ..add(1, 0)
        },
        AddRequest {
            payload: Bytes::from(vec![0; 5 << 20]),
            ..add(1, 2)
        },
    ] {
        assert_eq!(storage.add(bad).await.unwrap_err().status(), invalid);
    }
    for bad in [
        ReadEntriesRequest {
            start: None,
            ..read_from(1, 0, false)
        },
        read_from(1, -3, false),
        ReadEntriesRequest {
            last_entry_id: -7,
            ..read_from(1, 0, false)
        },
    ] {
        assert_eq!(storage.read(&bad).unwrap_err().status(), invalid);
    }
    assert_eq!(
        storage.read(&read_from(99, 0, false)).unwrap_err().status(),
        BookieStatus::BookieNoSuchSegment
    );
    assert_eq!(storage.fence(1, 0).await.unwrap_err().status(), invalid);
    assert_eq!(storage.seal(1, 1, -2).await.unwrap_err().status(), invalid);
}

#[tokio::test]
async fn a_full_disk_refuses_adds_but_serves_reads_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = Storage::open(&config(dir.path())).unwrap();
        add_all(&storage, 1, 0..3).await;
        add_all(&storage, 2, 0..3).await;
    }
    let storage = Storage::open(&BookieConfig {
        min_free_bytes: u64::MAX,
        ..config(dir.path())
    })
    .unwrap();
    let refused = storage.add(add(1, 3)).await.unwrap_err();
    assert_eq!(refused.status(), BookieStatus::BookieDiskFull);
    assert!(
        refused.to_string().contains("disk nearly full"),
        "{refused}"
    );
    assert_holds(&storage, 1, 2);
    storage.delete_segment(2).await.unwrap();
    assert!(storage.segment(2).is_none());
}

#[tokio::test]
async fn deleted_segments_are_gone_for_good() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = Storage::open(&config(dir.path())).unwrap();
        add_all(&storage, 1, 0..3).await;
        add_all(&storage, 2, 0..3).await;
        storage.delete_segment(1).await.unwrap();
        storage.delete_segment(1).await.unwrap();
        storage.delete_segment(42).await.unwrap();
        assert_eq!(
            storage.read(&read_from(1, 0, true)).unwrap_err().status(),
            BookieStatus::BookieNoSuchSegment
        );
    }
    // Replaying the journal does not bring it back.
    let storage = Storage::open(&config(dir.path())).unwrap();
    let ids: Vec<u64> = storage.segments().iter().map(|s| s.segment_id).collect();
    assert_eq!(ids, vec![2]);
    assert_holds(&storage, 2, 2);
}

#[tokio::test]
async fn checkpoints_trim_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&BookieConfig {
        journal_file_bytes: 1024,
        ..config(dir.path())
    })
    .unwrap();
    add_all(&storage, 1, 0..40).await;
    let journal_dir = dir.path().join("journal");
    assert!(list_journal_files(&journal_dir).unwrap().len() > 3);
    let checkpoint = storage.checkpoint().unwrap();
    let left = list_journal_files(&journal_dir).unwrap();
    assert_eq!(left, vec![checkpoint.file_id]);
    drop(storage);
    let storage = Storage::open(&config(dir.path())).unwrap();
    assert_eq!(storage.stats().replayed_records, 0);
    assert_holds(&storage, 1, 39);
}

#[tokio::test]
async fn gc_deletes_what_metadata_deleted_and_drops_offloaded_and_replaced_after_grace() {
    let dir = tempfile::tempdir().unwrap();
    let config = BookieConfig {
        gc_offloaded_grace_ms: 60_000,
        ..config(dir.path())
    };
    let storage = Storage::open(&config).unwrap();
    for segment_id in 1..=4 {
        add_all(&storage, segment_id, 0..3).await;
    }
    let fate = |segment_id| match segment_id {
        1 => SegmentFate::Deleted,
        2 => SegmentFate::Offloaded,
        3 => SegmentFate::Replaced,
        _ => SegmentFate::Keep,
    };
    let mut gc = GarbageCollector::new(&config);
    let start = Instant::now();
    let report = gc.run_once(&storage, fate, start).unwrap();
    assert_eq!(report.deleted_segments, vec![1]);
    let report = gc
        .run_once(&storage, fate, start + std::time::Duration::from_secs(61))
        .unwrap();
    assert_eq!(report.deleted_segments, vec![2, 3]);
    let ids: Vec<u64> = storage.segments().iter().map(|s| s.segment_id).collect();
    assert_eq!(ids, vec![4]);
    assert_holds(&storage, 4, 2);
}

#[tokio::test]
async fn compaction_reclaims_mostly_dead_logs_and_keeps_the_rest_readable() {
    let dir = tempfile::tempdir().unwrap();
    let config = BookieConfig {
        entry_log_file_bytes: 4096,
        ..config(dir.path())
    };
    let storage = Storage::open(&config).unwrap();
    // Interleave a segment that stays with one that goes, so every log is
    // mostly dead but not empty once the second is deleted; then one log of
    // only the doomed segment.
    for entry_id in 0..60 {
        storage.add(add(1, entry_id)).await.unwrap();
        for other in 0..3 {
            storage.add(add(2, entry_id * 3 + other)).await.unwrap();
        }
    }
    add_all(&storage, 2, 180..240).await;
    let logs_before = storage.shared.logs.list().unwrap();
    assert!(logs_before.len() > 5, "{logs_before:?}");
    storage.delete_segment(2).await.unwrap();
    // Roll past the logs written so far, so that they may all be collected.
    add_all(&storage, 3, 0..30).await;

    let mut gc = GarbageCollector::new(&config);
    let report = gc
        .run_once(&storage, |_| SegmentFate::Keep, Instant::now())
        .unwrap();
    assert!(!report.compacted_logs.is_empty(), "{report:?}");
    assert!(!report.removed_logs.is_empty(), "{report:?}");
    assert!(report.moved_bytes > 0);
    let logs_after = storage.shared.logs.list().unwrap();
    for gone in report.compacted_logs.iter().chain(&report.removed_logs) {
        assert!(!logs_after.contains(gone));
    }
    assert_holds(&storage, 1, 59);
    assert_holds(&storage, 3, 29);
    let stats = storage.stats();
    assert_eq!(
        stats.logs_compacted + stats.logs_removed,
        (report.compacted_logs.len() + report.removed_logs.len()) as u64
    );

    // The moved entries survive a restart, and a second pass finds little to do.
    drop(gc);
    drop(storage);
    let storage = Storage::open(&config).unwrap();
    assert_holds(&storage, 1, 59);
    assert_holds(&storage, 3, 29);
}
