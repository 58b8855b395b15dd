//! `strata dev` as users run it: a real process, real Kafka clients over TCP.

mod common;

use common::wire::WireClient;
use common::{eventually, DevCluster};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use std::time::Duration;

fn rdkafka_consumer(cluster: &DevCluster) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", "metadata-probe")
        .create()
        .expect("rdkafka consumer is created")
}

#[test]
fn librdkafka_lists_the_gateway_as_a_broker() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let consumer = rdkafka_consumer(&cluster);
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(20))
        .expect("librdkafka fetches metadata");
    let brokers = metadata.brokers();
    assert_eq!(brokers.len(), 1, "one gateway, one broker");
    assert_eq!(brokers[0].id(), 1);
    assert_eq!(brokers[0].host(), "127.0.0.1");
    assert_eq!(brokers[0].port() as u16, cluster.kafka_addr.port());
}

#[test]
fn metadata_carries_cluster_id_and_controller_of_live_gateways() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let mut client = WireClient::connect(cluster.kafka_addr);
    // Wait until the gateway's own registration has reached its cache.
    let mut response = MetadataResponse::default();
    assert!(eventually(Duration::from_secs(20), || {
        response = client.call(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(None),
        );
        response.cluster_id.is_some()
    }));
    let cluster_id = response.cluster_id.clone().unwrap();
    assert_eq!(cluster_id.len(), 22, "a Kafka-style base64 UUID");
    assert_eq!(*response.controller_id, 1);
    assert_eq!(response.brokers.len(), 1);
    assert_eq!(response.brokers[0].port as u16, cluster.kafka_addr.port());

    // Old clients get the same answer in the oldest format.
    let v0: MetadataResponse = client.call(
        ApiKey::Metadata,
        0,
        &MetadataRequest::default().with_topics(Some(vec![])),
    );
    assert_eq!(v0.brokers.len(), 1);
}

#[test]
fn api_versions_advertises_exactly_what_is_implemented() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let mut client = WireClient::connect(cluster.kafka_addr);
    let request = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("wire-test"))
        .with_client_software_version(StrBytes::from_static_str("1"));
    let response: ApiVersionsResponse = client.call(ApiKey::ApiVersions, 3, &request);
    assert_eq!(response.error_code, 0);
    let mut advertised: Vec<(i16, i16, i16)> = response
        .api_keys
        .iter()
        .map(|k| (k.api_key, k.min_version, k.max_version))
        .collect();
    advertised.sort();
    assert_eq!(
        advertised,
        vec![
            (ApiKey::Produce as i16, 3, 9),
            (ApiKey::Fetch as i16, 4, 12),
            (ApiKey::ListOffsets as i16, 1, 7),
            (ApiKey::Metadata as i16, 0, 12),
            (ApiKey::OffsetCommit as i16, 2, 8),
            (ApiKey::OffsetFetch as i16, 1, 8),
            (ApiKey::FindCoordinator as i16, 0, 4),
            (ApiKey::JoinGroup as i16, 0, 9),
            (ApiKey::Heartbeat as i16, 0, 4),
            (ApiKey::LeaveGroup as i16, 0, 5),
            (ApiKey::SyncGroup as i16, 0, 5),
            (ApiKey::DescribeGroups as i16, 0, 5),
            (ApiKey::ListGroups as i16, 0, 5),
            (ApiKey::ApiVersions as i16, 0, 4),
            (ApiKey::CreateTopics as i16, 2, 7),
            (ApiKey::DeleteTopics as i16, 1, 6),
            (ApiKey::DeleteRecords as i16, 0, 2),
            (ApiKey::InitProducerId as i16, 0, 5),
            (ApiKey::DescribeConfigs as i16, 1, 4),
            (ApiKey::AlterConfigs as i16, 0, 2),
            (ApiKey::CreatePartitions as i16, 0, 3),
            (ApiKey::DeleteGroups as i16, 0, 2),
            (ApiKey::IncrementalAlterConfigs as i16, 0, 1),
            (ApiKey::OffsetDelete as i16, 0, 0),
        ]
    );
}

#[test]
fn api_versions_newer_than_ours_gets_unsupported_version_in_v0() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let mut client = WireClient::connect(cluster.kafka_addr);
    // ApiVersions v99, correlation id 7, no client id: the gateway must answer in v0.
    let mut body = Vec::new();
    body.extend_from_slice(&(ApiKey::ApiVersions as i16).to_be_bytes());
    body.extend_from_slice(&99i16.to_be_bytes());
    body.extend_from_slice(&7i32.to_be_bytes());
    body.extend_from_slice(&(-1i16).to_be_bytes());
    client.send_frame(&body);
    let mut frame = client.read_frame().expect("an answer, not a closed socket");
    use kafka_protocol::protocol::Decodable;
    let header = kafka_protocol::messages::ResponseHeader::decode(&mut frame, 0).unwrap();
    assert_eq!(header.correlation_id, 7);
    let response = ApiVersionsResponse::decode(&mut frame, 0).unwrap();
    assert_eq!(response.error_code, 35, "UNSUPPORTED_VERSION");
    assert!(!response.api_keys.is_empty());
}

#[test]
fn oversized_frame_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let mut bad = WireClient::connect(cluster.kafka_addr);
    let mut good = WireClient::connect(cluster.kafka_addr);
    // 200 MiB claimed: over the 100 MiB default limit.
    bad.send_raw(&(200 * 1024 * 1024i32).to_be_bytes());
    assert!(bad.is_closed_by_server());
    let response: ApiVersionsResponse =
        good.call(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default());
    assert_eq!(response.error_code, 0);
}

#[test]
fn undecodable_frames_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let frames: [&[u8]; 3] = [
        // Unknown API key 9999.
        &[0x27, 0x0f, 0, 0, 0, 0, 0, 1, 0xff, 0xff],
        // Too short for a header.
        &[0, 3],
        // Metadata v12 whose body is cut short.
        &[0, 3, 0, 12, 0, 0, 0, 1, 0xff, 0xff, 0, 0x05],
    ];
    for frame in frames {
        let mut client = WireClient::connect(cluster.kafka_addr);
        client.send_frame(frame);
        assert!(client.is_closed_by_server(), "frame {frame:?} closes");
    }
    let mut client = WireClient::connect(cluster.kafka_addr);
    let response: ApiVersionsResponse =
        client.call(ApiKey::ApiVersions, 2, &ApiVersionsRequest::default());
    assert_eq!(response.error_code, 0, "the gateway still serves");
}

#[test]
fn topics_created_with_admin_appear_in_kafka_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let out = cluster.admin(&["topics", "create", "orders", "--partitions", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let duplicate = cluster.admin(&["topics", "create", "orders"]);
    assert!(!duplicate.status.success());
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("error code 36"));

    let consumer = rdkafka_consumer(&cluster);
    assert!(eventually(Duration::from_secs(20), || {
        consumer
            .fetch_metadata(Some("orders"), Duration::from_secs(5))
            .is_ok_and(|m| {
                m.topics()
                    .first()
                    .is_some_and(|t| t.partitions().len() == 3)
            })
    }));
    // The controller grants every partition to the only gateway, which
    // librdkafka then sees as each partition's leader.
    assert!(eventually(Duration::from_secs(20), || {
        consumer
            .fetch_metadata(Some("orders"), Duration::from_secs(5))
            .is_ok_and(|m| {
                m.topics().first().is_some_and(|t| {
                    t.partitions()
                        .iter()
                        .all(|p| p.leader() == 1 && p.error().is_none())
                })
            })
    }));
}

#[test]
fn dev_cluster_stops_on_sigterm_and_resumes_from_its_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let out = cluster.admin(&["topics", "create", "kept", "--partitions", "2"]);
    assert!(out.status.success());
    let status_before = String::from_utf8(cluster.admin(&["status"]).stdout).unwrap();
    let status = cluster.stop();
    assert!(status.success(), "clean exit on SIGTERM, got {status}");

    let cluster = DevCluster::start(dir.path());
    let status_after = String::from_utf8(cluster.admin(&["status"]).stdout).unwrap();
    let cluster_id = |s: &str| s.lines().next().unwrap_or_default().to_string();
    assert!(cluster_id(&status_before).starts_with("cluster id"));
    assert_eq!(cluster_id(&status_before), cluster_id(&status_after));
    let topics = String::from_utf8(cluster.admin(&["topics", "list"]).stdout).unwrap();
    assert_eq!(topics.trim(), "kept\t2");
}

#[test]
fn admin_status_shows_every_role() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    assert!(eventually(Duration::from_secs(20), || {
        let out = String::from_utf8(cluster.admin(&["status"]).stdout).unwrap();
        out.matches(" live ").count() == 4
    }));
    let out = String::from_utf8(cluster.admin(&["status"]).stdout).unwrap();
    assert!(out.contains("voter"), "{out}");
    // The dev cluster's single metadata node leads its raft group.
    let leader_line = out.lines().find(|l| l.starts_with("raft leader")).unwrap();
    assert!(leader_line.contains(" 1 (term "), "{out}");
    assert!(!leader_line.contains("(term 0)"), "{out}");
    assert_eq!(cluster.bookie_addrs.len(), 3);
}
