//! Consumer groups with librdkafka consumers against `strata dev`: partitions
//! shared among members, rebalances on leave and join (eager and
//! cooperative), static membership, and committed offsets that a new member
//! resumes from, also after the whole cluster was killed.

mod common;

use common::DevCluster;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 6;
const SETTLE: Duration = Duration::from_secs(60);

/// What one member has seen, updated by its poll thread.
#[derive(Debug, Default, Clone)]
struct View {
    assigned: BTreeSet<i32>,
    /// Rebalance callbacks that assigned partitions.
    assigns: usize,
    /// Partitions taken away, one entry per revoke callback.
    revoked: Vec<BTreeSet<i32>>,
    /// (partition, offset, value) of every record, in order.
    records: Vec<(i32, i64, String)>,
    /// Records of partitions the member did not hold when it got them.
    stray: usize,
}

struct Recorder(Arc<Mutex<View>>);

impl ClientContext for Recorder {}

impl ConsumerContext for Recorder {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut view = self.0.lock().unwrap();
        match rebalance {
            Rebalance::Assign(list) => {
                view.assigns += 1;
                for element in list.elements() {
                    view.assigned.insert(element.partition());
                }
            }
            Rebalance::Revoke(list) => {
                let gone: BTreeSet<i32> = list.elements().iter().map(|e| e.partition()).collect();
                view.assigned.retain(|p| !gone.contains(p));
                view.revoked.push(gone);
            }
            Rebalance::Error(_) => {}
        }
    }
}

/// A group member polling on its own thread until stopped.
struct Member {
    view: Arc<Mutex<View>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Member {
    fn start(cluster: &DevCluster, group: &str, topic: &str, settings: &[(&str, &str)]) -> Self {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", cluster.bootstrap())
            .set("group.id", group)
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "200");
        for (key, value) in settings {
            config.set(*key, *value);
        }
        let view = Arc::new(Mutex::new(View::default()));
        let consumer: BaseConsumer<Recorder> = config
            .create_with_context(Recorder(view.clone()))
            .expect("consumer is created");
        consumer.subscribe(&[topic]).expect("subscribed");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (view, stop) = (view.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                        continue;
                    };
                    let Ok(message) = message else {
                        continue;
                    };
                    let value = String::from_utf8_lossy(message.payload().unwrap_or_default());
                    let mut view = view.lock().unwrap();
                    if !view.assigned.contains(&message.partition()) {
                        view.stray += 1;
                    }
                    view.records
                        .push((message.partition(), message.offset(), value.into_owned()));
                }
                // Dropping the consumer closes it: offsets are committed and a
                // dynamic member leaves the group.
                drop(consumer);
            })
        };
        Self {
            view,
            stop,
            thread: Some(thread),
        }
    }

    fn view(&self) -> View {
        self.view.lock().unwrap().clone()
    }

    /// Closes the consumer cleanly and waits for it.
    fn close(mut self) -> View {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("member thread ends");
        }
        self.view()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Produces `count` records `{prefix}-{i}` round-robin over the partitions,
/// each acknowledged.
fn produce(cluster: &DevCluster, topic: &str, prefix: &str, count: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer is created");
    let deliveries: Vec<_> = (0..count)
        .map(|i| {
            let value = format!("{prefix}-{i}");
            let record = FutureRecord::<(), _>::to(topic)
                .partition(i as i32 % PARTITIONS)
                .payload(&value);
            producer.send_result(record).expect("queued")
        })
        .collect();
    for delivery in deliveries {
        futures::executor::block_on(delivery)
            .expect("delivery reported")
            .expect("acknowledged");
    }
}

/// Waits until the members' assignments are disjoint, cover every partition,
/// and have the given sizes; fails with what they hold otherwise.
fn wait_for_assignment(members: &[&Member], sizes: &[usize]) -> Vec<BTreeSet<i32>> {
    let settled = common::eventually(SETTLE, || {
        let held: Vec<BTreeSet<i32>> = members.iter().map(|m| m.view().assigned).collect();
        let all: BTreeSet<i32> = held.iter().flatten().copied().collect();
        let total: usize = held.iter().map(BTreeSet::len).sum();
        let mut got: Vec<usize> = held.iter().map(BTreeSet::len).collect();
        got.sort();
        let mut want = sizes.to_vec();
        want.sort();
        all.len() == PARTITIONS as usize && total == all.len() && got == want
    });
    let held: Vec<BTreeSet<i32>> = members.iter().map(|m| m.view().assigned).collect();
    assert!(settled, "assignment did not settle: {held:?}");
    held
}

/// Values with `prefix` the members read, with how often each was read.
fn read_counts(members: &[&Member], prefix: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for member in members {
        for (_, _, value) in member.view().records {
            if value.starts_with(prefix) {
                *counts.entry(value).or_default() += 1;
            }
        }
    }
    counts
}

fn wait_for_reads(members: &[&Member], prefix: &str, count: usize) -> BTreeMap<String, usize> {
    common::eventually(SETTLE, || read_counts(members, prefix).len() >= count);
    let counts = read_counts(members, prefix);
    assert_eq!(counts.len(), count, "every record with {prefix} is read");
    counts
}

#[test]
fn group_members_share_partitions_and_a_leaver_s_move_in_one_rebalance() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    cluster.create_topic("shared", PARTITIONS);
    produce(&cluster, "shared", "first", 600);

    let a = Member::start(&cluster, "sharing", "shared", &[]);
    let b = Member::start(&cluster, "sharing", "shared", &[]);
    let c = Member::start(&cluster, "sharing", "shared", &[]);
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
    let first = Member::start(&cluster, "resumers", "resumed", &settings);
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

    let second = Member::start(&cluster, "resumers", "resumed", &settings);
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

    let a = Member::start(&cluster, "cooperative", "sticky", &settings);
    let b = Member::start(&cluster, "cooperative", "sticky", &settings);
    let before = wait_for_assignment(&[&a, &b], &[3, 3]);
    let revoked_before = (a.view().revoked.len(), b.view().revoked.len());

    let c = Member::start(&cluster, "cooperative", "sticky", &settings);
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

    let a = Member::start(&cluster, "static", "statics", &settings("a"));
    let b = Member::start(&cluster, "static", "statics", &settings("b"));
    let held = wait_for_assignment(&[&a, &b], &[3, 3]);
    let a_before = a.view();

    b.close();
    let b_again = Member::start(&cluster, "static", "statics", &settings("b"));
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
    let member = Member::start(&cluster, "survivors", "kept", &[]);
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
