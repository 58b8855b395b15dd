//! Segments roll at `segment.bytes`: the owner seals each full segment with its
//! end offset and largest timestamp, records stay readable across segments,
//! and offsets by timestamp use the per-segment time index.

mod common;

use common::DevCluster;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::{Duration, Instant};
use strata_metadata::client::MetadataClient;
use strata_proto::metadata::segment_info::State;
use strata_proto::metadata::ListSegmentsRequest;

const TOPIC: &str = "rolling";
const RECORDS: i64 = 60;
const BASE_TS: i64 = 1_700_000_000_000;

fn ts(i: i64) -> i64 {
    BASE_TS + 1_000 * i
}

#[tokio::test(flavor = "multi_thread")]
async fn segments_roll_at_segment_bytes_and_index_their_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let out = cluster.admin(&[
        "topics",
        "create",
        TOPIC,
        "--partitions",
        "1",
        "--config",
        "segment.bytes=1024",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    // One record per batch, about 250 bytes each: four or so per segment.
    for i in 0..RECORDS {
        let value = format!("{i:04}-").repeat(40);
        producer
            .send(
                FutureRecord::<(), _>::to(TOPIC)
                    .partition(0)
                    .payload(&value)
                    .timestamp(ts(i)),
                Duration::from_secs(10),
            )
            .await
            .expect("acknowledged");
    }

    let client = MetadataClient::connect_lazy(&[cluster.metadata_addr.to_string()]).unwrap();
    let segments = client
        .call(|mut c| async move {
            c.list_segments(ListSegmentsRequest {
                topic: TOPIC.into(),
                partition: 0,
            })
            .await
        })
        .await
        .unwrap()
        .segments;
    assert!(segments.len() >= 5, "{} segments", segments.len());
    let (sealed, open) = segments.split_at(segments.len() - 1);
    assert!(matches!(open[0].state, Some(State::Open(_))));
    let mut expected_base = 0;
    for segment in sealed {
        assert_eq!(
            segment.base_offset, expected_base,
            "segments are contiguous"
        );
        let Some(State::Sealed(s)) = &segment.state else {
            panic!("segment {} is not sealed", segment.segment_id);
        };
        assert!(s.bytes > 0 && s.bytes <= 1024, "{} bytes", s.bytes);
        assert_eq!(
            s.max_timestamp,
            Some(ts(s.end_offset - 1)),
            "time index entry"
        );
        expected_base = s.end_offset;
    }
    assert_eq!(open[0].base_offset, expected_base);

    let consumer = common::plain_consumer(&cluster);
    let mut query = TopicPartitionList::new();
    query
        .add_partition_offset(TOPIC, 0, Offset::Offset(ts(45)))
        .unwrap();
    let answer = consumer
        .offsets_for_times(query, Duration::from_secs(10))
        .unwrap();
    assert_eq!(answer.elements()[0].offset(), Offset::Offset(45));

    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(TOPIC, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut next = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while next < RECORDS {
        assert!(Instant::now() < deadline, "read {next} of {RECORDS}");
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.unwrap();
        assert_eq!(message.offset(), next, "records in order across segments");
        let value = String::from_utf8(message.payload().unwrap().to_vec()).unwrap();
        assert!(value.starts_with(&format!("{next:04}-")));
        next += 1;
    }
}
