//! The bookie process: opens its storage, serves gRPC, runs checkpoints,
//! garbage collection and auto-recovery, and keeps its registration with
//! metadata alive.

use crate::autorecovery::AutoRecovery;
use crate::config::BookieConfig;
use crate::service::BookieGrpc;
use crate::storage::gc::{GarbageCollector, SegmentFate};
use crate::storage::{free_bytes, maintenance, Storage, StorageError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use strata_metadata::cache::ClusterCache;
use strata_metadata::client::{ClientError, MetadataClient};
use strata_metadata::lease::{keep_registered, Registration};
use strata_proto::bookie::bookie_service_server::BookieServiceServer;
use strata_proto::metadata::segment_info::State;
use strata_proto::metadata::RegisterBookieRequest;
use strata_proto::serving;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Room for the fields around an entry in one gRPC message.
const MESSAGE_OVERHEAD_BYTES: u64 = 64 * 1024;

/// Errors that stop a bookie from starting.
#[derive(Debug, thiserror::Error)]
pub enum BookieError {
    /// The data directory could not be created.
    #[error("cannot create bookie data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The storage (journal, entry logs, index) could not be opened.
    #[error("cannot open bookie storage: {0}")]
    Storage(#[from] StorageError),
    /// The gRPC listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The metadata client could not be built.
    #[error(transparent)]
    Metadata(#[from] ClientError),
}

/// A running bookie; its tasks stop when the shutdown token is cancelled.
pub struct Bookie {
    grpc_addr: SocketAddr,
    storage: Arc<Storage>,
    tasks: TaskTracker,
}

impl Bookie {
    /// Opens storage (replaying its journal), binds the gRPC listener and
    /// starts every task of the bookie.
    pub async fn start(
        config: BookieConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, BookieError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| BookieError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let storage = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || Storage::open(&config))
                .await
                .map_err(|e| StorageError::Failed(format!("storage open panicked: {e}")))??
        };
        let storage = Arc::new(storage);
        let bind_error = |source| BookieError::Bind {
            addr: config.listen_addr,
            source,
        };
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .map_err(bind_error)?;
        let grpc_addr = listener.local_addr().map_err(bind_error)?;
        let client = MetadataClient::connect_lazy(&config.metadata_addrs)?;
        let tasks = TaskTracker::new();
        let cache = ClusterCache::new();
        tasks.spawn(cache.clone().run(client.clone(), shutdown.clone()));

        let service = BookieServiceServer::new(BookieGrpc::new(
            Arc::clone(&storage),
            tasks.clone(),
            shutdown.clone(),
        ))
        .max_decoding_message_size(message_limit(config.max_entry_bytes))
        .max_encoding_message_size(message_limit(
            config.max_read_bytes.max(config.max_entry_bytes),
        ));
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = serving::serve_until_deadline(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned()),
            shutdown.clone().cancelled_owned(),
            serving::SHUTDOWN_GRACE,
        );
        let node_id = config.node_id;
        let closing = Arc::clone(&storage);
        tasks.spawn(async move {
            if let Err(error) = server.await {
                tracing::error!(node_id, %error, "bookie gRPC server failed");
            }
            // No more requests: let the queued changes land and checkpoint.
            match tokio::task::spawn_blocking(move || closing.close()).await {
                Ok(Ok(())) => tracing::info!(node_id, "bookie storage closed"),
                Ok(Err(error)) => tracing::error!(node_id, %error, "bookie storage close failed"),
                Err(error) => tracing::error!(node_id, %error, "bookie storage close panicked"),
            }
        });

        let millis = Duration::from_millis;
        tasks.spawn(maintenance::run_checkpoints(
            Arc::clone(&storage),
            millis(config.checkpoint_interval_ms),
            shutdown.clone(),
        ));
        tasks.spawn(maintenance::watch_free_space(
            Arc::clone(&storage),
            millis(config.disk_check_interval_ms),
            shutdown.clone(),
        ));
        let gc_cache = cache.clone();
        tasks.spawn(maintenance::run_gc(
            Arc::clone(&storage),
            GarbageCollector::new(&config),
            move |segment_id| segment_fate(&gc_cache, node_id, segment_id),
            millis(config.gc_interval_ms),
            shutdown.clone(),
        ));
        if config.auto_recovery {
            let recovery = AutoRecovery::new(&config, client.clone(), cache.clone());
            tasks.spawn(recovery.run(shutdown.clone()));
        }

        let data_dir = config.data_dir.clone();
        let registration = RegisterBookieRequest {
            node_id: config.node_id,
            grpc_addr: config
                .advertised_addr
                .clone()
                .unwrap_or_else(|| grpc_addr.to_string()),
            zone: config.zone.clone(),
            free_bytes: 0,
        };
        let probe = Box::new(move || free_bytes(&data_dir));
        let registered = keep_registered(
            client,
            Registration::Bookie(registration, probe),
            shutdown.clone(),
        );
        // A bookie has no lease to give up: stop at once, even while a
        // registration with unreachable metadata is still retrying.
        tasks.spawn(async move {
            tokio::select! {
                _ = registered => {}
                _ = shutdown.cancelled() => {}
            }
        });
        tasks.close();
        tracing::info!(node_id, %grpc_addr, "bookie serving");
        Ok(Self {
            grpc_addr,
            storage,
            tasks,
        })
    }

    /// The address the gRPC server is bound to.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bookie's storage engine (for its counters, and for tests).
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// Waits until every task of the bookie has stopped (after shutdown) and
    /// its storage is closed.
    pub async fn wait(self) {
        self.tasks.wait().await;
    }
}

/// Largest gRPC message for payloads of up to `bytes`.
fn message_limit(bytes: u64) -> usize {
    usize::try_from(bytes.saturating_add(MESSAGE_OVERHEAD_BYTES)).unwrap_or(usize::MAX)
}

/// What the metadata cache says of a segment: nothing is condemned before
/// the cache holds a snapshot, nor when metadata does not know the segment.
fn segment_fate(cache: &ClusterCache, node_id: i32, segment_id: u64) -> SegmentFate {
    cache.read(|state| {
        if state.cluster_id.is_empty() {
            return SegmentFate::Keep;
        }
        let Some(segment) = state.segment(segment_id) else {
            return SegmentFate::Keep;
        };
        match &segment.state {
            Some(State::Deleted(_)) => SegmentFate::Deleted,
            Some(State::Offloaded(_)) => SegmentFate::Offloaded,
            // Only a bookie metadata recorded as replaced: a copy that
            // auto-recovery is still writing is on a bookie that never was.
            _ if segment.replaced_bookies.contains(&node_id)
                && !segment.ensemble.contains(&node_id) =>
            {
                SegmentFate::Replaced
            }
            _ => SegmentFate::Keep,
        }
    })
}
