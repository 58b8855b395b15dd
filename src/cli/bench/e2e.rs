//! `strata bench e2e`: producers at a target rate and a consumer tailing the
//! same topic, in one process on one clock, reporting the produce latency
//! (send → acknowledgement) and the end-to-end latency (send → consumed).

use super::kafka_client::{cpu_seconds_per_gb, ensure_topic, Clock, KafkaArgs, RunArgs, TopicArgs};
use super::kafka_consume::{
    assign, consume, create_consumer, watermarks, ConsumeLimits, ConsumeSummary, StartAt,
};
use super::kafka_produce::{ack_window, produce, ProduceSummary, ProducerArgs, SendLimit};
use super::report::Section;
use super::summary::{format_ms, print_progress, with_runs, Meter};
use super::{BenchReport, JsonReport};
use anyhow::{bail, Context};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Offset;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Flags of `strata bench e2e`.
#[derive(Debug, Clone, Args, Serialize)]
pub struct E2eBenchArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub topic: TopicArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub producer: ProducerArgs,
    /// How long each run produces, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// After producing, how long to wait for records still to be consumed
    /// without any arriving, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub idle_seconds: f64,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunArgs,
}

/// What one run achieved, on the producing and on the consuming side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct E2eSummary {
    /// The producers' side: acknowledged records, send → acknowledgement.
    pub produce: ProduceSummary,
    /// The consumer's side: consumed records, send → consumed.
    pub consume: ConsumeSummary,
    /// Acknowledged records that were not consumed (summed over runs).
    pub records_missing: u64,
}

impl E2eSummary {
    /// Each measure's median over `runs`.
    pub fn median_of(runs: &[E2eSummary]) -> Self {
        let produce: Vec<ProduceSummary> = runs.iter().map(|r| r.produce.clone()).collect();
        let consume: Vec<ConsumeSummary> = runs.iter().map(|r| r.consume.clone()).collect();
        Self {
            produce: ProduceSummary::median_of(&produce),
            consume: ConsumeSummary::median_of(&consume),
            records_missing: runs.iter().map(|r| r.records_missing).sum(),
        }
    }
}

/// Runs the benchmark and returns its report.
pub async fn run(args: E2eBenchArgs) -> anyhow::Result<BenchReport> {
    tokio::task::spawn_blocking(move || run_blocking(args))
        .await
        .context("the benchmark thread failed")?
}

fn run_blocking(args: E2eBenchArgs) -> anyhow::Result<BenchReport> {
    args.producer.validate()?;
    let positive = |value: f64, flag: &str| {
        if value > 0.0 && value.is_finite() {
            Ok(Duration::from_secs_f64(value))
        } else {
            bail!("{flag} must be positive")
        }
    };
    let duration = positive(args.seconds, "--seconds")?;
    let idle = positive(args.idle_seconds, "--idle-seconds")?;
    let partitions = ensure_topic(&args.kafka, &args.topic)?;
    let server_cpu = args.run.server_cpu()?;
    let mut runs = Vec::new();
    for run in 1..=args.run.runs {
        // The consumer starts at each partition's current end, before any
        // record of this run is sent, so it reads exactly this run's records.
        let consumer = create_consumer(&args.kafka, None, StartAt::End)?;
        let (_, ends) = watermarks(&consumer, &args.kafka.topic, partitions)?;
        assign(&consumer, &args.kafka.topic, &ends)?;
        let cpu_before = server_cpu.as_ref().map(|c| c.seconds()).transpose()?;
        let clock = Clock::start();
        let produced = Arc::new(Meter::new("produced", clock.started()));
        let consumed = Meter::new("consumed", clock.started());
        let producers_done = AtomicBool::new(false);
        let all_done = AtomicBool::new(false);
        let limits = ConsumeLimits {
            records: None,
            deadline: None,
            ranges: None,
            idle,
            producers: Some((&producers_done, &produced)),
        };
        let (sent, stopped_by) = std::thread::scope(|scope| {
            let progress =
                scope.spawn(|| print_progress(&[&produced, &consumed], clock.started(), &all_done));
            let consuming = scope.spawn(|| consume(&consumer, &clock, &consumed, &limits));
            let sent = produce(
                &args.kafka,
                &args.producer,
                partitions,
                SendLimit::Time(duration),
                &clock,
                &produced,
            );
            producers_done.store(true, Ordering::Release);
            let stopped_by = consuming.join();
            all_done.store(true, Ordering::Release);
            let _ = progress.join();
            (sent, stopped_by)
        });
        sent?;
        let Ok(stopped_by) = stopped_by else {
            bail!("the consumer thread panicked");
        };
        let mut produce = ProduceSummary::from_meter(&produced, ack_window(&produced, &clock));
        produce.throughput.server_cpu_seconds_per_gb =
            cpu_seconds_per_gb(server_cpu.as_ref(), cpu_before, produce.throughput.bytes)?;
        let consume = ConsumeSummary::from_meter(&consumed, consumed.last_record_at(), stopped_by);
        let records_missing = produce
            .throughput
            .records
            .saturating_sub(consume.throughput.records);
        if records_missing > 0 {
            report_unread_tails(&consumer, &args.kafka.topic, partitions);
        }
        eprintln!(
            "run {run}/{}: produced {} records ({:.0} rec/s, p99 {} ms), consumed {} (e2e p99 {} ms), {} missing",
            args.run.runs,
            produce.throughput.records,
            produce.throughput.records_per_sec,
            format_ms(produce.latency_ms.p99),
            consume.throughput.records,
            consume.e2e_latency_ms.map_or("-".to_owned(), |l| format_ms(l.p99)),
            records_missing
        );
        runs.push(E2eSummary {
            produce,
            consume,
            records_missing,
        });
    }
    let median = E2eSummary::median_of(&runs);
    let produce_runs: Vec<ProduceSummary> = runs.iter().map(|r| r.produce.clone()).collect();
    let mut rows = median.produce.rows(&produce_runs, "produce ");
    let e2e = |r: &E2eSummary| r.consume.e2e_latency_ms.unwrap_or_default();
    rows.push((
        "end-to-end latency, send → consumed".to_owned(),
        with_runs(
            e2e(&median).describe(),
            &runs
                .iter()
                .map(|r| format!("p99 {} ms", format_ms(e2e(r).p99)))
                .collect::<Vec<_>>(),
        ),
    ));
    rows.push((
        "records consumed per run".to_owned(),
        with_runs(
            median.consume.throughput.records.to_string(),
            &runs
                .iter()
                .map(|r| r.consume.throughput.records.to_string())
                .collect::<Vec<_>>(),
        ),
    ));
    rows.push((
        "acknowledged but not consumed (all runs)".to_owned(),
        median.records_missing.to_string(),
    ));
    let section = Section {
        name: "kafka-e2e".into(),
        title: format!(
            "Produce and consume together through librdkafka: {} B records, acks={}, {}",
            args.producer.record_bytes,
            args.producer.acks_setting(),
            args.producer.describe_rate()
        ),
        setup: format!(
            "{producer}, for {seconds} s per run, while one librdkafka consumer in the same process tails \
             the topic (partitions assigned at their end before the run). Against `{bootstrap}`, topic `{topic}` \
             with {partitions} partitions; {runs} run(s), medians (each run's value in brackets). \
             Latencies start when each record was due to be sent; end-to-end ends when the consumer \
             gets the record from librdkafka.",
            producer = args.producer.describe(),
            seconds = args.seconds,
            bootstrap = args.kafka.bootstrap,
            topic = args.kafka.topic,
            runs = args.run.runs,
        ),
        rows,
    };
    let json = args
        .run
        .json
        .then(|| JsonReport::new("e2e", &args, &median, &runs).to_json());
    Ok(BenchReport {
        section,
        json: json.transpose()?,
    })
}

/// Tells on stderr, for each partition the consumer did not read to its end,
/// where it stopped and where the end is.
fn report_unread_tails(consumer: &BaseConsumer, topic: &str, partitions: i32) {
    let positions = match consumer.position() {
        Ok(positions) => positions,
        Err(error) => {
            eprintln!("cannot read the consumer's positions: {error}");
            return;
        }
    };
    let Ok((_, ends)) = watermarks(consumer, topic, partitions) else {
        eprintln!("cannot read the partitions' ends");
        return;
    };
    for (partition, end) in (0..partitions).zip(ends) {
        let position = positions
            .find_partition(topic, partition)
            .map(|p| p.offset());
        match position {
            Some(Offset::Offset(position)) if position < end => {
                eprintln!("partition {partition}: consumed up to {position}, end {end}");
            }
            Some(Offset::Offset(_)) => {}
            _ => eprintln!("partition {partition}: nothing consumed, end {end}"),
        }
    }
}
