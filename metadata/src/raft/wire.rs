//! How raft messages travel: openraft's structures are serialized with bincode;
//! Strata's own commands inside them stay in their protobuf encoding.

use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A protobuf message carried inside openraft's serde-serialized structures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prost<T>(pub T);

impl<T: Message> Serialize for Prost<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0.encode_to_vec())
    }
}

impl<'de, T: Message + Default> Deserialize<'de> for Prost<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(deserializer)?;
        T::decode(bytes.as_slice())
            .map(Prost)
            .map_err(serde::de::Error::custom)
    }
}

impl<T: std::fmt::Debug> std::fmt::Display for Prost<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Errors of encoding or decoding a raft message.
pub type WireError = bincode::Error;

/// Encodes an openraft structure for the wire or for RocksDB.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    bincode::serialize(value)
}

/// Decodes what [`encode`] wrote.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    bincode::deserialize(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::metadata::{metadata_command::Op, DeleteTopicRequest, MetadataCommand};

    #[test]
    fn commands_round_trip_through_bincode() {
        let command = Prost(MetadataCommand {
            now_ms: 42,
            rules: None,
            op: Some(Op::DeleteTopic(DeleteTopicRequest { name: "t".into() })),
        });
        let bytes = encode(&command).unwrap();
        let back: Prost<MetadataCommand> = decode(&bytes).unwrap();
        assert_eq!(back, command);
        assert!(decode::<Prost<MetadataCommand>>(&bytes[..bytes.len() - 1]).is_err());
    }
}
