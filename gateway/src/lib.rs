//! The Kafka protocol gateway: a stateless broker that speaks the Kafka wire protocol.
//!
//! This crate owns the Kafka listener (accept loop and framing), the request
//! handlers (one module per Kafka API family), the gateway's registration and
//! lease heartbeat with the metadata service, and (as they land) partition
//! ownership, the sequencer, the fetch path, the group coordinator and the
//! offloader. Handlers never touch storage directly; they read cluster state from
//! the watch-fed [`strata_metadata::cache::ClusterCache`].

pub mod config;
pub mod connection;
pub mod coordinator;
pub mod handlers;
pub mod log;
pub mod offload;
pub mod partition;
pub mod server;

pub use config::GatewayConfig;
pub use server::Gateway;
