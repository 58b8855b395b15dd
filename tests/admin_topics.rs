//! `strata admin topics describe` against `strata dev`: a topic whose older
//! segments were offloaded shows both tiers, each offloaded segment's object
//! key and the open segment at the log end; `--json` says the same; an
//! unknown topic fails clearly.

mod common;

use common::DevCluster;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::time::{Duration, Instant};
use strata_proto::metadata::segment_info::State;
use strata_proto::metadata::SegmentInfo;

const TOPIC: &str = "tiered";
const RECORDS: usize = 3_000;

/// Gateway and bookie settings that make offloading and bookie GC act within
/// a test's time (as in `tiered_storage.rs`).
async fn create_topic(cluster: &DevCluster) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .unwrap();
    let new = NewTopic::new(TOPIC, 1, TopicReplication::Fixed(3)).set("segment.bytes", "32768");
    let results = admin
        .create_topics(&[new], &AdminOptions::new())
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

/// Produces [`RECORDS`] records of about 100 bytes, each acknowledged.
async fn produce(cluster: &DevCluster) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("batch.size", "4000")
        .create()
        .unwrap();
    let mut deliveries = Vec::new();
    for i in 0..RECORDS {
        let payload = format!("record-{i:05}-").repeat(7);
        let key = format!("k{i}");
        let record = FutureRecord::to(TOPIC).key(&key).payload(&payload);
        deliveries.push(producer.send_result(record).expect("queued"));
    }
    for delivery in deliveries {
        delivery.await.unwrap().expect("acknowledged");
    }
}

fn object_keys(segments: &[SegmentInfo]) -> Vec<String> {
    segments
        .iter()
        .filter_map(|s| match &s.state {
            Some(State::Offloaded(o)) => Some(o.object_key.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn describe_shows_segments_on_bookies_and_in_object_storage() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start_with(
        &dir.path().join("data"),
        &common::quick_maintenance_configs(dir.path(), ""),
    );
    create_topic(&cluster).await;
    produce(&cluster).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    let offloaded = loop {
        let now = cluster.segments(TOPIC).await;
        let first_offloaded = now
            .first()
            .is_some_and(|s| matches!(s.state, Some(State::Offloaded(_))));
        let last_open = now
            .last()
            .is_some_and(|s| matches!(s.state, Some(State::Open(_))));
        if first_offloaded && last_open {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the oldest segment is offloaded: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let out = cluster.admin_ok(&["topics", "describe", TOPIC]);
    assert!(out.contains(&format!("Topic          {TOPIC}")), "{out}");
    assert!(out.contains("segment.bytes"), "the topic's configs: {out}");
    assert!(out.contains("Partition 0: owner gateway"), "{out}");
    assert!(out.contains("log start offset 0"), "{out}");
    assert!(out.contains("object storage"), "{out}");
    assert!(out.contains("bookies"), "{out}");
    // Offloaded segments stay offloaded, so every key seen before is shown.
    for key in object_keys(&offloaded) {
        assert!(out.contains(&key), "object key {key} is shown: {out}");
    }
    // The rows in log order: the first starts at 0, the last is open, with
    // no end offset or size yet, on its ensemble of bookies.
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("SEGMENT"))
        .skip(1)
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert!(rows.len() >= 2, "{out}");
    assert_eq!(
        rows[0][1..5],
        ["object", "storage", "offloaded", "0"],
        "{out}"
    );
    let open = rows.last().unwrap();
    assert_eq!(open[1..3], ["bookies", "open"], "{out}");
    assert_eq!(open[4..7], ["-", "-", "bookies"], "{out}");
    assert_eq!(open[7].split(',').count(), 3, "an ensemble of three: {out}");
    assert!(
        rows[..rows.len() - 1]
            .iter()
            .all(|row| row[2] != "open" && row[3] != "open"),
        "only the last segment is open: {out}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&cluster.admin_ok(&["topics", "describe", TOPIC, "--json"]))
            .expect("--json prints JSON");
    assert_eq!(json["name"], TOPIC);
    assert_eq!(json["configs"]["segment.bytes"], "32768");
    let listed = json["partitions"][0]["segments"].as_array().unwrap();
    assert_eq!(listed[0]["tier"], "object storage");
    assert!(listed[0]["object_key"]
        .as_str()
        .is_some_and(|k| !k.is_empty()));
    let last = listed.last().unwrap();
    assert_eq!(last["state"], "open");
    assert!(last["end_offset"].is_null());
    let offsets_follow = listed
        .windows(2)
        .all(|pair| pair[0]["end_offset"] == pair[1]["base_offset"]);
    assert!(offsets_follow, "segments in log order: {listed:?}");

    let out = cluster.admin(&["topics", "describe", "no-such-topic"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unknown topic fails");
    assert!(stderr.contains("does not exist"), "{stderr}");
}
