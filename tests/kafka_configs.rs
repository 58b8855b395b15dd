//! Topic configs through the Kafka protocol against `strata dev`: described
//! and altered with librdkafka's admin client (DescribeConfigs, AlterConfigs),
//! changed with raw IncrementalAlterConfigs and AlterConfigs requests (whose
//! per-resource error codes rust-rdkafka does not pass on), and topics
//! auto-created by a gateway that is configured to.

mod common;

use common::wire::WireClient;
use common::{eventually, DevCluster};
use kafka_protocol::messages::alter_configs_request::{
    AlterConfigsResource as LegacyResource, AlterableConfig as LegacyConfig,
};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, ApiKey, DescribeConfigsRequest,
    DescribeConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigResource, ConfigSource, NewTopic,
    OwnedResourceSpecifier, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use std::time::{Duration, Instant};

/// The topic configs Strata honours, each with its default.
const HONOURED: [(&str, &str); 7] = [
    ("cleanup.policy", "delete"),
    ("max.message.bytes", "1048588"),
    ("message.timestamp.type", "CreateTime"),
    ("retention.bytes", "-1"),
    ("retention.ms", "604800000"),
    ("segment.bytes", "1073741824"),
    ("segment.ms", "604800000"),
];

const TOPIC_RESOURCE: i8 = 2;
const GROUP_RESOURCE: i8 = 32;
const BROKER_RESOURCE: i8 = 4;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const INVALID_CONFIG: i16 = 40;
const INVALID_REQUEST: i16 = 42;

fn admin(cluster: &DevCluster) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .expect("admin client is created")
}

fn options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))
}

async fn describe(admin: &AdminClient<DefaultClientContext>, topic: &str) -> ConfigResource {
    let mut results = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &options())
        .await
        .expect("DescribeConfigs answered");
    assert_eq!(results.len(), 1);
    results.remove(0).expect("the topic is described")
}

/// A config's value and whether it is the topic's own (not the default).
fn entry(resource: &ConfigResource, key: &str) -> (String, bool) {
    let entry = resource
        .get(key)
        .unwrap_or_else(|| panic!("{key} is described"));
    let own = entry.source == ConfigSource::DynamicTopic;
    assert_eq!(own, !entry.is_default, "{entry:?}");
    if !own {
        assert_eq!(entry.source, ConfigSource::Default, "{entry:?}");
    }
    (entry.value.clone().expect("a value"), own)
}

/// Polls `describe` until `ready` holds (a gateway's cache follows metadata).
async fn described_until(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    ready: impl Fn(&ConfigResource) -> bool,
) -> ConfigResource {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resource = describe(admin, topic).await;
        if ready(&resource) || Instant::now() > deadline {
            return resource;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn topic_configs_are_described_and_replaced_with_librdkafka() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let admin = admin(&cluster);
    let topic = "configured";
    let created = NewTopic::new(topic, 1, TopicReplication::Fixed(3))
        .set("retention.ms", "86400000")
        .set("compression.type", "lz4");
    let results = admin.create_topics(&[created], &options()).await.unwrap();
    assert_eq!(results, vec![Ok(topic.to_string())]);

    // Every honoured config, at the topic's value or the default, plus the
    // other config the topic sets.
    let resource = described_until(&admin, topic, |r| !r.entries.is_empty()).await;
    assert_eq!(
        resource.specifier,
        OwnedResourceSpecifier::Topic(topic.into())
    );
    for (key, default) in HONOURED {
        let expected = if key == "retention.ms" {
            ("86400000".to_string(), true)
        } else {
            (default.to_string(), false)
        };
        assert_eq!(entry(&resource, key), expected, "{key}");
    }
    assert_eq!(entry(&resource, "compression.type"), ("lz4".into(), true));
    assert_eq!(resource.entries.len(), HONOURED.len() + 1);

    // A broker's configs are not Kafka's to describe: none, and no error.
    let brokers = admin
        .describe_configs(&[ResourceSpecifier::Broker(1)], &options())
        .await
        .unwrap();
    let broker = brokers[0].as_ref().expect("the broker is described");
    assert_eq!(broker.specifier, OwnedResourceSpecifier::Broker(1));
    assert!(broker.entries.is_empty());

    // AlterConfigs replaces the topic's configs: those not named go back to
    // their defaults.
    let replace = AlterConfig::new(ResourceSpecifier::Topic(topic))
        .set("segment.ms", "3600000")
        .set("max.message.bytes", "2097152");
    let results = admin.alter_configs(&[replace], &options()).await.unwrap();
    assert_eq!(
        results,
        vec![Ok(OwnedResourceSpecifier::Topic(topic.into()))]
    );
    let resource = described_until(&admin, topic, |r| {
        r.get("segment.ms").and_then(|e| e.value.as_deref()) == Some("3600000")
    })
    .await;
    assert_eq!(entry(&resource, "segment.ms"), ("3600000".into(), true));
    assert_eq!(
        entry(&resource, "max.message.bytes"),
        ("2097152".into(), true)
    );
    assert_eq!(
        entry(&resource, "retention.ms"),
        ("604800000".into(), false)
    );
    assert!(resource.get("compression.type").is_none());

    // A bad value refuses the whole change. (rust-rdkafka drops the error
    // codes of AlterConfigs results, so they are checked on the wire below.)
    let bad = AlterConfig::new(ResourceSpecifier::Topic(topic))
        .set("segment.ms", "60000")
        .set("retention.ms", "soon");
    let results = admin.alter_configs(&[bad], &options()).await.unwrap();
    assert_eq!(results.len(), 1);
    let resource = describe(&admin, topic).await;
    assert_eq!(entry(&resource, "segment.ms"), ("3600000".into(), true));
    assert_eq!(
        entry(&resource, "retention.ms"),
        ("604800000".into(), false)
    );

    // validate_only checks without changing anything.
    let dry = AlterConfig::new(ResourceSpecifier::Topic(topic)).set("retention.bytes", "4096");
    let results = admin
        .alter_configs(&[dry], &options().validate_only(true))
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![Ok(OwnedResourceSpecifier::Topic(topic.into()))]
    );
    let resource = describe(&admin, topic).await;
    assert_eq!(entry(&resource, "segment.ms"), ("3600000".into(), true));
    assert_eq!(entry(&resource, "retention.bytes"), ("-1".into(), false));
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn op(name: &str, operation: i8, value: Option<&str>) -> AlterableConfig {
    AlterableConfig::default()
        .with_name(str_bytes(name))
        .with_config_operation(operation)
        .with_value(value.map(str_bytes))
}

const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;

/// Sends one IncrementalAlterConfigs v1 for one resource; returns its error code.
fn incremental(
    client: &mut WireClient,
    resource_type: i8,
    name: &str,
    configs: Vec<AlterableConfig>,
) -> i16 {
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(str_bytes(name))
            .with_configs(configs),
    ]);
    let response: IncrementalAlterConfigsResponse =
        client.call(ApiKey::IncrementalAlterConfigs, 1, &request);
    assert_eq!(response.responses.len(), 1);
    let result = &response.responses[0];
    assert_eq!(result.resource_name.as_str(), name);
    assert_eq!(result.resource_type, resource_type);
    result.error_code
}

fn describe_wire(
    client: &mut WireClient,
    resources: Vec<(i8, &str, Option<Vec<&str>>)>,
) -> DescribeConfigsResponse {
    let resources = resources
        .into_iter()
        .map(|(resource_type, name, keys)| {
            DescribeConfigsResource::default()
                .with_resource_type(resource_type)
                .with_resource_name(str_bytes(name))
                .with_configuration_keys(keys.map(|k| k.into_iter().map(str_bytes).collect()))
        })
        .collect();
    let request = DescribeConfigsRequest::default()
        .with_resources(resources)
        .with_include_synonyms(true);
    client.call(ApiKey::DescribeConfigs, 4, &request)
}

/// The topic's own value of each of `keys` (`None` when it uses the default).
fn own_values(client: &mut WireClient, topic: &str, keys: &[&str]) -> Vec<Option<String>> {
    let response = describe_wire(client, vec![(TOPIC_RESOURCE, topic, Some(keys.to_vec()))]);
    let result = &response.results[0];
    assert_eq!(result.error_code, 0);
    keys.iter()
        .map(|key| {
            let config = result
                .configs
                .iter()
                .find(|c| c.name.as_str() == *key)
                .unwrap_or_else(|| panic!("{key} is described"));
            (config.config_source == 1)
                .then(|| config.value.as_ref().map(|v| v.to_string()))
                .flatten()
        })
        .collect()
}

#[test]
fn incremental_alter_configs_sets_and_deletes_topic_configs_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let topic = "incremental";
    let out = cluster.admin(&["topics", "create", topic, "--partitions", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut client = WireClient::connect(cluster.kafka_addr);
    assert!(eventually(Duration::from_secs(20), || {
        describe_wire(&mut client, vec![(TOPIC_RESOURCE, topic, None)]).results[0].error_code == 0
    }));

    let keys = ["retention.bytes", "segment.ms", "cleanup.policy"];
    let set_both = vec![
        op("retention.bytes", SET, Some("4096")),
        op("segment.ms", SET, Some("60000")),
    ];
    assert_eq!(incremental(&mut client, TOPIC_RESOURCE, topic, set_both), 0);
    // The gateway that altered the configs describes them at once.
    assert_eq!(
        own_values(&mut client, topic, &keys),
        vec![Some("4096".into()), Some("60000".into()), None]
    );

    let delete_and_append = vec![
        op("segment.ms", DELETE, None),
        op("cleanup.policy", APPEND, Some("delete")),
    ];
    assert_eq!(
        incremental(&mut client, TOPIC_RESOURCE, topic, delete_and_append),
        0
    );
    assert_eq!(
        own_values(&mut client, topic, &keys),
        vec![Some("4096".into()), None, Some("delete".into())]
    );

    // Refusals change nothing, not even the valid operations beside them.
    let refused = [
        (vec![op("retention.ms", APPEND, Some("5"))], INVALID_REQUEST),
        (vec![op("retention.ms", SET, None)], INVALID_REQUEST),
        (
            vec![
                op("retention.bytes", SET, Some("1")),
                op("no.such.config", SET, Some("1")),
            ],
            INVALID_CONFIG,
        ),
        (
            vec![
                op("retention.bytes", SET, Some("1")),
                op("cleanup.policy", APPEND, Some("compact")),
            ],
            INVALID_CONFIG,
        ),
    ];
    for (configs, expected) in refused {
        assert_eq!(
            incremental(&mut client, TOPIC_RESOURCE, topic, configs),
            expected
        );
    }
    assert_eq!(
        own_values(&mut client, topic, &keys),
        vec![Some("4096".into()), None, Some("delete".into())]
    );
    let set = || vec![op("retention.ms", SET, Some("1000"))];
    assert_eq!(
        incremental(&mut client, TOPIC_RESOURCE, "missing", set()),
        UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(
        incremental(&mut client, BROKER_RESOURCE, "1", set()),
        INVALID_REQUEST
    );

    // Legacy AlterConfigs answers each resource with its own error code.
    let legacy = |resource_type: i8, name: &str, configs: &[(&str, &str)]| {
        LegacyResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(str_bytes(name))
            .with_configs(
                configs
                    .iter()
                    .map(|(key, value)| {
                        LegacyConfig::default()
                            .with_name(str_bytes(key))
                            .with_value(Some(str_bytes(value)))
                    })
                    .collect(),
            )
    };
    let request = AlterConfigsRequest::default().with_resources(vec![
        legacy(
            TOPIC_RESOURCE,
            topic,
            &[("segment.ms", "1"), ("retention.ms", "soon")],
        ),
        legacy(TOPIC_RESOURCE, "missing", &[("retention.ms", "1000")]),
        legacy(BROKER_RESOURCE, "1", &[("log.retention.ms", "1")]),
    ]);
    let response: AlterConfigsResponse = client.call(ApiKey::AlterConfigs, 1, &request);
    let codes: Vec<i16> = response.responses.iter().map(|r| r.error_code).collect();
    assert_eq!(
        codes,
        vec![INVALID_CONFIG, UNKNOWN_TOPIC_OR_PARTITION, INVALID_REQUEST]
    );
    assert_eq!(
        own_values(&mut client, topic, &keys),
        vec![Some("4096".into()), None, Some("delete".into())]
    );

    // DescribeConfigs answers per resource, with only the keys asked for.
    let response = describe_wire(
        &mut client,
        vec![
            (
                TOPIC_RESOURCE,
                topic,
                Some(vec!["retention.bytes", "segment.ms"]),
            ),
            (TOPIC_RESOURCE, "missing", None),
            (BROKER_RESOURCE, "1", None),
            (GROUP_RESOURCE, "some-group", None),
        ],
    );
    let codes: Vec<i16> = response.results.iter().map(|r| r.error_code).collect();
    assert_eq!(
        codes,
        vec![0, UNKNOWN_TOPIC_OR_PARTITION, 0, INVALID_REQUEST]
    );
    let described: Vec<(&str, Option<&str>, i8, usize, i8)> = response.results[0]
        .configs
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.value.as_ref().map(|v| v.as_str()),
                c.config_source,
                c.synonyms.len(),
                c.config_type,
            )
        })
        .collect();
    // Sources: 1 = the topic's own, 5 = default; type 5 = LONG.
    assert_eq!(
        described,
        vec![
            ("retention.bytes", Some("4096"), 1, 2, 5),
            ("segment.ms", Some("604800000"), 5, 1, 5),
        ]
    );
    assert!(response.results[2].configs.is_empty());
}

fn metadata_for(client: &mut WireClient, topic: &str, allow_auto_create: bool) -> (i16, usize) {
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(TopicName(str_bytes(topic))))
        ]))
        .with_allow_auto_topic_creation(allow_auto_create);
    let response: MetadataResponse = client.call(ApiKey::Metadata, 12, &request);
    let topic = &response.topics[0];
    (topic.error_code, topic.partitions.len())
}

#[test]
fn metadata_auto_creates_unknown_topics_only_where_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let mut plain = WireClient::connect(cluster.kafka_addr);
    // `strata dev`'s gateway keeps auto-creation off.
    assert_eq!(
        metadata_for(&mut plain, "not-auto-created", true),
        (UNKNOWN_TOPIC_OR_PARTITION, 0)
    );

    let log = dir.path().join("auto-gateway.log");
    let gateway = cluster.start_gateway(2, &log, &["--auto-create-topics", "true"]);
    let mut auto = WireClient::connect(gateway.addr.parse().expect("a Kafka address"));
    // A client may forbid it.
    assert_eq!(
        metadata_for(&mut auto, "not-allowed", false),
        (UNKNOWN_TOPIC_OR_PARTITION, 0)
    );
    // Otherwise the topic is created with the default partition count (1 in dev).
    assert!(
        eventually(Duration::from_secs(20), || metadata_for(
            &mut auto,
            "auto-created",
            true
        ) == (0, 1)),
        "{}",
        gateway.log_text()
    );
    assert!(eventually(Duration::from_secs(20), || metadata_for(
        &mut plain,
        "auto-created",
        false
    ) == (0, 1)));
    assert_eq!(
        metadata_for(&mut plain, "not-allowed", false),
        (UNKNOWN_TOPIC_OR_PARTITION, 0)
    );
    assert_eq!(
        metadata_for(&mut plain, "not-auto-created", false),
        (UNKNOWN_TOPIC_OR_PARTITION, 0)
    );
}
