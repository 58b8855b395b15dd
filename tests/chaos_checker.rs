//! The checker (Jepsen's idea): idempotent librdkafka producers record every
//! record acknowledged to them and a consumer group of two reads and commits,
//! while a seeded fault schedule kills -9 or stops, then restarts, or pauses
//! and resumes a random gateway, one of the three bookies or one of the three
//! metadata nodes (one process at a time, so never two bookies of a Qw=3/Qa=2
//! ensemble, nor two of the metadata group, at once). Once every process is healthy
//! again, the whole topic is read back: every acknowledged record must be at
//! the offset it was acknowledged at, once, in its producer's order, and the
//! group must have seen every record below its committed offsets.
//!
//! `STRATA_CHAOS_SECONDS` (default 35) sets how long faults are injected and
//! `STRATA_CHAOS_SEED` replays a schedule.

mod common;

use common::cluster::{check, read_partitions, Ack, Cluster, ClusterOptions, LoadProducer, Role};
use common::group::Member;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

const TOPIC: &str = "chaos";
const PARTITIONS: i32 = 6;
const PRODUCERS: [&str; 3] = ["a", "b", "c"];
/// Each producer sends one record every PACE.
const PACE: Duration = Duration::from_millis(5);
const GROUP: &str = "chaos-group";
const DEFAULT_SECONDS: u64 = 35;
/// How long the cluster may take to be healthy again after a fault is healed.
const HEAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
enum Action {
    /// SIGKILL, then started again after the hold.
    Kill,
    /// SIGSTOP, then SIGCONT after the hold.
    Pause,
    /// SIGTERM (a clean stop), then started again after the hold.
    Stop,
}

#[derive(Debug, Clone, Copy)]
struct Fault {
    action: Action,
    role: Role,
    id: u32,
    hold: Duration,
}

impl Fault {
    fn random(rng: &mut StdRng, gateways: u32, bookies: u32, metadata: u32) -> Self {
        let action = match rng.random_range(0..5) {
            0 | 1 => Action::Kill,
            2 | 3 => Action::Pause,
            _ => Action::Stop,
        };
        let (role, id) = match rng.random_range(0..5) {
            0 | 1 => (Role::Gateway, rng.random_range(1..=gateways)),
            2 | 3 => (Role::Bookie, rng.random_range(1..=bookies)),
            _ => (Role::Metadata, rng.random_range(1..=metadata)),
        };
        // Shorter and longer than the 3 s lease, so that ownership sometimes
        // moves and sometimes does not.
        let hold = Duration::from_millis(rng.random_range(500..=6000));
        Fault {
            action,
            role,
            id,
            hold,
        }
    }

    fn inject(&self, cluster: &mut Cluster) {
        let process = cluster.process(self.role, self.id);
        match self.action {
            Action::Kill => process.kill(),
            Action::Pause => process.pause(),
            Action::Stop => process.stop(),
        }
    }

    fn heal(&self, cluster: &mut Cluster) {
        let process = cluster.process(self.role, self.id);
        match self.action {
            Action::Kill | Action::Stop => process.start(),
            Action::Pause => process.resume(),
        }
        if self.role == Role::Metadata {
            cluster.wait_metadata_caught_up(self.id, HEAL);
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The group's committed offset of each partition (0 where none).
fn committed_offsets(bootstrap: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer is created");
    let mut wanted = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        wanted.add_partition(TOPIC, partition);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match consumer.committed_offsets(wanted.clone(), Duration::from_secs(5)) {
            Ok(committed) => {
                return committed
                    .elements()
                    .iter()
                    .map(|e| match e.offset() {
                        Offset::Offset(offset) => (e.partition(), offset),
                        _ => (e.partition(), 0),
                    })
                    .collect()
            }
            Err(error) => {
                assert!(Instant::now() < deadline, "committed offsets: {error}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

#[test]
fn acknowledged_records_survive_random_gateway_bookie_and_metadata_faults() {
    let seed = env_u64("STRATA_CHAOS_SEED").unwrap_or_else(rand::random);
    let seconds = env_u64("STRATA_CHAOS_SECONDS").unwrap_or(DEFAULT_SECONDS);
    eprintln!("chaos: seed {seed} (STRATA_CHAOS_SEED={seed} replays it), {seconds} s of faults");
    let mut rng = StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().unwrap();
    let options = ClusterOptions {
        metadata_nodes: 3,
        ..ClusterOptions::default()
    };
    let (gateways, bookies, metadata) = (
        options.gateways as u32,
        options.bookies as u32,
        options.metadata_nodes as u32,
    );
    let mut cluster = Cluster::start(dir.path(), options);
    cluster.create_topic(TOPIC, PARTITIONS);
    cluster.wait_balanced(TOPIC, PARTITIONS as usize, Duration::from_secs(30));
    let bootstrap = cluster.bootstrap();
    let producers: Vec<LoadProducer> = PRODUCERS
        .iter()
        .map(|name| LoadProducer::start(&bootstrap, TOPIC, PARTITIONS, name, PACE, &[]))
        .collect();
    let members = [
        Member::start(&bootstrap, GROUP, TOPIC, &[]),
        Member::start(&bootstrap, GROUP, TOPIC, &[]),
    ];
    let warm = common::eventually(Duration::from_secs(30), || {
        producers.iter().all(|p| p.ack_count() >= 100)
    });
    assert!(
        warm,
        "every producer is acknowledged before the faults start"
    );

    // The fault schedule: one process at a time is killed or paused, held
    // down for a while, brought back, and the cluster heals before the next.
    let chaos_started = Instant::now();
    let chaos_end = chaos_started + Duration::from_secs(seconds);
    let mut injected = 0;
    while Instant::now() < chaos_end {
        let fault = Fault::random(&mut rng, gateways, bookies, metadata);
        eprintln!(
            "chaos: {:>6} ms: {:?} {} for {} ms",
            chaos_started.elapsed().as_millis(),
            fault.action,
            cluster.process(fault.role, fault.id).name(),
            fault.hold.as_millis()
        );
        fault.inject(&mut cluster);
        injected += 1;
        std::thread::sleep(fault.hold);
        fault.heal(&mut cluster);
        let healing = Instant::now();
        cluster.wait_healthy(HEAL);
        eprintln!(
            "chaos: {:>6} ms: healthy {} ms after the heal",
            chaos_started.elapsed().as_millis(),
            healing.elapsed().as_millis()
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(200..=1500)));
    }

    // Every process is healthy: production must go on everywhere.
    let healed_at = Instant::now();
    let progress = common::eventually(Duration::from_secs(60), || {
        producers.iter().all(|p| {
            let after: BTreeSet<i32> = p
                .acks()
                .iter()
                .filter(|a| a.at > healed_at)
                .map(|a| a.partition)
                .collect();
            after.len() == PARTITIONS as usize
        })
    });
    assert!(
        progress,
        "every producer writes every partition once the cluster is healthy"
    );

    let mut acks: Vec<Ack> = Vec::new();
    let (mut sent, mut failed, mut transient) = (0, 0, 0);
    for producer in producers {
        let name = producer.name.clone();
        let (deliveries, count) = producer.finish(Duration::from_secs(60));
        assert!(
            deliveries.fatal.is_empty(),
            "producer {name}: fatal errors {:?}",
            deliveries.fatal
        );
        if let Some(first) = deliveries.failed.first() {
            eprintln!(
                "chaos: producer {name}: {} records not delivered, first {first:?}",
                deliveries.failed.len()
            );
        }
        sent += count;
        failed += deliveries.failed.len();
        transient += deliveries.transient_errors;
        acks.extend(deliveries.acks);
    }
    let log = read_partitions(&bootstrap, TOPIC, PARTITIONS, Duration::from_secs(60));
    let verdict = check(&acks, &log);
    eprintln!(
        "chaos: {injected} faults; sent {sent}, {verdict}, not delivered {failed}, \
         transient client errors {transient}"
    );

    // The group reads on to the end, then its commits must cover only what
    // its members saw.
    let total: usize = log.values().map(Vec::len).sum();
    let distinct = |members: &[Member]| {
        members
            .iter()
            .flat_map(|m| m.view().records)
            .map(|(p, o, _)| (p, o))
            .collect::<BTreeSet<_>>()
            .len()
    };
    let caught_up = common::eventually(Duration::from_secs(60), || distinct(&members) >= total);
    let [first, second] = members;
    let views = [first.close(), second.close()];
    let mut seen: HashMap<(i32, i64), Vec<String>> = HashMap::new();
    for view in &views {
        for (partition, offset, value) in &view.records {
            seen.entry((*partition, *offset))
                .or_default()
                .push(value.clone());
        }
    }
    let committed = committed_offsets(&bootstrap);
    let (mut committed_unseen, mut misread, mut below_commit) = (0, 0, 0);
    for (partition, records) in &log {
        let commit = committed.get(partition).copied().unwrap_or(0);
        for (offset, value) in records.iter().filter(|(o, _)| *o < commit) {
            below_commit += 1;
            match seen.get(&(*partition, *offset)) {
                None => committed_unseen += 1,
                Some(values) if values.iter().any(|v| v != value) => misread += 1,
                Some(_) => {}
            }
        }
    }
    eprintln!(
        "chaos: group read {} of {total} records (caught up: {caught_up}), committed {committed:?}; \
         {below_commit} below the commits, {committed_unseen} of them never seen, {misread} seen with another value",
        seen.len()
    );

    assert!(
        verdict.is_clean(),
        "seed {seed}: lost {}, duplicated {}, reordered {}, offset gaps {}: {:#?}",
        verdict.lost,
        verdict.duplicated,
        verdict.reordered,
        verdict.offset_gaps,
        verdict.examples
    );
    assert_eq!(
        committed_unseen, 0,
        "seed {seed}: committed records the group never saw"
    );
    assert_eq!(
        misread, 0,
        "seed {seed}: the group read other values than the log holds"
    );
    assert!(
        caught_up,
        "seed {seed}: the group reads every record once the cluster is healthy"
    );
    let log_end: BTreeMap<i32, i64> = log
        .iter()
        .map(|(p, records)| (*p, records.last().map_or(0, |(o, _)| o + 1)))
        .collect();
    assert_eq!(
        committed, log_end,
        "seed {seed}: the group commits up to the end of the log"
    );
}
