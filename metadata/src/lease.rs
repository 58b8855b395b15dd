//! Keeps a gateway or bookie registered with the metadata service and its lease renewed.

use crate::client::{ClientError, MetadataClient};
use std::time::Duration;
use strata_proto::metadata::{
    BookieHeartbeatRequest, DeregisterGatewayRequest, GatewayHeartbeatRequest, Outcome,
    RegisterBookieRequest, RegisterGatewayRequest,
};
use tokio_util::sync::CancellationToken;

/// How long to wait before trying a failed registration again.
const REGISTER_RETRY: Duration = Duration::from_millis(200);
/// Shortest heartbeat interval honoured, whatever metadata asks for.
const MIN_HEARTBEAT: Duration = Duration::from_millis(50);

/// Reports the free bytes of a bookie's disks at each heartbeat.
pub type FreeSpaceProbe = Box<dyn Fn() -> u64 + Send + Sync>;

/// Who is holding the lease.
pub enum Registration {
    /// A gateway, with what it advertises.
    Gateway(RegisterGatewayRequest),
    /// A bookie, with what it advertises and how to measure its free space.
    Bookie(RegisterBookieRequest, FreeSpaceProbe),
}

impl Registration {
    fn node(&self) -> (&'static str, i32) {
        match self {
            Registration::Gateway(req) => ("gateway", req.node_id),
            Registration::Bookie(req, _) => ("bookie", req.node_id),
        }
    }

    /// Registers; returns the outcome and the heartbeat interval metadata asked for.
    async fn register(&self, client: &MetadataClient) -> Result<(Outcome, u64), ClientError> {
        match self {
            Registration::Gateway(req) => {
                let reply = client
                    .call(|mut c| {
                        let req = req.clone();
                        async move { c.register_gateway(req).await }
                    })
                    .await?;
                Ok((
                    reply.outcome.unwrap_or_default(),
                    reply.heartbeat_interval_ms,
                ))
            }
            Registration::Bookie(req, probe) => {
                let req = RegisterBookieRequest {
                    free_bytes: probe(),
                    ..req.clone()
                };
                let reply = client
                    .call(|mut c| {
                        let req = req.clone();
                        async move { c.register_bookie(req).await }
                    })
                    .await?;
                Ok((
                    reply.outcome.unwrap_or_default(),
                    reply.heartbeat_interval_ms,
                ))
            }
        }
    }

    async fn heartbeat(&self, client: &MetadataClient) -> Result<Outcome, ClientError> {
        let reply = match self {
            Registration::Gateway(req) => {
                let req = GatewayHeartbeatRequest {
                    node_id: req.node_id,
                };
                client
                    .call(|mut c| async move { c.gateway_heartbeat(req).await })
                    .await?
            }
            Registration::Bookie(req, probe) => {
                let req = BookieHeartbeatRequest {
                    node_id: req.node_id,
                    free_bytes: probe(),
                };
                client
                    .call(|mut c| async move { c.bookie_heartbeat(req).await })
                    .await?
            }
        };
        Ok(reply.outcome.unwrap_or_default())
    }
}

/// How long a stopping gateway spends telling metadata it is leaving.
const DEREGISTER_BUDGET: Duration = Duration::from_secs(1);

/// Registers, then heartbeats at the interval metadata asks for, registering
/// again whenever metadata no longer knows the node, until `shutdown`; a
/// gateway then gives up its lease so its partitions move at once.
pub async fn keep_registered(
    client: MetadataClient,
    registration: Registration,
    shutdown: CancellationToken,
) {
    heartbeat_until_shutdown(&client, &registration, &shutdown).await;
    if let Registration::Gateway(req) = &registration {
        deregister_gateway(&client, req.node_id).await;
    }
}

/// Best effort, bounded: if metadata is unreachable the lease lapses instead.
async fn deregister_gateway(client: &MetadataClient, node_id: i32) {
    let client = client.clone().with_retry_for(DEREGISTER_BUDGET / 2);
    let request = DeregisterGatewayRequest { node_id };
    let call = client.call(|mut c| async move { c.deregister_gateway(request).await });
    match tokio::time::timeout(DEREGISTER_BUDGET, call).await {
        Ok(Ok(reply)) if reply.outcome.as_ref().is_some_and(|o| o.is_ok()) => {
            tracing::info!(node_id, "gave up the gateway lease");
        }
        Ok(Ok(reply)) => {
            tracing::warn!(node_id, outcome = ?reply.outcome, "metadata refused to deregister")
        }
        Ok(Err(error)) => {
            tracing::info!(node_id, %error, "could not deregister; the lease will lapse")
        }
        Err(_) => tracing::info!(node_id, "deregistering timed out; the lease will lapse"),
    }
}

async fn heartbeat_until_shutdown(
    client: &MetadataClient,
    registration: &Registration,
    shutdown: &CancellationToken,
) {
    let (kind, node_id) = registration.node();
    'register: loop {
        let interval = match registration.register(client).await {
            Ok((outcome, interval_ms)) if outcome.is_ok() => {
                tracing::info!(kind, node_id, "registered with metadata");
                Duration::from_millis(interval_ms).max(MIN_HEARTBEAT)
            }
            Ok((outcome, _)) => {
                tracing::error!(kind, node_id, ?outcome, "metadata refused the registration");
                if sleep_or_stop(shutdown, REGISTER_RETRY).await {
                    return;
                }
                continue;
            }
            Err(error) => {
                tracing::warn!(kind, node_id, %error, "registration failed; retrying");
                if sleep_or_stop(shutdown, REGISTER_RETRY).await {
                    return;
                }
                continue;
            }
        };
        loop {
            if sleep_or_stop(shutdown, interval).await {
                return;
            }
            match registration.heartbeat(client).await {
                Ok(outcome) if outcome.is_ok() => {}
                Ok(outcome) => {
                    tracing::warn!(
                        kind,
                        node_id,
                        ?outcome,
                        "heartbeat refused; registering again"
                    );
                    continue 'register;
                }
                Err(error) => tracing::warn!(kind, node_id, %error, "heartbeat failed"),
            }
        }
    }
}

/// Sleeps for `duration`; returns true if the node is shutting down instead.
async fn sleep_or_stop(shutdown: &CancellationToken, duration: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(duration) => false,
    }
}
