//! The metadata benchmark: a real metadata group (RocksDB, raft, gRPC on
//! loopback) in this process, driven through the same client gateways use.

use super::report::{Latencies, Section};
use anyhow::{bail, Context};
use clap::Args;
use std::time::{Duration, Instant};
use strata_metadata::client::MetadataClient;
use strata_metadata::{MetadataConfig, MetadataServer};
use strata_proto::metadata::{
    CommitOffsetsRequest, CommittedOffset, CreateTopicRequest, ListPartitionsRequest,
    RegisterGatewayRequest,
};
use tokio_util::sync::CancellationToken;

/// Flags of `strata bench metadata`.
#[derive(Debug, Args)]
pub struct MetadataBenchArgs {
    /// Metadata nodes in the group (1 or 3).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Topics to create.
    #[arg(long, default_value_t = 100)]
    pub topics: u32,
    /// Partitions in all, spread evenly over the topics.
    #[arg(long, default_value_t = 10_000)]
    pub partitions: u32,
    /// Gateways registered, over which the controller spreads ownership.
    #[arg(long, default_value_t = 3)]
    pub gateways: i32,
    /// Offset-commit batches to send.
    #[arg(long, default_value_t = 300)]
    pub commit_batches: u32,
    /// Offsets in each commit batch.
    #[arg(long, default_value_t = 100)]
    pub commit_batch_size: u32,
}

/// Runs the benchmark and returns its report.
pub async fn run(args: MetadataBenchArgs) -> anyhow::Result<Section> {
    if !(args.nodes == 1 || args.nodes == 3) {
        bail!("--nodes must be 1 or 3");
    }
    if args.topics == 0 || args.partitions < args.topics {
        bail!("need at least one topic and one partition per topic");
    }
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let shutdown = CancellationToken::new();
    let servers = start_group(&args, dir.path(), &shutdown).await?;
    let addrs: Vec<String> = servers.iter().map(|s| s.grpc_addr().to_string()).collect();
    let client = MetadataClient::connect_lazy(&addrs)?;
    for node_id in 1..=args.gateways {
        client
            .call(|mut c| async move {
                c.register_gateway(RegisterGatewayRequest {
                    node_id,
                    kafka_host: "127.0.0.1".into(),
                    kafka_port: 9092,
                    zone: String::new(),
                })
                .await
            })
            .await?;
    }

    let per_topic = args.partitions / args.topics;
    let mut create = Vec::new();
    let started = Instant::now();
    for topic in 0..args.topics {
        let request = CreateTopicRequest {
            name: format!("bench-{topic:05}"),
            partition_count: per_topic as i32,
            ..Default::default()
        };
        let sent = Instant::now();
        let reply = client
            .send(request, |mut c, request| async move {
                c.create_topic(request).await
            })
            .await?;
        create.push(sent.elapsed());
        let outcome = reply.outcome.unwrap_or_default();
        if outcome.error_code != 0 {
            bail!("create topic refused: {}", outcome.error_message);
        }
    }
    let create_total = started.elapsed();

    let assigned_after = wait_until_assigned(&client, args.topics, started).await?;

    let mut commits = Vec::new();
    let started = Instant::now();
    for batch in 0..args.commit_batches {
        let offsets = (0..args.commit_batch_size)
            .map(|i| {
                let n = batch * args.commit_batch_size + i;
                CommittedOffset {
                    group: format!("group-{}", n % 50),
                    topic: format!("bench-{:05}", n % args.topics),
                    partition: (n / args.topics) % per_topic,
                    offset: i64::from(n),
                    leader_epoch: -1,
                    metadata: String::new(),
                    commit_timestamp_ms: 0,
                }
            })
            .collect::<Vec<_>>();
        let request = CommitOffsetsRequest {
            offsets,
            coordinator: None,
        };
        let sent = Instant::now();
        client
            .send(request, |mut c, request| async move {
                c.commit_offsets(request).await
            })
            .await?;
        commits.push(sent.elapsed());
    }
    let commit_total = started.elapsed();

    let snapshot_bytes = snapshot_size(&servers).await?;
    shutdown.cancel();
    for server in servers {
        server.wait().await;
    }
    let disk_bytes = dir_size(dir.path());

    let total_partitions = per_topic * args.topics;
    let commit_offsets = u64::from(args.commit_batches) * u64::from(args.commit_batch_size);
    let create = Latencies::new(create);
    let commits = Latencies::new(commits);
    Ok(Section {
        name: "metadata".into(),
        title: "Metadata group".into(),
        setup: format!(
            "A {nodes}-node metadata group in one process (openraft, RocksDB with synced writes, gRPC on loopback), \
             {gateways} registered gateways. {topics} topics of {per_topic} partitions are created one at a time; \
             then {batches} offset commits of {batch} offsets each are sent one at a time.",
            nodes = args.nodes,
            gateways = args.gateways,
            topics = args.topics,
            batches = args.commit_batches,
            batch = args.commit_batch_size,
        ),
        rows: vec![
            ("partitions".into(), total_partitions.to_string()),
            ("create topic latency".into(), create.summary()),
            (
                "topics created per second".into(),
                format!("{:.0}", f64::from(args.topics) / create_total.as_secs_f64()),
            ),
            (
                "all partitions owned after".into(),
                format!("{:.2} s from the first create", assigned_after.as_secs_f64()),
            ),
            ("offset commit batch latency".into(), commits.summary()),
            (
                "offsets committed per second".into(),
                format!("{:.0}", commit_offsets as f64 / commit_total.as_secs_f64()),
            ),
            (
                "state-machine snapshot".into(),
                format!(
                    "{:.2} MiB ({} bytes per partition, with {commit_offsets} committed offsets)",
                    mib(snapshot_bytes),
                    snapshot_bytes / u64::from(total_partitions.max(1))
                ),
            ),
            (
                "data dirs on disk (all nodes)".into(),
                format!("{:.1} MiB", mib(disk_bytes)),
            ),
        ],
    })
}

async fn start_group(
    args: &MetadataBenchArgs,
    dir: &std::path::Path,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<MetadataServer>> {
    let ports = (0..args.nodes)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let peers: Vec<String> = if args.nodes == 1 {
        Vec::new()
    } else {
        ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("{}=127.0.0.1:{port}", i + 1))
            .collect()
    };
    let mut servers = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let config = MetadataConfig {
            node_id: i as u64 + 1,
            listen_addr: ([127, 0, 0, 1], *port).into(),
            data_dir: dir.join(format!("meta-{}", i + 1)),
            peers: peers.clone(),
            // Registered gateways stay live for the whole run without heartbeats.
            lease_ms: 3_600_000,
            ..MetadataConfig::default()
        };
        servers.push(MetadataServer::start(config, shutdown.clone()).await?);
    }
    Ok(servers)
}

async fn wait_until_assigned(
    client: &MetadataClient,
    topics: u32,
    since: Instant,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let last = format!("bench-{:05}", topics - 1);
    loop {
        let request = ListPartitionsRequest {
            topic: last.clone(),
        };
        let partitions = client
            .send(request, |mut c, request| async move {
                c.list_partitions(request).await
            })
            .await?
            .partitions;
        if !partitions.is_empty() && partitions.iter().all(|p| p.owner >= 0) {
            return Ok(since.elapsed());
        }
        if Instant::now() > deadline {
            bail!("partitions were not all assigned within two minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Builds a snapshot on the leader and returns its size in bytes.
async fn snapshot_size(servers: &[MetadataServer]) -> anyhow::Result<u64> {
    let leader = servers
        .iter()
        .find(|s| s.node().status().leader == Some(s.node().config().node_id))
        .context("the group has no leader")?;
    let raft = leader.node().raft();
    let applied = leader.node().status().last_applied;
    raft.trigger().snapshot().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(snapshot) = raft.get_snapshot().await? {
            let covers = snapshot.meta.last_log_id.map(|id| id.index).unwrap_or(0);
            if covers >= applied {
                return Ok(snapshot.snapshot.get_ref().len() as u64);
            }
        }
        if Instant::now() > deadline {
            bail!("no snapshot within a minute");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn dir_size(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
