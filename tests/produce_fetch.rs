//! Records produced with librdkafka are stored on bookies through the gateway
//! and fetched back whole and in order, for every compression codec, by
//! librdkafka and by rskafka, an independent client implementation.

mod common;

use common::DevCluster;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::collections::BTreeMap;
use std::time::Duration;

const PARTITIONS: i32 = 3;
const RECORDS: usize = 300;

fn producer(cluster: &DevCluster, compression: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .set("compression.type", compression)
        .set("linger.ms", "5")
        .create()
        .expect("producer is created")
}

/// One record as written, to compare with what is read.
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    key: String,
    value: String,
    header: String,
    timestamp: i64,
}

fn sent(i: usize) -> Sent {
    Sent {
        key: format!("key-{i}"),
        value: format!("value-{i}-").repeat(1 + i % 7),
        header: format!("h{i}"),
        timestamp: 1_700_000_000_000 + i as i64,
    }
}

async fn round_trip(cluster: &DevCluster, compression: &str) {
    let topic = format!("round-trip-{compression}");
    let out = cluster.admin(&[
        "topics",
        "create",
        &topic,
        "--partitions",
        &PARTITIONS.to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let producer = producer(cluster, compression);
    let mut deliveries = Vec::new();
    for i in 0..RECORDS {
        let record = sent(i);
        let partition = (i % PARTITIONS as usize) as i32;
        let future = producer.send_result(
            FutureRecord::to(&topic)
                .partition(partition)
                .key(&record.key)
                .payload(&record.value)
                .timestamp(record.timestamp)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "h",
                    value: Some(&record.header),
                })),
        );
        deliveries.push((partition, i, future.expect("queued")));
    }
    // Offsets are contiguous from 0 in each partition, in send order.
    let mut expected: BTreeMap<(i32, i64), Sent> = BTreeMap::new();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for (partition, i, delivery) in deliveries {
        let delivery = delivery
            .await
            .expect("delivery reported")
            .expect("record acknowledged");
        let (delivered_partition, offset) = (delivery.partition, delivery.offset);
        assert_eq!(delivered_partition, partition);
        let want = next.entry(partition).or_insert(0);
        assert_eq!(
            offset, *want,
            "offsets are contiguous in partition {partition}"
        );
        *want += 1;
        expected.insert((partition, offset), sent(i));
    }

    let consumer = common::consumer_from_beginning(cluster, &topic, PARTITIONS);
    let mut read: BTreeMap<(i32, i64), Sent> = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while read.len() < RECORDS {
        assert!(
            std::time::Instant::now() < deadline,
            "read {} of {RECORDS}",
            read.len()
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("fetch succeeds");
        let headers = message.headers().expect("headers kept");
        let header = headers.get(0);
        let got = Sent {
            key: String::from_utf8(message.key().unwrap().to_vec()).unwrap(),
            value: String::from_utf8(message.payload().unwrap().to_vec()).unwrap(),
            header: String::from_utf8(header.value.unwrap().to_vec()).unwrap(),
            timestamp: message.timestamp().to_millis().unwrap(),
        };
        let previous = read.insert((message.partition(), message.offset()), got);
        assert!(previous.is_none(), "no record is read twice");
    }
    assert_eq!(read, expected);
    assert_eq!(read_with_rskafka(cluster, &topic).await, expected);
}

/// Reads every partition of `topic` with rskafka, a client implementation
/// independent of librdkafka.
async fn read_with_rskafka(cluster: &DevCluster, topic: &str) -> BTreeMap<(i32, i64), Sent> {
    use rskafka::client::partition::UnknownTopicHandling;
    use rskafka::client::ClientBuilder;
    let client = ClientBuilder::new(vec![cluster.bootstrap()])
        .build()
        .await
        .expect("rskafka connects");
    let mut read = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let partition_client = client
            .partition_client(topic, partition, UnknownTopicHandling::Retry)
            .await
            .expect("rskafka finds the partition");
        let mut offset = 0;
        loop {
            let (records, high_watermark) = partition_client
                .fetch_records(offset, 1..1_000_000, 1_000)
                .await
                .expect("rskafka fetches");
            for record in records {
                let r = record.record;
                let sent = Sent {
                    key: String::from_utf8(r.key.unwrap()).unwrap(),
                    value: String::from_utf8(r.value.unwrap()).unwrap(),
                    header: String::from_utf8(r.headers["h"].clone()).unwrap(),
                    timestamp: r.timestamp.timestamp_millis(),
                };
                read.insert((partition, record.offset), sent);
                offset = record.offset + 1;
            }
            if offset >= high_watermark {
                break;
            }
        }
    }
    read
}

#[tokio::test(flavor = "multi_thread")]
async fn records_round_trip_through_bookies_with_every_codec() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    for compression in ["none", "gzip", "snappy", "lz4", "zstd"] {
        round_trip(&cluster, compression).await;
    }
}

#[test]
fn an_idle_partition_s_newest_records_are_read_from_bookies() {
    // Without the gateway's batch cache every read goes to the bookies, whose
    // own last-add-confirmed trails the newest entry of an idle segment.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "batch_cache_bytes = 0\n").unwrap();
    let data = dir.path().join("data");
    let args = ["--gateway-config".to_string(), config.display().to_string()];
    let cluster = DevCluster::start_with(&data, &args);
    cluster.create_topic("idle", 1);
    common::group::produce(&cluster.bootstrap(), "idle", 1, "idle", 50);
    let consumer = common::consumer_from_beginning(&cluster, "idle", 1);
    let mut read = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while read.len() < 50 && std::time::Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            read.push(message.expect("fetch succeeds").offset());
        }
    }
    assert_eq!(
        read,
        (0..50).collect::<Vec<i64>>(),
        "every acknowledged record is read"
    );
}
