//! Kafka's rules for topic names and topic configs, checked by the state
//! machine, and the defaults of the topic configs Strata honours.

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

/// The kind of value a topic config takes, as checked.
#[derive(Clone, Copy)]
enum ConfigKind {
    /// A signed integer; `-1` means unlimited where Kafka allows it.
    Long { min: i64 },
    /// One of a fixed set of words.
    OneOf(&'static [&'static str]),
    /// A comma-separated list of one or more words from a fixed set.
    ListOf(&'static [&'static str]),
}

/// The type Kafka reports for a config (DescribeConfigs' `config_type`); list
/// configs also take Kafka's APPEND and SUBTRACT operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    /// Free text or one word of a set.
    String,
    /// A 32-bit integer.
    Int,
    /// A 64-bit integer.
    Long,
    /// A comma-separated list.
    List,
}

/// One topic config Strata understands.
struct TopicConfig {
    key: &'static str,
    kind: ConfigKind,
    config_type: ConfigType,
    /// The value of a topic that does not set it, for the configs Strata
    /// honours; `None` for configs accepted for compatibility only.
    default: Option<&'static str>,
}

const fn config(
    key: &'static str,
    kind: ConfigKind,
    config_type: ConfigType,
    default: Option<&'static str>,
) -> TopicConfig {
    TopicConfig {
        key,
        kind,
        config_type,
        default,
    }
}

/// Topic configs Strata understands, with the kind of value each takes and,
/// for those it honours, its default (Kafka's).
const TOPIC_CONFIGS: &[TopicConfig] = &[
    config(
        "retention.ms",
        ConfigKind::Long { min: -1 },
        ConfigType::Long,
        Some("604800000"),
    ),
    config(
        "retention.bytes",
        ConfigKind::Long { min: -1 },
        ConfigType::Long,
        Some("-1"),
    ),
    config(
        "local.retention.ms",
        ConfigKind::Long { min: -2 },
        ConfigType::Long,
        None,
    ),
    config(
        "local.retention.bytes",
        ConfigKind::Long { min: -2 },
        ConfigType::Long,
        None,
    ),
    config(
        "segment.bytes",
        ConfigKind::Long { min: 1024 },
        ConfigType::Int,
        Some("1073741824"),
    ),
    config(
        "segment.ms",
        ConfigKind::Long { min: 1 },
        ConfigType::Long,
        Some("604800000"),
    ),
    config(
        "max.message.bytes",
        ConfigKind::Long { min: 0 },
        ConfigType::Int,
        Some("1048588"),
    ),
    config(
        "min.insync.replicas",
        ConfigKind::Long { min: 1 },
        ConfigType::Int,
        None,
    ),
    config(
        "message.timestamp.difference.max.ms",
        ConfigKind::Long { min: 0 },
        ConfigType::Long,
        None,
    ),
    config(
        "cleanup.policy",
        ConfigKind::ListOf(&["delete"]),
        ConfigType::List,
        Some("delete"),
    ),
    config(
        "message.timestamp.type",
        ConfigKind::OneOf(&["CreateTime", "LogAppendTime"]),
        ConfigType::String,
        Some("CreateTime"),
    ),
    config(
        "compression.type",
        ConfigKind::OneOf(&["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"]),
        ConfigType::String,
        None,
    ),
];

fn find(key: &str) -> Option<&'static TopicConfig> {
    TOPIC_CONFIGS.iter().find(|c| c.key == key)
}

/// The topic configs Strata honours, each with the value a topic has when it
/// does not set it.
pub fn topic_config_defaults() -> impl Iterator<Item = (&'static str, &'static str)> {
    TOPIC_CONFIGS
        .iter()
        .filter_map(|c| c.default.map(|default| (c.key, default)))
}

/// The default of a topic config Strata honours.
pub fn topic_config_default(key: &str) -> Option<&'static str> {
    find(key).and_then(|c| c.default)
}

/// The Kafka type of a known topic config.
pub fn topic_config_type(key: &str) -> Option<ConfigType> {
    find(key).map(|c| c.config_type)
}

/// The topic config named `key`, or INVALID_CONFIG.
fn known(key: &str) -> Result<&'static TopicConfig, Outcome> {
    find(key).ok_or_else(|| {
        Outcome::error(
            error_code::INVALID_CONFIG,
            format!("unknown topic config {key:?}"),
        )
    })
}

/// Checks that `key` is a topic config Strata knows; INVALID_CONFIG otherwise.
pub fn check_topic_config_key(key: &str) -> Result<(), Outcome> {
    known(key).map(|_| ())
}

/// Checks one topic config key and value; unknown keys and bad values are
/// refused with INVALID_CONFIG.
pub fn check_topic_config(key: &str, value: &str) -> Result<(), Outcome> {
    let config = known(key)?;
    let ok = match config.kind {
        ConfigKind::Long { min } => value.parse::<i64>().is_ok_and(|v| v >= min),
        ConfigKind::OneOf(words) => words.contains(&value),
        ConfigKind::ListOf(words) => value.split(',').all(|item| words.contains(&item.trim())),
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
        assert!(check_topic_config("cleanup.policy", "delete,compact").is_err());
        assert!(check_topic_config("cleanup.policy", "").is_err());
        assert!(check_topic_config("message.timestamp.type", "LogAppendTime").is_ok());
        let err = check_topic_config("no.such.config", "1").unwrap_err();
        assert_eq!(err.error_code, error_code::INVALID_CONFIG);
    }

    #[test]
    fn every_default_is_a_valid_value() {
        let defaults: Vec<_> = topic_config_defaults().collect();
        assert_eq!(defaults.len(), 7, "{defaults:?}");
        for (key, value) in defaults {
            assert!(check_topic_config(key, value).is_ok(), "{key}={value}");
            assert_eq!(topic_config_default(key), Some(value));
        }
        assert_eq!(topic_config_default("compression.type"), None);
        assert_eq!(topic_config_type("cleanup.policy"), Some(ConfigType::List));
        assert!(check_topic_config_key("compression.type").is_ok());
        assert!(check_topic_config_key("no.such.config").is_err());
    }
}
