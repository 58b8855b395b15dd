//! Configuration of the ledger client, embedded in the gateway's config.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Tuning of the ledger client: memory bounds and timeouts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerOptions {
    /// Bytes one writer may hold in flight: entries sent but not yet acked (or
    /// given up on) by every live bookie of their write set. `add` waits while
    /// the window is full, so a slow bookie slows the writer rather than growing
    /// memory. An entry larger than the window is let through alone.
    pub max_in_flight_bytes: u64,
    /// How long a bookie may leave an add unacknowledged before the writer
    /// drops it from the ensemble (as if its stream had failed).
    pub add_timeout_ms: u64,
    /// Timeout of connecting to a bookie.
    pub connect_timeout_ms: u64,
    /// Timeout of one unary call (read, fence, seal, LAC) and of one recovery add.
    pub request_timeout_ms: u64,
    /// Largest gRPC message the client sends or accepts; must be at least the
    /// largest entry plus a little framing, and at least a read's `max_bytes`.
    pub max_message_bytes: usize,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        Self {
            max_in_flight_bytes: 64 * 1024 * 1024,
            add_timeout_ms: 10_000,
            connect_timeout_ms: 1_000,
            request_timeout_ms: 10_000,
            max_message_bytes: 64 * 1024 * 1024,
        }
    }
}

impl LedgerOptions {
    /// [`Self::add_timeout_ms`] as a duration.
    pub fn add_timeout(&self) -> Duration {
        Duration::from_millis(self.add_timeout_ms)
    }

    /// [`Self::connect_timeout_ms`] as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// [`Self::request_timeout_ms`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}
