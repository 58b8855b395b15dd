//! ListOffsets through librdkafka: earliest and latest, and offsets by
//! timestamp down to the record inside a batch.

mod common;

use common::DevCluster;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::Duration;

const TOPIC: &str = "timed";
const BASE_TS: i64 = 1_700_000_000_000;

/// Timestamp of record `i`: 10 ms apart.
fn ts(i: i64) -> i64 {
    BASE_TS + 10 * i
}

fn offset_for_time(consumer: &BaseConsumer, timestamp: i64) -> Offset {
    let mut query = TopicPartitionList::new();
    query
        .add_partition_offset(TOPIC, 0, Offset::Offset(timestamp))
        .unwrap();
    let answer = consumer
        .offsets_for_times(query, Duration::from_secs(10))
        .expect("ListOffsets answered");
    answer.elements()[0].offset()
}

#[tokio::test(flavor = "multi_thread")]
async fn offsets_are_found_by_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let out = cluster.admin(&["topics", "create", TOPIC, "--partitions", "1"]);
    assert!(out.status.success());
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .set("linger.ms", "50")
        .create()
        .unwrap();
    // Four batches of ten records each: each batch is sent whole, then flushed.
    for batch in 0..4 {
        let mut pending = Vec::new();
        for i in batch * 10..batch * 10 + 10 {
            let value = format!("v{i}");
            pending.push(
                producer
                    .send_result(
                        FutureRecord::<(), _>::to(TOPIC)
                            .partition(0)
                            .payload(&value)
                            .timestamp(ts(i)),
                    )
                    .expect("queued"),
            );
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        for delivery in pending {
            delivery.await.unwrap().expect("acknowledged");
        }
    }

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", "unused")
        .create()
        .unwrap();
    let (low, high) = consumer
        .fetch_watermarks(TOPIC, 0, Duration::from_secs(10))
        .expect("earliest and latest");
    assert_eq!((low, high), (0, 40));

    // Exactly a record's timestamp, inside a batch.
    assert_eq!(offset_for_time(&consumer, ts(13)), Offset::Offset(13));
    // Between two records: the later one.
    assert_eq!(offset_for_time(&consumer, ts(25) - 3), Offset::Offset(25));
    // Before everything: the first record.
    assert_eq!(
        offset_for_time(&consumer, BASE_TS - 1_000),
        Offset::Offset(0)
    );
    // After everything: no such record.
    assert_eq!(offset_for_time(&consumer, ts(40)), Offset::End);
}
