//! A minimal raw Kafka wire client for tests that need to see exact bytes:
//! encodes requests and decodes responses with the `kafka-protocol` crate.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One TCP connection to a Kafka listener.
pub struct WireClient {
    stream: TcpStream,
    next_correlation_id: i32,
}

impl WireClient {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connects to the Kafka listener");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        WireClient {
            stream,
            next_correlation_id: 1,
        }
    }

    /// Sends one request and decodes its response.
    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Req,
    ) -> Resp {
        let correlation_id = self.send(api, version, request);
        let (answered, response) = self.receive(api, version);
        assert_eq!(answered, correlation_id);
        response
    }

    /// Sends one request without waiting for its response (pipelining);
    /// returns its correlation id.
    pub fn send<Req: Encodable>(&mut self, api: ApiKey, version: i16, request: &Req) -> i32 {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("wire-test")));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, api.request_header_version(version))
            .unwrap();
        request.encode(&mut body, version).unwrap();
        self.send_frame(&body);
        correlation_id
    }

    /// Reads the next response, which must answer `api` v`version`; returns
    /// its correlation id and body.
    pub fn receive<Resp: Decodable>(&mut self, api: ApiKey, version: i16) -> (i32, Resp) {
        let mut response = self.read_frame().expect("a response frame");
        let header =
            ResponseHeader::decode(&mut response, api.response_header_version(version)).unwrap();
        let decoded = Resp::decode(&mut response, version).unwrap();
        assert_eq!(response.remaining(), 0, "whole response decoded");
        (header.correlation_id, decoded)
    }

    /// Writes a length-prefixed frame.
    pub fn send_frame(&mut self, body: &[u8]) {
        let mut frame = BytesMut::with_capacity(body.len() + 4);
        frame.put_i32(body.len() as i32);
        frame.put_slice(body);
        self.stream.write_all(&frame).unwrap();
    }

    /// Writes raw bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads one length-prefixed frame; `None` if the server closed the connection.
    pub fn read_frame(&mut self) -> Option<Bytes> {
        let mut size = [0u8; 4];
        if self.stream.read_exact(&mut size).is_err() {
            return None;
        }
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut body).ok()?;
        Some(Bytes::from(body))
    }

    /// Whether the server has closed the connection (reads end of stream).
    pub fn is_closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

/// A produce request with `acks` for `topic`'s `partition`: one batch
/// holding a single plain (non-idempotent) record whose value is `value`.
pub fn single_record_produce(
    topic: &str,
    partition: i32,
    acks: i16,
    value: &str,
) -> ProduceRequest {
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 1_700_000_000_000,
        key: None,
        value: Some(Bytes::from(value.to_string())),
        headers: Default::default(),
    };
    let mut batch = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut batch, [&record], &options).expect("the batch encodes");
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch.freeze()))])])
}
