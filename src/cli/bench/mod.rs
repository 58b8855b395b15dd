//! `strata bench`: measurements of real components, written to BENCHMARKS.md
//! with the command that produced them.
//!
//! `metadata` and `bookie` start the component in this process; `produce`,
//! `consume` and `e2e` drive any running Kafka-compatible cluster through
//! librdkafka, the way applications use it.

mod bookie;
mod e2e;
mod kafka_client;
mod kafka_consume;
mod kafka_produce;
mod metadata;
mod report;
mod server_cpu;
mod summary;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;

/// Flags of `strata bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Replace this benchmark's section of the given Markdown file with the results.
    #[arg(long, value_name = "FILE")]
    pub write: Option<std::path::PathBuf>,

    /// Name of the section to write instead of the benchmark's own (to keep
    /// the results of several settings side by side).
    #[arg(long, value_name = "NAME", requires = "write")]
    pub section: Option<String>,

    #[command(subcommand)]
    pub command: BenchCommand,
}

/// Which benchmark to run.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The metadata group: topic creation, offset commits, state-machine size.
    Metadata(metadata::MetadataBenchArgs),
    /// One bookie: adds/s, MB/s and fsyncs per add through the ledger client.
    Bookie(bookie::BookieBenchArgs),
    /// Produce to any Kafka cluster with librdkafka: records/s, MB/s, latency
    /// from send to acknowledgement.
    Produce(kafka_produce::ProduceBenchArgs),
    /// Consume a topic with librdkafka: records/s, MB/s, and the latency from
    /// send to consumption of records written by `strata bench produce`.
    Consume(kafka_consume::ConsumeBenchArgs),
    /// Produce at a target rate and consume at once: produce and end-to-end latency.
    E2e(e2e::E2eBenchArgs),
}

/// What a benchmark reports.
pub struct BenchReport {
    /// The Markdown section, printed and written with `--write`.
    pub section: report::Section,
    /// With `--json`: the summary as one JSON object, printed instead of the Markdown.
    pub json: Option<String>,
}

impl From<report::Section> for BenchReport {
    fn from(section: report::Section) -> Self {
        Self {
            section,
            json: None,
        }
    }
}

/// The JSON summary of a benchmark: its settings, each measure's median over
/// the runs (at the top level), and each run when there were several.
#[derive(Serialize)]
pub struct JsonReport<'a, S: Serialize, T: Serialize> {
    /// Which benchmark.
    pub bench: &'static str,
    /// Its flags.
    pub settings: &'a S,
    /// How many runs the medians are of.
    pub runs: usize,
    /// Each measure's median.
    #[serde(flatten)]
    pub median: &'a T,
    /// Each run, when there were several.
    #[serde(skip_serializing_if = "<[T]>::is_empty")]
    pub each_run: &'a [T],
}

impl<'a, S: Serialize, T: Serialize> JsonReport<'a, S, T> {
    /// The report of `runs` (summarised by `median`) of benchmark `bench` with flags `settings`.
    pub fn new(bench: &'static str, settings: &'a S, median: &'a T, runs: &'a [T]) -> Self {
        Self {
            bench,
            settings,
            runs: runs.len(),
            median,
            each_run: if runs.len() > 1 { runs } else { &[] },
        }
    }

    /// The report as one line of JSON.
    pub fn to_json(&self) -> anyhow::Result<String> {
        serde_json::to_string(self).context("cannot encode the summary as JSON")
    }
}

/// Runs one benchmark, prints its report, and writes it if asked.
pub async fn run(args: BenchArgs, command_line: String) -> anyhow::Result<()> {
    let report = match args.command {
        BenchCommand::Metadata(bench) => metadata::run(bench).await?.into(),
        BenchCommand::Bookie(bench) => bookie::run(bench).await?.into(),
        BenchCommand::Produce(bench) => kafka_produce::run(bench).await?,
        BenchCommand::Consume(bench) => kafka_consume::run(bench).await?,
        BenchCommand::E2e(bench) => e2e::run(bench).await?,
    };
    let mut section = report.section;
    if let Some(name) = args.section {
        section.name = name;
    }
    let text = section.render(&command_line);
    match &report.json {
        Some(json) => println!("{json}"),
        None => print!("{text}"),
    }
    if let Some(path) = args.write {
        report::write_section(&path, &section.name, &text)?;
        // With --json, stdout holds nothing but the JSON object.
        if report.json.is_some() {
            eprintln!("written to {}", path.display());
        } else {
            println!("written to {}", path.display());
        }
    }
    Ok(())
}
