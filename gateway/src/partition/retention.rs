//! Retention rules of one partition's log, as pure functions of its segments,
//! its topic's configs and the time: which segments have expired (and are
//! deleted everywhere) and which sealed segments must move to object storage
//! (`local.retention.*` bounds what stays on bookies).

use std::collections::HashMap;
use strata_proto::metadata::segment_info::State;
use strata_proto::metadata::SegmentInfo;

/// Kafka's value of `local.retention.*` meaning "the same as `retention.*`".
const SAME_AS_RETENTION: i64 = -2;

/// What a partition keeps, from its topic's configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// `retention.ms`: records older than this are deleted; -1 = forever.
    pub retention_ms: i64,
    /// `retention.bytes`: the log is trimmed to this size; -1 = unbounded.
    pub retention_bytes: i64,
    /// `local.retention.ms`: sealed segments older than this go to object
    /// storage; -1 = never for age.
    pub local_retention_ms: i64,
    /// `local.retention.bytes`: sealed segments are offloaded until what stays
    /// on bookies is at most this; -1 = never for size.
    pub local_retention_bytes: i64,
}

/// The gateway's `local.retention.*` for topics that do not set them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalRetentionDefaults {
    /// Default `local.retention.ms` (0: offload every segment once sealed).
    pub ms: i64,
    /// Default `local.retention.bytes` (-1: no bound by size).
    pub bytes: i64,
}

impl RetentionPolicy {
    /// The policy of a topic with these configs.
    pub fn from_configs(
        configs: &HashMap<String, String>,
        defaults: LocalRetentionDefaults,
    ) -> Self {
        let value = |key: &str| configs.get(key).and_then(|v| v.parse::<i64>().ok());
        let retention_ms = value("retention.ms").unwrap_or(DEFAULT_RETENTION_MS);
        let retention_bytes = value("retention.bytes").unwrap_or(-1);
        let local = |key: &str, default: i64, total: i64| match value(key) {
            Some(SAME_AS_RETENTION) => total,
            Some(set) => set,
            None => default,
        };
        Self {
            retention_ms,
            retention_bytes,
            local_retention_ms: local("local.retention.ms", defaults.ms, retention_ms),
            local_retention_bytes: local("local.retention.bytes", defaults.bytes, retention_bytes),
        }
    }
}

/// Kafka's default `retention.ms`: seven days.
const DEFAULT_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// Where a sealed or offloaded segment ends, with its size and largest
/// timestamp; `None` while open or deleted.
fn closed(segment: &SegmentInfo) -> Option<(i64, u64, Option<i64>)> {
    match &segment.state {
        Some(State::Sealed(s)) => Some((s.end_offset, s.bytes, s.max_timestamp)),
        Some(State::Offloaded(o)) => Some((o.end_offset, o.bytes, o.max_timestamp)),
        _ => None,
    }
}

/// The oldest segments that retention deletes, in log order: those below the
/// log start offset, older than `retention.ms`, or beyond `retention.bytes`
/// counted from the newest. Never the last segment (it holds the log end),
/// and only a prefix of the log. `segments` are the live ones in log order;
/// `open_bytes` is what the open segment holds.
pub fn expired_segments(
    segments: &[SegmentInfo],
    log_start_offset: i64,
    open_bytes: u64,
    policy: &RetentionPolicy,
    now_ms: i64,
) -> Vec<u64> {
    let mut total: u64 = segments
        .iter()
        .filter_map(closed)
        .map(|(_, bytes, _)| bytes)
        .sum::<u64>()
        + open_bytes;
    let mut expired = Vec::new();
    for segment in segments.iter().take(segments.len().saturating_sub(1)) {
        let Some((end_offset, bytes, max_timestamp)) = closed(segment) else {
            break;
        };
        let below_start = end_offset <= log_start_offset;
        let too_old = policy.retention_ms >= 0
            && max_timestamp.is_some_and(|ts| ts < now_ms.saturating_sub(policy.retention_ms));
        let too_big = policy.retention_bytes >= 0
            && total.saturating_sub(bytes) >= policy.retention_bytes as u64;
        if !(below_start || too_old || too_big) {
            break;
        }
        total = total.saturating_sub(bytes);
        expired.push(segment.segment_id);
    }
    expired
}

/// The sealed segments (not yet offloaded) that must move to object storage:
/// older than `local.retention.ms` (a segment whose largest timestamp is
/// unknown counts as old), or followed by at least `local.retention.bytes` of
/// newer data.
pub fn offload_due(
    segments: &[SegmentInfo],
    open_bytes: u64,
    policy: &RetentionPolicy,
    now_ms: i64,
) -> Vec<u64> {
    let mut newer: u64 = open_bytes;
    let mut due = Vec::new();
    for segment in segments.iter().rev() {
        let Some((_, bytes, max_timestamp)) = closed(segment) else {
            continue;
        };
        let sealed = matches!(segment.state, Some(State::Sealed(_)));
        let old = policy.local_retention_ms >= 0
            && max_timestamp
                .is_none_or(|ts| ts <= now_ms.saturating_sub(policy.local_retention_ms));
        let crowded =
            policy.local_retention_bytes >= 0 && newer >= policy.local_retention_bytes as u64;
        if sealed && (old || crowded) {
            due.push(segment.segment_id);
        }
        newer += bytes;
    }
    due.reverse();
    due
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::metadata::{SegmentOffloaded, SegmentOpen, SegmentSealed};

    fn sealed(id: u64, base: i64, end: i64, bytes: u64, max_ts: Option<i64>) -> SegmentInfo {
        SegmentInfo {
            segment_id: id,
            base_offset: base,
            state: Some(State::Sealed(SegmentSealed {
                end_offset: end,
                bytes,
                max_timestamp: max_ts,
            })),
            ..Default::default()
        }
    }

    fn offloaded(id: u64, base: i64, end: i64, bytes: u64, max_ts: Option<i64>) -> SegmentInfo {
        SegmentInfo {
            segment_id: id,
            base_offset: base,
            state: Some(State::Offloaded(SegmentOffloaded {
                end_offset: end,
                bytes,
                max_timestamp: max_ts,
                object_key: format!("k{id}"),
                object_size: bytes + 100,
            })),
            ..Default::default()
        }
    }

    fn open(id: u64, base: i64) -> SegmentInfo {
        SegmentInfo {
            segment_id: id,
            base_offset: base,
            state: Some(State::Open(SegmentOpen {})),
            ..Default::default()
        }
    }

    fn policy(retention_ms: i64, retention_bytes: i64) -> RetentionPolicy {
        RetentionPolicy {
            retention_ms,
            retention_bytes,
            local_retention_ms: -1,
            local_retention_bytes: -1,
        }
    }

    #[test]
    fn local_retention_follows_kafkas_minus_two_and_the_gateway_default() {
        let defaults = LocalRetentionDefaults { ms: 0, bytes: -1 };
        let configs: HashMap<String, String> = [
            ("retention.ms".to_string(), "1000".to_string()),
            ("local.retention.ms".to_string(), "-2".to_string()),
        ]
        .into();
        let policy = RetentionPolicy::from_configs(&configs, defaults);
        assert_eq!(policy.local_retention_ms, 1000);
        assert_eq!(policy.local_retention_bytes, -1, "gateway default");
        let policy = RetentionPolicy::from_configs(&HashMap::new(), defaults);
        assert_eq!(policy.retention_ms, DEFAULT_RETENTION_MS);
        assert_eq!(policy.local_retention_ms, 0);
    }

    #[test]
    fn time_retention_deletes_old_segments_from_the_start_only() {
        let segments = vec![
            offloaded(1, 0, 10, 100, Some(1_000)),
            sealed(2, 10, 20, 100, Some(5_000)),
            sealed(3, 20, 30, 100, Some(2_000)),
            open(4, 30),
        ];
        let expired = expired_segments(&segments, 0, 0, &policy(3_000, -1), 6_000);
        assert_eq!(
            expired,
            vec![1],
            "segment 3 is old but 2 is not: a prefix only"
        );
        let expired = expired_segments(&segments, 0, 0, &policy(-1, -1), 1_000_000);
        assert!(expired.is_empty(), "forever");
        // Unknown timestamps are never expired by time.
        let unknown = vec![sealed(1, 0, 10, 100, None), open(2, 10)];
        assert!(expired_segments(&unknown, 0, 0, &policy(1, -1), 1_000_000).is_empty());
    }

    #[test]
    fn size_retention_keeps_at_least_retention_bytes_and_the_last_segment() {
        let segments = vec![
            sealed(1, 0, 10, 100, None),
            sealed(2, 10, 20, 100, None),
            sealed(3, 20, 30, 100, None),
            open(4, 30),
        ];
        // 300 sealed + 50 open; keep at least 150: segments 1 and 2 go.
        assert_eq!(
            expired_segments(&segments, 0, 50, &policy(-1, 150), 0),
            vec![1, 2]
        );
        // Everything sealed, nothing open: the last segment always stays.
        let all_sealed = &segments[..3];
        assert_eq!(
            expired_segments(all_sealed, 0, 0, &policy(-1, 0), 0),
            vec![1, 2]
        );
    }

    #[test]
    fn segments_below_the_log_start_offset_are_deleted() {
        let segments = vec![
            sealed(1, 0, 10, 100, None),
            sealed(2, 10, 20, 100, None),
            open(3, 20),
        ];
        assert_eq!(
            expired_segments(&segments, 10, 0, &policy(-1, -1), 0),
            vec![1]
        );
        assert_eq!(
            expired_segments(&segments, 15, 0, &policy(-1, -1), 0),
            vec![1]
        );
    }

    #[test]
    fn sealed_segments_move_to_object_storage_by_local_age_or_size() {
        let segments = vec![
            offloaded(1, 0, 10, 100, Some(1_000)),
            sealed(2, 10, 20, 100, Some(2_000)),
            sealed(3, 20, 30, 100, Some(9_000)),
            sealed(4, 30, 40, 100, None),
            open(5, 40),
        ];
        let by_age = RetentionPolicy {
            local_retention_ms: 5_000,
            ..policy(-1, -1)
        };
        assert_eq!(offload_due(&segments, 0, &by_age, 10_000), vec![2, 4]);
        let by_size = RetentionPolicy {
            local_retention_bytes: 150,
            ..policy(-1, -1)
        };
        // 4 is followed by 60 bytes (open), 3 by 160: 2 and 3 go.
        assert_eq!(offload_due(&segments, 60, &by_size, 10_000), vec![2, 3]);
        let at_once = RetentionPolicy {
            local_retention_ms: 0,
            ..policy(-1, -1)
        };
        assert_eq!(offload_due(&segments, 0, &at_once, 10_000), vec![2, 3, 4]);
        assert!(offload_due(&segments, 0, &policy(-1, -1), 10_000).is_empty());
    }
}
