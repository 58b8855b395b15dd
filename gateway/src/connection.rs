//! One Kafka client connection: length-prefixed framing, in-order responses,
//! and closing the connection on a frame that is too long or does not decode.

use crate::handlers::{self, Gatekeeper};
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

/// Serves requests from one client until it disconnects, sends bad bytes, or
/// the gateway shuts down.
pub async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    gatekeeper: Arc<Gatekeeper>,
    shutdown: CancellationToken,
) {
    // Kafka frames are a 4-byte big-endian size followed by the request.
    let codec = LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(gatekeeper.config().max_frame_bytes)
        .new_codec();
    let mut framed = Framed::new(stream, codec);
    loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => return,
            frame = framed.next() => frame,
        };
        let frame = match frame {
            None => return,
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                tracing::warn!(%peer, %error, "closing connection: bad frame");
                return;
            }
        };
        match handlers::handle(&gatekeeper, frame.freeze()).await {
            Ok(Some(response)) => {
                if let Err(error) = framed.send(response.freeze()).await {
                    tracing::debug!(%peer, %error, "client went away");
                    return;
                }
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%peer, %error, "closing connection: bad request");
                return;
            }
        }
    }
}
