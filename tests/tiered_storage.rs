//! Tiered storage with real processes: sealed segments move to object storage
//! (the local filesystem, and a real S3-compatible HTTP server), bookies drop
//! their copies, and consumers read everything back byte for byte; a kill -9
//! in the middle of offloading loses and duplicates nothing; time retention
//! removes old records everywhere.

mod common;

use common::DevCluster;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use strata_proto::bookie::bookie_service_client::BookieServiceClient;
use strata_proto::metadata::segment_info::State;
use strata_proto::metadata::SegmentInfo;

const TOPIC: &str = "tiered";
const RECORDS: usize = 3_000;

/// Gateway and bookie settings that make retention, offloading and bookie GC
/// act within a test's time.
async fn create_topic(cluster: &DevCluster, topic: &str, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .unwrap();
    let mut new = NewTopic::new(topic, 1, TopicReplication::Fixed(3));
    for (key, value) in configs {
        new = new.set(key, value);
    }
    let results = admin
        .create_topics(&[new], &AdminOptions::new())
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

fn value(i: usize) -> String {
    format!("record-{i:05}-").repeat(6)
}

/// Produces records `from..to` (value [`value`]) with the given timestamp,
/// each acknowledged.
async fn produce(
    cluster: &DevCluster,
    topic: &str,
    from: usize,
    to: usize,
    timestamp: Option<i64>,
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("batch.size", "4000")
        .create()
        .unwrap();
    let mut deliveries = Vec::new();
    for i in from..to {
        let payload = value(i);
        let key = format!("k{i}");
        let mut record = FutureRecord::to(topic).key(&key).payload(&payload);
        if let Some(ts) = timestamp {
            record = record.timestamp(ts);
        }
        deliveries.push(producer.send_result(record).expect("queued"));
    }
    for delivery in deliveries {
        delivery.await.unwrap().expect("acknowledged");
    }
}

/// Every record of partition 0 from the earliest offset: (offset, key, value).
fn consume_all(cluster: &DevCluster, topic: &str, expected: usize) -> Vec<(i64, String, String)> {
    let consumer = common::consumer_from_beginning(cluster, topic, 1);
    let mut read = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while read.len() < expected && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.expect("fetch succeeds");
            let key = String::from_utf8(message.key().unwrap_or_default().to_vec()).unwrap();
            let value = String::from_utf8(message.payload().unwrap_or_default().to_vec()).unwrap();
            read.push((message.offset(), key, value));
        }
    }
    read
}

fn expected_records(from: usize, to: usize) -> Vec<(i64, String, String)> {
    (from..to)
        .map(|i| (i as i64, format!("k{i}"), value(i)))
        .collect()
}

fn object_keys(segments: &[SegmentInfo]) -> Vec<(u64, String)> {
    segments
        .iter()
        .filter_map(|s| match &s.state {
            Some(State::Offloaded(o)) => Some((s.segment_id, o.object_key.clone())),
            _ => None,
        })
        .collect()
}

/// Segment ids that any bookie of the cluster still holds.
async fn held_by_bookies(cluster: &DevCluster) -> BTreeSet<u64> {
    let mut held = BTreeSet::new();
    for addr in &cluster.bookie_addrs {
        let mut bookie = BookieServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let listed = bookie
            .list_segments(strata_proto::bookie::ListSegmentsRequest {})
            .await
            .unwrap()
            .into_inner();
        held.extend(listed.segments.iter().map(|s| s.segment_id));
    }
    held
}

async fn eventually_async<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Produces several segments' worth, waits until sealed segments are
/// offloaded and gone from bookies, and reads everything back from offset 0.
/// Returns the offloaded segments' object keys.
async fn offload_and_read_back(cluster: &DevCluster) -> Vec<(u64, String)> {
    create_topic(
        cluster,
        TOPIC,
        &[("segment.bytes", "32768"), ("local.retention.bytes", "0")],
    )
    .await;
    produce(cluster, TOPIC, 0, RECORDS, None).await;
    let offloaded = eventually_async(Duration::from_secs(60), || async {
        let segments = cluster.segments(TOPIC).await;
        let sealed = segments
            .iter()
            .filter(|s| matches!(s.state, Some(State::Sealed(_))))
            .count();
        object_keys(&segments).len() >= 5 && sealed == 0
    })
    .await;
    let now = cluster.segments(TOPIC).await;
    assert!(offloaded, "sealed segments are offloaded: {now:?}");
    let keys = object_keys(&now);
    let offloaded_ids: BTreeSet<u64> = keys.iter().map(|(id, _)| *id).collect();
    let dropped = eventually_async(Duration::from_secs(30), || async {
        held_by_bookies(cluster).await.is_disjoint(&offloaded_ids)
    })
    .await;
    assert!(dropped, "bookies drop their copies of offloaded segments");

    let read = consume_all(cluster, TOPIC, RECORDS);
    assert_eq!(read.len(), RECORDS);
    assert!(
        read == expected_records(0, RECORDS),
        "every record comes back byte-identical, in order"
    );
    keys
}

#[tokio::test(flavor = "multi_thread")]
async fn sealed_segments_move_to_local_object_storage_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cluster = DevCluster::start_with(&data, &common::quick_maintenance_configs(dir.path(), ""));
    let keys = offload_and_read_back(&cluster).await;
    for (_, key) in &keys {
        assert!(data.join("objects").join(key).is_file(), "{key} is a file");
    }
    // Deleting the topic deletes its objects.
    let out = cluster.admin(&["topics", "delete", TOPIC]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objects = data.join("objects");
    let emptied = common::eventually(Duration::from_secs(30), || {
        stored_keys(&objects, &objects).is_empty()
    });
    assert!(
        emptied,
        "objects left: {:?}",
        stored_keys(&objects, &objects)
    );
}

/// An S3-compatible server (moto) on a free loopback port.
struct S3Server {
    child: Child,
    endpoint: String,
}

impl S3Server {
    fn start(bucket: &str) -> Self {
        let program = std::env::var("STRATA_TEST_S3_SERVER").unwrap_or_else(|_| {
            panic!(
                "STRATA_TEST_S3_SERVER must name an S3-compatible server (moto_server); \
                 scripts/test installs it"
            )
        });
        let port = common::role::free_port();
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the S3 server starts");
        let endpoint = format!("http://127.0.0.1:{port}");
        let created = common::eventually(Duration::from_secs(30), || {
            create_bucket(port, bucket).is_ok()
        });
        assert!(created, "the S3 server answers and the bucket is created");
        Self { child, endpoint }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a bucket with a plain HTTP PUT (the test server needs no signature).
fn create_bucket(port: u16, bucket: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        stream,
        "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    if answer.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other(answer))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sealed_segments_move_to_an_s3_server_and_read_back() {
    let server = S3Server::start("strata-test");
    let dir = tempfile::tempdir().unwrap();
    let store = format!(
        "[object_store]\nkind = \"s3\"\nbucket = \"strata-test\"\nendpoint = \"{}\"\n\
         allow_http = true\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n",
        server.endpoint
    );
    let cluster = DevCluster::start_with(
        &dir.path().join("data"),
        &common::quick_maintenance_configs(dir.path(), &store),
    );
    let keys = offload_and_read_back(&cluster).await;
    assert!(!keys.is_empty());
    assert!(
        !dir.path().join("data").join("objects").exists(),
        "nothing went to the local filesystem"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_during_offload_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Slow uploads, so that the kill lands while segments are being offloaded.
    let slow = common::quick_maintenance_configs(
        dir.path(),
        "[object_store]\nupload_bytes_per_sec = 65536\n",
    );
    let cluster = DevCluster::start_with(&data, &slow);
    create_topic(&cluster, TOPIC, &[("segment.bytes", "32768")]).await;
    produce(&cluster, TOPIC, 0, RECORDS, None).await;
    let some = eventually_async(Duration::from_secs(60), || async {
        !object_keys(&cluster.segments(TOPIC).await).is_empty()
    })
    .await;
    assert!(some, "offloading has started");
    let before = cluster.segments(TOPIC).await;
    assert!(
        before
            .iter()
            .any(|s| matches!(s.state, Some(State::Sealed(_)))),
        "some segments are still waiting to be offloaded at the kill"
    );
    cluster.kill();

    let cluster = DevCluster::start_with(&data, &common::quick_maintenance_configs(dir.path(), ""));
    produce(&cluster, TOPIC, RECORDS, RECORDS + 100, None).await;
    let read = consume_all(&cluster, TOPIC, RECORDS + 100);
    assert!(
        read == expected_records(0, RECORDS + 100),
        "read {} records; every acknowledged one once, in order",
        read.len()
    );
    let settled = eventually_async(Duration::from_secs(60), || async {
        let segments = cluster.segments(TOPIC).await;
        segments
            .iter()
            .all(|s| !matches!(s.state, Some(State::Sealed(_))))
    })
    .await;
    assert!(settled, "offloading finishes after the restart");
    for (_, key) in object_keys(&cluster.segments(TOPIC).await) {
        assert!(data.join("objects").join(&key).is_file(), "{key} exists");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn records_older_than_retention_disappear_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cluster = DevCluster::start_with(&data, &common::quick_maintenance_configs(dir.path(), ""));
    create_topic(
        &cluster,
        TOPIC,
        &[("segment.bytes", "32768"), ("retention.ms", "60000")],
    )
    .await;
    let hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 3_600_000;
    produce(&cluster, TOPIC, 0, RECORDS, Some(hour_ago)).await;
    produce(&cluster, TOPIC, RECORDS, RECORDS + 200, None).await;

    let consumer = common::plain_consumer(&cluster);
    let trimmed = common::eventually(Duration::from_secs(60), || {
        consumer
            .fetch_watermarks(TOPIC, 0, Duration::from_secs(5))
            .is_ok_and(|(low, _)| low > RECORDS as i64 / 2)
    });
    let (low, high) = consumer
        .fetch_watermarks(TOPIC, 0, Duration::from_secs(5))
        .unwrap();
    assert!(
        trimmed,
        "the log start moves past the old records: {low}..{high}"
    );
    // Their objects go too: what is left in the store is what live segments name.
    let objects = data.join("objects");
    let objects_gone = eventually_async(Duration::from_secs(30), || async {
        let live: BTreeSet<String> = object_keys(&cluster.segments(TOPIC).await)
            .into_iter()
            .map(|(_, key)| key)
            .collect();
        let stored = stored_keys(&objects, &objects);
        stored.is_subset(&live)
    })
    .await;
    if !objects_gone {
        let live = object_keys(&cluster.segments(TOPIC).await);
        eprintln!(
            "live {live:?}\nstored {:?}",
            stored_keys(&objects, &objects)
        );
    }
    assert!(objects_gone, "objects of deleted segments are removed");
    // Once no live segment holds only old records, a consumer from the
    // beginning starts at the log start.
    let settled = eventually_async(Duration::from_secs(30), || async {
        cluster
            .segments(TOPIC)
            .await
            .first()
            .is_some_and(|s| match &s.state {
                Some(State::Sealed(sealed)) => sealed.max_timestamp.is_some_and(|ts| ts > hour_ago),
                Some(State::Offloaded(o)) => o.max_timestamp.is_some_and(|ts| ts > hour_ago),
                _ => true,
            })
    })
    .await;
    assert!(settled, "retention removes every segment of old records");
    let (low, high) = consumer
        .fetch_watermarks(TOPIC, 0, Duration::from_secs(5))
        .unwrap();
    assert!(low <= RECORDS as i64, "new records are kept");
    let read = consume_all(&cluster, TOPIC, (high - low) as usize);
    assert!(
        read == expected_records(low as usize, high as usize),
        "read {} records from {:?}; expected {low}..{high}",
        read.len(),
        read.first().map(|r| r.0)
    );
}

/// Keys of the files under `dir`, relative to `root`.
fn stored_keys(root: &Path, dir: &Path) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    let mut keys = BTreeSet::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            keys.extend(stored_keys(root, &path));
        } else if let Ok(relative) = path.strip_prefix(root) {
            keys.insert(relative.display().to_string());
        }
    }
    keys
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_records_moves_the_log_start_and_frees_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cluster = DevCluster::start_with(&data, &common::quick_maintenance_configs(dir.path(), ""));
    create_topic(&cluster, TOPIC, &[("segment.bytes", "32768")]).await;
    produce(&cluster, TOPIC, 0, RECORDS, None).await;
    let first_segments = cluster.segments(TOPIC).await;

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .unwrap();
    let mut below = rdkafka::TopicPartitionList::new();
    below
        .add_partition_offset(TOPIC, 0, rdkafka::Offset::Offset(1_500))
        .unwrap();
    let result = admin
        .delete_records(&below, &AdminOptions::new())
        .await
        .expect("DeleteRecords is answered");
    let element = &result.elements()[0];
    assert!(element.error().is_ok(), "{:?}", element.error());
    assert_eq!(element.offset(), rdkafka::Offset::Offset(1_500));

    let consumer = common::plain_consumer(&cluster);
    let (low, _) = consumer
        .fetch_watermarks(TOPIC, 0, Duration::from_secs(5))
        .unwrap();
    assert_eq!(low, 1_500);
    let read = consume_all(&cluster, TOPIC, RECORDS - 1_500);
    assert!(
        read == expected_records(1_500, RECORDS),
        "read from the new start"
    );
    // Segments wholly below the new start are deleted.
    let freed = eventually_async(Duration::from_secs(30), || async {
        cluster
            .segments(TOPIC)
            .await
            .first()
            .is_some_and(|s| s.base_offset <= 1_500 && s.base_offset > 0)
    })
    .await;
    assert!(
        freed,
        "segments below the start are deleted: {first_segments:?}"
    );
}
