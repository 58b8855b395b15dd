//! `strata dev`: a whole cluster in one process on local disk.

use super::{settings, shutdown};
use clap::Args;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use strata_bookie::{Bookie, BookieConfig};
use strata_gateway::offload::store::ObjectStoreKind;
use strata_gateway::{Gateway, GatewayConfig};
use strata_metadata::{MetadataConfig, MetadataServer};
use tokio_util::sync::CancellationToken;

/// How many bookies `strata dev` runs: enough for the default 3/3/2 quorums.
const DEV_BOOKIES: i32 = 3;

/// Flags of `strata dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory for all of the cluster's data; a restart on it resumes the cluster.
    #[arg(long, env = "STRATA_DEV_DATA_DIR", default_value = "./strata-data")]
    pub data_dir: PathBuf,
    /// Address of the Kafka listener.
    #[arg(long, env = "STRATA_DEV_KAFKA_ADDR", default_value = "127.0.0.1:9092")]
    pub kafka_addr: SocketAddr,
    /// First loopback port of the internal gRPC services: metadata on it, the
    /// bookies on the next three. 0 picks free ports.
    #[arg(long, env = "STRATA_DEV_GRPC_BASE_PORT", default_value_t = 7600)]
    pub grpc_base_port: u16,
    /// TOML file of gateway settings (as for `strata gateway --config`); the
    /// dev cluster still chooses the node id, addresses and data locations.
    #[arg(long, env = "STRATA_DEV_GATEWAY_CONFIG")]
    pub gateway_config: Option<PathBuf>,
    /// TOML file of settings for the three bookies (as for `strata bookie
    /// --config`); the dev cluster still chooses ids, addresses and data dirs.
    #[arg(long, env = "STRATA_DEV_BOOKIE_CONFIG")]
    pub bookie_config: Option<PathBuf>,
}

/// The loopback address of the `offset`-th internal service.
fn grpc_addr(base_port: u16, offset: u16) -> SocketAddr {
    let port = if base_port == 0 {
        0
    } else {
        base_port + offset
    };
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Runs the dev cluster until Ctrl-C or SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let signal = shutdown::on_signal();
    // The gateway stops first, while metadata and bookies still serve it (it
    // gives up its lease and its writers close cleanly); then the rest.
    let gateway_stop = CancellationToken::new();
    let storage_stop = CancellationToken::new();
    std::fs::create_dir_all(&args.data_dir)?;

    let metadata = MetadataServer::start(
        MetadataConfig {
            listen_addr: grpc_addr(args.grpc_base_port, 0),
            data_dir: args.data_dir.join("metadata"),
            ..MetadataConfig::default()
        },
        storage_stop.clone(),
    )
    .await?;
    let metadata_addrs = vec![metadata.grpc_addr().to_string()];

    let bookie_settings: BookieConfig = settings::load(args.bookie_config.as_deref())?;
    let mut gateway_settings: GatewayConfig = settings::load(args.gateway_config.as_deref())?;
    let store = &mut gateway_settings.object_store;
    if store.kind == ObjectStoreKind::Local && store.local_path.as_os_str().is_empty() {
        store.local_path = args.data_dir.join("objects");
    }
    let mut bookies = Vec::new();
    for node_id in 1..=DEV_BOOKIES {
        let bookie = Bookie::start(
            BookieConfig {
                node_id,
                listen_addr: grpc_addr(args.grpc_base_port, node_id as u16),
                data_dir: args.data_dir.join(format!("bookie-{node_id}")),
                metadata_addrs: metadata_addrs.clone(),
                ..bookie_settings.clone()
            },
            storage_stop.clone(),
        )
        .await?;
        bookies.push(bookie);
    }

    // The gateway opens segments on the bookies metadata knows: wait until
    // every bookie has registered its current address (after a restart on
    // fresh ports, metadata still holds the old ones until then).
    wait_for_bookies(&metadata, &bookies).await;

    let gateway = Gateway::start(
        GatewayConfig {
            node_id: 1,
            kafka_listen_addr: args.kafka_addr,
            metadata_addrs: metadata_addrs.clone(),
            ..gateway_settings
        },
        gateway_stop.clone(),
    )
    .await?;

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "strata dev cluster is up (data in {})",
        args.data_dir.display()
    )?;
    writeln!(out, "metadata  grpc://{}", metadata.grpc_addr())?;
    for (i, bookie) in bookies.iter().enumerate() {
        writeln!(out, "bookie-{}  grpc://{}", i + 1, bookie.grpc_addr())?;
    }
    writeln!(out, "kafka     {}", gateway.kafka_addr())?;
    writeln!(out, "press Ctrl-C to stop")?;
    out.flush()?;
    drop(out);

    signal.cancelled().await;
    gateway_stop.cancel();
    gateway.wait().await;
    storage_stop.cancel();
    for bookie in bookies {
        bookie.wait().await;
    }
    metadata.wait().await;
    println!("strata dev cluster stopped");
    Ok(())
}

/// Waits (bounded) until metadata lists every bookie at the address it now serves on.
async fn wait_for_bookies(metadata: &MetadataServer, bookies: &[Bookie]) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let registered = {
            let applied = metadata.node().read().await;
            bookies.iter().zip(1..).all(|(bookie, node_id)| {
                applied
                    .state
                    .bookies
                    .get(&node_id)
                    .is_some_and(|b| b.grpc_addr == bookie.grpc_addr().to_string())
            })
        };
        if registered || tokio::time::Instant::now() >= deadline {
            if !registered {
                tracing::warn!("not every bookie registered in time; starting the gateway anyway");
            }
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
