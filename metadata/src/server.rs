//! The metadata process: opens the node and serves it over gRPC.

use crate::config::MetadataConfig;
use crate::node::{MetadataNode, NodeError};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a single-node group is given to elect itself and name the cluster.
const CLUSTER_ID_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Errors that stop a metadata node from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The node could not open its state.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The gRPC listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running metadata node; its tasks stop when the shutdown token is cancelled.
pub struct MetadataServer {
    grpc_addr: SocketAddr,
    node: Arc<MetadataNode>,
    tasks: TaskTracker,
}

impl MetadataServer {
    /// Opens the node's state, binds the gRPC listener and starts serving.
    pub async fn start(
        config: MetadataConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, ServerError> {
        let listen_addr = config.listen_addr;
        let bind_error = |source| ServerError::Bind {
            addr: listen_addr,
            source,
        };
        let listener = TcpListener::bind(listen_addr).await.map_err(bind_error)?;
        let grpc_addr = listener.local_addr().map_err(bind_error)?;
        let advertised_addr = config
            .advertised_addr
            .clone()
            .unwrap_or_else(|| grpc_addr.to_string());
        let single = config.peers.is_empty() && !config.join;
        let node = MetadataNode::open(config, advertised_addr).await?;
        let tasks = TaskTracker::new();
        let serving = crate::service::serve(node.clone(), listener, shutdown.clone());
        let served = node.clone();
        tasks.spawn(async move {
            if let Err(error) = serving.await {
                tracing::error!(%error, "metadata gRPC server failed");
            }
            served.shutdown().await;
        });
        tasks.spawn(node.clone().run_controller(shutdown));
        tasks.close();
        tracing::info!(%grpc_addr, node_id = node.config().node_id, "metadata node serving");
        // A group of one elects itself at once: wait for it, so that gateways
        // and bookies registering next are told the cluster id.
        if single && !node.wait_for_cluster_id(CLUSTER_ID_WAIT).await {
            tracing::warn!("metadata node has no cluster id yet");
        }
        Ok(Self {
            grpc_addr,
            node,
            tasks,
        })
    }

    /// The address the gRPC server is bound to.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The node being served.
    pub fn node(&self) -> &Arc<MetadataNode> {
        &self.node
    }

    /// Waits until the server has stopped (after shutdown).
    pub async fn wait(self) {
        self.tasks.wait().await;
    }
}
