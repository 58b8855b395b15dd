//! The bookie process: opens its storage, serves gRPC, and keeps its
//! registration with metadata alive.

use crate::config::BookieConfig;
use crate::index::{BookieIndex, IndexError};
use crate::service::BookieGrpc;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use strata_metadata::client::{ClientError, MetadataClient};
use strata_metadata::lease::{keep_registered, Registration};
use strata_proto::bookie::bookie_service_server::BookieServiceServer;
use strata_proto::metadata::RegisterBookieRequest;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    /// The index could not be opened.
    #[error("cannot open bookie index: {0}")]
    Index(#[from] IndexError),
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
    tasks: TaskTracker,
}

impl Bookie {
    /// Opens storage, binds the gRPC listener and starts every task of the bookie.
    pub async fn start(
        config: BookieConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, BookieError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| BookieError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let index = Arc::new(BookieIndex::open(&config.data_dir.join("index"))?);
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

        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tonic::transport::Server::builder()
            .add_service(BookieServiceServer::new(BookieGrpc::new(index)))
            .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
        let node_id = config.node_id;
        tasks.spawn(async move {
            if let Err(error) = server.await {
                tracing::error!(node_id, %error, "bookie gRPC server failed");
            }
        });

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
        tasks.spawn(keep_registered(
            client,
            Registration::Bookie(registration, probe),
            shutdown,
        ));
        tasks.close();
        tracing::info!(node_id, %grpc_addr, "bookie serving");
        Ok(Self { grpc_addr, tasks })
    }

    /// The address the gRPC server is bound to.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Waits until every task of the bookie has stopped (after shutdown).
    pub async fn wait(self) {
        self.tasks.wait().await;
    }
}

/// Bytes available to this bookie on the filesystem of `dir`; 0 if unknown.
fn free_bytes(dir: &std::path::Path) -> u64 {
    rustix::fs::statvfs(dir)
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
        .unwrap_or(0)
}
