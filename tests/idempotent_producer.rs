//! Idempotent producers: librdkafka with `enable.idempotence` writes every
//! record exactly once and in order with five requests in flight; a retried
//! batch is answered with its original offset, also by a gateway that took the
//! partition over after a kill -9 (producer state rebuilt from the log); and
//! sequence gaps and stale epochs get Kafka's error codes.

mod common;

use bytes::{Bytes, BytesMut};
use common::wire::WireClient;
use common::DevCluster;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, InitProducerIdRequest, InitProducerIdResponse,
    ProduceRequest, ProduceResponse, TopicName, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 2;
const RECORDS: usize = 5_000;

/// Every record of `topic`'s partitions from the beginning, by partition, as
/// (offset, value) in the order read.
fn consume(
    cluster: &DevCluster,
    topic: &str,
    expected: usize,
) -> BTreeMap<i32, Vec<(i64, String)>> {
    let consumer = common::consumer_from_beginning(cluster, topic, PARTITIONS);
    let mut read: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count < expected {
        assert!(Instant::now() < deadline, "read {count} of {expected}");
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("fetch succeeds");
        let value = String::from_utf8(message.payload().unwrap().to_vec()).unwrap();
        read.entry(message.partition())
            .or_default()
            .push((message.offset(), value));
        count += 1;
    }
    // Nothing more arrives: no record was written twice.
    let quiet = Instant::now() + Duration::from_secs(1);
    while Instant::now() < quiet {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("fetch succeeds");
            panic!(
                "unexpected extra record at {}:{}",
                message.partition(),
                message.offset()
            );
        }
    }
    read
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotent_producer_writes_every_record_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let topic = "idempotent";
    cluster.create_topic(topic, PARTITIONS);

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("enable.idempotence", "true")
        .set("max.in.flight.requests.per.connection", "5")
        .set("acks", "all")
        .set("linger.ms", "1")
        // Small batches, so that many requests are in flight at once.
        .set("batch.num.messages", "20")
        .create()
        .expect("producer is created");
    let mut deliveries = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let partition = (i % PARTITIONS as usize) as i32;
        let value = format!("record-{i}");
        let delivery = producer
            .send_result(
                FutureRecord::<(), _>::to(topic)
                    .partition(partition)
                    .payload(&value),
            )
            .expect("queued");
        deliveries.push((partition, value, delivery));
    }
    // Per partition, the values in send order, and the offsets acknowledged.
    let mut sent: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for (partition, value, delivery) in deliveries {
        let delivery = delivery
            .await
            .expect("delivery reported")
            .expect("record acknowledged");
        assert_eq!(delivery.partition, partition);
        sent.entry(partition)
            .or_default()
            .push((delivery.offset, value));
    }
    for (partition, records) in &sent {
        let offsets: Vec<i64> = records.iter().map(|(offset, _)| *offset).collect();
        let contiguous: Vec<i64> = (0..records.len() as i64).collect();
        assert_eq!(
            offsets, contiguous,
            "acknowledged offsets of partition {partition} are 0.. in send order"
        );
    }

    let read = consume(&cluster, topic, RECORDS);
    assert_eq!(
        read, sent,
        "each partition holds exactly the records sent, in order, without gaps or duplicates"
    );
    for partition in 0..PARTITIONS {
        let (producer_id, epoch) = first_producer(&cluster, topic, partition);
        assert!(
            producer_id >= 0 && epoch == 0,
            "partition {partition} was written by an idempotent producer, not ({producer_id}, {epoch})"
        );
    }
}

/// The producer id and epoch of the first batch of `topic`'s `partition`.
fn first_producer(cluster: &DevCluster, topic: &str, partition: i32) -> (i64, i16) {
    let mut client = WireClient::connect(cluster.kafka_addr);
    let request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let response: FetchResponse = client.call(ApiKey::Fetch, 11, &request);
    let data = &response.responses[0].partitions[0];
    assert_eq!(data.error_code, 0);
    let mut records = data.records.clone().expect("records fetched");
    let batch = RecordBatchDecoder::decode(&mut records).expect("a record batch");
    let first = &batch.records[0];
    (first.producer_id, first.producer_epoch)
}

/// One raw idempotent batch of `count` records from sequence `first_sequence`.
fn batch(producer_id: i64, epoch: i16, first_sequence: i32, count: i32) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i64::from(i),
            sequence: first_sequence + i,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(format!("seq-{}", first_sequence + i))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
    buf.freeze()
}

/// Produces `records` to partition 0 of `topic`; returns (error code, base offset).
fn produce(client: &mut WireClient, topic: &str, records: Bytes) -> (i16, i64) {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    let response: ProduceResponse = client.call(ApiKey::Produce, 9, &request);
    let partition = &response.responses[0].partition_responses[0];
    (partition.error_code, partition.base_offset)
}

/// Produces until the partition is served (retrying, as clients do,
/// UNKNOWN_TOPIC_OR_PARTITION until the gateway's cache has the topic and
/// NOT_LEADER_OR_FOLLOWER while it takes the partition over); returns the
/// first other answer.
fn produce_when_served(cluster: &DevCluster, topic: &str, records: Bytes) -> (i16, i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut client = WireClient::connect(cluster.kafka_addr);
        let answer = produce(&mut client, topic, records.clone());
        let retriable = [
            ResponseError::NotLeaderOrFollower.code(),
            ResponseError::UnknownTopicOrPartition.code(),
        ];
        if !retriable.contains(&answer.0) {
            return answer;
        }
        assert!(Instant::now() < deadline, "partition is served again");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn init_producer_id(
    client: &mut WireClient,
    version: i16,
    transactional_id: Option<&str>,
) -> InitProducerIdResponse {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(
            transactional_id.map(|id| TransactionalId(StrBytes::from_string(id.to_string()))),
        )
        .with_transaction_timeout_ms(60_000);
    client.call(ApiKey::InitProducerId, version, &request)
}

#[test]
fn init_producer_id_hands_out_distinct_ids_at_epoch_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let mut client = WireClient::connect(cluster.kafka_addr);
    let mut ids = Vec::new();
    for version in 0..=5 {
        let response = init_producer_id(&mut client, version, None);
        assert_eq!(response.error_code, 0, "v{version}");
        assert_eq!(response.producer_epoch, 0, "v{version}");
        assert!(response.producer_id.0 >= 0, "v{version}");
        ids.push(response.producer_id.0);
    }
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "ids {ids:?} are distinct");

    // Transactions are not supported yet.
    let response = init_producer_id(&mut client, 4, Some("txn"));
    assert_eq!(
        response.error_code,
        ResponseError::UnsupportedVersion.code()
    );
    assert_eq!(response.producer_id.0, -1);
}

#[test]
fn retried_batches_get_their_original_offsets_even_after_a_takeover() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let topic = "retried";
    cluster.create_topic(topic, 1);
    let mut client = WireClient::connect(cluster.kafka_addr);
    let [first, other, early] =
        [0; 3].map(|_| init_producer_id(&mut client, 4, None).producer_id.0);
    let out_of_order = ResponseError::OutOfOrderSequenceNumber.code();

    assert_eq!(
        produce_when_served(&cluster, topic, batch(first, 0, 0, 3)),
        (0, 0)
    );
    assert_eq!(produce(&mut client, topic, batch(first, 0, 3, 2)), (0, 3));
    // A retry of either batch is answered with its offset and not written again.
    assert_eq!(produce(&mut client, topic, batch(first, 0, 0, 3)), (0, 0));
    assert_eq!(produce(&mut client, topic, batch(first, 0, 3, 2)), (0, 3));
    // A gap, or a batch that overlaps the last one, is out of order.
    assert_eq!(
        produce(&mut client, topic, batch(first, 0, 6, 1)).0,
        out_of_order
    );
    assert_eq!(
        produce(&mut client, topic, batch(first, 0, 4, 2)).0,
        out_of_order
    );
    // Another producer's sequence is its own.
    assert_eq!(produce(&mut client, topic, batch(other, 0, 0, 1)), (0, 5));
    assert_eq!(produce(&mut client, topic, batch(early, 0, 0, 1)), (0, 6));

    // Kill the whole cluster: the restarted gateway recovers the open segment
    // and rebuilds producer state from it before serving the partition.
    drop(client);
    cluster.kill();
    let cluster = DevCluster::start(dir.path());
    assert_eq!(
        produce_when_served(&cluster, topic, batch(first, 0, 3, 2)),
        (0, 3),
        "a retry after the takeover is answered with the original offset"
    );
    let mut client = WireClient::connect(cluster.kafka_addr);
    assert_eq!(produce(&mut client, topic, batch(other, 0, 0, 1)), (0, 5));
    assert_eq!(
        produce(&mut client, topic, batch(first, 0, 6, 1)).0,
        out_of_order
    );
    assert_eq!(produce(&mut client, topic, batch(first, 0, 5, 1)), (0, 7));
    // A new epoch starts over at sequence 0; the old epoch is then fenced.
    assert_eq!(
        produce(&mut client, topic, batch(first, 1, 1, 1)).0,
        out_of_order
    );
    assert_eq!(produce(&mut client, topic, batch(first, 1, 0, 1)), (0, 8));
    let fenced = ResponseError::InvalidProducerEpoch.code();
    assert_eq!(produce(&mut client, topic, batch(first, 0, 6, 1)).0, fenced);
    assert_eq!(produce(&mut client, topic, batch(other, 0, 1, 1)), (0, 9));

    // Once more: now the state comes from two segments, the one just
    // recovered and the one sealed at the first takeover.
    drop(client);
    cluster.kill();
    let cluster = DevCluster::start(dir.path());
    assert_eq!(
        produce_when_served(&cluster, topic, batch(early, 0, 0, 1)),
        (0, 6)
    );
    let mut client = WireClient::connect(cluster.kafka_addr);
    assert_eq!(produce(&mut client, topic, batch(other, 0, 1, 1)), (0, 9));
    assert_eq!(produce(&mut client, topic, batch(first, 0, 6, 1)).0, fenced);
    assert_eq!(produce(&mut client, topic, batch(first, 1, 0, 1)), (0, 8));
    assert_eq!(produce(&mut client, topic, batch(early, 0, 1, 1)), (0, 10));
}
