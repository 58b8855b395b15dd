//! `strata bench produce`: librdkafka producers against any Kafka cluster, as
//! fast as the brokers acknowledge or at a target rate, reporting throughput
//! and the latency from send to acknowledgement.

use super::kafka_client::{
    cpu_seconds_per_gb, ensure_topic, run_line, write_send_time, Clock, Filler, KafkaArgs, RunArgs,
    TopicArgs, SEND_TIME_BYTES,
};
use super::report::Section;
use super::summary::{format_ms, print_progress, with_runs, Meter, Percentiles, Throughput};
use super::{BenchReport, JsonReport};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, PurgeConfig, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long producers may take to have every record they sent acknowledged.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long purged records take to be reported as failed.
const PURGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before offering a record again to a producer whose queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_micros(200);
/// Records a producer may queue; the byte bound (`--buffer-bytes`) is the one
/// meant to apply, so this is set far above it.
const MAX_QUEUED_RECORDS: u64 = 10_000_000;

/// Flags of `strata bench produce`.
#[derive(Debug, Clone, Args, Serialize)]
pub struct ProduceBenchArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub topic: TopicArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub producer: ProducerArgs,
    /// Records to send in each run (instead of sending for --seconds).
    #[arg(long, conflicts_with = "seconds")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// How long each run sends, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunArgs,
}

/// How records are produced; `produce` and `e2e` share these flags.
#[derive(Debug, Clone, Args, Serialize)]
pub struct ProducerArgs {
    /// Bytes of each record's value (at least 8: the send time).
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// Records per second over all producers; 0 sends as fast as the brokers
    /// acknowledge (up to --buffer-bytes queued per producer).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Acknowledgements the producer waits for.
    #[arg(long, value_enum, default_value_t = Acks::All)]
    pub acks: Acks,
    /// Compression of record batches.
    #[arg(long, value_enum, default_value_t = Compression::None)]
    pub compression: Compression,
    /// Most bytes in one partition's batch (librdkafka `batch.size`).
    #[arg(long, default_value_t = 1_000_000)]
    pub batch_bytes: u64,
    /// How long a batch waits for more records before it is sent (`linger.ms`).
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Producer instances, each with its own connections and sending thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub producers: u32,
    /// Most bytes each producer holds unacknowledged (`queue.buffering.max.kbytes`).
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub buffer_bytes: u64,
}

/// Acknowledgements a producer waits for (Kafka's `acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum Acks {
    /// None: a record counts as acknowledged once it is sent.
    #[value(name = "0")]
    #[serde(rename = "0")]
    Zero,
    /// The leader's.
    #[value(name = "1")]
    #[serde(rename = "1")]
    Leader,
    /// Every in-sync replica's (in Strata: the ack quorum of bookies).
    #[value(name = "all")]
    #[serde(rename = "all")]
    All,
}

impl Acks {
    fn setting(self) -> &'static str {
        match self {
            Acks::Zero => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        }
    }
}

/// Compression codec of record batches (`compression.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Uncompressed.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    fn setting(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

impl ProducerArgs {
    /// Checks the flags make sense together.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.record_bytes < SEND_TIME_BYTES {
            bail!("--record-bytes must be at least {SEND_TIME_BYTES} (the send time)");
        }
        if self.batch_bytes == 0 || self.buffer_bytes < 1024 {
            bail!("--batch-bytes must be positive and --buffer-bytes at least 1024");
        }
        Ok(())
    }

    /// The acks setting, as librdkafka takes it.
    pub fn acks_setting(&self) -> &'static str {
        self.acks.setting()
    }

    /// The rate described for reports.
    pub fn describe_rate(&self) -> String {
        if self.rate == 0 {
            "as fast as acknowledged".to_owned()
        } else {
            format!(
                "at {} records/s ({:.1} MB/s)",
                self.rate,
                self.rate as f64 * self.record_bytes as f64 / 1e6
            )
        }
    }

    /// The producer settings described for reports.
    pub fn describe(&self) -> String {
        format!(
            "{producers} librdkafka producer{s}, {bytes}-byte records, acks={acks}, compression {compression}, \
             batch.size {batch}, linger.ms {linger}, {rate}",
            producers = self.producers,
            s = if self.producers == 1 { "" } else { "s" },
            bytes = self.record_bytes,
            acks = self.acks.setting(),
            compression = self.compression.setting(),
            batch = self.batch_bytes,
            linger = self.linger_ms,
            rate = self.describe_rate(),
        )
    }
}

/// When the producers stop sending.
#[derive(Debug, Clone, Copy)]
pub enum SendLimit {
    /// After this many records in all.
    Records(u64),
    /// Once this long has passed since the clock started.
    Time(Duration),
}

/// What one run of producers achieved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProduceSummary {
    /// Records acknowledged, their rate, and the records that failed.
    #[serde(flatten)]
    pub throughput: Throughput,
    /// From send (at a target rate: from when the record was due) to acknowledgement.
    pub latency_ms: Percentiles,
}

impl ProduceSummary {
    /// What `meter` counted, the run having lasted `elapsed`.
    pub fn from_meter(meter: &Meter, elapsed: Duration) -> Self {
        Self {
            throughput: Throughput::from_meter(meter, elapsed),
            latency_ms: meter.total_latencies().percentiles(),
        }
    }

    /// Each measure's median over `runs` (errors: their sum).
    pub fn median_of(runs: &[ProduceSummary]) -> Self {
        Self {
            throughput: Throughput::median_of(runs.iter().map(|r| &r.throughput)),
            latency_ms: Percentiles::median_of(
                &runs.iter().map(|r| r.latency_ms).collect::<Vec<_>>(),
            ),
        }
    }

    /// The report rows of the median `self` of `runs`.
    pub fn rows(&self, runs: &[ProduceSummary], prefix: &str) -> Vec<(String, String)> {
        let each = |f: &dyn Fn(&ProduceSummary) -> String| runs.iter().map(f).collect::<Vec<_>>();
        let throughput = &self.throughput;
        let mut rows = Vec::from(throughput.rate_rows(runs.iter().map(|r| &r.throughput), prefix));
        rows.extend([
            (
                format!("{prefix}latency, send → ack"),
                with_runs(
                    self.latency_ms.describe(),
                    &each(&|r| format!("p99 {} ms", format_ms(r.latency_ms.p99))),
                ),
            ),
            (
                format!("{prefix}records acknowledged per run"),
                with_runs(
                    throughput.records.to_string(),
                    &each(&|r| r.throughput.records.to_string()),
                ),
            ),
            (
                format!("{prefix}errors (all runs)"),
                throughput.errors.to_string(),
            ),
        ]);
        if let Some(cpu) = throughput.server_cpu_seconds_per_gb {
            rows.push((
                "broker CPU-seconds per GB acknowledged".to_owned(),
                with_runs(
                    format!("{cpu:.1}"),
                    &each(&|r| {
                        r.throughput
                            .server_cpu_seconds_per_gb
                            .map_or("-".to_owned(), |c| format!("{c:.1}"))
                    }),
                ),
            ));
        }
        rows.extend(throughput.first_error_row(prefix));
        rows
    }
}

/// Runs the benchmark and returns its report.
pub async fn run(args: ProduceBenchArgs) -> anyhow::Result<BenchReport> {
    tokio::task::spawn_blocking(move || run_blocking(args))
        .await
        .context("the benchmark thread failed")?
}

fn run_blocking(args: ProduceBenchArgs) -> anyhow::Result<BenchReport> {
    args.producer.validate()?;
    let limit = match args.records {
        Some(records) => SendLimit::Records(records),
        None if args.seconds > 0.0 && args.seconds.is_finite() => {
            SendLimit::Time(Duration::from_secs_f64(args.seconds))
        }
        None => bail!("--seconds must be positive"),
    };
    let partitions = ensure_topic(&args.kafka, &args.topic)?;
    let server_cpu = args.run.server_cpu()?;
    let mut runs = Vec::new();
    for run in 1..=args.run.runs {
        let clock = Clock::start();
        let meter = Arc::new(Meter::new("produced", clock.started()));
        let cpu_before = server_cpu.as_ref().map(|c| c.seconds()).transpose()?;
        let done = AtomicBool::new(false);
        let sent = std::thread::scope(|scope| {
            let progress = scope.spawn(|| print_progress(&[&meter], clock.started(), &done));
            let sent = produce(
                &args.kafka,
                &args.producer,
                partitions,
                limit,
                &clock,
                &meter,
            );
            done.store(true, Ordering::Release);
            let _ = progress.join();
            sent
        });
        sent?;
        let mut summary = ProduceSummary::from_meter(&meter, ack_window(&meter, &clock));
        summary.throughput.server_cpu_seconds_per_gb =
            cpu_seconds_per_gb(server_cpu.as_ref(), cpu_before, summary.throughput.bytes)?;
        eprintln!(
            "run {run}/{}: {} records, {}, {} errors",
            args.run.runs,
            summary.throughput.records,
            run_line(
                summary.throughput.records_per_sec,
                summary.throughput.mb_per_sec,
                &summary.latency_ms
            ),
            summary.throughput.errors
        );
        runs.push(summary);
    }
    let median = ProduceSummary::median_of(&runs);
    let limit_text = match args.records {
        Some(records) => format!("{records} records per run"),
        None => format!("{} s per run", args.seconds),
    };
    let section = Section {
        name: "kafka-produce".into(),
        title: format!(
            "Produce through librdkafka: {} B records, acks={}, {}",
            args.producer.record_bytes,
            args.producer.acks.setting(),
            args.producer.describe_rate()
        ),
        setup: format!(
            "{producer}; {limit_text}, {runs} run(s), medians (each run's value in brackets). \
             Against `{bootstrap}`, topic `{topic}` with {partitions} partitions. \
             Latency is from send to acknowledgement; at a target rate it starts when the record \
             was due, so a sender that falls behind does not hide the delay. MB = 10^6 bytes of record values.",
            producer = args.producer.describe(),
            runs = args.run.runs,
            bootstrap = args.kafka.bootstrap,
            topic = args.kafka.topic,
        ),
        rows: median.rows(&runs, ""),
    };
    let json = args
        .run
        .json
        .then(|| JsonReport::new("produce", &args, &median, &runs).to_json());
    Ok(BenchReport {
        section,
        json: json.transpose()?,
    })
}

/// How long a run took: from the clock's start to its last acknowledgement
/// (or to now, if nothing was acknowledged).
pub fn ack_window(meter: &Meter, clock: &Clock) -> Duration {
    if meter.counts().records > 0 {
        meter.last_record_at()
    } else {
        clock.elapsed()
    }
}

/// Sends timestamped records to the topic from `args.producers` producers,
/// each on its own thread, until `limit`; then waits for every
/// acknowledgement. Acknowledgements and failures are counted in `meter`.
pub fn produce(
    kafka: &KafkaArgs,
    args: &ProducerArgs,
    partitions: i32,
    limit: SendLimit,
    clock: &Clock,
    meter: &Arc<Meter>,
) -> anyhow::Result<()> {
    let producers = u64::from(args.producers);
    // Each producer sends its share of the records and of the rate.
    let rate = (args.rate > 0).then(|| args.rate as f64 / producers as f64);
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for index in 0..producers {
            let share = match limit {
                SendLimit::Records(records) => {
                    SendLimit::Records(records / producers + u64::from(index < records % producers))
                }
                time => time,
            };
            let sender = Sender {
                kafka,
                args,
                partitions,
                index,
                limit: share,
                rate,
                clock,
                meter: meter.clone(),
            };
            handles.push(scope.spawn(move || sender.run()));
        }
        for handle in handles {
            match handle.join() {
                Ok(result) => result?,
                Err(_) => bail!("a producer thread panicked"),
            }
        }
        Ok(())
    })
}

/// One producer and the thread sending through it.
struct Sender<'a> {
    kafka: &'a KafkaArgs,
    args: &'a ProducerArgs,
    partitions: i32,
    index: u64,
    limit: SendLimit,
    /// Records per second of this producer; `None`: unthrottled.
    rate: Option<f64>,
    clock: &'a Clock,
    meter: Arc<Meter>,
}

impl Sender<'_> {
    fn run(self) -> anyhow::Result<()> {
        let args = self.args;
        let settings = [
            ("acks", args.acks.setting().to_owned()),
            ("compression.type", args.compression.setting().to_owned()),
            ("batch.size", args.batch_bytes.to_string()),
            ("linger.ms", args.linger_ms.to_string()),
            (
                "queue.buffering.max.kbytes",
                (args.buffer_bytes / 1024).to_string(),
            ),
            (
                "queue.buffering.max.messages",
                MAX_QUEUED_RECORDS.to_string(),
            ),
        ];
        let context = AckContext {
            started: self.clock.started(),
            meter: self.meter.clone(),
        };
        let producer: ThreadedProducer<AckContext> = self
            .kafka
            .client_config(&format!("strata-bench-producer-{}", self.index), &settings)
            .create_with_context(context)
            .context("cannot create the Kafka producer")?;
        let filler = Filler::new(args.record_bytes);
        let mut value = vec![0u8; args.record_bytes];
        let started = self.clock.started();
        let partitions = u64::try_from(self.partitions).unwrap_or(1).max(1);
        let mut sent: u64 = 0;
        loop {
            let due = match self.rate {
                Some(rate) => started + Duration::from_secs_f64(sent as f64 / rate),
                None => Instant::now(),
            };
            let finished = match self.limit {
                SendLimit::Records(records) => sent >= records,
                SendLimit::Time(time) => due.saturating_duration_since(started) >= time,
            };
            if finished {
                break;
            }
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            filler.fill(&mut value, sent);
            write_send_time(&mut value, self.clock.unix_nanos(due));
            let since_start = due.saturating_duration_since(started).as_nanos();
            let opaque = usize::try_from(since_start).unwrap_or(usize::MAX);
            // Consecutive records go to consecutive partitions; producers start apart.
            let partition = ((sent + self.index) % partitions) as i32;
            let mut record =
                BaseRecord::<(), [u8], usize>::with_opaque_to(&self.kafka.topic, opaque)
                    .payload(&value[..])
                    .partition(partition);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                        record = returned;
                        std::thread::sleep(QUEUE_FULL_BACKOFF);
                    }
                    Err((error, _)) => {
                        self.meter.error(|| format!("send: {error}"));
                        break;
                    }
                }
            }
            sent += 1;
        }
        if producer.flush(DRAIN_TIMEOUT).is_err() {
            // Whatever is still unacknowledged fails, and is counted so.
            producer.purge(PurgeConfig::default().queue().inflight());
            let _ = producer.flush(PURGE_TIMEOUT);
        }
        Ok(())
    }
}

/// Counts each acknowledgement (or failure) of a producer, with its latency.
struct AckContext {
    started: Instant,
    meter: Arc<Meter>,
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    /// When the record was sent (or due), in nanoseconds since `started`.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_nanos: usize) {
        match result {
            Ok(message) => {
                let sent = Duration::from_nanos(sent_nanos as u64);
                let latency = self.started.elapsed().saturating_sub(sent);
                self.meter
                    .record(message.payload_len() as u64, Some(latency));
            }
            Err((error, _)) => self.meter.error(|| error.to_string()),
        }
    }
}
