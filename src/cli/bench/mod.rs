//! `strata bench`: measurements of real components, written to BENCHMARKS.md
//! with the command that produced them.

mod bookie;
mod metadata;
mod report;

use clap::{Args, Subcommand};

/// Flags of `strata bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Replace this benchmark's section of the given Markdown file with the results.
    #[arg(long, value_name = "FILE")]
    pub write: Option<std::path::PathBuf>,

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
}

/// Runs one benchmark, prints its report, and writes it if asked.
pub async fn run(args: BenchArgs, command_line: String) -> anyhow::Result<()> {
    let section = match args.command {
        BenchCommand::Metadata(bench) => metadata::run(bench).await?,
        BenchCommand::Bookie(bench) => bookie::run(bench).await?,
    };
    let text = section.render(&command_line);
    print!("{text}");
    if let Some(path) = args.write {
        report::write_section(&path, &section.name, &text)?;
        println!("written to {}", path.display());
    }
    Ok(())
}
