//! The subcommands of `strata` and what they share.

pub mod admin;
pub mod bench;
pub mod dev;
pub mod logging;
pub mod roles;
pub mod settings;
pub mod shutdown;

use clap::{Parser, Subcommand};

/// Strata: a Kafka-compatible streaming broker with compute and storage separated.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about)]
pub struct Cli {
    /// Write logs as JSON lines instead of readable text.
    #[arg(long, global = true, env = "STRATA_LOG_JSON")]
    pub log_json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole cluster in one process: one metadata node, three bookies and
    /// one gateway, each on its own loopback port, talking real gRPC.
    Dev(dev::DevArgs),
    /// Run one metadata node.
    Metadata(roles::MetadataArgs),
    /// Run one bookie (storage node).
    Bookie(roles::BookieArgs),
    /// Run one gateway (Kafka protocol server).
    Gateway(roles::GatewayArgs),
    /// Inspect and change a running cluster.
    Admin(admin::AdminArgs),
    /// Measure a component and report medians (optionally into BENCHMARKS.md).
    Bench(bench::BenchArgs),
}

/// Runs one subcommand to completion.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Dev(args) => dev::run(args).await,
        Command::Metadata(args) => roles::run_metadata(args).await,
        Command::Bookie(args) => roles::run_bookie(args).await,
        Command::Gateway(args) => roles::run_gateway(args).await,
        Command::Admin(args) => admin::run(args).await,
        Command::Bench(args) => bench::run(args, command_line()).await,
    }
}

/// The command line this process was started with, as a user would type it.
fn command_line() -> String {
    let mut words: Vec<String> = std::env::args().skip(1).collect();
    words.insert(0, "strata".into());
    words.join(" ")
}
