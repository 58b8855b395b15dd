//! The client that gateways, bookies and the CLI use to reach the metadata service.
//!
//! It is given every metadata node's address and connects lazily, so roles may
//! start in any order. Any node serves any call (followers forward writes to the
//! raft leader), so finding the leader is the nodes' job; the client's job is to
//! find a node that answers: a call that finds its node unreachable moves on to
//! the next address and retries, with backoff, until its retry budget is spent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata_proto::admin::admin_service_client::AdminServiceClient;
use strata_proto::metadata::metadata_service_client::MetadataServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Errors of the metadata client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configured address is not a valid endpoint.
    #[error("invalid metadata address {addr:?}: {source}")]
    BadAddress {
        /// The address as configured.
        addr: String,
        /// Why it is invalid.
        source: tonic::transport::Error,
    },
    /// No metadata address was configured.
    #[error("no metadata address configured")]
    NoAddress,
    /// The metadata service answered with an error, or stayed unreachable past the deadline.
    #[error("metadata call failed: {0}")]
    Call(#[from] Status),
}

/// A handle on the metadata service; cheap to clone.
#[derive(Clone)]
pub struct MetadataClient {
    channels: Arc<Vec<Channel>>,
    /// Index of the node calls go to first: the last one that answered.
    preferred: Arc<AtomicUsize>,
    addrs: Vec<String>,
    /// How long a call keeps retrying while the service is unreachable.
    retry_for: Duration,
}

impl MetadataClient {
    /// A client of the metadata nodes at `addrs` (`host:port`), connecting on first use.
    pub fn connect_lazy(addrs: &[String]) -> Result<Self, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::NoAddress);
        }
        let channels = addrs
            .iter()
            .map(|addr| lazy_channel(addr))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            channels: Arc::new(channels),
            preferred: Arc::new(AtomicUsize::new(0)),
            addrs: addrs.to_vec(),
            retry_for: Duration::from_secs(10),
        })
    }

    /// The same client with a different retry budget for unreachable service.
    pub fn with_retry_for(mut self, retry_for: Duration) -> Self {
        self.retry_for = retry_for;
        self
    }

    /// The metadata addresses this client was given.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    fn channel(&self) -> Channel {
        let index = self.preferred.load(Ordering::Relaxed) % self.channels.len();
        self.channels[index].clone()
    }

    /// Moves calls on to the next metadata node, after the current one failed.
    pub fn next_node(&self) {
        let current = self.preferred.load(Ordering::Relaxed);
        // Only the first caller to see a failure moves the index on.
        let _ = self.preferred.compare_exchange(
            current,
            (current + 1) % self.channels.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The raw metadata service stub of the preferred node, for streaming calls such as `Watch`.
    pub fn metadata(&self) -> MetadataServiceClient<Channel> {
        MetadataServiceClient::new(self.channel())
    }

    /// The raw admin service stub of the preferred node.
    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel())
    }

    /// Runs `call` against the metadata service, moving to another node and
    /// retrying with backoff while the service is unreachable, up to the
    /// client's retry budget.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(MetadataServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.retrying(|client| call(client.metadata())).await
    }

    /// Like [`Self::call`], for the admin service.
    pub async fn admin_call<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(AdminServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.retrying(|client| call(client.admin())).await
    }

    /// Like [`Self::call`] for an RPC of one `request`, which each attempt
    /// gets a copy of: `client.send(request, |mut c, r| async move { c.list_topics(r).await })`.
    pub async fn send<R, T, F, Fut>(&self, request: R, mut rpc: F) -> Result<T, ClientError>
    where
        R: Clone,
        F: FnMut(MetadataServiceClient<Channel>, R) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call(|client| rpc(client, request.clone())).await
    }

    /// Like [`Self::send`], for the admin service.
    pub async fn admin_send<R, T, F, Fut>(&self, request: R, mut rpc: F) -> Result<T, ClientError>
    where
        R: Clone,
        F: FnMut(AdminServiceClient<Channel>, R) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.admin_call(|client| rpc(client, request.clone())).await
    }

    async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(&Self) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.retry_for;
        let mut backoff = Duration::from_millis(20);
        loop {
            match call(self).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status)
                    if is_retryable(&status)
                        && tokio::time::Instant::now() + backoff < deadline =>
                {
                    tracing::debug!(%status, "metadata node unavailable; trying another");
                    self.next_node();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(status) => return Err(status.into()),
            }
        }
    }
}

fn lazy_channel(addr: &str) -> Result<Channel, ClientError> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|source| ClientError::BadAddress {
        addr: addr.to_string(),
        source,
    })?;
    Ok(endpoint
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Whether a failed call may succeed if tried again: the node was unreachable
/// or the group had no leader.
pub fn is_retryable(status: &Status) -> bool {
    status.code() == Code::Unavailable
}
