//! Consumer-group members for tests: librdkafka consumers polling on their
//! own threads and recording what they were assigned and what they read.

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, ClientContext};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a group may take to settle after members come or go.
pub const SETTLE: Duration = Duration::from_secs(60);

/// What one member has seen, updated by its poll thread.
#[derive(Debug, Default, Clone)]
pub struct View {
    pub assigned: BTreeSet<i32>,
    /// Rebalance callbacks that assigned partitions.
    pub assigns: usize,
    /// Partitions taken away, one entry per revoke callback.
    pub revoked: Vec<BTreeSet<i32>>,
    /// (partition, offset, value) of every record, in order.
    pub records: Vec<(i32, i64, String)>,
    /// Records of partitions the member did not hold when it got them.
    pub stray: usize,
}

/// Records rebalances into a member's [`View`].
pub struct Recorder(Arc<Mutex<View>>);

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
pub struct Member {
    view: Arc<Mutex<View>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Member {
    /// Subscribes a new member of `group` to `topic` with librdkafka's
    /// `settings` on top of short session and commit intervals.
    pub fn start(bootstrap: &str, group: &str, topic: &str, settings: &[(&str, &str)]) -> Self {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
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

    /// What the member has seen so far.
    pub fn view(&self) -> View {
        self.view.lock().unwrap().clone()
    }

    /// Closes the consumer cleanly and waits for it.
    pub fn close(mut self) -> View {
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

/// Produces `count` records `{prefix}-{i}` round-robin over `partitions`
/// partitions through `bootstrap`, each acknowledged.
pub fn produce(bootstrap: &str, topic: &str, partitions: i32, prefix: &str, count: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer is created");
    let deliveries: Vec<_> = (0..count)
        .map(|i| {
            let value = format!("{prefix}-{i}");
            let record = FutureRecord::<(), _>::to(topic)
                .partition(i as i32 % partitions)
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
pub fn wait_for_assignment(
    members: &[&Member],
    partitions: i32,
    sizes: &[usize],
) -> Vec<BTreeSet<i32>> {
    let settled = super::eventually(SETTLE, || {
        let held: Vec<BTreeSet<i32>> = members.iter().map(|m| m.view().assigned).collect();
        let all: BTreeSet<i32> = held.iter().flatten().copied().collect();
        let total: usize = held.iter().map(BTreeSet::len).sum();
        let mut got: Vec<usize> = held.iter().map(BTreeSet::len).collect();
        got.sort();
        let mut want = sizes.to_vec();
        want.sort();
        all.len() == partitions as usize && total == all.len() && got == want
    });
    let held: Vec<BTreeSet<i32>> = members.iter().map(|m| m.view().assigned).collect();
    assert!(settled, "assignment did not settle: {held:?}");
    held
}

/// Values with `prefix` the members read, with how often each was read.
pub fn read_counts(members: &[&Member], prefix: &str) -> BTreeMap<String, usize> {
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

/// Waits until the members have read `count` distinct records with `prefix`;
/// returns how often each was read.
pub fn wait_for_reads(members: &[&Member], prefix: &str, count: usize) -> BTreeMap<String, usize> {
    super::eventually(SETTLE, || read_counts(members, prefix).len() >= count);
    let counts = read_counts(members, prefix);
    assert_eq!(counts.len(), count, "every record with {prefix} is read");
    counts
}
