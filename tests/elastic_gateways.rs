//! Gateways come and go without moving data: a new gateway takes a fair share
//! of partitions with no byte of the log copied, and a drained gateway hands
//! everything back and stops while producers carry on.

mod common;

use common::DevCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const TOPIC: &str = "elastic";
const PARTITIONS: i32 = 6;

/// Partitions owned by each gateway, from `strata admin gateways list`.
fn owned_partitions(cluster: &DevCluster) -> BTreeMap<i32, usize> {
    let out = cluster.admin(&["gateways", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let id = words.first()?.parse().ok()?;
            let live = words.get(1) == Some(&"live");
            let partitions = words.get(3)?.parse().ok()?;
            live.then_some((id, partitions))
        })
        .collect()
}

/// `text` without terminal colour codes.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for next in chars.by_ref() {
                if next == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn produce(producer: &FutureProducer, from: usize, to: usize) -> usize {
    let deliveries: Vec<_> = (from..to)
        .map(|i| {
            let value = format!("v{i}");
            producer
                .send_result(
                    FutureRecord::<(), _>::to(TOPIC)
                        .partition(i as i32 % PARTITIONS)
                        .payload(&value),
                )
                .expect("queued")
        })
        .collect();
    let mut acknowledged = 0;
    for delivery in deliveries {
        delivery
            .await
            .unwrap()
            .expect("acknowledged: only retriable errors");
        acknowledged += 1;
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_gateway_takes_partitions_without_copying_and_a_drained_one_hands_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(&dir.path().join("data"));
    cluster.create_topic(TOPIC, PARTITIONS);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut sent = produce(&producer, 0, 600).await;
    let added = Instant::now();
    let mut second = cluster.start_gateway(2, &dir.path().join("gateway-2.log"), &[]);
    let balanced = common::eventually(Duration::from_secs(60), || {
        owned_partitions(&cluster) == BTreeMap::from([(1, 3), (2, 3)])
    });
    assert!(
        balanced,
        "half the partitions move: {:?}",
        owned_partitions(&cluster)
    );
    eprintln!(
        "partitions moved to the new gateway in {} ms",
        added.elapsed().as_millis()
    );
    sent += produce(&producer, 600, 1200).await;
    // Taking a partition over recovers and seals its open segment on the
    // bookies it is on; no entry is written anywhere else.
    let log = plain(&second.log_text());
    let takeovers: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sealed the previous open segment"))
        .collect();
    assert!(
        !takeovers.is_empty(),
        "the new gateway took partitions over"
    );
    assert!(
        takeovers.iter().all(|l| l.contains("copies=0")),
        "recovery copied nothing: {takeovers:#?}"
    );
    eprintln!("bytes of log copied while adding a gateway: 0");

    // Draining it: everything goes back to the first gateway, then it stops,
    // while the producer goes on.
    let sending = {
        let producer = producer.clone();
        tokio::spawn(async move { produce(&producer, 1200, 3000).await })
    };
    let out = cluster.admin(&["gateways", "drain", "2", "--timeout-secs", "60"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    sent += sending.await.unwrap();
    assert_eq!(owned_partitions(&cluster), BTreeMap::from([(1, 6)]));
    let stopped = common::eventually(Duration::from_secs(30), || second.exited().is_some());
    assert!(stopped, "the drained gateway stops by itself");
    assert!(second.exited().is_some_and(|status| status.success()));

    let consumer = common::consumer_from_beginning(&cluster, TOPIC, PARTITIONS);
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while read < sent && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            message.expect("fetch succeeds");
            read += 1;
        }
    }
    assert_eq!(read, sent, "every acknowledged record is read once");
}
