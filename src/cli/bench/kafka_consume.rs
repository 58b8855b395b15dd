//! `strata bench consume`: a librdkafka consumer reading a topic (from its
//! beginning by default, up to the end it had when the run started),
//! reporting throughput and, for records written by `strata bench produce`,
//! the time from send to consumption.

use super::kafka_client::{
    cpu_seconds_per_gb, fresh_group_id, latency_since_send, retry_until_ready, wait_for_leaders,
    Clock, KafkaArgs, RunArgs, REQUEST_TIMEOUT,
};
use super::report::Section;
use super::summary::{
    format_ms, median_count, print_progress, with_runs, Meter, Percentiles, Throughput,
};
use super::{BenchReport, JsonReport};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long one poll of the consumer waits for a record.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// Flags of `strata bench consume`.
#[derive(Debug, Clone, Args, Serialize)]
pub struct ConsumeBenchArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub kafka: KafkaArgs,
    /// Where each partition is read from.
    #[arg(long, value_enum, default_value_t = StartAt::Beginning)]
    pub from: StartAt,
    /// Stop after this many records. Without --records or --seconds, a run
    /// stops once every partition is read up to the end it had at the start.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Stop after this many seconds without a record.
    #[arg(long, default_value_t = 10.0)]
    pub idle_seconds: f64,
    /// Join this consumer group and subscribe (the broker must support
    /// groups) instead of assigning every partition outside any group.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunArgs,
}

/// Where a consumer starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// The earliest offset still kept.
    Beginning,
    /// The end: only records written after the start.
    End,
}

/// Why a consumer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// Every partition was read up to the end it had at the start.
    EndOffsets,
    /// The record limit was reached.
    Records,
    /// The time limit passed.
    Time,
    /// Every record the producers had acknowledged arrived.
    AllAcknowledged,
    /// No record arrived for the idle time.
    Idle,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopReason::EndOffsets => "end offsets reached",
            StopReason::Records => "record limit",
            StopReason::Time => "time limit",
            StopReason::AllAcknowledged => "every acknowledged record consumed",
            StopReason::Idle => "idle",
        })
    }
}

/// When a consumer stops.
pub struct ConsumeLimits<'a> {
    /// After this many records.
    pub records: Option<u64>,
    /// At this time.
    pub deadline: Option<Instant>,
    /// Once every partition (by index) is read over these offsets, from its
    /// first up to the end (exclusive).
    pub ranges: Option<Vec<(i64, i64)>>,
    /// After this long without a record.
    pub idle: Duration,
    /// Once the producers are done (the flag) and as many records arrived as
    /// they had acknowledged (the meter).
    pub producers: Option<(&'a AtomicBool, &'a Meter)>,
}

/// What one consumer run achieved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsumeSummary {
    /// Records consumed, their rate, and the errors the consumer reported.
    #[serde(flatten)]
    pub throughput: Throughput,
    /// Records whose value starts with a send time.
    pub records_with_send_time: u64,
    /// From the send time in the value to consumption, over records that
    /// have one (for records written before the run: their age).
    pub e2e_latency_ms: Option<Percentiles>,
    /// Why the run stopped.
    pub stopped_by: StopReason,
}

impl ConsumeSummary {
    /// What `meter` counted; the run lasted `elapsed` and stopped for `stopped_by`.
    pub fn from_meter(meter: &Meter, elapsed: Duration, stopped_by: StopReason) -> Self {
        let latencies = meter.total_latencies();
        Self {
            throughput: Throughput::from_meter(meter, elapsed),
            records_with_send_time: latencies.count(),
            e2e_latency_ms: (latencies.count() > 0).then(|| latencies.percentiles()),
            stopped_by,
        }
    }

    /// Each measure's median over `runs` (errors: their sum; stop reason: the first run's).
    pub fn median_of(runs: &[ConsumeSummary]) -> Self {
        let latencies: Vec<Percentiles> = runs.iter().filter_map(|r| r.e2e_latency_ms).collect();
        Self {
            throughput: Throughput::median_of(runs.iter().map(|r| &r.throughput)),
            records_with_send_time: median_count(runs.iter().map(|r| r.records_with_send_time)),
            e2e_latency_ms: (!latencies.is_empty()).then(|| Percentiles::median_of(&latencies)),
            stopped_by: runs.first().map_or(StopReason::Idle, |r| r.stopped_by),
        }
    }

    /// The report rows of the median `self` of `runs`.
    pub fn rows(&self, runs: &[ConsumeSummary], prefix: &str) -> Vec<(String, String)> {
        let each = |f: &dyn Fn(&ConsumeSummary) -> String| runs.iter().map(f).collect::<Vec<_>>();
        let throughput = &self.throughput;
        let mut rows = Vec::from(throughput.rate_rows(runs.iter().map(|r| &r.throughput), prefix));
        rows.extend([
            (
                format!("{prefix}records per run"),
                with_runs(
                    throughput.records.to_string(),
                    &each(&|r| r.throughput.records.to_string()),
                ),
            ),
            (
                format!("{prefix}stopped by"),
                each(&|r| r.stopped_by.to_string()).join("; "),
            ),
            (
                format!("{prefix}errors (all runs)"),
                throughput.errors.to_string(),
            ),
        ]);
        if let Some(latency) = &self.e2e_latency_ms {
            rows.push((
                format!("{prefix}send → consume"),
                with_runs(
                    latency.describe(),
                    &each(&|r| {
                        r.e2e_latency_ms
                            .map_or("-".to_owned(), |l| format!("p99 {} ms", format_ms(l.p99)))
                    }),
                ),
            ));
        }
        if let Some(cpu) = throughput.server_cpu_seconds_per_gb {
            rows.push((
                "broker CPU-seconds per GB consumed".to_owned(),
                format!("{cpu:.1}"),
            ));
        }
        rows.extend(throughput.first_error_row(prefix));
        rows
    }
}

/// Runs the benchmark and returns its report.
pub async fn run(args: ConsumeBenchArgs) -> anyhow::Result<BenchReport> {
    tokio::task::spawn_blocking(move || run_blocking(args))
        .await
        .context("the benchmark thread failed")?
}

fn run_blocking(args: ConsumeBenchArgs) -> anyhow::Result<BenchReport> {
    let catch_up = args.records.is_none() && args.seconds.is_none();
    if catch_up && args.from == StartAt::End {
        bail!("--from end needs --records or --seconds: the end is where it would stop");
    }
    let seconds = |value: f64, flag: &str| {
        if value > 0.0 && value.is_finite() {
            Ok(Duration::from_secs_f64(value))
        } else {
            bail!("{flag} must be positive")
        }
    };
    let idle = seconds(args.idle_seconds, "--idle-seconds")?;
    let duration = args
        .seconds
        .map(|value| seconds(value, "--seconds"))
        .transpose()?;
    let server_cpu = args.run.server_cpu()?;
    let mut runs = Vec::new();
    for run in 1..=args.run.runs {
        let consumer = create_consumer(&args.kafka, args.group.as_deref(), args.from)?;
        let partitions = wait_for_leaders(consumer.client(), &args.kafka.topic)?;
        let (starts, ends) = watermarks(&consumer, &args.kafka.topic, partitions)?;
        let cpu_before = server_cpu.as_ref().map(|c| c.seconds()).transpose()?;
        let clock = Clock::start();
        match &args.group {
            Some(_) => consumer
                .subscribe(&[&args.kafka.topic])
                .context("cannot subscribe")?,
            None => {
                let from = match args.from {
                    StartAt::Beginning => &starts,
                    StartAt::End => &ends,
                };
                assign(&consumer, &args.kafka.topic, from)?;
            }
        }
        let limits = ConsumeLimits {
            records: args.records,
            deadline: duration.map(|d| clock.started() + d),
            ranges: catch_up.then(|| starts.iter().copied().zip(ends.iter().copied()).collect()),
            idle,
            producers: None,
        };
        let meter = Meter::new("consumed", clock.started());
        let done = AtomicBool::new(false);
        let stopped_by = std::thread::scope(|scope| {
            let progress = scope.spawn(|| print_progress(&[&meter], clock.started(), &done));
            let stopped_by = consume(&consumer, &clock, &meter, &limits);
            done.store(true, Ordering::Release);
            let _ = progress.join();
            stopped_by
        });
        let elapsed = if meter.counts().records > 0 {
            meter.last_record_at()
        } else {
            clock.elapsed()
        };
        let mut summary = ConsumeSummary::from_meter(&meter, elapsed, stopped_by);
        summary.throughput.server_cpu_seconds_per_gb =
            cpu_seconds_per_gb(server_cpu.as_ref(), cpu_before, summary.throughput.bytes)?;
        eprintln!(
            "run {run}/{}: {} records, {:.0} rec/s, {:.1} MB/s, stopped by {}, {} errors",
            args.run.runs,
            summary.throughput.records,
            summary.throughput.records_per_sec,
            summary.throughput.mb_per_sec,
            summary.stopped_by,
            summary.throughput.errors
        );
        runs.push(summary);
    }
    let median = ConsumeSummary::median_of(&runs);
    let until = match (args.records, args.seconds) {
        (None, None) => "up to the end each partition had when the run started".to_owned(),
        (Some(records), None) => format!("for {records} records"),
        (None, Some(seconds)) => format!("for {seconds} s"),
        (Some(records), Some(seconds)) => format!("for {records} records or {seconds} s"),
    };
    let section = Section {
        name: "kafka-consume".into(),
        title: format!(
            "Consume through librdkafka from the {}",
            match args.from {
                StartAt::Beginning => "beginning",
                StartAt::End => "end",
            }
        ),
        setup: format!(
            "One librdkafka consumer ({how}) reads topic `{topic}` on `{bootstrap}` from its {from} {until}; \
             {runs} run(s), medians (each run's value in brackets). Throughput counts from assigning the \
             partitions to the last record; MB = 10^6 bytes of record values. Send → consume is the time \
             from the send time `strata bench produce` wrote into each value to its consumption: for \
             records written before the run, their age.",
            how = if args.group.is_some() { "in a consumer group" } else { "partitions assigned, no group" },
            topic = args.kafka.topic,
            bootstrap = args.kafka.bootstrap,
            from = match args.from {
                StartAt::Beginning => "beginning",
                StartAt::End => "end",
            },
            runs = args.run.runs,
        ),
        rows: median.rows(&runs, ""),
    };
    let json = args
        .run
        .json
        .then(|| JsonReport::new("consume", &args, &median, &runs).to_json());
    Ok(BenchReport {
        section,
        json: json.transpose()?,
    })
}

/// A consumer that commits nothing, in `group` or else in a group of its own
/// (librdkafka needs one even to assign partitions).
pub fn create_consumer(
    kafka: &KafkaArgs,
    group: Option<&str>,
    from: StartAt,
) -> anyhow::Result<BaseConsumer> {
    let reset = match from {
        StartAt::Beginning => "earliest",
        StartAt::End => "latest",
    };
    let settings = [
        ("group.id", group.map_or_else(fresh_group_id, str::to_owned)),
        ("enable.auto.commit", "false".to_owned()),
        ("enable.auto.offset.store", "false".to_owned()),
        ("auto.offset.reset", reset.to_owned()),
        ("enable.partition.eof", "false".to_owned()),
    ];
    kafka
        .client_config("strata-bench-consumer", &settings)
        .create()
        .context("cannot create the Kafka consumer")
}

/// Each partition's earliest offset and its end (the high watermark).
pub fn watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<(Vec<i64>, Vec<i64>)> {
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    for partition in 0..partitions {
        // A partition can have a leader in the metadata before that leader
        // serves it (a gateway recovers a partition before serving it).
        let (low, high) =
            retry_until_ready(|| consumer.fetch_watermarks(topic, partition, REQUEST_TIMEOUT))
                .with_context(|| format!("cannot read the offsets of {topic}/{partition}"))?;
        starts.push(low);
        ends.push(high);
    }
    Ok((starts, ends))
}

/// Assigns partition `i` of `topic` at offset `offsets[i]`, every partition.
pub fn assign(consumer: &BaseConsumer, topic: &str, offsets: &[i64]) -> anyhow::Result<()> {
    let mut assignment = TopicPartitionList::new();
    for (partition, offset) in offsets.iter().enumerate() {
        let partition = i32::try_from(partition).context("too many partitions")?;
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(*offset))
            .context("cannot build the assignment")?;
    }
    consumer
        .assign(&assignment)
        .context("cannot assign the partitions")
}

/// Polls `consumer` until one of `limits` is met, counting each record (and
/// the time since its send time, if it has one) in `meter`.
pub fn consume(
    consumer: &BaseConsumer,
    clock: &Clock,
    meter: &Meter,
    limits: &ConsumeLimits<'_>,
) -> StopReason {
    // Partitions not yet read up to their end offset.
    let mut behind: Vec<bool> = match &limits.ranges {
        Some(ranges) => ranges.iter().map(|(start, end)| start < end).collect(),
        None => Vec::new(),
    };
    let mut partitions_behind = behind.iter().filter(|b| **b).count();
    // The next offset to read in each partition, to say where a run got stuck.
    let mut positions: Vec<Option<i64>> = vec![None; behind.len()];
    let mut last_activity = Instant::now();
    let mut producers_done_at: Option<Instant> = None;
    loop {
        if limits.ranges.is_some() && partitions_behind == 0 {
            return StopReason::EndOffsets;
        }
        let consumed = meter.counts().records;
        if limits.records.is_some_and(|records| consumed >= records) {
            return StopReason::Records;
        }
        let now = Instant::now();
        if limits.deadline.is_some_and(|deadline| now >= deadline) {
            return StopReason::Time;
        }
        if let Some((done, acknowledged)) = limits.producers {
            if done.load(Ordering::Acquire) {
                if consumed >= acknowledged.counts().records {
                    return StopReason::AllAcknowledged;
                }
                // Idle time counts from the end of producing at the earliest.
                let done_at = *producers_done_at.get_or_insert(now);
                last_activity = last_activity.max(done_at);
            }
        }
        if now.duration_since(last_activity) >= limits.idle {
            if let Some(ranges) = &limits.ranges {
                report_stuck_partitions(ranges, &behind, &positions);
            }
            return StopReason::Idle;
        }
        match consumer.poll(POLL_TIMEOUT) {
            None => {}
            Some(Err(error)) => meter.error(|| error.to_string()),
            Some(Ok(message)) => {
                last_activity = Instant::now();
                let value = message.payload().unwrap_or_default();
                let latency = latency_since_send(value, clock.unix_nanos(last_activity));
                meter.record(value.len() as u64, latency);
                if let (Some(ranges), Ok(partition)) =
                    (&limits.ranges, usize::try_from(message.partition()))
                {
                    if let Some(position) = positions.get_mut(partition) {
                        *position = Some(message.offset() + 1);
                    }
                    if let (Some((_, end)), Some(is_behind)) =
                        (ranges.get(partition), behind.get_mut(partition))
                    {
                        if *is_behind && message.offset() + 1 >= *end {
                            *is_behind = false;
                            partitions_behind -= 1;
                        }
                    }
                }
            }
        }
    }
}

/// Tells on stderr which partitions were not read up to their end, and where
/// their reading stopped.
fn report_stuck_partitions(ranges: &[(i64, i64)], behind: &[bool], positions: &[Option<i64>]) {
    for (partition, ((start, end), position)) in ranges.iter().zip(positions).enumerate() {
        if behind.get(partition).copied().unwrap_or(false) {
            let reached = position.map_or("nothing read".to_owned(), |p| format!("read up to {p}"));
            eprintln!("partition {partition}: {reached} of offsets {start}..{end}");
        }
    }
}
