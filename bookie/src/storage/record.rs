//! The records the journal holds: each change to a segment, in the order the
//! bookie accepted it. Replaying them rebuilds the entry logs and the index.
//!
//! Body layout (little-endian), framed by the journal with a length and CRC:
//! `kind: u8`, `segment_id: u64`, then by kind:
//! - add: `entry_id: i64`, `last_add_confirmed: i64`, `base_offset: i64`, payload (the rest);
//! - fence: `epoch: u32`;
//! - seal: `last_entry_id: i64`;
//! - delete: nothing.

use bytes::{Buf, BufMut, Bytes};

const KIND_ADD: u8 = 1;
const KIND_FENCE: u8 = 2;
const KIND_SEAL: u8 = 3;
const KIND_DELETE: u8 = 4;

/// Bytes of an add record before its payload.
pub(crate) const ADD_HEADER_LEN: usize = 1 + 8 + 8 + 8 + 8;

/// One entry written to a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AddRecord {
    pub segment_id: u64,
    pub entry_id: i64,
    /// The writer's last-add-confirmed when it sent this entry.
    pub last_add_confirmed: i64,
    /// Kafka offset of the first record of the batch.
    pub base_offset: i64,
    pub payload: Bytes,
}

/// One change to a segment, as the journal stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JournalRecord {
    /// An entry was added.
    Add(AddRecord),
    /// The segment was fenced at an epoch.
    Fence { segment_id: u64, epoch: u32 },
    /// The segment was sealed at its last entry.
    Seal { segment_id: u64, last_entry_id: i64 },
    /// The segment was deleted from this bookie.
    Delete { segment_id: u64 },
}

/// A record body that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("undecodable journal record: {0}")]
pub(crate) struct RecordDecodeError(&'static str);

impl JournalRecord {
    /// Length of the encoded body.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Add(add) => ADD_HEADER_LEN + add.payload.len(),
            Self::Fence { .. } => 1 + 8 + 4,
            Self::Seal { .. } => 1 + 8 + 8,
            Self::Delete { .. } => 1 + 8,
        }
    }

    /// Appends the encoded body to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Self::Add(add) => {
                out.put_u8(KIND_ADD);
                out.put_u64_le(add.segment_id);
                out.put_i64_le(add.entry_id);
                out.put_i64_le(add.last_add_confirmed);
                out.put_i64_le(add.base_offset);
                out.extend_from_slice(&add.payload);
            }
            Self::Fence { segment_id, epoch } => {
                out.put_u8(KIND_FENCE);
                out.put_u64_le(*segment_id);
                out.put_u32_le(*epoch);
            }
            Self::Seal {
                segment_id,
                last_entry_id,
            } => {
                out.put_u8(KIND_SEAL);
                out.put_u64_le(*segment_id);
                out.put_i64_le(*last_entry_id);
            }
            Self::Delete { segment_id } => {
                out.put_u8(KIND_DELETE);
                out.put_u64_le(*segment_id);
            }
        }
    }

    /// Decodes a body; an add's payload shares `body`'s memory.
    pub fn decode(mut body: Bytes) -> Result<Self, RecordDecodeError> {
        if body.remaining() < 1 + 8 {
            return Err(RecordDecodeError("shorter than a record header"));
        }
        let kind = body.get_u8();
        let segment_id = body.get_u64_le();
        let record = match kind {
            KIND_ADD => {
                if body.remaining() < ADD_HEADER_LEN - 9 {
                    return Err(RecordDecodeError("add record too short"));
                }
                let entry_id = body.get_i64_le();
                let last_add_confirmed = body.get_i64_le();
                let base_offset = body.get_i64_le();
                return Ok(Self::Add(AddRecord {
                    segment_id,
                    entry_id,
                    last_add_confirmed,
                    base_offset,
                    payload: body,
                }));
            }
            KIND_FENCE if body.remaining() == 4 => Self::Fence {
                segment_id,
                epoch: body.get_u32_le(),
            },
            KIND_SEAL if body.remaining() == 8 => Self::Seal {
                segment_id,
                last_entry_id: body.get_i64_le(),
            },
            KIND_DELETE if body.remaining() == 0 => Self::Delete { segment_id },
            KIND_FENCE | KIND_SEAL | KIND_DELETE => {
                return Err(RecordDecodeError("wrong length for its kind"))
            }
            _ => return Err(RecordDecodeError("unknown kind")),
        };
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<JournalRecord> {
        vec![
            JournalRecord::Add(AddRecord {
                segment_id: 7,
                entry_id: 3,
                last_add_confirmed: 2,
                base_offset: 100,
                payload: Bytes::from_static(b"batch bytes"),
            }),
            JournalRecord::Add(AddRecord {
                segment_id: u64::MAX,
                entry_id: 0,
                last_add_confirmed: -1,
                base_offset: 0,
                payload: Bytes::new(),
            }),
            JournalRecord::Fence {
                segment_id: 7,
                epoch: 9,
            },
            JournalRecord::Seal {
                segment_id: 7,
                last_entry_id: -1,
            },
            JournalRecord::Delete { segment_id: 7 },
        ]
    }

    #[test]
    fn records_round_trip() {
        for record in samples() {
            let mut body = Vec::new();
            record.encode_into(&mut body);
            assert_eq!(body.len(), record.encoded_len());
            assert_eq!(JournalRecord::decode(Bytes::from(body)).unwrap(), record);
        }
    }

    #[test]
    fn truncated_or_unknown_bodies_are_refused() {
        for record in samples() {
            let mut body = Vec::new();
            record.encode_into(&mut body);
            // An add's payload may be any length, so only cut into its header.
            let cut = match record {
                JournalRecord::Add(_) => ADD_HEADER_LEN - 1,
                _ => body.len() - 1,
            };
            assert!(JournalRecord::decode(Bytes::copy_from_slice(&body[..cut])).is_err());
        }
        let mut unknown = vec![99u8];
        unknown.extend_from_slice(&[0; 8]);
        assert!(JournalRecord::decode(Bytes::from(unknown)).is_err());
    }
}
