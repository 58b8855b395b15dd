//! What the Kafka-client benchmarks share: latency histograms, percentile
//! summaries, meters that several threads record into while one thread prints
//! progress, and medians over repeated runs.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest latency a histogram tells apart, in microseconds (one hour); longer
/// ones are recorded as this.
const MAX_LATENCY_MICROS: u64 = 3_600_000_000;
/// Significant decimal digits a histogram keeps: values are within 0.1%.
const SIGNIFICANT_DIGITS: u8 = 3;
/// How often the progress line is printed.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// How often the progress loop checks whether the work is done.
const DONE_CHECK_INTERVAL: Duration = Duration::from_millis(20);
/// Bytes in a megabyte, as in MB/s: decimal, like network and disk rates.
const BYTES_PER_MB: f64 = 1e6;

/// Latencies with microsecond resolution and 0.1% precision.
#[derive(Clone)]
pub struct LatencyHistogram(Histogram<u64>);

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self(
            Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid"),
        )
    }

    /// Records one latency (clamped to 1 µs ..= one hour).
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0
            .saturating_record(micros.clamp(1, MAX_LATENCY_MICROS));
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// Forgets every latency.
    pub fn reset(&mut self) {
        self.0.reset();
    }

    /// The usual percentiles; all zero when nothing was recorded.
    pub fn percentiles(&self) -> Percentiles {
        if self.0.is_empty() {
            return Percentiles::default();
        }
        let ms = |micros: u64| micros as f64 / 1e3;
        Percentiles {
            p50: ms(self.0.value_at_quantile(0.50)),
            p95: ms(self.0.value_at_quantile(0.95)),
            p99: ms(self.0.value_at_quantile(0.99)),
            p99_9: ms(self.0.value_at_quantile(0.999)),
            max: ms(self.0.max()),
        }
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// Largest latency seen.
    pub max: f64,
}

impl Percentiles {
    /// Each percentile's median over several runs.
    pub fn median_of(runs: &[Percentiles]) -> Percentiles {
        Percentiles {
            p50: median(runs.iter().map(|r| r.p50)),
            p95: median(runs.iter().map(|r| r.p95)),
            p99: median(runs.iter().map(|r| r.p99)),
            p99_9: median(runs.iter().map(|r| r.p99_9)),
            max: median(runs.iter().map(|r| r.max)),
        }
    }

    /// Every percentile on one line, for reports.
    pub fn describe(&self) -> String {
        format!(
            "p50 {} ms, p95 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
            format_ms(self.p50),
            format_ms(self.p95),
            format_ms(self.p99),
            format_ms(self.p99_9),
            format_ms(self.max)
        )
    }
}

/// A latency in milliseconds with about three significant digits.
pub fn format_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

/// The median of some values (the mean of the middle two for an even count);
/// 0 for none.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// The median of some counts, rounded down.
pub fn median_count(values: impl IntoIterator<Item = u64>) -> u64 {
    median(values.into_iter().map(|v| v as f64)) as u64
}

/// `count` per second over `elapsed`.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// Megabytes (10^6 bytes) per second.
pub fn mb_per_second(bytes: u64, elapsed: Duration) -> f64 {
    per_second(bytes, elapsed) / BYTES_PER_MB
}

/// One stream of records (acknowledged by the broker, or consumed), recorded
/// by the threads that see them and read by the thread that reports.
pub struct Meter {
    /// What the stream is, for progress lines ("produced", "consumed").
    label: &'static str,
    records: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    latencies: Mutex<MeterLatencies>,
    /// When the last record was recorded, as nanoseconds since `started`.
    last_record_nanos: AtomicU64,
    started: Instant,
}

/// Latencies since the last progress line, and of the whole run.
struct MeterLatencies {
    interval: LatencyHistogram,
    total: LatencyHistogram,
}

/// What a [`Meter`] has counted so far.
#[derive(Debug, Clone, Copy)]
pub struct MeterCounts {
    /// Records seen.
    pub records: u64,
    /// Value bytes of those records.
    pub bytes: u64,
    /// Records that failed.
    pub errors: u64,
}

impl Meter {
    /// A meter whose clock starts at `started`.
    pub fn new(label: &'static str, started: Instant) -> Self {
        Self {
            label,
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            latencies: Mutex::new(MeterLatencies {
                interval: LatencyHistogram::new(),
                total: LatencyHistogram::new(),
            }),
            last_record_nanos: AtomicU64::new(0),
            started,
        }
    }

    /// Counts one record of `bytes` value bytes, and its latency if it has one.
    pub fn record(&self, bytes: u64, latency: Option<Duration>) {
        if let Some(latency) = latency {
            let mut latencies = self.lock_latencies();
            latencies.interval.record(latency);
            latencies.total.record(latency);
        }
        self.records.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let now = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_record_nanos.fetch_max(now, Ordering::Relaxed);
    }

    /// Counts one failed record; the first failure's text is kept.
    pub fn error(&self, error: impl FnOnce() -> String) {
        if self.errors.fetch_add(1, Ordering::Relaxed) == 0 {
            let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
            *first = Some(error());
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> MeterCounts {
        MeterCounts {
            records: self.records.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    /// The text of the first failure, if any.
    pub fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every latency recorded.
    pub fn total_latencies(&self) -> LatencyHistogram {
        self.lock_latencies().total.clone()
    }

    /// Time from the meter's start to its last record (zero if none).
    pub fn last_record_at(&self) -> Duration {
        Duration::from_nanos(self.last_record_nanos.load(Ordering::Relaxed))
    }

    /// Percentiles of the latencies since the last call, and how many there were.
    fn take_interval(&self) -> (Percentiles, u64) {
        let mut latencies = self.lock_latencies();
        let taken = (latencies.interval.percentiles(), latencies.interval.count());
        latencies.interval.reset();
        taken
    }

    fn lock_latencies(&self) -> std::sync::MutexGuard<'_, MeterLatencies> {
        // A thread that panicked while holding the lock left whole histograms behind.
        self.latencies.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Prints a progress line to stderr every second, with each meter's rates and
/// latencies over that second, until `done` is set.
pub fn print_progress(meters: &[&Meter], started: Instant, done: &AtomicBool) {
    let mut previous: Vec<MeterCounts> = meters.iter().map(|m| m.counts()).collect();
    let mut last_line = Instant::now();
    while !done.load(Ordering::Acquire) {
        std::thread::sleep(DONE_CHECK_INTERVAL);
        let since_last = last_line.elapsed();
        if since_last < PROGRESS_INTERVAL {
            continue;
        }
        last_line = Instant::now();
        let mut parts = Vec::with_capacity(meters.len());
        for (meter, previous) in meters.iter().zip(previous.iter_mut()) {
            let counts = meter.counts();
            let (latency, latency_count) = meter.take_interval();
            let mut part = format!(
                "{} {:.0} rec/s {:.1} MB/s",
                meter.label,
                per_second(counts.records - previous.records, since_last),
                mb_per_second(counts.bytes - previous.bytes, since_last),
            );
            if latency_count > 0 {
                part.push_str(&format!(
                    " p50 {} ms p99 {} ms",
                    format_ms(latency.p50),
                    format_ms(latency.p99)
                ));
            }
            if counts.errors > 0 {
                part.push_str(&format!(" errors {}", counts.errors));
            }
            parts.push(part);
            *previous = counts;
        }
        eprintln!(
            "{:6.1} s  {}",
            started.elapsed().as_secs_f64(),
            parts.join("  |  ")
        );
    }
}

/// The value of one measure in every run, as report text: the median, then
/// each run's value when there were several.
pub fn with_runs(median: String, runs: &[String]) -> String {
    if runs.len() <= 1 {
        median
    } else {
        format!("{median} (runs: {})", runs.join("; "))
    }
}

/// What every Kafka benchmark run counts, producing or consuming: the
/// records (acknowledged, or consumed), their value bytes, how long the run
/// took, the rates, and the errors. Flattened into each summary's JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    /// Records acknowledged (producers) or consumed (consumers).
    pub records: u64,
    /// Value bytes of those records.
    pub bytes: u64,
    /// From the first send to the last acknowledgement, or from assigning
    /// the partitions to the last record.
    pub seconds: f64,
    /// Records per second.
    pub records_per_sec: f64,
    /// Value megabytes (10^6 bytes) per second.
    pub mb_per_sec: f64,
    /// Records that failed, or errors the consumer reported (in a summary of
    /// several runs: over all of them).
    pub errors: u64,
    /// CPU seconds the broker process used per GB (with --server-pid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_seconds_per_gb: Option<f64>,
    /// Text of the first error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl Throughput {
    /// What `meter` counted, the run having lasted `elapsed`.
    pub fn from_meter(meter: &Meter, elapsed: Duration) -> Self {
        let counts = meter.counts();
        Self {
            records: counts.records,
            bytes: counts.bytes,
            seconds: elapsed.as_secs_f64(),
            records_per_sec: per_second(counts.records, elapsed),
            mb_per_sec: mb_per_second(counts.bytes, elapsed),
            errors: counts.errors,
            server_cpu_seconds_per_gb: None,
            first_error: meter.first_error(),
        }
    }

    /// Each measure's median over `runs` (errors: their sum; first error:
    /// the first run's that had one).
    pub fn median_of<'a>(runs: impl IntoIterator<Item = &'a Throughput>) -> Self {
        let runs: Vec<&Throughput> = runs.into_iter().collect();
        let cpu: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.server_cpu_seconds_per_gb)
            .collect();
        Self {
            records: median_count(runs.iter().map(|r| r.records)),
            bytes: median_count(runs.iter().map(|r| r.bytes)),
            seconds: median(runs.iter().map(|r| r.seconds)),
            records_per_sec: median(runs.iter().map(|r| r.records_per_sec)),
            mb_per_sec: median(runs.iter().map(|r| r.mb_per_sec)),
            errors: runs.iter().map(|r| r.errors).sum(),
            server_cpu_seconds_per_gb: (!cpu.is_empty()).then(|| median(cpu)),
            first_error: runs.iter().find_map(|r| r.first_error.clone()),
        }
    }

    /// The records/s and MB/s report rows of the median `self` of `runs`.
    pub fn rate_rows<'a>(
        &self,
        runs: impl IntoIterator<Item = &'a Throughput>,
        prefix: &str,
    ) -> [(String, String); 2] {
        let runs: Vec<&Throughput> = runs.into_iter().collect();
        let each =
            |f: &dyn Fn(&Throughput) -> String| runs.iter().map(|r| f(r)).collect::<Vec<_>>();
        [
            (
                format!("{prefix}records/s"),
                with_runs(
                    format!("{:.0}", self.records_per_sec),
                    &each(&|r| format!("{:.0}", r.records_per_sec)),
                ),
            ),
            (
                format!("{prefix}MB/s"),
                with_runs(
                    format!("{:.1}", self.mb_per_sec),
                    &each(&|r| format!("{:.1}", r.mb_per_sec)),
                ),
            ),
        ]
    }

    /// The report row of the first error, if there was one.
    pub fn first_error_row(&self, prefix: &str) -> Option<(String, String)> {
        self.first_error
            .as_ref()
            .map(|error| (format!("{prefix}first error"), error.replace('|', "/")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(std::iter::empty()), 0.0);
        assert_eq!(median_count([10, 30, 20]), 20);
    }

    #[test]
    fn percentiles_are_ordered_and_precise() {
        let mut histogram = LatencyHistogram::new();
        for ms in 1..=1000 {
            histogram.record(Duration::from_millis(ms));
        }
        let p = histogram.percentiles();
        assert!(p.p50 <= p.p95 && p.p95 <= p.p99 && p.p99 <= p.p99_9 && p.p99_9 <= p.max);
        assert!((p.p50 - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() < 1.0, "{p:?}");
        assert_eq!(
            LatencyHistogram::new().percentiles(),
            Percentiles::default()
        );
    }

    #[test]
    fn latencies_beyond_the_bounds_are_clamped() {
        let mut histogram = LatencyHistogram::new();
        histogram.record(Duration::ZERO);
        histogram.record(Duration::from_secs(100_000));
        assert_eq!(histogram.count(), 2);
        assert!(histogram.percentiles().max <= MAX_LATENCY_MICROS as f64 / 1e3 * 1.001);
    }

    #[test]
    fn meters_count_records_and_keep_the_first_error() {
        let meter = Meter::new("test", Instant::now());
        meter.record(100, Some(Duration::from_millis(2)));
        meter.record(100, None);
        meter.error(|| "first".into());
        meter.error(|| "second".into());
        let counts = meter.counts();
        assert_eq!((counts.records, counts.bytes, counts.errors), (2, 200, 2));
        assert_eq!(meter.first_error().as_deref(), Some("first"));
        assert_eq!(meter.total_latencies().count(), 1);
    }
}
