//! Kafka's rules for topic names and topic configs, checked by the state machine.

use strata_proto::error_code;
use strata_proto::metadata::Outcome;

/// Longest legal topic name, as in Kafka.
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Checks a topic name the way Kafka does: 1..=249 characters from
/// `[a-zA-Z0-9._-]`, and neither `.` nor `..`.
pub fn check_topic_name(name: &str) -> Result<(), Outcome> {
    let invalid = |why: &str| {
        Err(Outcome::error(
            error_code::INVALID_TOPIC_EXCEPTION,
            format!("topic name {name:?} is illegal: {why}"),
        ))
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name == "." || name == ".." {
        return invalid("'.' and '..' are reserved");
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return invalid("it is longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return invalid("it may only contain ASCII alphanumerics, '.', '_' and '-'");
    }
    Ok(())
}

/// The kind of value a topic config takes.
#[derive(Clone, Copy)]
enum ConfigKind {
    /// A signed integer; `-1` means unlimited where Kafka allows it.
    Long { min: i64 },
    /// One of a fixed set of words.
    OneOf(&'static [&'static str]),
}

/// Topic configs Strata understands, with the kind of value each takes.
const TOPIC_CONFIGS: &[(&str, ConfigKind)] = &[
    ("retention.ms", ConfigKind::Long { min: -1 }),
    ("retention.bytes", ConfigKind::Long { min: -1 }),
    ("local.retention.ms", ConfigKind::Long { min: -2 }),
    ("local.retention.bytes", ConfigKind::Long { min: -2 }),
    ("segment.bytes", ConfigKind::Long { min: 1024 }),
    ("segment.ms", ConfigKind::Long { min: 1 }),
    ("max.message.bytes", ConfigKind::Long { min: 0 }),
    ("min.insync.replicas", ConfigKind::Long { min: 1 }),
    (
        "message.timestamp.difference.max.ms",
        ConfigKind::Long { min: 0 },
    ),
    ("cleanup.policy", ConfigKind::OneOf(&["delete"])),
    (
        "message.timestamp.type",
        ConfigKind::OneOf(&["CreateTime", "LogAppendTime"]),
    ),
    (
        "compression.type",
        ConfigKind::OneOf(&["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"]),
    ),
];

/// Checks one topic config key and value; unknown keys and bad values are
/// refused with INVALID_CONFIG.
pub fn check_topic_config(key: &str, value: &str) -> Result<(), Outcome> {
    let Some((_, kind)) = TOPIC_CONFIGS.iter().find(|(k, _)| *k == key) else {
        return Err(Outcome::error(
            error_code::INVALID_CONFIG,
            format!("unknown topic config {key:?}"),
        ));
    };
    let ok = match kind {
        ConfigKind::Long { min } => value.parse::<i64>().is_ok_and(|v| v >= *min),
        ConfigKind::OneOf(words) => words.contains(&value),
    };
    if ok {
        Ok(())
    } else {
        Err(Outcome::error(
            error_code::INVALID_CONFIG,
            format!("invalid value {value:?} for topic config {key:?}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legal_names_pass() {
        for name in ["a", "orders", "orders.v2", "a_b-c.D9", &"x".repeat(249)] {
            assert!(check_topic_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn illegal_names_are_invalid_topic_exception() {
        for name in ["", ".", "..", "a b", "a/b", "ü", &"x".repeat(250)] {
            let err = check_topic_name(name).unwrap_err();
            assert_eq!(
                err.error_code,
                error_code::INVALID_TOPIC_EXCEPTION,
                "{name}"
            );
        }
    }

    #[test]
    fn configs_are_checked_by_kind() {
        assert!(check_topic_config("retention.ms", "-1").is_ok());
        assert!(check_topic_config("retention.ms", "86400000").is_ok());
        assert!(check_topic_config("retention.ms", "-5").is_err());
        assert!(check_topic_config("retention.ms", "soon").is_err());
        assert!(check_topic_config("cleanup.policy", "delete").is_ok());
        assert!(check_topic_config("cleanup.policy", "shred").is_err());
        let err = check_topic_config("no.such.config", "1").unwrap_err();
        assert_eq!(err.error_code, error_code::INVALID_CONFIG);
    }
}
