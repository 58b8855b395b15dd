//! Kafka request dispatch: decodes the request header, routes each API to its
//! handler module, and encodes the response with the right header version.

mod api_versions;
mod configs;
mod delete_records;
mod fetch;
mod groups;
mod init_producer_id;
mod list_offsets;
mod metadata;
mod offsets;
mod produce;
mod topics;

use crate::config::GatewayConfig;
use crate::coordinator::GroupCoordinator;
use crate::partition::Partitions;
use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use std::net::SocketAddr;
use std::sync::Arc;
use strata_metadata::cache::ClusterCache;
use strata_metadata::client::MetadataClient;

/// The Kafka APIs this gateway implements, with the versions it accepts.
/// ApiVersions advertises exactly this table.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::DeleteRecords, 0, 2),
];

/// The versions of `api_key` this gateway accepts, if it implements it.
pub fn supported_versions(api_key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_APIS
        .iter()
        .find(|(key, _, _)| *key == api_key)
        .map(|(_, min, max)| (*min, *max))
}

/// What every handler may use: this gateway's identity, the cluster cache,
/// and the metadata client for the few requests that change cluster state.
pub struct Gatekeeper {
    config: GatewayConfig,
    advertised_host: String,
    advertised_port: u16,
    cache: ClusterCache,
    client: MetadataClient,
    partitions: Arc<Partitions>,
    coordinator: Arc<GroupCoordinator>,
}

impl Gatekeeper {
    /// Handler context for a gateway advertised at `advertised_host:advertised_port`.
    pub fn new(
        config: GatewayConfig,
        advertised_host: String,
        advertised_port: u16,
        cache: ClusterCache,
        client: MetadataClient,
        partitions: Arc<Partitions>,
        coordinator: Arc<GroupCoordinator>,
    ) -> Self {
        Self {
            config,
            advertised_host,
            advertised_port,
            cache,
            client,
            partitions,
            coordinator,
        }
    }

    /// The group coordinator.
    pub fn coordinator(&self) -> &GroupCoordinator {
        &self.coordinator
    }

    /// The partitions this gateway serves.
    pub fn partitions(&self) -> &Partitions {
        &self.partitions
    }

    /// The metadata client, for topic administration (never on produce or fetch).
    pub fn client(&self) -> &MetadataClient {
        &self.client
    }

    /// The gateway's configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The watch-fed cluster cache.
    pub fn cache(&self) -> &ClusterCache {
        &self.cache
    }
}

/// Why a request could not be answered; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The frame is shorter than a request header.
    #[error("frame of {0} bytes is too short for a request header")]
    Truncated(usize),
    /// The API key is not a Kafka API.
    #[error("unknown api key {0}")]
    UnknownApi(i16),
    /// The API or this version of it is not implemented.
    #[error("unsupported {api:?} version {version}")]
    Unsupported {
        /// The requested API.
        api: ApiKey,
        /// The requested version.
        version: i16,
    },
    /// The bytes do not decode as the request they claim to be.
    #[error("{api:?} v{version} does not decode: {reason}")]
    Malformed {
        /// The requested API.
        api: ApiKey,
        /// The requested version.
        version: i16,
        /// What the decoder said.
        reason: String,
    },
    /// The response could not be encoded (a bug, not the client's fault).
    #[error("encoding the {api:?} response failed: {reason}")]
    Encode {
        /// The API being answered.
        api: ApiKey,
        /// What the encoder said.
        reason: String,
    },
}

/// Who sent a request: group members are described with these.
pub struct Caller {
    /// The client id from the request header.
    pub client_id: String,
    /// The client's address, as Kafka shows it (`/ip`).
    pub host: String,
}

/// Dropped (or released) once a request that must keep its order among the
/// connection's requests (Produce) has placed its batches; the connection
/// starts the next such request then, without waiting for the answer.
pub struct SequencingDone(pub Option<tokio::sync::oneshot::Sender<()>>);

impl SequencingDone {
    /// Lets the connection's next ordered request start.
    pub fn release(self) {}
}

/// Answers one request frame. `Ok(None)` means the request wants no response.
pub async fn handle(
    gatekeeper: &Gatekeeper,
    peer: SocketAddr,
    mut frame: Bytes,
    sequenced: SequencingDone,
) -> Result<Option<BytesMut>, RequestError> {
    if frame.len() < 8 {
        return Err(RequestError::Truncated(frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(raw_key).map_err(|_| RequestError::UnknownApi(raw_key))?;
    let supported =
        supported_versions(api).is_some_and(|(min, max)| (min..=max).contains(&version));
    if !supported {
        // A client asking for a newer ApiVersions than ours is told which we have,
        // in the v0 format every client can read (KIP-511).
        if api == ApiKey::ApiVersions {
            let body = api_versions::unsupported_version();
            return encode(api, 0, correlation_id, &body).map(Some);
        }
        return Err(RequestError::Unsupported { api, version });
    }
    let malformed = |reason: String| RequestError::Malformed {
        api,
        version,
        reason,
    };
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(|e| malformed(e.to_string()))?;
    let caller = || Caller {
        client_id: header
            .client_id
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default(),
        host: format!("/{}", peer.ip()),
    };
    match api {
        ApiKey::ApiVersions => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = api_versions::handle(request);
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::Metadata => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = metadata::handle(gatekeeper, request, version).await;
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::Produce => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            match produce::handle(gatekeeper, request, sequenced).await {
                Some(body) => encode(api, version, header.correlation_id, &body).map(Some),
                None => Ok(None),
            }
        }
        ApiKey::Fetch => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = fetch::handle(gatekeeper, request).await;
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::ListOffsets => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = list_offsets::handle(gatekeeper, request).await;
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::CreateTopics => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = topics::create_topics(gatekeeper, request, version).await;
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::DeleteTopics => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = topics::delete_topics(gatekeeper, request).await;
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::CreatePartitions => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = topics::create_partitions(gatekeeper, request).await;
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::InitProducerId => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = init_producer_id::handle(gatekeeper, request).await;
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::DescribeConfigs => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = configs::describe_configs(gatekeeper, request);
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::AlterConfigs => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = configs::alter_configs(gatekeeper, request).await;
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::IncrementalAlterConfigs => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = configs::incremental_alter_configs(gatekeeper, request).await;
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::FindCoordinator => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = groups::find_coordinator(gatekeeper, request, version);
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::JoinGroup => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = groups::join_group(gatekeeper, &caller(), request, version).await;
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::SyncGroup => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = groups::sync_group(gatekeeper, request).await;
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::Heartbeat => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = groups::heartbeat(gatekeeper, request);
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::LeaveGroup => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = groups::leave_group(gatekeeper, request, version);
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::DescribeGroups => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = groups::describe_groups(gatekeeper, request, version).await;
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::ListGroups => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = groups::list_groups(gatekeeper, request, version).await;
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::DeleteGroups => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = groups::delete_groups(gatekeeper, request).await;
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::OffsetCommit => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = offsets::offset_commit(gatekeeper, request, version).await;
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::OffsetFetch => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = offsets::offset_fetch(gatekeeper, request, version).await;
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::DeleteRecords => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = delete_records::handle(gatekeeper, request).await;
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        ApiKey::OffsetDelete => {
            let request = decode(&mut frame, version).map_err(malformed)?;
            let body = offsets::offset_delete(gatekeeper, request).await;
            encode(api, version, header.correlation_id, &body).map(Some)
        }
        other => Err(RequestError::Unsupported {
            api: other,
            version,
        }),
    }
}

/// Decodes a request body. Bytes left after it are ignored, as Apache Kafka
/// does: some clients pad requests with fields of other versions.
fn decode<T: Decodable>(frame: &mut Bytes, version: i16) -> Result<T, String> {
    let request = T::decode(frame, version).map_err(|e| e.to_string())?;
    if frame.has_remaining() {
        tracing::debug!(left = frame.remaining(), "ignoring bytes after the request");
    }
    Ok(request)
}

/// Encodes a response header and body, ready to be framed.
fn encode<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<BytesMut, RequestError> {
    let failed = |reason: String| RequestError::Encode { api, reason };
    let mut buf = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, api.response_header_version(version))
        .map_err(|e| failed(e.to_string()))?;
    body.encode(&mut buf, version)
        .map_err(|e| failed(e.to_string()))?;
    Ok(buf)
}
