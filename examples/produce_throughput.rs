//! Produce throughput with librdkafka against a running cluster, acks=all.
//!
//! ```sh
//! cargo run --release -- dev --data-dir ./strata-bench-data &   # a cluster
//! cargo run --release --example produce_throughput -- 127.0.0.1:9092 200000 1024
//! ```
//! Arguments: bootstrap servers, record count, record size in bytes.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::time::{Duration, Instant};

const TOPIC: &str = "produce-throughput";
const PARTITIONS: i32 = 6;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let bootstrap = args.next().unwrap_or_else(|| "127.0.0.1:9092".into());
    let count: usize = args
        .next()
        .map_or(200_000, |n| n.parse().expect("record count"));
    let size: usize = args
        .next()
        .map_or(1024, |n| n.parse().expect("record size"));

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin client");
    let topic = NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(3));
    // An existing topic from an earlier run is fine.
    let _ = admin.create_topics(&[topic], &AdminOptions::new()).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .expect("producer");
    let payload = vec![b'x'; size];
    let started = Instant::now();
    let mut pending = Vec::with_capacity(count);
    for i in 0..count {
        let record = FutureRecord::<(), _>::to(TOPIC)
            .partition((i % PARTITIONS as usize) as i32)
            .payload(&payload);
        pending.push(producer.send(record, Duration::from_secs(60)));
    }
    let mut failed = 0;
    for delivery in futures::future::join_all(pending).await {
        if delivery.is_err() {
            failed += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{count} records of {size} B, acks=all: {:.0} records/s, {:.1} MB/s, {failed} failed",
        count as f64 / secs,
        (count * size) as f64 / secs / 1e6
    );
}
