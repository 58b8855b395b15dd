//! Consumer groups with librdkafka consumers against `strata dev`: partitions
//! shared among members, rebalances on leave and join (eager and
//! cooperative), static membership, and committed offsets that a new member
//! resumes from, also after the whole cluster was killed.

mod common;

use common::group::{wait_for_reads, Member, SETTLE};
use common::DevCluster;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 6;

fn produce(cluster: &DevCluster, topic: &str, prefix: &str, count: usize) {
    common::group::produce(&cluster.bootstrap(), topic, PARTITIONS, prefix, count);
}

fn wait_for_assignment(members: &[&Member], sizes: &[usize]) -> Vec<BTreeSet<i32>> {
    common::group::wait_for_assignment(members, PARTITIONS, sizes)
}

#[test]
fn group_members_share_partitions_and_a_leaver_s_move_in_one_rebalance() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    cluster.create_topic("shared", PARTITIONS);
    produce(&cluster, "shared", "first", 600);

    let a = Member::start(&cluster.bootstrap(), "sharing", "shared", &[]);
    let b = Member::start(&cluster.bootstrap(), "sharing", "shared", &[]);
    let c = Member::start(&cluster.bootstrap(), "sharing", "shared", &[]);
    wait_for_assignment(&[&a, &b, &c], &[2, 2, 2]);
    let counts = wait_for_reads(&[&a, &b, &c], "first", 600);
    assert!(
        counts.values().all(|&n| n == 1),
        "no record goes to two members of one generation"
    );
    let (a_assigns, b_assigns) = (a.view().assigns, b.view().assigns);

    let c_view = c.close();
    assert_eq!(c_view.stray, 0);
    wait_for_assignment(&[&a, &b], &[3, 3]);
    // Stay a moment to see that no further rebalance follows.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(a.view().assigns, a_assigns + 1, "one rebalance for a");
    assert_eq!(b.view().assigns, b_assigns + 1, "one rebalance for b");

    produce(&cluster, "shared", "second", 600);
    let counts = wait_for_reads(&[&a, &b], "second", 600);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    assert_eq!(a.view().stray + b.view().stray, 0);
}

#[test]
fn a_new_member_resumes_at_the_committed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    cluster.create_topic("resumed", PARTITIONS);
    produce(&cluster, "resumed", "r", 600);

    let settings = [("enable.auto.commit", "false")];
    let first = Member::start(&cluster.bootstrap(), "resumers", "resumed", &settings);
    wait_for_assignment(&[&first], &[6]);
    wait_for_reads(&[&first], "r", 600);
    let read = first.close();

    // Commit half of each partition with a consumer of the same group, the
    // way an application commits what it has processed.
    let committer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", "resumers")
        .create()
        .unwrap();
    let mut commit = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        let offsets: Vec<i64> = read
            .records
            .iter()
            .filter(|(p, _, _)| *p == partition)
            .map(|(_, o, _)| *o)
            .collect();
        assert_eq!(offsets.len(), 100);
        commit
            .add_partition_offset("resumed", partition, Offset::Offset(50))
            .unwrap();
    }
    committer
        .commit(&commit, CommitMode::Sync)
        .expect("committed");
    let committed = committer
        .committed_offsets(commit.clone(), Duration::from_secs(10))
        .expect("committed offsets are fetched");
    for element in committed.elements() {
        assert_eq!(element.offset(), Offset::Offset(50));
    }
    drop(committer);

    let second = Member::start(&cluster.bootstrap(), "resumers", "resumed", &settings);
    wait_for_assignment(&[&second], &[6]);
    common::eventually(SETTLE, || second.view().records.len() >= 300);
    let view = second.close();
    let firsts: BTreeMap<i32, i64> = view
        .records
        .iter()
        .rev()
        .map(|(p, o, _)| (*p, *o))
        .collect();
    assert_eq!(
        view.records.len(),
        300,
        "only the uncommitted half is read; first offsets {firsts:?}"
    );
    for partition in 0..PARTITIONS {
        let first = view.records.iter().find(|(p, _, _)| *p == partition);
        assert_eq!(first.map(|(_, o, _)| *o), Some(50), "partition {partition}");
    }
}

#[test]
fn cooperative_sticky_members_give_up_only_what_moves() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    cluster.create_topic("sticky", PARTITIONS);
    let settings = [("partition.assignment.strategy", "cooperative-sticky")];

    let a = Member::start(&cluster.bootstrap(), "cooperative", "sticky", &settings);
    let b = Member::start(&cluster.bootstrap(), "cooperative", "sticky", &settings);
    let before = wait_for_assignment(&[&a, &b], &[3, 3]);
    let revoked_before = (a.view().revoked.len(), b.view().revoked.len());

    let c = Member::start(&cluster.bootstrap(), "cooperative", "sticky", &settings);
    let after = wait_for_assignment(&[&a, &b, &c], &[2, 2, 2]);
    assert!(
        after[0].is_subset(&before[0]),
        "a keeps what it had: {before:?} {after:?}"
    );
    assert!(
        after[1].is_subset(&before[1]),
        "b keeps what it had: {before:?} {after:?}"
    );
    for (member, skip) in [(&a, revoked_before.0), (&b, revoked_before.1)] {
        let revoked: Vec<BTreeSet<i32>> = member.view().revoked[skip..].to_vec();
        let total: usize = revoked.iter().map(BTreeSet::len).sum();
        assert_eq!(
            total, 1,
            "only the moving partition is revoked: {revoked:?}"
        );
    }
}

#[test]
fn a_static_member_restarting_within_its_session_keeps_its_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    cluster.create_topic("statics", PARTITIONS);
    let settings = |instance: &'static str| {
        [
            ("group.instance.id", instance),
            ("session.timeout.ms", "30000"),
        ]
    };

    let a = Member::start(&cluster.bootstrap(), "static", "statics", &settings("a"));
    let b = Member::start(&cluster.bootstrap(), "static", "statics", &settings("b"));
    let held = wait_for_assignment(&[&a, &b], &[3, 3]);
    let a_before = a.view();

    b.close();
    let b_again = Member::start(&cluster.bootstrap(), "static", "statics", &settings("b"));
    let settled = common::eventually(SETTLE, || b_again.view().assigned == held[1]);
    assert!(settled, "b gets its partitions back: {:?}", b_again.view());
    std::thread::sleep(Duration::from_secs(2));
    let a_after = a.view();
    assert_eq!(a_after.assigns, a_before.assigns, "a saw no rebalance");
    assert_eq!(a_after.revoked.len(), a_before.revoked.len());
    assert_eq!(a_after.assigned, held[0]);
}

#[test]
fn committed_offsets_survive_a_kill_of_the_whole_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    cluster.create_topic("kept", PARTITIONS);
    produce(&cluster, "kept", "k", 60);
    let member = Member::start(&cluster.bootstrap(), "survivors", "kept", &[]);
    wait_for_reads(&[&member], "k", 60);
    // Closing commits every position: 10 per partition.
    member.close();
    cluster.kill();

    let cluster = DevCluster::start(dir.path());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", "survivors")
        .create()
        .unwrap();
    let mut wanted = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        wanted.add_partition("kept", partition);
    }
    let deadline = Instant::now() + SETTLE;
    let committed = loop {
        match consumer.committed_offsets(wanted.clone(), Duration::from_secs(5)) {
            Ok(committed) => break committed,
            Err(error) if Instant::now() < deadline => {
                eprintln!("committed offsets not fetched yet: {error}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(error) => panic!("committed offsets are fetched: {error}"),
        }
    };
    for element in committed.elements() {
        assert_eq!(
            element.offset(),
            Offset::Offset(10),
            "partition {}",
            element.partition()
        );
    }
}
