//! `strata admin gateways list|drain`: the gateways with what each owns, and
//! draining one (its partitions and coordinator slots move to the others,
//! then it stops).

use anyhow::{bail, Context};
use clap::Subcommand;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use strata_metadata::cache::{CachedState, ClusterCache};
use strata_metadata::client::MetadataClient;
use strata_proto::metadata::DrainGatewayRequest;
use tokio_util::sync::CancellationToken;

/// Gateway operations.
#[derive(Debug, Subcommand)]
pub enum GatewaysCommand {
    /// List gateways: liveness, draining, address, partitions and coordinator slots owned.
    List,
    /// Drain a gateway: hand its partitions and coordinator slots to the other
    /// gateways, then it stops. Waits until it has.
    Drain {
        /// The gateway's node id.
        node_id: i32,
        /// How long to wait for the gateway to hand everything over and stop.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
}

/// What one gateway owns.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Owned {
    partitions: usize,
    slots: usize,
}

fn owned(state: &CachedState) -> BTreeMap<i32, Owned> {
    let mut owned: BTreeMap<i32, Owned> = BTreeMap::new();
    for p in state.partitions.values() {
        owned.entry(p.owner).or_default().partitions += 1;
    }
    for s in state.slots.values() {
        owned.entry(s.owner).or_default().slots += 1;
    }
    owned
}

/// Runs one gateways operation.
pub async fn run(command: GatewaysCommand, client: &MetadataClient) -> anyhow::Result<()> {
    let cache = ClusterCache::new();
    let stop = CancellationToken::new();
    let follower = tokio::spawn(cache.clone().run(client.clone(), stop.clone()));
    let result = operate(command, client, &cache).await;
    stop.cancel();
    let _ = follower.await;
    result
}

async fn operate(
    command: GatewaysCommand,
    client: &MetadataClient,
    cache: &ClusterCache,
) -> anyhow::Result<()> {
    let loaded = cache
        .wait_for(Duration::from_secs(5), |state| state.revision > 0)
        .await;
    if !loaded {
        bail!(
            "cannot read the cluster state from metadata at {}",
            client.addrs().join(",")
        );
    }
    match command {
        GatewaysCommand::List => {
            let now_ms = strata_metadata::now_ms();
            cache.read(|state| {
                let owned = owned(state);
                println!(
                    "{:>6}  {:<9} {:<22} {:>10} {:>6}",
                    "ID", "STATE", "KAFKA", "PARTITIONS", "SLOTS"
                );
                for g in state.gateways.values() {
                    let status = match (g.lease_expires_ms > now_ms, g.draining) {
                        (false, _) => "down",
                        (true, true) => "draining",
                        (true, false) => "live",
                    };
                    let mine = owned.get(&g.node_id).copied().unwrap_or_default();
                    println!(
                        "{:>6}  {:<9} {:<22} {:>10} {:>6}",
                        g.node_id,
                        status,
                        format!("{}:{}", g.kafka_host, g.kafka_port),
                        mine.partitions,
                        mine.slots
                    );
                }
            });
            Ok(())
        }
        GatewaysCommand::Drain {
            node_id,
            timeout_secs,
        } => {
            let request = DrainGatewayRequest { node_id };
            let response = client
                .call(|mut metadata| async move { metadata.drain_gateway(request).await })
                .await
                .context("cannot reach metadata")?;
            super::check(response.outcome)?;
            println!("draining gateway {node_id}");
            let started = Instant::now();
            let deadline = started + Duration::from_secs(timeout_secs);
            let mut last = None;
            loop {
                let now_ms = strata_metadata::now_ms();
                let (mine, live) = cache.read(|state| {
                    let mine = owned(state).get(&node_id).copied().unwrap_or_default();
                    let live = state
                        .gateways
                        .get(&node_id)
                        .is_some_and(|g| g.lease_expires_ms > now_ms);
                    (mine, live)
                });
                if last != Some(mine) {
                    println!(
                        "  gateway {node_id} owns {} partitions and {} coordinator slots",
                        mine.partitions, mine.slots
                    );
                    last = Some(mine);
                }
                if mine == Owned::default() && !live {
                    println!(
                        "gateway {node_id} handed everything over and stopped in {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!(
                        "gateway {node_id} still owns {} partitions and {} slots (live: {live}) after {timeout_secs} s",
                        mine.partitions,
                        mine.slots
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
