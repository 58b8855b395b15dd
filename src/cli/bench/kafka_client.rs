//! What the Kafka-client benchmarks share: the flags naming a cluster and a
//! topic, topic setup through librdkafka's admin client, and the benchmark
//! record format.
//!
//! **Record format.** The first [`SEND_TIME_BYTES`] bytes of every value that
//! `strata bench produce` (or `e2e`) writes hold the time the record was sent
//! (at a target rate: the time it was due), as nanoseconds since the UNIX epoch
//! in a **little-endian** `u64`. The rest of the value is random letters.
//! `strata bench consume` reads that time back to report end-to-end latency.

use super::server_cpu::ProcessCpu;
use super::summary::Percentiles;
use anyhow::{bail, Context};
use clap::Args;
use rand::distr::{Alphanumeric, SampleString};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use serde::Serialize;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Bytes at the start of a benchmark record's value holding its send time
/// (nanoseconds since the UNIX epoch, little-endian `u64`).
pub const SEND_TIME_BYTES: usize = 8;
/// Send times older than this are not taken for one: the value was not
/// written by `strata bench`.
const MAX_SEND_TIME_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Send times up to this far in the future are taken (the producer's clock
/// may be a little ahead of the consumer's); latency then counts as zero.
const MAX_SEND_TIME_AHEAD: Duration = Duration::from_secs(60);
/// How long a topic may take to exist with a leader for every partition.
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of one metadata or watermark request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two checks of the topic's partition leaders.
const TOPIC_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Random bytes beyond one record's worth that record values are cut from,
/// so that consecutive records (and batches) are not copies of each other.
const FILLER_SPREAD: usize = 64 * 1024;
/// How far apart in the random bytes consecutive records start (a prime, so
/// that starts cycle through the whole spread).
const FILLER_STRIDE: u64 = 4099;

/// Flags naming the Kafka cluster and topic.
#[derive(Debug, Clone, Args, Serialize)]
pub struct KafkaArgs {
    /// Bootstrap servers of any Kafka-compatible cluster, comma-separated `host:port`.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Topic to write or read.
    #[arg(long, default_value = "strata-bench")]
    pub topic: String,
    /// Extra librdkafka setting for every client, `KEY=VALUE` (repeatable; wins
    /// over the benchmark's own settings).
    #[arg(long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<(String, String)>,
}

impl KafkaArgs {
    /// A librdkafka configuration for this cluster: `settings` first, then
    /// the `--property` flags.
    pub fn client_config(&self, client_id: &str, settings: &[(&str, String)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("client.id", client_id);
        for (key, value) in settings {
            config.set(*key, value);
        }
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

/// Flags of a topic the benchmark creates when it is missing.
#[derive(Debug, Clone, Args, Serialize)]
pub struct TopicArgs {
    /// Partitions of the topic if it has to be created (an existing topic keeps its own).
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Replication factor of a created topic; -1 takes the broker's default.
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub replication_factor: i32,
}

/// Flags about repeating a benchmark and reporting it.
#[derive(Debug, Clone, Args, Serialize)]
pub struct RunArgs {
    /// Times to run the benchmark; the report gives each measure's median.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Print the final summary as one JSON object (progress still goes to stderr).
    #[arg(long)]
    #[serde(skip)]
    pub json: bool,
    /// Process id of the broker, on this machine, whose CPU time (user +
    /// system, from /proc) to report per GB moved.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
}

impl RunArgs {
    /// The broker process to sample, if one was named.
    pub fn server_cpu(&self) -> anyhow::Result<Option<ProcessCpu>> {
        self.server_pid.map(ProcessCpu::new).transpose()
    }
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// Creates the topic if it does not exist, then waits until every partition
/// has a leader; returns the topic's partition count.
pub fn ensure_topic(kafka: &KafkaArgs, topic: &TopicArgs) -> anyhow::Result<i32> {
    if topic.partitions < 1 {
        bail!("--partitions must be at least 1");
    }
    let admin: AdminClient<DefaultClientContext> = kafka
        .client_config("strata-bench-admin", &[])
        .create()
        .context("cannot create the Kafka admin client")?;
    let new_topic = NewTopic::new(
        &kafka.topic,
        topic.partitions,
        TopicReplication::Fixed(topic.replication_factor),
    );
    let options = AdminOptions::new()
        .request_timeout(Some(REQUEST_TIMEOUT))
        .operation_timeout(Some(REQUEST_TIMEOUT));
    // The admin client answers through a channel of its own, so any executor
    // can wait for it; this runs on a blocking thread.
    let results = futures::executor::block_on(admin.create_topics([&new_topic], &options))
        .with_context(|| format!("cannot create topic {:?}", kafka.topic))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("cannot create topic {name:?}: {code}"),
        }
    }
    wait_for_leaders(admin.inner(), &kafka.topic)
}

/// Waits until `topic` exists with a leader for every partition; returns its
/// partition count.
pub fn wait_for_leaders<C: ClientContext>(client: &Client<C>, topic: &str) -> anyhow::Result<i32> {
    let deadline = Instant::now() + TOPIC_READY_TIMEOUT;
    loop {
        let problem = match client.fetch_metadata(Some(topic), REQUEST_TIMEOUT) {
            Err(error) => format!("cannot fetch metadata: {error}"),
            Ok(metadata) => match metadata.topics().iter().find(|t| t.name() == topic) {
                None => "the topic is not in the metadata".to_owned(),
                Some(found) => {
                    let leaderless = found
                        .partitions()
                        .iter()
                        .filter(|p| p.error().is_some() || p.leader() < 0)
                        .count();
                    if let Some(error) = found.error() {
                        format!("{error:?}")
                    } else if found.partitions().is_empty() {
                        "the topic has no partitions".to_owned()
                    } else if leaderless > 0 {
                        format!("{leaderless} partitions have no leader")
                    } else {
                        return i32::try_from(found.partitions().len())
                            .context("too many partitions");
                    }
                }
            },
        };
        if Instant::now() > deadline {
            bail!(
                "topic {topic:?} is not ready after {} s: {problem}",
                TOPIC_READY_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(TOPIC_POLL_INTERVAL);
    }
}

/// Calls `request` until it succeeds or [`TOPIC_READY_TIMEOUT`] passes, for
/// requests that fail while a topic's partitions are still being taken over.
pub fn retry_until_ready<T>(mut request: impl FnMut() -> KafkaResult<T>) -> KafkaResult<T> {
    let deadline = Instant::now() + TOPIC_READY_TIMEOUT;
    loop {
        match request() {
            Err(_) if Instant::now() < deadline => std::thread::sleep(TOPIC_POLL_INTERVAL),
            result => return result,
        }
    }
}

/// The monotonic clock paired with the wall clock: latencies measured in this
/// process use the monotonic clock, and send times written into records are
/// wall-clock times derived from it, so both agree within the process.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    started: Instant,
    started_unix_nanos: u64,
}

impl Clock {
    /// A clock starting now.
    pub fn start() -> Self {
        let started_unix_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64);
        Self {
            started: Instant::now(),
            started_unix_nanos,
        }
    }

    /// When the clock started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Time since the clock started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Wall-clock time of `at`, in nanoseconds since the UNIX epoch.
    pub fn unix_nanos(&self, at: Instant) -> u64 {
        let since_start = at.saturating_duration_since(self.started).as_nanos() as u64;
        self.started_unix_nanos.saturating_add(since_start)
    }
}

/// Writes the send time into the start of `value` (which has room for it).
pub fn write_send_time(value: &mut [u8], unix_nanos: u64) {
    debug_assert!(value.len() >= SEND_TIME_BYTES);
    if let Some(head) = value.get_mut(..SEND_TIME_BYTES) {
        head.copy_from_slice(&unix_nanos.to_le_bytes());
    }
}

/// Time from the send time at the start of `value` to `now_unix_nanos`, if
/// the value starts with a plausible send time (see [`MAX_SEND_TIME_AGE`]).
pub fn latency_since_send(value: &[u8], now_unix_nanos: u64) -> Option<Duration> {
    let head: [u8; SEND_TIME_BYTES] = value.get(..SEND_TIME_BYTES)?.try_into().ok()?;
    let sent = u64::from_le_bytes(head);
    let oldest = now_unix_nanos.saturating_sub(MAX_SEND_TIME_AGE.as_nanos() as u64);
    let latest = now_unix_nanos.saturating_add(MAX_SEND_TIME_AHEAD.as_nanos() as u64);
    (oldest..=latest)
        .contains(&sent)
        .then(|| Duration::from_nanos(now_unix_nanos.saturating_sub(sent)))
}

/// The bytes of record values after the send time: random letters (about as
/// compressible as text), each record cut from a different place.
pub struct Filler {
    letters: Vec<u8>,
}

impl Filler {
    /// Filler for values of `record_bytes` bytes.
    pub fn new(record_bytes: usize) -> Self {
        let letters = Alphanumeric.sample_string(&mut rand::rng(), record_bytes + FILLER_SPREAD);
        Self {
            letters: letters.into_bytes(),
        }
    }

    /// Fills `value` after its send time with the filler of record `index`.
    pub fn fill(&self, value: &mut [u8], index: u64) {
        let start = (index.wrapping_mul(FILLER_STRIDE) % FILLER_SPREAD as u64) as usize;
        if let Some(rest) = value.get_mut(SEND_TIME_BYTES..) {
            let len = rest.len();
            if let Some(source) = self.letters.get(start..start + len) {
                rest.copy_from_slice(source);
            }
        }
    }
}

/// A group id nobody else uses, for a consumer that must start afresh.
pub fn fresh_group_id() -> String {
    let nanos = Clock::start().unix_nanos(Instant::now());
    format!("strata-bench-{}-{nanos}", std::process::id())
}

/// CPU seconds the broker used per GB (10^9 bytes) moved, if it was sampled.
pub fn cpu_seconds_per_gb(
    cpu: Option<&ProcessCpu>,
    before: Option<f64>,
    bytes: u64,
) -> anyhow::Result<Option<f64>> {
    match (cpu, before) {
        (Some(cpu), Some(before)) if bytes > 0 => {
            let used = cpu.seconds()? - before;
            Ok(Some(used / (bytes as f64 / 1e9)))
        }
        _ => Ok(None),
    }
}

/// One line describing a run's rate and latency, for stderr between runs.
pub fn run_line(records_per_sec: f64, mb_per_sec: f64, latency: &Percentiles) -> String {
    format!(
        "{records_per_sec:.0} rec/s, {mb_per_sec:.1} MB/s, latency {}",
        latency.describe()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_times_round_trip_and_implausible_ones_are_ignored() {
        let now = 1_700_000_000_000_000_000u64;
        let mut value = vec![b'x'; 100];
        write_send_time(&mut value, now - 5_000_000);
        assert_eq!(
            latency_since_send(&value, now),
            Some(Duration::from_millis(5))
        );
        // A clock a little ahead gives zero, not a wrapped latency.
        write_send_time(&mut value, now + 1_000);
        assert_eq!(latency_since_send(&value, now), Some(Duration::ZERO));
        // Text that is not a send time, and values too short for one.
        assert_eq!(latency_since_send(b"hello world", now), None);
        assert_eq!(latency_since_send(b"short", now), None);
    }

    #[test]
    fn filler_keeps_the_send_time_and_varies_between_records() {
        let filler = Filler::new(64);
        let mut first = vec![0u8; 64];
        let mut second = vec![0u8; 64];
        write_send_time(&mut first, 42);
        filler.fill(&mut first, 0);
        filler.fill(&mut second, 1);
        assert_eq!(&first[..SEND_TIME_BYTES], &42u64.to_le_bytes());
        assert!(first[SEND_TIME_BYTES..]
            .iter()
            .all(u8::is_ascii_alphanumeric));
        assert_ne!(first[SEND_TIME_BYTES..], second[SEND_TIME_BYTES..]);
    }

    #[test]
    fn properties_need_a_key_and_an_equals_sign() {
        assert_eq!(
            parse_property("linger.ms=0"),
            Ok(("linger.ms".into(), "0".into()))
        );
        assert_eq!(parse_property("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_property("nothing").is_err());
        assert!(parse_property("=value").is_err());
    }
}
