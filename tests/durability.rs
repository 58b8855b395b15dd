//! Nothing acknowledged is lost when the whole `strata dev` process is killed
//! with SIGKILL and started again on the same data directory.

mod common;

use common::DevCluster;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const TOPIC: &str = "durable";
const PARTITIONS: i32 = 2;

/// Produces `count` records with acks=all; returns what was acknowledged, by
/// (partition, offset).
async fn produce(cluster: &DevCluster, first: usize, count: usize) -> BTreeMap<(i32, i64), String> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .set("linger.ms", "2")
        .create()
        .unwrap();
    let mut pending = Vec::new();
    for i in first..first + count {
        let value = format!("record-{i}");
        let partition = (i % PARTITIONS as usize) as i32;
        let delivery = producer
            .send_result(
                FutureRecord::<(), _>::to(TOPIC)
                    .partition(partition)
                    .payload(&value),
            )
            .expect("queued");
        pending.push((value, delivery));
    }
    let mut acknowledged = BTreeMap::new();
    for (value, delivery) in pending {
        let delivery = delivery.await.unwrap().expect("acknowledged");
        acknowledged.insert((delivery.partition, delivery.offset), value);
    }
    acknowledged
}

fn consume_all(cluster: &DevCluster, expected: usize) -> BTreeMap<(i32, i64), String> {
    let consumer = common::consumer_from_beginning(cluster, TOPIC, PARTITIONS);
    let mut read = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while read.len() < expected && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.expect("fetch succeeds");
            let value = String::from_utf8(message.payload().unwrap().to_vec()).unwrap();
            read.insert((message.partition(), message.offset()), value);
        }
    }
    read
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_records_survive_a_kill_9_of_the_whole_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let out = cluster.admin(&["topics", "create", TOPIC, "--partitions", "2"]);
    assert!(out.status.success());
    let before = produce(&cluster, 0, 2_000).await;
    cluster.kill();

    let cluster = DevCluster::start(dir.path());
    // Right after the restart metadata may still hold the gateway's previous
    // registration (an old port): the gateway advertises its new address anyway.
    let metadata = common::plain_consumer(&cluster)
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    let me = metadata
        .brokers()
        .iter()
        .find(|b| b.id() == 1)
        .expect("broker 1");
    assert_eq!(me.port() as u16, cluster.kafka_addr.port());
    // The restarted gateway recovers each partition's open segment and goes on
    // after its end: new records follow the old ones.
    let after = produce(&cluster, 2_000, 200).await;
    let read = consume_all(&cluster, before.len() + after.len());
    for (key, value) in before.iter().chain(after.iter()) {
        assert_eq!(read.get(key), Some(value), "acknowledged record at {key:?}");
    }
    assert_eq!(
        read.len(),
        before.len() + after.len(),
        "nothing else appeared"
    );
}
