//! The bookie benchmark: one real bookie (journal with `fdatasync`, entry
//! logs, RocksDB index) in this process, written through the ledger client
//! over gRPC on loopback, the way a gateway writes.

use super::report::{Latencies, Section};
use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use std::time::{Duration, Instant};
use strata_bookie::config::JournalSync;
use strata_bookie::ledger::{BookiePool, LedgerOptions, LedgerSpec, LedgerWriter};
use strata_bookie::{Bookie, BookieConfig};
use strata_metadata::{MetadataConfig, MetadataServer};
use tokio_util::sync::CancellationToken;

/// Flags of `strata bench bookie`.
#[derive(Debug, Args)]
pub struct BookieBenchArgs {
    /// Entry sizes to measure, in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1024, 65536])]
    pub entry_bytes: Vec<usize>,
    /// How long to write at each size, in seconds.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Journal sync policy: `always` (durable) or `never-unsafe`.
    #[arg(long, default_value = "always")]
    pub sync: String,
    /// Most bytes of adds in flight at once.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub in_flight_bytes: u64,
}

/// One entry size's results.
struct Run {
    entry_bytes: usize,
    adds: u64,
    elapsed: Duration,
    fsyncs: u64,
    journal_writes: u64,
    latencies: Latencies,
}

/// Runs the benchmark and returns its report.
pub async fn run(args: BookieBenchArgs) -> anyhow::Result<Section> {
    let sync = match args.sync.as_str() {
        "always" => JournalSync::Always,
        "never-unsafe" => JournalSync::NeverUnsafe,
        other => bail!("--sync must be always or never-unsafe, not {other:?}"),
    };
    if args.entry_bytes.is_empty() || args.entry_bytes.contains(&0) {
        bail!("--entry-bytes needs positive sizes");
    }
    let mut runs = Vec::new();
    for entry_bytes in &args.entry_bytes {
        runs.push(run_one(&args, *entry_bytes, sync).await?);
    }
    let mut rows = Vec::new();
    for run in &runs {
        let secs = run.elapsed.as_secs_f64();
        let size = human_size(run.entry_bytes);
        rows.push((
            format!("{size} adds/s"),
            format!("{:.0}", run.adds as f64 / secs),
        ));
        rows.push((
            format!("{size} MB/s"),
            format!(
                "{:.1}",
                run.adds as f64 * run.entry_bytes as f64 / secs / 1e6
            ),
        ));
        rows.push((
            format!("{size} fsyncs per 1,000 adds"),
            format!(
                "{:.1} ({} group commits for {} adds)",
                run.fsyncs as f64 * 1000.0 / run.adds.max(1) as f64,
                run.journal_writes,
                run.adds
            ),
        ));
        rows.push((
            format!("{size} add-to-confirm latency, window full"),
            run.latencies.summary(),
        ));
    }
    Ok(Section {
        name: "bookie".into(),
        title: "One bookie".into(),
        setup: format!(
            "One bookie in this process (journal sync `{sync}`, entry logs, RocksDB index), written for {seconds} s per entry size \
             through the ledger client (E=Qw=Qa=1) over gRPC on loopback, with up to {window} MiB of adds in flight.",
            sync = args.sync,
            seconds = args.seconds,
            window = args.in_flight_bytes / (1024 * 1024),
        ),
        rows,
    })
}

async fn run_one(
    args: &BookieBenchArgs,
    entry_bytes: usize,
    sync: JournalSync,
) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let shutdown = CancellationToken::new();
    let metadata = MetadataServer::start(
        MetadataConfig {
            listen_addr: ([127, 0, 0, 1], 0).into(),
            data_dir: dir.path().join("metadata"),
            ..MetadataConfig::default()
        },
        shutdown.clone(),
    )
    .await?;
    let bookie = Bookie::start(
        BookieConfig {
            listen_addr: ([127, 0, 0, 1], 0).into(),
            data_dir: dir.path().join("bookie"),
            metadata_addrs: vec![metadata.grpc_addr().to_string()],
            journal_sync: sync,
            // The benchmark's disk may be small; it writes little.
            min_free_bytes: 0,
            ..BookieConfig::default()
        },
        shutdown.clone(),
    )
    .await?;
    let storage = bookie.storage().clone();
    let spec = LedgerSpec::new(1, vec![bookie.grpc_addr().to_string()], 1, 1)?;
    let options = LedgerOptions {
        max_in_flight_bytes: args.in_flight_bytes,
        ..LedgerOptions::default()
    };
    let mut writer = LedgerWriter::open(spec, 1, &BookiePool::new(options))?;
    let payload = Bytes::from(vec![0x5a; entry_bytes]);

    let before = storage.stats();
    let (latency_tx, mut latency_rx) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut added = 0i64;
    while Instant::now() < deadline {
        let sent = Instant::now();
        let pending = writer.add(payload.clone(), added).await?;
        let latency_tx = latency_tx.clone();
        tokio::spawn(async move {
            if pending.await.is_ok() {
                let _ = latency_tx.send(sent.elapsed());
            }
        });
        added += 1;
    }
    drop(latency_tx);
    let mut latencies = Vec::with_capacity(added as usize);
    while let Some(latency) = latency_rx.recv().await {
        latencies.push(latency);
    }
    let elapsed = started.elapsed();
    if latencies.len() as i64 != added {
        bail!(
            "{} of {added} adds were not confirmed",
            added - latencies.len() as i64
        );
    }
    let after = storage.stats();
    writer.seal().await?;
    shutdown.cancel();
    bookie.wait().await;
    metadata.wait().await;
    Ok(Run {
        entry_bytes,
        adds: added as u64,
        elapsed,
        fsyncs: after.journal_fsyncs - before.journal_fsyncs,
        journal_writes: after.journal_writes - before.journal_writes,
        latencies: Latencies::new(latencies),
    })
}

fn human_size(bytes: usize) -> String {
    if bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}
