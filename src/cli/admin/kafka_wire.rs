//! A small Kafka wire client for `strata admin groups`: one TCP connection to
//! one gateway, typed requests encoded and responses decoded with the
//! `kafka-protocol` crate, one request at a time.

use anyhow::{anyhow, bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use kafka_protocol::ResponseError;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The client id every request carries.
const CLIENT_ID: &str = "strata-admin";
/// How long connecting to a gateway may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may wait for its response (ListGroups and OffsetFetch
/// ask the metadata service, so this is generous).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response accepted; anything longer is not a sane admin answer.
const MAX_RESPONSE_BYTES: usize = 100 * 1024 * 1024;

/// One connection to a Kafka listener.
pub struct KafkaConnection {
    addr: String,
    stream: TcpStream,
    next_correlation_id: i32,
}

impl KafkaConnection {
    /// Connects to the Kafka listener at `addr` (`host:port`).
    pub async fn connect(addr: &str) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                anyhow!("cannot reach gateway {addr}: no answer within {CONNECT_TIMEOUT:?}")
            })?
            .with_context(|| format!("cannot reach gateway {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            addr: addr.to_string(),
            stream,
            next_correlation_id: 1,
        })
    }

    /// The address this connection was opened to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `request` as version `version` and returns its decoded response.
    pub async fn call<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> anyhow::Result<R::Response> {
        let api = ApiKey::try_from(R::KEY).map_err(|_| anyhow!("unknown API key {}", R::KEY))?;
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        let mut frame = BytesMut::new();
        // The length prefix, filled in once the frame is encoded.
        frame.put_i32(0);
        header.encode(&mut frame, api.request_header_version(version))?;
        request
            .encode(&mut frame, version)
            .with_context(|| format!("encoding {api:?} v{version}"))?;
        let length = i32::try_from(frame.len() - 4).context("request too large")?;
        frame[..4].copy_from_slice(&length.to_be_bytes());

        let addr = self.addr.clone();
        let mut body = tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(&frame))
            .await
            .map_err(|_| {
                anyhow!("gateway {addr} did not answer {api:?} within {REQUEST_TIMEOUT:?}")
            })?
            .with_context(|| format!("{api:?} request to gateway {addr} failed"))?;
        let header = ResponseHeader::decode(&mut body, api.response_header_version(version))
            .with_context(|| format!("decoding the {api:?} response header from {addr}"))?;
        if header.correlation_id != correlation_id {
            bail!(
                "gateway {addr} answered request {} instead of {correlation_id}",
                header.correlation_id
            );
        }
        R::Response::decode(&mut body, version)
            .with_context(|| format!("decoding the {api:?} v{version} response from {addr}"))
    }

    /// Writes one frame and reads the next one back.
    async fn exchange(&mut self, frame: &[u8]) -> anyhow::Result<Bytes> {
        self.stream.write_all(frame).await?;
        let length = self.stream.read_i32().await?;
        let length = usize::try_from(length)
            .ok()
            .filter(|&n| n <= MAX_RESPONSE_BYTES)
            .ok_or_else(|| anyhow!("response frame of {length} bytes"))?;
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok(Bytes::from(body))
    }
}

/// A Kafka error code as Kafka names it (`UNKNOWN_TOPIC_OR_PARTITION`), with
/// the number.
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE (0)".to_string(),
        Some(ResponseError::Unknown(code)) => format!("unknown error code {code}"),
        Some(error) => {
            let mut name = String::new();
            for (i, c) in error.to_string().chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    name.push('_');
                }
                name.push(c.to_ascii_uppercase());
            }
            format!("{name} ({code})")
        }
    }
}

/// Whether `code` says the group's coordinator moved or is still starting, so
/// that finding it again and retrying may succeed.
pub fn coordinator_moved(code: i16) -> bool {
    matches!(
        ResponseError::try_from_code(code),
        Some(
            ResponseError::NotCoordinator
                | ResponseError::CoordinatorNotAvailable
                | ResponseError::CoordinatorLoadInProgress
        )
    )
}

/// Whether `code` says a partition's leader is moving or not yet serving.
pub fn leader_moving(code: i16) -> bool {
    matches!(
        ResponseError::try_from_code(code),
        Some(
            ResponseError::NotLeaderOrFollower
                | ResponseError::LeaderNotAvailable
                | ResponseError::UnknownLeaderEpoch
                | ResponseError::FencedLeaderEpoch
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_are_kafka_s() {
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION (3)");
        assert_eq!(error_name(16), "NOT_COORDINATOR (16)");
        assert_eq!(error_name(25), "UNKNOWN_MEMBER_ID (25)");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR (-1)");
        assert_eq!(error_name(9999), "unknown error code 9999");
    }
}
