//! Pipelined requests on one connection to `strata dev`: several requests are
//! sent before any answer is read; answers come back in request order with
//! their correlation ids, a Produce with acks=0 gets none, and pipelined
//! produces to one partition are appended in the order they were sent.

mod common;

use common::wire::{single_record_produce, WireClient};
use common::{eventually, DevCluster};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use std::time::Duration;

const TOPIC: &str = "pipelined";

fn produce(acks: i16, value: &str) -> ProduceRequest {
    single_record_produce(TOPIC, 0, acks, value)
}

/// (error code, base offset) of a one-partition produce answer.
fn appended(response: &ProduceResponse) -> (i16, i64) {
    let partition = &response.responses[0].partition_responses[0];
    (partition.error_code, partition.base_offset)
}

fn metadata() -> MetadataRequest {
    MetadataRequest::default().with_topics(Some(vec![MetadataRequestTopic::default()
        .with_name(Some(TopicName(StrBytes::from_static_str(TOPIC))))]))
}

/// What one pipelined request should be answered with.
enum Expect {
    ApiVersions,
    Metadata,
    /// A produce with acks=-1 or 1 sent at `version`, appended as the `nth`
    /// record of the pipelined ones.
    Produced {
        nth: i64,
        version: i16,
    },
}

#[test]
fn pipelined_requests_are_answered_in_order_and_produces_appended_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let out = cluster.admin(&["topics", "create", TOPIC, "--partitions", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut client = WireClient::connect(cluster.kafka_addr);
    // Retry, as clients do, until the gateway serves the partition.
    let mut first_offset = -1;
    assert!(eventually(Duration::from_secs(30), || {
        let response: ProduceResponse = client.call(ApiKey::Produce, 9, &produce(-1, "warm-up"));
        let (code, base_offset) = appended(&response);
        first_offset = base_offset + 1;
        code == 0
    }));

    // Everything is sent before anything is read.
    let mut expected = Vec::new();
    let mut produced = 0i64;
    let api_versions = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("wire-test"))
        .with_client_software_version(StrBytes::from_static_str("1"));
    let id = client.send(ApiKey::ApiVersions, 3, &api_versions);
    expected.push((id, Expect::ApiVersions));
    for round in 0..4 {
        let id = client.send(ApiKey::Produce, 9, &produce(-1, &format!("acked-{round}")));
        expected.push((
            id,
            Expect::Produced {
                nth: produced,
                version: 9,
            },
        ));
        produced += 1;
        // acks=0: appended in its turn, never answered.
        client.send(ApiKey::Produce, 9, &produce(0, &format!("unacked-{round}")));
        produced += 1;
        let id = client.send(ApiKey::Metadata, 12, &metadata());
        expected.push((id, Expect::Metadata));
        let id = client.send(ApiKey::Produce, 7, &produce(1, &format!("leader-{round}")));
        expected.push((
            id,
            Expect::Produced {
                nth: produced,
                version: 7,
            },
        ));
        produced += 1;
    }

    for (correlation_id, expect) in expected {
        match expect {
            Expect::ApiVersions => {
                let (id, response): (i32, ApiVersionsResponse) =
                    client.receive(ApiKey::ApiVersions, 3);
                assert_eq!(id, correlation_id);
                assert_eq!(response.error_code, 0);
            }
            Expect::Metadata => {
                let (id, response): (i32, MetadataResponse) = client.receive(ApiKey::Metadata, 12);
                assert_eq!(id, correlation_id);
                assert_eq!(response.topics[0].error_code, 0);
            }
            Expect::Produced { nth, version } => {
                let (id, response): (i32, ProduceResponse) =
                    client.receive(ApiKey::Produce, version);
                assert_eq!(id, correlation_id);
                assert_eq!(appended(&response), (0, first_offset + nth));
            }
        }
    }
}
