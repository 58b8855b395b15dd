//! When the gateway coordinating a consumer group dies, its coordinator slot
//! moves to a live gateway, the members rejoin there, and they resume at the
//! offsets they committed before: nothing committed is read twice.

mod common;

use common::group::{produce, read_counts, wait_for_assignment, wait_for_reads, Member};
use common::wire::WireClient;
use common::DevCluster;
use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::Duration;

const TOPIC: &str = "handover";
const PARTITIONS: i32 = 6;

/// The node id of the coordinator of `group`, as `gateway` names it.
fn coordinator_of(gateway: &str, group: &str) -> i32 {
    let mut client = WireClient::connect(gateway.parse().expect("a Kafka address"));
    let request = FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.into()));
    let response: FindCoordinatorResponse = client.call(ApiKey::FindCoordinator, 3, &request);
    if response.error_code == 0 {
        *response.node_id
    } else {
        -1
    }
}

/// Sum of the group's committed offsets over the topic's partitions.
fn committed_total(bootstrap: &str, group: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut wanted = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        wanted.add_partition(TOPIC, partition);
    }
    match consumer.committed_offsets(wanted, Duration::from_secs(5)) {
        Ok(committed) => committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(offset) => offset,
                _ => 0,
            })
            .sum(),
        Err(_) => -1,
    }
}

#[test]
fn members_rejoin_the_new_coordinator_and_resume_at_their_commits() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let mut second = cluster.start_gateway(2, &dir.path().join("gateway-2.log"), &[]);

    // A group that the second gateway coordinates, once slots are balanced.
    let mut group = String::new();
    let found = common::eventually(Duration::from_secs(30), || {
        group = (0..200)
            .map(|i| format!("handover-{i}"))
            .find(|g| coordinator_of(&cluster.bootstrap(), g) == 2)
            .unwrap_or_default();
        !group.is_empty()
    });
    assert!(found, "the second gateway coordinates some groups");

    cluster.create_topic(TOPIC, PARTITIONS);
    let bootstrap = cluster.bootstrap();
    produce(&bootstrap, TOPIC, PARTITIONS, "before", 120);
    let a = Member::start(&bootstrap, &group, TOPIC, &[]);
    let b = Member::start(&bootstrap, &group, TOPIC, &[]);
    wait_for_assignment(&[&a, &b], PARTITIONS, &[3, 3]);
    wait_for_reads(&[&a, &b], "before", 120);
    let committed = common::eventually(Duration::from_secs(30), || {
        committed_total(&bootstrap, &group) == 120
    });
    assert!(committed, "every record read is committed");

    second.kill();
    let moved = common::eventually(Duration::from_secs(60), || {
        coordinator_of(&bootstrap, &group) == 1
    });
    assert!(
        moved,
        "the slot moves to the live gateway when the lease lapses"
    );

    produce(&bootstrap, TOPIC, PARTITIONS, "after", 120);
    wait_for_reads(&[&a, &b], "after", 120);
    wait_for_assignment(&[&a, &b], PARTITIONS, &[3, 3]);
    let before = read_counts(&[&a, &b], "before");
    assert!(
        before.values().all(|&n| n == 1),
        "records committed before the failover are not read again: {before:?}"
    );
    let all_committed = common::eventually(Duration::from_secs(30), || {
        committed_total(&bootstrap, &group) == 240
    });
    assert!(all_committed, "commits go on at the new coordinator");
}
