//! The gateway process: binds the Kafka listener, follows cluster state, keeps
//! its registration alive, and accepts client connections.

use crate::config::GatewayConfig;
use crate::connection::{serve_connection, InflightLimits};
use crate::coordinator::GroupCoordinator;
use crate::handlers::Gatekeeper;
use crate::offload::maintenance::Maintenance;
use crate::offload::rate::RateLimiter;
use crate::offload::reader::TieredReader;
use crate::offload::store::{self, ObjectStoreKind, StoreError};
use crate::offload::upload::{UploadOptions, Uploader};
use crate::partition::Partitions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use strata_bookie::ledger::BookiePool;
use strata_metadata::cache::ClusterCache;
use strata_metadata::client::{ClientError, MetadataClient};
use strata_metadata::lease::{keep_registered, Registration};
use strata_proto::metadata::RegisterGatewayRequest;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where a gateway keeps segment objects when its local object store names
/// no directory: the `objects` directory of `strata dev`'s default data dir.
pub const DEFAULT_OBJECTS_DIR: &str = "strata-data/objects";

/// Errors that stop a gateway from starting.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The Kafka listener could not bind.
    #[error("cannot listen for Kafka clients on {addr}: {source}")]
    Bind {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The metadata client could not be built.
    #[error(transparent)]
    Metadata(#[from] ClientError),
    /// The object store could not be set up.
    #[error("object store: {0}")]
    ObjectStore(#[from] StoreError),
}

/// A running gateway; all its tasks stop when the shutdown token is cancelled.
pub struct Gateway {
    kafka_addr: SocketAddr,
    cache: ClusterCache,
    tasks: TaskTracker,
}

impl Gateway {
    /// Binds the Kafka listener and starts every task of the gateway.
    pub async fn start(
        config: GatewayConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, GatewayError> {
        let listener = TcpListener::bind(config.kafka_listen_addr)
            .await
            .map_err(|source| GatewayError::Bind {
                addr: config.kafka_listen_addr,
                source,
            })?;
        let kafka_addr = listener.local_addr().map_err(|source| GatewayError::Bind {
            addr: config.kafka_listen_addr,
            source,
        })?;
        let advertised_host = config
            .advertised_host
            .clone()
            .unwrap_or_else(|| kafka_addr.ip().to_string());
        let advertised_port = config.advertised_port.unwrap_or(kafka_addr.port());
        let client = MetadataClient::connect_lazy(&config.metadata_addrs)?;
        let cache = ClusterCache::new();
        let tasks = TaskTracker::new();

        tasks.spawn(cache.clone().run(client.clone(), shutdown.clone()));
        let registration = RegisterGatewayRequest {
            node_id: config.node_id,
            kafka_host: advertised_host.clone(),
            kafka_port: advertised_port as u32,
            zone: config.zone.clone(),
        };
        tasks.spawn(keep_registered(
            client.clone(),
            Registration::Gateway(registration),
            shutdown.clone(),
        ));

        let mut store_config = config.object_store.clone();
        if store_config.kind == ObjectStoreKind::Local
            && store_config.local_path.as_os_str().is_empty()
        {
            store_config.local_path = PathBuf::from(DEFAULT_OBJECTS_DIR);
        }
        let store = store::build(&store_config)?;
        let tiered = TieredReader::new(store.clone(), config.tiered_reads.clone());
        let partitions = Partitions::new(
            config.node_id,
            cache.clone(),
            client.clone(),
            BookiePool::new(config.ledger.clone()),
            config.log_options(),
            tiered.clone(),
        );
        tasks.spawn(partitions.clone().run(shutdown.clone()));
        let maintenance = Maintenance {
            partitions: partitions.clone(),
            store: store.clone(),
            uploader: Uploader::new(
                store,
                UploadOptions::from_config(&store_config),
                Arc::new(RateLimiter::new(store_config.upload_bytes_per_sec)),
            ),
            node_id: config.node_id,
            local_defaults: config.local_retention_defaults(),
            interval: Duration::from_millis(config.retention_check_interval_ms),
            concurrency: config.offload_concurrency,
        };
        {
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                maintenance.run(shutdown).await;
                tiered.shutdown().await;
            });
        }
        let (coordinator, offset_commits) = GroupCoordinator::new(
            config.node_id,
            cache.clone(),
            client.clone(),
            config.coordinator_options(),
            shutdown.clone(),
        );
        tasks.spawn(offset_commits);
        tasks.spawn(coordinator.clone().run(shutdown.clone()));
        let partitions_for_drain = partitions.clone();
        let node_id = config.node_id;
        let limits = InflightLimits::from_config(&config);
        let gatekeeper = Arc::new(Gatekeeper::new(
            config,
            advertised_host,
            advertised_port,
            cache.clone(),
            client,
            partitions,
            coordinator,
        ));
        tasks.spawn(stop_when_drained(
            node_id,
            cache.clone(),
            partitions_for_drain,
            shutdown.clone(),
        ));
        tasks.spawn(accept_loop(
            listener,
            gatekeeper,
            limits,
            tasks.clone(),
            shutdown.clone(),
        ));
        tasks.close();
        tracing::info!(%kafka_addr, "gateway listening for Kafka clients");
        Ok(Self {
            kafka_addr,
            cache,
            tasks,
        })
    }

    /// The address the Kafka listener is bound to.
    pub fn kafka_addr(&self) -> SocketAddr {
        self.kafka_addr
    }

    /// The gateway's watch-fed cluster cache.
    pub fn cache(&self) -> &ClusterCache {
        &self.cache
    }

    /// Waits until every task of the gateway has stopped (after shutdown).
    pub async fn wait(self) {
        self.tasks.wait().await;
    }
}

/// Stops the gateway once metadata marked it draining and it owns no
/// partition or coordinator slot any more (`strata admin gateways drain`).
async fn stop_when_drained(
    node_id: i32,
    cache: ClusterCache,
    partitions: Arc<Partitions>,
    shutdown: CancellationToken,
) {
    let mut changes = cache.subscribe();
    loop {
        let drained = cache.read(|state| {
            let draining = state.gateways.get(&node_id).is_some_and(|g| g.draining);
            let owns = state.partitions.values().any(|p| p.owner == node_id)
                || state.slots.values().any(|s| s.owner == node_id);
            draining && !owns
        });
        if drained && partitions.served().is_empty() {
            tracing::info!(
                node_id,
                "drained: every partition and coordinator slot moved away; stopping"
            );
            shutdown.cancel();
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            // Logs are dropped a moment after ownership moves; look again.
            _ = tokio::time::sleep(Duration::from_millis(200)), if drained => {}
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    gatekeeper: Arc<Gatekeeper>,
    limits: InflightLimits,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tracing::debug!(%peer, "client connected");
                tasks.spawn(serve_connection(
                    stream,
                    peer,
                    gatekeeper.clone(),
                    limits.clone(),
                    shutdown.clone(),
                ));
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
