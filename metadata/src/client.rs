//! The client that gateways, bookies and the CLI use to reach the metadata service.
//!
//! It connects lazily, so roles may start in any order, and retries calls that
//! failed because no metadata node was reachable.

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
    channel: Channel,
    addrs: Vec<String>,
    /// How long a call keeps retrying while the service is unreachable.
    retry_for: Duration,
}

impl MetadataClient {
    /// A client of the metadata nodes at `addrs` (`host:port`), connecting on first use.
    pub fn connect_lazy(addrs: &[String]) -> Result<Self, ClientError> {
        let first = addrs.first().ok_or(ClientError::NoAddress)?;
        let uri = if first.contains("://") {
            first.clone()
        } else {
            format!("http://{first}")
        };
        let endpoint = Endpoint::from_shared(uri).map_err(|source| ClientError::BadAddress {
            addr: first.clone(),
            source,
        })?;
        let channel = endpoint
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            channel,
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

    /// The raw metadata service stub, for streaming calls such as `Watch`.
    pub fn metadata(&self) -> MetadataServiceClient<Channel> {
        MetadataServiceClient::new(self.channel.clone())
    }

    /// The raw admin service stub.
    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }

    /// Runs `call` against the metadata service, retrying with backoff while the
    /// service is unreachable, up to the client's retry budget.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(MetadataServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.retry_for;
        let mut backoff = Duration::from_millis(20);
        loop {
            match call(self.metadata()).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status)
                    if is_retryable(&status)
                        && tokio::time::Instant::now() + backoff < deadline =>
                {
                    tracing::debug!(%status, "metadata unreachable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(status) => return Err(status.into()),
            }
        }
    }
}

/// Whether a failed call may succeed if tried again: the service was unreachable.
pub fn is_retryable(status: &Status) -> bool {
    status.code() == Code::Unavailable
}
