//! Kafka record batches (message format v2) as they arrive in Produce requests:
//! checked in place, given their offsets without re-encoding, and stored byte
//! for byte. Records inside are never decoded, so any compression passes through.

use bytes::{Bytes, BytesMut};
use strata_proto::error_code;

/// Bytes of the v2 batch header before the records.
pub const HEADER_BYTES: usize = 61;
/// The only record-batch format accepted (Kafka's message format v2).
pub const MAGIC_V2: i8 = 2;

const BASE_OFFSET: usize = 0;
const BATCH_LENGTH: usize = 8;
const PARTITION_LEADER_EPOCH: usize = 12;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORDS_COUNT: usize = 57;
/// Bytes before `partitionLeaderEpoch` that `batchLength` does not count.
const LOG_OVERHEAD: usize = 12;

const TIMESTAMP_TYPE_BIT: i16 = 1 << 3;
const TRANSACTIONAL_BIT: i16 = 1 << 4;
const CONTROL_BIT: i16 = 1 << 5;
const COMPRESSION_MASK: i16 = 0b111;

/// Why a batch was refused, as the Kafka error code the producer gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (error code {code})")]
pub struct BatchError {
    /// The Kafka error code.
    pub code: i16,
    /// What was wrong, for logs and the response's error message.
    pub message: String,
}

fn corrupt(message: impl Into<String>) -> BatchError {
    BatchError {
        code: error_code::CORRUPT_MESSAGE as i16,
        message: message.into(),
    }
}

/// One validated record batch, owned so that its offset fields can be set.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordBatch {
    bytes: BytesMut,
}

impl RecordBatch {
    /// Checks that `records` (a Produce request's records for one partition)
    /// is exactly one whole v2 batch with a valid CRC-32C and sane counts.
    pub fn parse(records: &[u8]) -> Result<Self, BatchError> {
        if records.len() < HEADER_BYTES {
            return Err(corrupt(format!(
                "record batch of {} bytes is shorter than its {HEADER_BYTES}-byte header",
                records.len()
            )));
        }
        let magic = records[MAGIC] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError {
                code: error_code::INVALID_RECORD as i16,
                message: format!(
                    "message format v{magic} is not supported; produce requests must carry v2 record batches"
                ),
            });
        }
        let batch_length = read_i32(records, BATCH_LENGTH);
        let total = usize::try_from(batch_length)
            .ok()
            .and_then(|n| n.checked_add(LOG_OVERHEAD))
            .filter(|n| *n >= HEADER_BYTES)
            .ok_or_else(|| corrupt(format!("record batch length {batch_length} is invalid")))?;
        if total != records.len() {
            return Err(BatchError {
                code: error_code::INVALID_RECORD as i16,
                message: format!(
                    "a produce request must carry exactly one whole record batch per partition: batch is {total} bytes, records are {}",
                    records.len()
                ),
            });
        }
        let stored_crc = read_i32(records, CRC) as u32;
        let crc = crc32c::crc32c(&records[ATTRIBUTES..]);
        if crc != stored_crc {
            return Err(corrupt(format!(
                "record batch CRC-32C is {crc:#010x}, the batch says {stored_crc:#010x}"
            )));
        }
        let batch = Self {
            bytes: BytesMut::from(records),
        };
        let count = batch.records_count();
        if count <= 0 || batch.last_offset_delta() != count - 1 {
            return Err(corrupt(format!(
                "record batch holds {count} records but its last offset delta is {}",
                batch.last_offset_delta()
            )));
        }
        if batch.attributes() & COMPRESSION_MASK > 4 {
            return Err(BatchError {
                code: error_code::UNSUPPORTED_COMPRESSION_TYPE as i16,
                message: format!(
                    "compression codec {} is unknown",
                    batch.attributes() & COMPRESSION_MASK
                ),
            });
        }
        Ok(batch)
    }

    /// The batch's bytes, as stored and as fetched.
    pub fn bytes(&self) -> Bytes {
        self.bytes.clone().freeze()
    }

    /// Size of the whole batch in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the batch is empty (never true for a parsed batch).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Offset of the first record.
    pub fn base_offset(&self) -> i64 {
        read_i64(&self.bytes, BASE_OFFSET)
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset() + i64::from(self.last_offset_delta())
    }

    /// How many records the batch holds.
    pub fn records_count(&self) -> i32 {
        read_i32(&self.bytes, RECORDS_COUNT)
    }

    fn last_offset_delta(&self) -> i32 {
        read_i32(&self.bytes, LAST_OFFSET_DELTA)
    }

    fn attributes(&self) -> i16 {
        read_i16(&self.bytes, ATTRIBUTES)
    }

    /// Timestamp of the first record as the producer set it.
    pub fn base_timestamp(&self) -> i64 {
        read_i64(&self.bytes, BASE_TIMESTAMP)
    }

    /// Largest timestamp in the batch (the append time under LogAppendTime).
    pub fn max_timestamp(&self) -> i64 {
        read_i64(&self.bytes, MAX_TIMESTAMP)
    }

    /// The producer id, or -1 for a producer without idempotence.
    pub fn producer_id(&self) -> i64 {
        read_i64(&self.bytes, PRODUCER_ID)
    }

    /// The producer epoch.
    pub fn producer_epoch(&self) -> i16 {
        read_i16(&self.bytes, PRODUCER_EPOCH)
    }

    /// Sequence number of the first record, or -1.
    pub fn base_sequence(&self) -> i32 {
        read_i32(&self.bytes, BASE_SEQUENCE)
    }

    /// Whether the batch belongs to a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes() & TRANSACTIONAL_BIT != 0
    }

    /// Whether the batch is a control batch (transaction markers).
    pub fn is_control(&self) -> bool {
        self.attributes() & CONTROL_BIT != 0
    }

    /// Whether the batch's timestamps are the broker's append time.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes() & TIMESTAMP_TYPE_BIT != 0
    }

    /// Gives the batch its place in the log: its first offset and the leader
    /// epoch it was written at. Neither field is covered by the CRC.
    pub fn assign(&mut self, base_offset: i64, leader_epoch: i32) {
        self.bytes[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
        self.bytes[PARTITION_LEADER_EPOCH..PARTITION_LEADER_EPOCH + 4]
            .copy_from_slice(&leader_epoch.to_be_bytes());
    }

    /// Stamps the broker's append time, as a topic with
    /// `message.timestamp.type=LogAppendTime` does, and recomputes the CRC.
    pub fn set_log_append_time(&mut self, now_ms: i64) {
        let attributes = self.attributes() | TIMESTAMP_TYPE_BIT;
        self.bytes[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
        self.bytes[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&now_ms.to_be_bytes());
        let crc = crc32c::crc32c(&self.bytes[ATTRIBUTES..]);
        self.bytes[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    }
}

fn read_i16(bytes: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn read_i32(bytes: &[u8], at: usize) -> i32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    i32::from_be_bytes(word)
}

fn read_i64(bytes: &[u8], at: usize) -> i64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    i64::from_be_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    fn record(i: i64) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: 7,
            producer_epoch: 1,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: i as i32,
            timestamp: 1_000 + i,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("v{i}"))),
            headers: Default::default(),
        }
    }

    fn encoded(count: i64) -> Vec<u8> {
        let records: Vec<Record> = (0..count).map(record).collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
        buf.to_vec()
    }

    #[test]
    fn a_valid_batch_is_read_in_place() {
        let batch = RecordBatch::parse(&encoded(3)).unwrap();
        assert_eq!(batch.records_count(), 3);
        assert_eq!(batch.last_offset(), 2);
        assert_eq!(batch.producer_id(), 7);
        assert_eq!(batch.producer_epoch(), 1);
        assert_eq!(batch.base_sequence(), 0);
        assert_eq!(batch.base_timestamp(), 1_000);
        assert_eq!(batch.max_timestamp(), 1_002);
        assert!(!batch.is_transactional() && !batch.is_control() && !batch.is_log_append_time());
    }

    #[test]
    fn assigning_offsets_keeps_the_batch_valid_and_records_intact() {
        let mut batch = RecordBatch::parse(&encoded(3)).unwrap();
        batch.assign(100, 4);
        let reparsed = RecordBatch::parse(&batch.bytes()).unwrap();
        assert_eq!(reparsed.base_offset(), 100);
        assert_eq!(reparsed.last_offset(), 102);
        let mut bytes = batch.bytes();
        let records = RecordBatchDecoder::decode(&mut bytes).unwrap();
        let offsets: Vec<i64> = records.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![100, 101, 102]);
        assert_eq!(records.records[2].value, Some(Bytes::from("v2")));
    }

    #[test]
    fn log_append_time_is_stamped_with_a_new_crc() {
        let mut batch = RecordBatch::parse(&encoded(2)).unwrap();
        batch.set_log_append_time(55_555);
        let reparsed = RecordBatch::parse(&batch.bytes()).unwrap();
        assert!(reparsed.is_log_append_time());
        assert_eq!(reparsed.max_timestamp(), 55_555);
    }

    #[test]
    fn damaged_batches_are_refused_with_kafka_codes() {
        let good = encoded(2);
        let code = |bytes: &[u8]| RecordBatch::parse(bytes).unwrap_err().code as i32;

        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 0xff;
        assert_eq!(code(&flipped), error_code::CORRUPT_MESSAGE);

        assert_eq!(code(&good[..HEADER_BYTES - 1]), error_code::CORRUPT_MESSAGE);
        assert_eq!(code(&good[..good.len() - 1]), error_code::INVALID_RECORD);

        let mut two = good.clone();
        two.extend_from_slice(&good);
        assert_eq!(code(&two), error_code::INVALID_RECORD);

        let mut old_format = good.clone();
        old_format[MAGIC] = 1;
        assert_eq!(code(&old_format), error_code::INVALID_RECORD);

        let mut negative_length = good.clone();
        negative_length[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(code(&negative_length), error_code::CORRUPT_MESSAGE);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let good = encoded(3);
        for len in 0..good.len() {
            let _ = RecordBatch::parse(&good[..len]);
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bytes = good.clone();
            let at = (state as usize) % bytes.len();
            bytes[at] = (state >> 32) as u8;
            let _ = RecordBatch::parse(&bytes);
        }
    }
}
