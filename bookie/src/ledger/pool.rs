//! One lazily connected gRPC channel per bookie, shared by every writer,
//! reader and recovery of a process: HTTP/2 multiplexes their streams, so a
//! gateway with thousands of open segments still holds one connection per bookie.

use super::error::LedgerError;
use super::options::LedgerOptions;
use super::spec::LedgerSpec;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use strata_proto::bookie::bookie_service_client::BookieServiceClient;
use strata_proto::bookie::BookieStatus;
use tonic::transport::{Channel, Endpoint};

/// The channels to bookies, by address; cheap to clone.
#[derive(Clone)]
pub struct BookiePool {
    // Bounded by the number of bookies the process ever talks to.
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    options: Arc<LedgerOptions>,
}

impl BookiePool {
    /// An empty pool; channels are created on first use and connect lazily.
    pub fn new(options: LedgerOptions) -> Self {
        Self {
            channels: Arc::new(Mutex::new(HashMap::new())),
            options: Arc::new(options),
        }
    }

    /// The options every user of the pool shares.
    pub fn options(&self) -> &LedgerOptions {
        &self.options
    }

    /// A client of each bookie of a segment's ensemble, in ensemble order.
    pub fn ensemble_clients(
        &self,
        spec: &LedgerSpec,
    ) -> Result<Vec<BookieServiceClient<Channel>>, LedgerError> {
        spec.ensemble()
            .iter()
            .map(|addr| self.client(addr))
            .collect()
    }

    /// A client of the bookie at `addr` (`host:port` or a URI), over the
    /// pool's channel to it; nothing is connected until the first call.
    pub fn client(&self, addr: &str) -> Result<BookieServiceClient<Channel>, LedgerError> {
        let channel = {
            let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
            match channels.get(addr) {
                Some(channel) => channel.clone(),
                None => {
                    let channel = self.lazy_channel(addr)?;
                    channels.insert(addr.to_string(), channel.clone());
                    channel
                }
            }
        };
        Ok(BookieServiceClient::new(channel)
            .max_decoding_message_size(self.options.max_message_bytes)
            .max_encoding_message_size(self.options.max_message_bytes))
    }

    fn lazy_channel(&self, addr: &str) -> Result<Channel, LedgerError> {
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(uri).map_err(|e| LedgerError::BadAddress {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
        Ok(endpoint
            .connect_timeout(self.options.connect_timeout())
            .tcp_nodelay(true)
            .connect_lazy())
    }
}

/// The bookie status carried in a response's `status` field; unknown values
/// (a newer bookie) read as `None`.
pub(crate) fn status_of(status: i32) -> Option<BookieStatus> {
    BookieStatus::try_from(status).ok()
}

/// A short description of a bookie's refusal, for error messages.
pub(crate) fn describe(status: i32, message: &str) -> String {
    let name = status_of(status)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|| format!("status {status}"));
    if message.is_empty() {
        name
    } else {
        format!("{name}: {message}")
    }
}
