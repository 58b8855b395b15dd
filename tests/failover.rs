//! Failover with every role in its own process: a killed gateway's partitions
//! take writes again at another gateway within seconds of its lease lapsing;
//! a paused gateway whose partitions moved is fenced, so nothing it still
//! sends after it resumes lands; and producing goes on when the metadata raft
//! leader dies. An idempotent librdkafka producer records what was
//! acknowledged, and every acknowledged record is then read back at its offset.
//! Also: a bookie or metadata node told to stop exits even while a gateway
//! connected to it is frozen, and a rolling restart of every process, one at
//! a time under load, loses nothing.

mod common;

use common::cluster::{
    check, read_partitions, Ack, Cluster, ClusterOptions, LoadProducer, Role, Verdict,
};
use common::wire::{single_record_produce, WireClient};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, MetadataRequest, MetadataResponse, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const TOPIC: &str = "failover";
const PARTITIONS: i32 = 6;
/// One record every PACE from each producer: a few hundred records a second.
const PACE: Duration = Duration::from_millis(2);
/// How long a drained producer may take to hear about its last records.
const FLUSH: Duration = Duration::from_secs(30);
/// Records acknowledged before a fault is injected.
const WARM_UP_RECORDS: usize = 1000;

/// A cluster with `options` and the topic spread over its gateways, with a
/// producer that has written to every partition and goes on writing.
fn cluster_under_load(dir: &std::path::Path, options: ClusterOptions) -> (Cluster, LoadProducer) {
    let cluster = Cluster::start(dir, options);
    cluster.create_topic(TOPIC, PARTITIONS);
    cluster.wait_balanced(TOPIC, PARTITIONS as usize, Duration::from_secs(30));
    let producer = LoadProducer::start(&cluster.bootstrap(), TOPIC, PARTITIONS, "p", PACE, &[]);
    warm_up(&producer);
    (cluster, producer)
}

/// Three metadata nodes instead of one, otherwise the default cluster.
fn three_metadata_nodes() -> ClusterOptions {
    ClusterOptions {
        metadata_nodes: 3,
        ..ClusterOptions::default()
    }
}

/// For each of `partitions`, when its first acknowledgement after `since` arrived.
fn first_acks_after(
    acks: &[Ack],
    since: Instant,
    partitions: &BTreeSet<i32>,
) -> BTreeMap<i32, Instant> {
    let mut first: BTreeMap<i32, Instant> = BTreeMap::new();
    for ack in acks {
        if ack.at > since && partitions.contains(&ack.partition) {
            let entry = first.entry(ack.partition).or_insert(ack.at);
            *entry = (*entry).min(ack.at);
        }
    }
    first
}

/// Waits until every one of `partitions` had an acknowledgement after `since`.
fn wait_for_acks(
    producer: &LoadProducer,
    since: Instant,
    partitions: &BTreeSet<i32>,
    timeout: Duration,
) -> bool {
    common::eventually(timeout, || {
        first_acks_after(&producer.acks(), since, partitions).len() == partitions.len()
    })
}

/// Waits until the producer has written to every partition for a while.
fn warm_up(producer: &LoadProducer) {
    let started = Instant::now();
    let warm = common::eventually(Duration::from_secs(30), || {
        producer.ack_count() >= WARM_UP_RECORDS
    });
    let written: BTreeSet<i32> = producer.acks().iter().map(|a| a.partition).collect();
    assert!(
        warm && written == all_partitions(),
        "every partition takes writes: {} acknowledged in {:?}",
        producer.ack_count(),
        started.elapsed()
    );
}

fn all_partitions() -> BTreeSet<i32> {
    (0..PARTITIONS).collect()
}

/// Stops the producer, reads the topic back and checks that it holds exactly
/// what was acknowledged: every record at its offset, contiguous offsets, no
/// duplicates, producer order kept.
fn drain_and_check(cluster: &Cluster, producer: LoadProducer) -> BTreeMap<i32, Vec<(i64, String)>> {
    let (verdict, log) = drain(cluster, producer);
    assert_clean(&verdict);
    log
}

/// Stops the producer (every record sent must have been delivered) and
/// compares the topic with what was acknowledged.
fn drain(
    cluster: &Cluster,
    producer: LoadProducer,
) -> (Verdict, BTreeMap<i32, Vec<(i64, String)>>) {
    let (deliveries, sent) = producer.finish(FLUSH);
    assert!(
        deliveries.failed.is_empty() && deliveries.fatal.is_empty(),
        "every record is delivered: {} failed (first {:?}), fatal errors {:?}",
        deliveries.failed.len(),
        deliveries.failed.first(),
        deliveries.fatal
    );
    assert_eq!(
        deliveries.acks.len() as u64,
        sent,
        "every record sent is acknowledged"
    );
    let log = read_partitions(
        &cluster.bootstrap(),
        TOPIC,
        PARTITIONS,
        Duration::from_secs(60),
    );
    let verdict = check(&deliveries.acks, &log);
    eprintln!("checked: {verdict}");
    for (partition, records) in &log {
        assert_eq!(
            records.first().map(|(offset, _)| *offset),
            Some(0),
            "partition {partition} starts at offset 0"
        );
    }
    (verdict, log)
}

/// The log holds exactly what was acknowledged.
fn assert_clean(verdict: &Verdict) {
    assert!(verdict.is_clean(), "{:#?}", verdict.examples);
    assert_eq!(
        verdict.unacked_present, 0,
        "the log holds only acknowledged records"
    );
}

/// Partition index -> (leader id, leader epoch, error code), as the Kafka
/// listener at `addr` describes `topic`.
fn leaders_seen_by(addr: &str, topic: &str) -> BTreeMap<i32, (i32, i32, i16)> {
    let mut client = WireClient::connect(addr.parse().expect("a Kafka address"));
    leaders(&mut client, topic)
}

fn leaders(client: &mut WireClient, topic: &str) -> BTreeMap<i32, (i32, i32, i16)> {
    let request = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(topic_name(topic))),
    ]));
    let response: MetadataResponse = client.call(ApiKey::Metadata, 9, &request);
    response.topics[0]
        .partitions
        .iter()
        .map(|p| {
            (
                p.partition_index,
                (*p.leader_id, p.leader_epoch, p.error_code),
            )
        })
        .collect()
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

#[test]
fn a_killed_gateways_partitions_take_writes_again_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, producer) = cluster_under_load(dir.path(), ClusterOptions::default());

    let before = cluster.owned_by(TOPIC, 2);
    let orphaned: BTreeSet<i32> = before.keys().map(|p| *p as i32).collect();
    assert_eq!(orphaned.len(), 3, "gateway 2 owns half the partitions");
    cluster.gateway(2).kill();
    let killed_at = Instant::now();

    let recovered = wait_for_acks(&producer, killed_at, &orphaned, Duration::from_secs(30));
    let firsts = first_acks_after(&producer.acks(), killed_at, &orphaned);
    assert!(
        recovered,
        "the dead gateway's partitions {orphaned:?} take writes again; only {firsts:?} did"
    );
    let first = firsts.values().min().unwrap().duration_since(killed_at);
    let last = firsts.values().max().unwrap().duration_since(killed_at);
    eprintln!("gateway failover: {} ms", first.as_millis());
    eprintln!(
        "gateway failover: every partition of the dead gateway took writes again after {} ms",
        last.as_millis()
    );

    let after = cluster.partitions(TOPIC);
    for (partition, epoch) in &before {
        assert_eq!(
            after[partition].owner, 1,
            "partition {partition} moved to gateway 1"
        );
        assert!(
            after[partition].leader_epoch > *epoch,
            "partition {partition} moved at a higher epoch"
        );
    }
    // Some more writes after the failover, then everything is read back.
    let now = Instant::now();
    assert!(wait_for_acks(
        &producer,
        now,
        &all_partitions(),
        Duration::from_secs(10)
    ));
    drain_and_check(&cluster, producer);
    assert!(
        last < Duration::from_secs(20),
        "failover took {last:?} with a 3 s lease"
    );
}

/// Prints the log lines of gateways whose open segment was sealed on the
/// bookies by a recovery at an epoch no higher than their own (a newer owner
/// fences first, so its predecessor's adds are refused as fenced, not sealed),
/// and of takeovers metadata refused as stale: what a gateway acting on an
/// outdated grant leaves behind.
fn print_segments_sealed_under_their_writer(cluster: &Cluster) {
    for gateway in &cluster.gateways {
        for line in gateway.log_text().lines() {
            if line.contains("sealed (reported by bookie")
                || line.contains("is fenced; the current one is")
            {
                eprintln!("{}: {line}", gateway.name());
            }
        }
    }
}

#[test]
fn a_paused_owner_is_fenced_and_nothing_it_sends_after_resuming_lands() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, producer) = cluster_under_load(dir.path(), ClusterOptions::default());

    let before = cluster.owned_by(TOPIC, 2);
    let moving: BTreeSet<i32> = before.keys().map(|p| *p as i32).collect();
    assert_eq!(moving.len(), 3, "gateway 2 owns half the partitions");
    // A connection to gateway 2 that it has already served: produces sent on
    // it while the gateway is paused wait in the socket until it resumes.
    let gateway_2 = cluster.gateway(2).addr();
    let mut stale = WireClient::connect(gateway_2.parse().unwrap());
    let seen = leaders(&mut stale, TOPIC);
    for partition in &moving {
        assert_eq!(
            seen[partition].0, 2,
            "gateway 2 leads partition {partition}"
        );
    }

    cluster.gateway(2).pause();
    let paused_at = Instant::now();
    let stale_value = |partition: i32| format!("stale-write-from-the-paused-owner-{partition}");
    for partition in &moving {
        stale.send(
            ApiKey::Produce,
            7,
            &single_record_produce(TOPIC, *partition, -1, &stale_value(*partition)),
        );
    }
    let moved = common::eventually(Duration::from_secs(30), || {
        let now = cluster.partitions(TOPIC);
        before
            .iter()
            .all(|(p, epoch)| now[p].owner != 2 && now[p].leader_epoch > *epoch)
    });
    assert!(
        moved,
        "the paused gateway's partitions move: {:?}",
        cluster.partitions(TOPIC)
    );
    let moved_at = Instant::now();
    eprintln!(
        "paused gateway: its partitions moved {} ms after SIGSTOP",
        moved_at.duration_since(paused_at).as_millis()
    );
    let new_epochs = cluster.partitions(TOPIC);
    // The producer goes on at the new owner (librdkafka gave up on the paused
    // gateway, whose socket still holds whatever it sent there).
    assert!(
        wait_for_acks(&producer, moved_at, &moving, Duration::from_secs(30)),
        "the moved partitions take writes at their new owner"
    );
    let firsts = first_acks_after(&producer.acks(), paused_at, &moving);
    eprintln!(
        "paused gateway: its partitions took writes again {} ms after SIGSTOP",
        firsts
            .values()
            .max()
            .unwrap()
            .duration_since(paused_at)
            .as_millis()
    );

    cluster.gateway(2).resume();
    let resumed_at = Instant::now();
    // Each answer is checked once the log has been read, to show where an
    // accepted stale write went.
    let mut stale_answers = BTreeMap::new();
    for partition in &moving {
        let (_, answer): (i32, ProduceResponse) = stale.receive(ApiKey::Produce, 7);
        let answer = &answer.responses[0].partition_responses[0];
        eprintln!(
            "paused gateway: after SIGCONT it answered the produce to partition {partition} \
             sent while paused with error {} (offset {})",
            answer.error_code, answer.base_offset
        );
        stale_answers.insert(*partition, (answer.error_code, answer.base_offset));
    }

    // The resumed gateway learns it no longer leads at its old epochs: it
    // names the new owner, or itself only at an epoch granted after the move.
    let mut last_seen = BTreeMap::new();
    let gave_up = common::eventually(Duration::from_secs(20), || {
        last_seen = leaders_seen_by(&gateway_2, TOPIC);
        before.iter().all(|(p, old_epoch)| {
            let (leader, epoch, _) = last_seen[&(*p as i32)];
            leader != 2 || epoch as u32 > *old_epoch
        })
    });
    assert!(
        gave_up,
        "gateway 2 still claims its old partitions: {last_seen:?}"
    );
    eprintln!(
        "paused gateway: it stopped naming itself leader at its old epochs {} ms after SIGCONT",
        resumed_at.elapsed().as_millis()
    );

    // Writes go on through the controller's rebalancing, then the moved
    // partitions must hold exactly what the producer was told.
    assert!(wait_for_acks(
        &producer,
        Instant::now(),
        &all_partitions(),
        Duration::from_secs(30)
    ));
    print_segments_sealed_under_their_writer(&cluster);
    let (verdict, log) = drain(&cluster, producer);
    for (partition, (error_code, offset)) in &stale_answers {
        let landed: Vec<i64> = log[partition]
            .iter()
            .filter(|(_, value)| *value == stale_value(*partition))
            .map(|(offset, _)| *offset)
            .collect();
        let holder = log[partition].iter().find(|(o, _)| o == offset);
        assert!(
            *error_code != 0 && landed.is_empty(),
            "the paused owner answered its stale produce to partition {partition} with error \
             {error_code} at offset {offset} (the log has {holder:?} there), and the stale record \
             is at offsets {landed:?}"
        );
    }
    assert_clean(&verdict);
    let final_epochs = cluster.partitions(TOPIC);
    for p in before.keys() {
        assert!(final_epochs[p].leader_epoch >= new_epochs[p].leader_epoch);
    }
}

#[test]
fn producing_goes_on_when_the_metadata_leader_dies() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, producer) = cluster_under_load(dir.path(), three_metadata_nodes());
    let owners_before = cluster.partitions(TOPIC);

    let leader = cluster.raft_leader(Duration::from_secs(30));
    cluster.process(Role::Metadata, leader).kill();
    let killed_at = Instant::now();
    let new_leader = cluster.raft_leader(Duration::from_secs(20));
    let elected = killed_at.elapsed();
    assert_ne!(new_leader, leader);

    // Watch production for a fixed window after the kill (an observation
    // period, not a wait for readiness): each partition may stall while the
    // group elects a leader, but only for a few seconds.
    let window = Duration::from_secs(8);
    std::thread::sleep(window.saturating_sub(killed_at.elapsed()));
    let watched_until = Instant::now();
    let from = killed_at - Duration::from_millis(500);
    let mut times: BTreeMap<i32, Vec<Instant>> = BTreeMap::new();
    for ack in producer
        .acks()
        .iter()
        .filter(|a| a.at >= from && a.at <= watched_until)
    {
        times.entry(ack.partition).or_default().push(ack.at);
    }
    // The longest time each partition went without an acknowledgement.
    let stalls: BTreeMap<i32, Duration> = all_partitions()
        .into_iter()
        .map(|partition| {
            let mut at = times.remove(&partition).unwrap_or_default();
            at.sort();
            at.push(watched_until);
            let mut previous = from;
            let mut stall = Duration::ZERO;
            for t in at {
                stall = stall.max(t.duration_since(previous));
                previous = t;
            }
            (partition, stall)
        })
        .collect();
    let stall = stalls.values().copied().max().unwrap_or_default();
    eprintln!(
        "metadata leader loss: node {leader} killed, node {new_leader} leads after {} ms; \
         longest produce stall of a partition {} ms",
        elected.as_millis(),
        stall.as_millis()
    );
    let owners_after = cluster.partitions(TOPIC);
    let moved: Vec<u32> = owners_before
        .iter()
        .filter(|(p, info)| owners_after[*p].leader_epoch != info.leader_epoch)
        .map(|(p, _)| *p)
        .collect();
    eprintln!("metadata leader loss: partitions that changed owner meanwhile: {moved:?}");
    assert!(
        stall < Duration::from_secs(5),
        "produce stalled after the metadata leader died: {stalls:?}"
    );
    let recent = Instant::now() - Duration::from_secs(1);
    assert!(
        wait_for_acks(&producer, recent, &all_partitions(), Duration::from_secs(5)),
        "every partition still takes writes"
    );

    // The old leader comes back as a follower and the group agrees again.
    cluster.process(Role::Metadata, leader).start();
    cluster.raft_leader(Duration::from_secs(20));
    drain_and_check(&cluster, producer);
}

/// How long a clean stop may take.
const STOP_BOUND: Duration = Duration::from_secs(10);

#[test]
fn bookies_and_metadata_nodes_stop_on_sigterm_while_a_gateway_is_frozen() {
    let dir = tempfile::tempdir().unwrap();
    // Writes give the gateways open streams to every bookie (E=3 of 3), and
    // each gateway follows metadata through a watch stream.
    let (mut cluster, producer) = cluster_under_load(dir.path(), ClusterOptions::default());
    drop(producer);

    cluster.gateway(2).pause();
    let bookie = cluster.bookie(1).stop_within(STOP_BOUND);
    let metadata = cluster.process(Role::Metadata, 1).stop_within(STOP_BOUND);
    cluster.gateway(2).resume();
    let resumed_at = Instant::now();
    let mut report = Vec::new();
    for (role, stopped) in [(Role::Bookie, bookie), (Role::Metadata, metadata)] {
        let process = cluster.process(role, 1);
        let line = match stopped {
            Some(status) => format!(
                "{} exited ({status}) while gateway-2 was frozen",
                process.name()
            ),
            None => {
                let after = process.wait_exit(Duration::from_secs(10));
                format!(
                    "{} was still running {STOP_BOUND:?} after SIGTERM while gateway-2 was frozen; \
                     once gateway-2 resumed it exited after {} ms ({after:?})",
                    process.name(),
                    resumed_at.elapsed().as_millis()
                )
            }
        };
        eprintln!("{line}");
        report.push(line);
    }
    assert!(
        bookie.is_some_and(|s| s.success()) && metadata.is_some_and(|s| s.success()),
        "a frozen client holds up a server's clean stop: {report:#?}"
    );
}

#[test]
fn an_idempotent_producer_writes_each_record_once_through_bookie_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, producer) = cluster_under_load(dir.path(), ClusterOptions::default());
    // One bookie at a time goes down and comes back. Open segments carry on
    // with the two others (Qa=2 of Qw=3) and do not take the restarted bookie
    // back, so the next bookie to go down leaves them one short of their ack
    // quorum: every partition seals its segment and rolls, with produce
    // requests in flight.
    for (down, next) in [(1, 2), (2, 3), (3, 1)] {
        cluster.bookie(down).kill();
        let now = Instant::now();
        assert!(wait_for_acks(
            &producer,
            now,
            &all_partitions(),
            Duration::from_secs(30)
        ));
        cluster.bookie(down).start();
        cluster.wait_healthy(Duration::from_secs(30));
        let now = Instant::now();
        assert!(wait_for_acks(
            &producer,
            now,
            &all_partitions(),
            Duration::from_secs(30)
        ));
        cluster.bookie(next).kill();
        let now = Instant::now();
        assert!(
            wait_for_acks(&producer, now, &all_partitions(), Duration::from_secs(30)),
            "every partition takes writes again after rolling onto live bookies"
        );
        cluster.bookie(next).start();
        cluster.wait_healthy(Duration::from_secs(30));
    }
    let rolled: usize = cluster
        .gateways
        .iter()
        .map(|g| {
            g.log_text()
                .matches("can no longer reach its ack quorum")
                .count()
        })
        .sum();
    eprintln!("bookie restarts: {rolled} segment writers lost their ack quorum and rolled");
    drain_and_check(&cluster, producer);
}

#[test]
fn a_rolling_restart_of_every_process_under_load_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, producer) = cluster_under_load(dir.path(), three_metadata_nodes());

    let order: Vec<(Role, u32)> = [(Role::Metadata, 3), (Role::Bookie, 3), (Role::Gateway, 2)]
        .into_iter()
        .flat_map(|(role, count)| (1..=count).map(move |id| (role, id)))
        .collect();
    for (role, id) in order {
        let started = Instant::now();
        let process = cluster.process(role, id);
        let name = process.name();
        process.stop();
        process.start();
        if role == Role::Metadata {
            cluster.wait_metadata_caught_up(id, Duration::from_secs(30));
        }
        cluster.wait_healthy(Duration::from_secs(60));
        let back = Instant::now();
        assert!(
            wait_for_acks(&producer, back, &all_partitions(), Duration::from_secs(30)),
            "every partition takes writes again after {name} restarted"
        );
        eprintln!(
            "rolling restart: {name} stopped, restarted and the cluster healthy with every \
             partition taking writes in {} ms",
            started.elapsed().as_millis()
        );
    }
    drain_and_check(&cluster, producer);
}
