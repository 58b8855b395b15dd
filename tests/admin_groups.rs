//! `strata admin groups` against `strata dev`: a live group of two librdkafka
//! consumers is listed and described with its lag; once they leave, its
//! offsets are reset (dry run first); bad input fails clearly.

mod common;

use common::DevCluster;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const TOPIC: &str = "lagging";
const GROUP: &str = "watchers";
const PARTITIONS: i32 = 6;
/// Records per partition read and committed, then produced afterwards.
const READ_PER_PARTITION: i64 = 10;
const UNREAD_PER_PARTITION: i64 = 5;
/// How long the group may take to form (its first rebalance waits 3 s) or to
/// empty once its members leave.
const SETTLE: Duration = Duration::from_secs(30);

/// A member of [`GROUP`] that commits only when told to, so that records
/// produced later stay unread and uncommitted.
fn member(cluster: &DevCluster, client_id: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", GROUP)
        .set("client.id", client_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .expect("consumer is created");
    consumer.subscribe(&[TOPIC]).expect("subscribed");
    consumer
}

/// Whether `consumer` holds three partitions and has read each of them up to
/// `position`.
fn caught_up(consumer: &BaseConsumer, position: i64) -> bool {
    let (Ok(assignment), Ok(positions)) = (consumer.assignment(), consumer.position()) else {
        return false;
    };
    assignment.count() == (PARTITIONS / 2) as usize
        && positions
            .elements()
            .iter()
            .all(|e| e.offset() == Offset::Offset(position))
}

/// Runs `strata admin`, which must fail, and returns its stderr.
fn admin_fails(cluster: &DevCluster, args: &[&str]) -> String {
    let out = cluster.admin(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "strata admin {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// One partition row of `groups describe`.
#[derive(Debug)]
struct Row {
    current: String,
    log_end: String,
    lag: String,
    consumer_id: String,
    client_id: String,
}

/// `groups describe GROUP`: the summary line and the rows of [`TOPIC`] by
/// partition.
fn describe(cluster: &DevCluster) -> (String, BTreeMap<i32, Row>) {
    let out = cluster.admin_ok(&["groups", "describe", GROUP]);
    let summary = out.lines().next().unwrap_or_default().to_string();
    let rows = out
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|words| words.len() == 9 && words[0] == GROUP && words[1] == TOPIC)
        .map(|words| {
            let partition = words[2].parse().expect("partition number");
            let row = Row {
                current: words[3].into(),
                log_end: words[4].into(),
                lag: words[5].into(),
                consumer_id: words[6].into(),
                client_id: words[8].into(),
            };
            (partition, row)
        })
        .collect();
    (summary, rows)
}

/// The committed offsets of [`GROUP`] as rows show them, by partition.
fn current_offsets(cluster: &DevCluster) -> BTreeMap<i32, String> {
    describe(cluster)
        .1
        .into_iter()
        .map(|(p, row)| (p, row.current))
        .collect()
}

fn all_partitions(value: &str) -> BTreeMap<i32, String> {
    (0..PARTITIONS).map(|p| (p, value.to_string())).collect()
}

#[test]
fn groups_are_listed_described_with_lag_and_reset_when_empty() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    cluster.create_topic(TOPIC, PARTITIONS);
    let read = READ_PER_PARTITION * i64::from(PARTITIONS);
    common::group::produce(
        &cluster.bootstrap(),
        TOPIC,
        PARTITIONS,
        "read",
        read as usize,
    );

    let a = member(&cluster, "watcher-a");
    let b = member(&cluster, "watcher-b");
    let deadline = Instant::now() + SETTLE;
    while !(caught_up(&a, READ_PER_PARTITION) && caught_up(&b, READ_PER_PARTITION)) {
        assert!(
            Instant::now() < deadline,
            "the two members did not share and read the topic"
        );
        // Polling serves rebalances and reads; what is read is not kept.
        let _ = a.poll(Duration::from_millis(50));
        let _ = b.poll(Duration::from_millis(50));
    }
    a.commit_consumer_state(CommitMode::Sync)
        .expect("a commits");
    b.commit_consumer_state(CommitMode::Sync)
        .expect("b commits");
    // From here on the members are not polled: they stay in the group
    // (librdkafka heartbeats on its own thread) but read nothing more.
    let unread = UNREAD_PER_PARTITION * i64::from(PARTITIONS);
    common::group::produce(
        &cluster.bootstrap(),
        TOPIC,
        PARTITIONS,
        "unread",
        unread as usize,
    );

    // list, through the metadata service's gateways and through --bootstrap.
    let bootstrap = cluster.bootstrap();
    for args in [
        vec!["groups", "list"],
        vec!["groups", "--bootstrap", &bootstrap, "list"],
    ] {
        let listed = cluster.admin_ok(&args);
        let line = listed
            .lines()
            .find(|l| l.split_whitespace().next() == Some(GROUP))
            .unwrap_or_else(|| panic!("{GROUP} is listed: {listed}"));
        assert_eq!(
            line.split_whitespace().collect::<Vec<_>>(),
            [GROUP, "Stable", "consumer"],
            "{listed}"
        );
    }

    // describe: every partition with its lag and owner.
    let (summary, rows) = describe(&cluster);
    assert!(
        summary.contains("Stable") && summary.contains("2 members"),
        "{summary}"
    );
    assert_eq!(
        rows.keys().copied().collect::<Vec<_>>(),
        (0..PARTITIONS).collect::<Vec<_>>()
    );
    let mut held: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (partition, row) in &rows {
        assert_eq!(
            row.current,
            READ_PER_PARTITION.to_string(),
            "{partition}: {row:?}"
        );
        let log_end = READ_PER_PARTITION + UNREAD_PER_PARTITION;
        assert_eq!(row.log_end, log_end.to_string(), "{partition}: {row:?}");
        assert_eq!(
            row.lag,
            UNREAD_PER_PARTITION.to_string(),
            "{partition}: {row:?}"
        );
        assert!(
            row.consumer_id.starts_with(&row.client_id),
            "member ids start with the client id: {row:?}"
        );
        held.entry(&row.client_id)
            .or_default()
            .insert(&row.consumer_id);
    }
    assert_eq!(
        held.keys().copied().collect::<Vec<_>>(),
        ["watcher-a", "watcher-b"]
    );
    assert!(held.values().all(|ids| ids.len() == 1), "{held:?}");
    for client_id in ["watcher-a", "watcher-b"] {
        let count = rows.values().filter(|r| r.client_id == client_id).count();
        assert_eq!(count, 3, "{client_id} holds three partitions");
    }

    // A group with members is not reset.
    let refused = admin_fails(
        &cluster,
        &[
            "groups",
            "reset-offsets",
            GROUP,
            "--topic",
            TOPIC,
            "--to-earliest",
            "--execute",
        ],
    );
    assert!(refused.contains("Stable"), "{refused}");

    // Members leave; the group empties and keeps its offsets.
    drop(a);
    drop(b);
    let emptied = common::eventually(SETTLE, || describe(&cluster).0.contains("Empty"));
    assert!(emptied, "the group empties: {:?}", describe(&cluster));
    let (_, rows) = describe(&cluster);
    assert!(
        rows.values().all(|r| r.consumer_id == "-" && r.lag == "5"),
        "{rows:?}"
    );

    // A dry run prints the plan and changes nothing.
    let plan = cluster.admin_ok(&[
        "groups",
        "reset-offsets",
        GROUP,
        "--topic",
        TOPIC,
        "--to-earliest",
    ]);
    assert!(plan.contains("Dry run"), "{plan}");
    let planned = plan
        .lines()
        .filter(|l| l.starts_with(GROUP))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|words| words[4] == "0" && words[3] == "10")
        .count();
    assert_eq!(planned, PARTITIONS as usize, "{plan}");
    assert_eq!(current_offsets(&cluster), all_partitions("10"));

    // Executed, it moves every partition to the start.
    cluster.admin_ok(&[
        "groups",
        "reset-offsets",
        GROUP,
        "--topic",
        TOPIC,
        "--to-earliest",
        "--execute",
    ]);
    assert_eq!(current_offsets(&cluster), all_partitions("0"));
    let (_, rows) = describe(&cluster);
    assert!(rows.values().all(|r| r.lag == "15"), "{rows:?}");

    // A Kafka client sees the reset offsets too.
    let checker: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", GROUP)
        .create()
        .unwrap();
    let mut wanted = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        wanted.add_partition(TOPIC, partition);
    }
    let committed = checker
        .committed_offsets(wanted, Duration::from_secs(10))
        .expect("committed offsets are fetched");
    for element in committed.elements() {
        assert_eq!(
            element.offset(),
            Offset::Offset(0),
            "{}",
            element.partition()
        );
    }
    drop(checker);

    // Chosen partitions move to an offset, kept within the log.
    cluster.admin_ok(&[
        "groups",
        "reset-offsets",
        GROUP,
        "--topic",
        &format!("{TOPIC}:1,4"),
        "--to-offset",
        "7",
        "--execute",
    ]);
    cluster.admin_ok(&[
        "groups",
        "reset-offsets",
        GROUP,
        "--topic",
        &format!("{TOPIC}:5"),
        "--to-offset",
        "1000",
        "--execute",
    ]);
    let mut expected = all_partitions("0");
    expected.insert(1, "7".into());
    expected.insert(4, "7".into());
    expected.insert(5, "15".into());
    assert_eq!(current_offsets(&cluster), expected);
}

#[test]
fn bad_input_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    cluster.create_topic("present", 2);

    let unknown = admin_fails(&cluster, &["groups", "describe", "nobody"]);
    assert!(unknown.contains("\"nobody\" does not exist"), "{unknown}");

    let no_topic = admin_fails(
        &cluster,
        &[
            "groups",
            "reset-offsets",
            "nobody",
            "--topic",
            "absent",
            "--to-latest",
        ],
    );
    assert!(no_topic.contains("\"absent\" does not exist"), "{no_topic}");

    let no_partition = admin_fails(
        &cluster,
        &[
            "groups",
            "reset-offsets",
            "nobody",
            "--topic",
            "present:7",
            "--to-latest",
        ],
    );
    assert!(no_partition.contains("no partition 7"), "{no_partition}");

    let unreachable = admin_fails(&cluster, &["groups", "--bootstrap", "127.0.0.1:1", "list"]);
    assert!(
        unreachable.contains("cannot reach gateway 127.0.0.1:1"),
        "{unreachable}"
    );

    let no_target = admin_fails(
        &cluster,
        &["groups", "reset-offsets", "g", "--topic", "present"],
    );
    assert!(no_target.contains("--to-earliest"), "{no_target}");

    // An empty cluster lists no group, and that is not an error.
    let listed = cluster.admin_ok(&["groups", "list"]);
    assert_eq!(listed.lines().count(), 1, "only the header: {listed}");
}
