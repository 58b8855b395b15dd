//! Bookie auto-recovery with every role in its own process: killing one of
//! four bookies (E = Qw = 3, Qa = 2) does not stop writes; the cluster reports
//! the sealed segments that lost a replica until the surviving bookies have
//! copied each to a live bookie, which metadata then names in the segment's
//! ensemble; and with a second original bookie killed too, every record is
//! still read back byte for byte, from bookies (the gateway caches nothing).

mod common;

use common::cluster::{Cluster, ClusterOptions};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use strata_proto::bookie::bookie_service_client::BookieServiceClient;
use strata_proto::bookie::{ListSegmentsRequest as BookieListSegments, SegmentSummary};
use strata_proto::metadata::segment_info::State;
use strata_proto::metadata::{ListSegmentsRequest, SegmentInfo};

const TOPIC: &str = "recovered";
const PARTITIONS: u32 = 2;
/// Records per partition before the first bookie dies, and after.
const RECORDS_BEFORE: usize = 150;
const RECORDS_AFTER: usize = 30;
/// About nine one-record batches per segment: many sealed segments.
const SEGMENT_BYTES: &str = "2048";
/// How long a dead bookie's lease must have lapsed before its segments are
/// copied: long enough for the test to see the report, short for the test.
const RECOVERY_DELAY_MS: u64 = 2_000;
const LEASE_MS: u64 = 2_000;

/// The value of record `index` of `partition`: distinct and easy to recognise.
fn value(partition: u32, index: usize) -> Vec<u8> {
    format!("p{partition}-r{index:05}-").repeat(8).into_bytes()
}

fn start_cluster(dir: &std::path::Path) -> Cluster {
    let bookie_config = dir.join("bookie.toml");
    std::fs::write(
        &bookie_config,
        format!(
            "auto_recovery_delay_ms = {RECOVERY_DELAY_MS}\nauto_recovery_interval_ms = 250\n\
             gc_interval_ms = 200\ngc_offloaded_grace_ms = 0\n"
        ),
    )
    .expect("bookie config written");
    let options = ClusterOptions {
        bookies: 4,
        gateways: 1,
        lease_ms: LEASE_MS,
        bookie_args: vec![
            "--config".into(),
            bookie_config.display().to_string(),
            "--journal-sync".into(),
            "never-unsafe".into(),
        ],
        // Every read goes to the bookies, so reads prove the new ensembles.
        gateway_args: vec!["--batch-cache-bytes".into(), "0".into()],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(dir, options);
    cluster.admin_ok(&[
        "topics",
        "create",
        TOPIC,
        "--partitions",
        &PARTITIONS.to_string(),
        "--config",
        &format!("segment.bytes={SEGMENT_BYTES}"),
        // Keep sealed segments on bookies: nothing is offloaded.
        "--config",
        "local.retention.ms=-1",
        "--config",
        "local.retention.bytes=-1",
    ]);
    cluster.wait_balanced(TOPIC, PARTITIONS as usize, Duration::from_secs(30));
    cluster
}

/// Produces records `from..to` of every partition, each acknowledged (acks=all)
/// before the next is sent, so that they land one batch per record.
fn produce(cluster: &Cluster, producer: &FutureProducer, from: usize, to: usize) {
    cluster.block_on(async {
        for index in from..to {
            for partition in 0..PARTITIONS {
                let payload = value(partition, index);
                let record = FutureRecord::<(), _>::to(TOPIC)
                    .partition(partition as i32)
                    .payload(&payload);
                if let Err((error, _)) = producer.send(record, Duration::from_secs(10)).await {
                    panic!("record {index} of partition {partition} not acknowledged: {error}");
                }
            }
        }
    });
}

/// Every live segment of the topic, from metadata.
fn segments(cluster: &Cluster) -> Vec<SegmentInfo> {
    let client = cluster.client();
    let mut all = Vec::new();
    for partition in 0..PARTITIONS {
        let request = ListSegmentsRequest {
            topic: TOPIC.into(),
            partition,
        };
        let listed = cluster
            .block_on(client.send(request, |mut c, request| async move {
                c.list_segments(request).await
            }))
            .expect("metadata lists the segments");
        all.extend(listed.segments);
    }
    all
}

fn is_sealed(segment: &SegmentInfo) -> bool {
    matches!(segment.state, Some(State::Sealed(_)))
}

/// The segments bookie `id` holds, by segment id, from its own gRPC service.
fn bookie_segments(cluster: &Cluster, id: i32) -> BTreeMap<u64, SegmentSummary> {
    let addr = format!("http://{}", cluster.bookies[id as usize - 1].addr());
    cluster.block_on(async move {
        let mut client = BookieServiceClient::connect(addr.clone())
            .await
            .unwrap_or_else(|e| panic!("bookie at {addr} answers: {e}"));
        let listed = client
            .list_segments(BookieListSegments {})
            .await
            .unwrap_or_else(|e| panic!("bookie at {addr} lists its segments: {e}"))
            .into_inner();
        listed
            .segments
            .into_iter()
            .map(|s| (s.segment_id, s))
            .collect()
    })
}

/// `strata admin segments under-replicated --json`: (segment id, dead bookies).
fn under_replicated(cluster: &Cluster) -> Vec<(u64, Vec<i32>)> {
    let out = cluster.admin_ok(&["segments", "under-replicated", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).expect("the report is JSON");
    let rows = report["segments"].as_array().expect("a list of segments");
    assert_eq!(report["under_replicated"].as_u64(), Some(rows.len() as u64));
    rows.iter()
        .map(|row| {
            let id = row["segment_id"].as_u64().expect("a segment id");
            let dead = row["dead_bookies"]
                .as_array()
                .expect("dead bookies")
                .iter()
                .filter_map(|b| b.as_i64().map(|b| b as i32))
                .collect();
            (id, dead)
        })
        .collect()
}

/// Polls `check` every 100 ms until it returns `Some`, or fails with `what`.
fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads every partition from offset 0 and checks it holds exactly `count`
/// records per partition, each the value produced at its offset.
fn check_every_record(cluster: &Cluster, count: usize) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", "auto-recovery-check")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer is created");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment
            .add_partition_offset(TOPIC, partition as i32, Offset::Offset(0))
            .expect("partition added");
    }
    consumer.assign(&assignment).expect("partitions assigned");
    let mut next: BTreeMap<u32, usize> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while next.values().any(|&n| n < count) {
        assert!(
            Instant::now() < deadline,
            "read {next:?} of {count} records per partition within 30 s"
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                eprintln!("consumer: {error}");
                continue;
            }
        };
        let partition = message.partition() as u32;
        let expected = next[&partition];
        assert_eq!(
            message.offset(),
            expected as i64,
            "partition {partition} is read in order without gaps"
        );
        assert_eq!(
            message.payload(),
            Some(value(partition, expected).as_slice()),
            "record {expected} of partition {partition} is byte-identical"
        );
        next.insert(partition, expected + 1);
    }
    for partition in 0..PARTITIONS {
        let (_, high) = consumer
            .fetch_watermarks(TOPIC, partition as i32, Duration::from_secs(5))
            .expect("high watermark");
        assert_eq!(
            high, count as i64,
            "partition {partition} holds nothing else"
        );
    }
}

#[test]
fn sealed_segments_of_a_dead_bookie_are_re_replicated_to_a_live_one() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(dir.path());
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer is created");
    produce(&cluster, &producer, 0, RECORDS_BEFORE);

    // The bookie in the most sealed segments dies.
    let before = segments(&cluster);
    let mut held: BTreeMap<i32, usize> = BTreeMap::new();
    for segment in before.iter().filter(|s| is_sealed(s)) {
        for &bookie in &segment.ensemble {
            *held.entry(bookie).or_default() += 1;
        }
    }
    let (&victim, &victim_count) = held
        .iter()
        .max_by_key(|(id, count)| (**count, -**id))
        .expect("sealed segments exist");
    assert!(
        victim_count >= 4,
        "several sealed segments on bookie {victim}: {held:?}"
    );
    cluster.bookie(victim as u32).kill();
    let killed_at = Instant::now();

    // Writes go on with two of three replicas.
    produce(
        &cluster,
        &producer,
        RECORDS_BEFORE,
        RECORDS_BEFORE + RECORDS_AFTER,
    );
    producer
        .flush(Duration::from_secs(10))
        .expect("producer flushed");

    // Once the lease lapses, the cluster reports what lost a replica.
    let reported = wait_for(
        "under-replicated segments are reported",
        Duration::from_secs(20),
        || Some(under_replicated(&cluster)).filter(|r| !r.is_empty()),
    );
    assert!(
        reported.iter().all(|(_, dead)| dead == &vec![victim]),
        "only bookie {victim} is dead: {reported:?}"
    );
    // The recovery delay leaves seconds before the copies start.
    let status = cluster.admin_ok(&["status"]);
    let counted = status
        .lines()
        .find_map(|line| line.strip_prefix("under-replicated segments"))
        .and_then(|count| count.trim().parse::<usize>().ok());
    assert!(
        counted.is_some_and(|n| n > 0),
        "status counts under-replicated segments: {status}"
    );

    // Auto-recovery empties the report.
    wait_for(
        "auto-recovery re-replicates every reported segment",
        Duration::from_secs(40),
        || under_replicated(&cluster).is_empty().then_some(()),
    );
    let recovered_in = killed_at.elapsed();

    // Every segment that was sealed on the victim now names a live bookie in
    // its place, at the same position, and that bookie holds a sealed copy as
    // complete as the surviving replicas'.
    let after: BTreeMap<u64, SegmentInfo> = segments(&cluster)
        .into_iter()
        .map(|s| (s.segment_id, s))
        .collect();
    let lost: Vec<&SegmentInfo> = before
        .iter()
        .filter(|s| is_sealed(s) && s.ensemble.contains(&victim))
        .collect();
    let mut on_bookie: BTreeMap<i32, BTreeMap<u64, SegmentSummary>> = BTreeMap::new();
    let mut replacements: BTreeMap<u64, i32> = BTreeMap::new();
    for old in &lost {
        let now = &after[&old.segment_id];
        assert!(is_sealed(now), "segment {} stays sealed", old.segment_id);
        let at = old.ensemble.iter().position(|&b| b == victim).unwrap();
        let replacement = now.ensemble[at];
        assert_ne!(
            replacement, victim,
            "segment {}: {:?}",
            old.segment_id, now.ensemble
        );
        for (i, (&was, &is)) in old.ensemble.iter().zip(&now.ensemble).enumerate() {
            if i != at {
                assert_eq!(
                    was, is,
                    "segment {}: only the lost replica moves",
                    old.segment_id
                );
            }
        }
        replacements.insert(old.segment_id, replacement);
        let survivor = now.ensemble[(at + 1) % now.ensemble.len()];
        for bookie in [replacement, survivor] {
            on_bookie
                .entry(bookie)
                .or_insert_with(|| bookie_segments(&cluster, bookie));
        }
        let copy = on_bookie[&replacement]
            .get(&old.segment_id)
            .unwrap_or_else(|| panic!("bookie {replacement} holds segment {}", old.segment_id));
        let original = &on_bookie[&survivor][&old.segment_id];
        assert!(
            copy.sealed,
            "the copy of segment {} is sealed",
            old.segment_id
        );
        assert_eq!(
            (copy.last_add_confirmed, copy.last_entry_id, copy.bytes),
            (
                original.last_add_confirmed,
                original.last_entry_id,
                original.bytes
            ),
            "the copy of segment {} on bookie {replacement} matches bookie {survivor}'s",
            old.segment_id
        );
    }

    // The dead bookie comes back: the copies it was replaced in are stale,
    // and its garbage collection drops them (the copies written meanwhile,
    // with GC as eager, were never taken for stale ones: checked above).
    cluster.bookie(victim as u32).start();
    wait_for(
        "the returning bookie drops its stale copies",
        Duration::from_secs(20),
        || {
            let held = bookie_segments(&cluster, victim);
            lost.iter()
                .all(|old| !held.contains_key(&old.segment_id))
                .then_some(())
        },
    );

    // A second original bookie dies: the one most of those segments still
    // had besides their replacement.
    let mut second_counts: BTreeMap<i32, usize> = BTreeMap::new();
    for old in &lost {
        for &bookie in after[&old.segment_id].ensemble.iter() {
            if bookie != replacements[&old.segment_id] {
                *second_counts.entry(bookie).or_default() += 1;
            }
        }
    }
    let (&second, _) = second_counts
        .iter()
        .max_by_key(|(id, count)| (**count, -**id))
        .expect("surviving original bookies");
    let replaced_by: BTreeSet<i32> = replacements.values().copied().collect();
    cluster.bookie(second as u32).kill();
    check_every_record(&cluster, RECORDS_BEFORE + RECORDS_AFTER);
    eprintln!(
        "bookie {victim} killed ({} sealed segments lost a replica, copied to bookies {replaced_by:?}) \
         and recovered in {recovered_in:?}; bookie {second} killed next; whole test {:?}",
        lost.len(),
        started.elapsed()
    );
}
