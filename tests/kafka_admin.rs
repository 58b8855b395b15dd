//! Topic administration through the Kafka protocol, with librdkafka's admin
//! client against `strata dev`.

mod common;

use common::{eventually, DevCluster};
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use std::time::Duration;

fn admin(cluster: &DevCluster) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .expect("admin client is created")
}

fn partition_count(cluster: &DevCluster, topic: &str) -> Option<usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let topic = metadata.topics().first()?;
    topic.error().is_none().then(|| topic.partitions().len())
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_are_created_grown_and_deleted_with_kafka_admin_requests() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let admin = admin(&cluster);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));

    let orders =
        NewTopic::new("orders", 3, TopicReplication::Fixed(3)).set("retention.ms", "86400000");
    let results = admin
        .create_topics(&[orders], &options)
        .await
        .expect("CreateTopics answered");
    assert_eq!(results, vec![Ok("orders".to_string())]);
    assert!(eventually(Duration::from_secs(10), || partition_count(
        &cluster, "orders"
    ) == Some(3)));

    // Errors come back per topic, with Kafka's codes.
    let again = NewTopic::new("orders", 1, TopicReplication::Fixed(1));
    let bad_name = NewTopic::new("no spaces", 1, TopicReplication::Fixed(1));
    let bad_config =
        NewTopic::new("configured", 1, TopicReplication::Fixed(1)).set("retention.ms", "soon");
    let results = admin
        .create_topics(&[again, bad_name, bad_config], &options)
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![
            Err(("orders".into(), RDKafkaErrorCode::TopicAlreadyExists)),
            Err(("no spaces".into(), RDKafkaErrorCode::InvalidTopic)),
            Err(("configured".into(), RDKafkaErrorCode::InvalidConfig)),
        ]
    );

    // validate_only creates nothing.
    let dry = NewTopic::new("dry", 2, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(
            &[dry],
            &AdminOptions::new()
                .operation_timeout(Some(Duration::from_secs(10)))
                .validate_only(true),
        )
        .await
        .unwrap();
    assert_eq!(results, vec![Ok("dry".to_string())]);
    assert_eq!(partition_count(&cluster, "dry"), None);

    let grow = NewPartitions::new("orders", 5);
    let shrink = NewPartitions::new("orders", 2);
    let results = admin.create_partitions(&[grow], &options).await.unwrap();
    assert_eq!(results, vec![Ok("orders".to_string())]);
    let results = admin.create_partitions(&[shrink], &options).await.unwrap();
    assert_eq!(
        results,
        vec![Err(("orders".into(), RDKafkaErrorCode::InvalidPartitions))]
    );
    assert!(eventually(Duration::from_secs(10), || partition_count(
        &cluster, "orders"
    ) == Some(5)));

    let results = admin
        .delete_topics(&["orders", "missing"], &options)
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![
            Ok("orders".to_string()),
            Err(("missing".into(), RDKafkaErrorCode::UnknownTopicOrPartition)),
        ]
    );
    assert!(eventually(Duration::from_secs(10), || partition_count(
        &cluster, "orders"
    )
    .is_none()));
}
